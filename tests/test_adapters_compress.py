"""`levelsearch compress` end to end on a tiny model directory, and its one-line errors."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.models import save_model  # noqa: E402
from test_adapters_drop import byte_tokenizer, tiny_llama  # noqa: E402

from levelsearch.cli import main  # noqa: E402

pytestmark = pytest.mark.llm

SMALL = [
    "--seq-len",
    "32",
    "--calibration-tokens",
    "128",
    "--heldout-tokens",
    "64",
    "--top-k",
    "16",
    "--heuristic-tokens",
    "64",
    "--offspring",
    "4",
    "--quiet",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_model(tiny_llama(), byte_tokenizer(), path)
    return path


def test_compress_writes_results_profile_and_a_loadable_model(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "compress",
            "--model",
            str(model_dir),
            "--method",
            "drop",
            "--target",
            "0.5",
            "--out",
            str(out),
            "--generations",
            "3",
            "--schedule",
            "cpu",
            *SMALL,
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"evopress", "shortgpt", "shortgpt-sub", "angular", "single-kl", "random"}
    evo = res["methods"]["evopress"]
    assert evo["generations"] == 3 and evo["start"].startswith("best-heuristic:")
    assert len(evo["dropped"]["attention"]) == 2 and len(evo["dropped"]["mlp"]) == 2
    assert res["export"]["max_abs_logit_diff"] < 1e-4
    assert (out / "profile.png").stat().st_size > 0 and (out / "journal.db").exists()


def test_evopress_never_ends_worse_than_its_start_on_the_calibration_pool(model_dir, tmp_path):
    out = tmp_path / "run"
    main(
        [
            "compress",
            "--model",
            str(model_dir),
            "--target",
            "0.5",
            "--out",
            str(out),
            "--generations",
            "4",
            "--no-export",
            *SMALL,
        ]
    )
    res = json.loads((out / "results.json").read_text())
    start = res["methods"]["evopress"]["start"].split(":")[1]
    assert res["methods"]["evopress"]["calibration_kl"] <= res["methods"][start]["calibration_kl"]


def test_config_file_gives_the_same_settings_as_options(model_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {model_dir}\nmethod: drop\ntarget: 0.5\nout: {tmp_path / 'run'}\ngenerations: 2\n"
        "seq_len: 32\ncalibration_tokens: 128\nheldout_tokens: 64\ntop_k: 16\nheuristic_tokens: 64\n"
        "offspring: 4\nexport: false\nprogress: false\nheuristics: [random, angular]\n"
    )
    assert main(["compress", "--config", str(cfg)]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["methods"]) == {"evopress", "random", "angular"}


def one_line_error(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("levelsearch: error:")
    return err


def test_unknown_model_path_is_one_line_exit_2(tmp_path, capsys):
    err = one_line_error(["compress", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert "not found" in err


def test_target_out_of_range_is_one_line_exit_2(model_dir, tmp_path, capsys):
    err = one_line_error(["compress", "--model", str(model_dir), "--target", "1.2", "--out", str(tmp_path)], capsys)
    assert "between 0 and 1" in err


def test_unsupported_architecture_is_one_line_exit_2(tmp_path, capsys):
    cfg = transformers.MambaConfig(vocab_size=257, hidden_size=16, state_size=4, num_hidden_layers=2)
    path = tmp_path / "mamba"
    save_model(transformers.MambaForCausalLM(cfg), byte_tokenizer(), path)
    err = one_line_error(["compress", "--model", str(path), "--out", str(tmp_path / "o"), *SMALL], capsys)
    assert "unsupported architecture" in err


def test_calibration_smaller_than_the_schedule_is_one_line_exit_2(model_dir, tmp_path, capsys):
    err = one_line_error(
        [
            "compress",
            "--model",
            str(model_dir),
            "--target",
            "0.5",
            "--out",
            str(tmp_path / "o"),
            "--schedule",
            "drop",
            *SMALL,
        ],
        capsys,
    )
    assert "calibration pool holds 128" in err


def test_running_the_same_command_again_resumes_from_the_journal(model_dir, tmp_path):
    argv = [
        "compress",
        "--model",
        str(model_dir),
        "--target",
        "0.5",
        "--out",
        str(tmp_path / "run"),
        "--no-export",
        "--heuristics",
        "random",
        *SMALL,
    ]
    main([*argv, "--generations", "2"])
    main([*argv, "--generations", "3"])
    evo = json.loads((tmp_path / "run" / "results.json").read_text())["methods"]["evopress"]
    assert evo["generations"] == 3 and evo["replayed_evaluations"] > 0
    assert (tmp_path / "run" / "cache" / "heuristics.json").is_file()
    assert (tmp_path / "run" / "cache" / "teacher-heldout.safetensors").is_file()
