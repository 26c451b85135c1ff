"""`levelsearch compress` end to end on a tiny model directory, and its one-line errors."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.model.models import save_model  # noqa: E402
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


def test_ctrl_c_during_the_search_exits_130_at_once_and_the_same_command_finishes_the_run(
    model_dir, tmp_path, capsys, monkeypatch
):
    from levelsearch.adapters.scoring.layerwise import LayerwiseProblem

    out = tmp_path / "run"
    argv = ["compress", "--model", str(model_dir), "--target", "0.5", "--out", str(out), "--no-export",
            "--heuristics", "random", "--generations", "3", *SMALL]
    real, calls = LayerwiseProblem.evaluate_many, []

    def interrupted(self, requests):
        calls.append(len(requests))
        if len(calls) == 3:  # the baselines' and the start's evaluations are done: the search has begun
            raise KeyboardInterrupt
        return real(self, requests)

    monkeypatch.setattr(LayerwiseProblem, "evaluate_many", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "levelsearch: interrupted; the same command resumes it"
    assert not (out / "results.json").exists() and (out / "journal.db").is_file()
    monkeypatch.setattr(LayerwiseProblem, "evaluate_many", real)
    assert main(argv) == 0
    evo = json.loads((out / "results.json").read_text())["methods"]["evopress"]
    assert evo["generations"] == 3 and evo["stopped_by"] != "interrupted"


# ---------------------------------------------------------------------- the journal is the record
@pytest.fixture(scope="module")
def finished_run(model_dir, tmp_path_factory):
    """A finished drop run (its model not exported), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = ["compress", "--model", str(model_dir), "--target", "0.5", "--out", str(out), "--no-export"]
    assert main([*argv, "--generations", "2", "--heuristics", "random,angular", *SMALL]) == 0
    return out


def _copy(run, dest):
    import shutil

    shutil.copytree(run, dest)
    return dest


def test_the_journal_records_every_methods_final_levels_and_values(finished_run):
    from levelsearch.adapters.run.pipeline import journal_levels, journal_results

    res = json.loads((finished_run / "results.json").read_text())
    rec = journal_results(finished_run)
    assert set(rec["methods"]) == set(res["methods"]) == {"evopress", "random", "angular"}
    for name, m in res["methods"].items():
        assert rec["methods"][name]["levels"] == m["levels"]
        assert rec["methods"][name]["heldout_ppl"] == m["heldout_ppl"]
    assert journal_levels(finished_run).tolist() == res["methods"]["evopress"]["levels"]
    assert (rec["model"], rec["method"], rec["target"]) == (res["model"], "drop", 0.5)


def test_export_refuses_a_results_json_whose_levels_were_edited_and_writes_the_journals(finished_run, tmp_path, capsys):
    from levelsearch.adapters.run.pipeline import journal_levels

    run = _copy(finished_run, tmp_path / "run")
    res = json.loads((run / "results.json").read_text())
    levels = res["methods"]["evopress"]["levels"]
    res["methods"]["evopress"]["levels"] = levels[::-1] if levels[::-1] != levels else [1 - v for v in levels]
    (run / "results.json").write_text(json.dumps(res))
    err = one_line_error(["export", str(run), "--format", "zeroed", "--no-measure"], capsys)
    assert "results.json differs from the run's journal in its EvoPress levels" in err
    assert not (run / "model-zeroed").exists()
    (run / "results.json").unlink()  # the report gone: the export is the journal's, and the report comes back
    assert main(["export", str(run), "--format", "zeroed", "--no-measure"]) == 0
    back = json.loads((run / "results.json").read_text())
    assert back["methods"]["evopress"]["levels"] == levels == journal_levels(run).tolist()
    assert back["exports"]["zeroed"]["max_abs_logit_diff"] < 1e-4


def test_export_refuses_a_journal_whose_result_was_edited(finished_run, tmp_path, capsys):
    import sqlite3

    run = _copy(finished_run, tmp_path / "run")
    with sqlite3.connect(run / "journal.db") as conn:
        (text,) = conn.execute("SELECT value FROM meta WHERE key='result:evopress'").fetchone()
        entry = json.loads(text)
        entry["levels"] = entry["levels"][::-1]
        conn.execute("UPDATE meta SET value=? WHERE key='result:evopress'", (json.dumps(entry, sort_keys=True),))
    err = one_line_error(["export", str(run), "--format", "zeroed", "--no-measure"], capsys)
    assert "altered" in err and "result:evopress" in err
    assert not (run / "model-zeroed").exists()


def test_export_of_a_run_whose_journal_records_no_results_is_one_line(model_dir, tmp_path, capsys):
    from levelsearch import Journal

    run = tmp_path / "run"
    run.mkdir()
    with Journal(run / "journal.db", {"problem": {}}):
        pass
    (run / "results.json").write_text(json.dumps({"methods": {"evopress": {"levels": [0, 1]}}}))
    err = one_line_error(["export", str(run), "--no-measure"], capsys)
    assert "records no finished compress run" in err


def test_export_refuses_a_results_json_naming_another_target(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path / "run")
    res = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**res, "target": 0.25}))
    err = one_line_error(["export", str(run), "--no-measure"], capsys)
    assert "results.json differs from the run's journal in its target" in err


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["--threads", "0"], "--threads must be a positive integer"), (["--out", ""], "--out is empty")],
)
def test_bad_export_options_are_one_line(finished_run, capsys, extra, words):
    err = one_line_error(["export", str(finished_run), *extra, "--no-measure"], capsys)
    assert words in err


# ---------------------------------------------------------------------- bad settings: one line, nothing written
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--threads", "0"], "settings: threads: must be an integer in 1..1000000000, got 0"),
        (["--threads", "-2"], "settings: threads: must be an integer in 1..1000000000, got -2"),
        (["--top-k", "1000"], "top_k 1000 is larger than the model's vocabulary (257 tokens)"),
        (["--device", "gpu"], "--device gpu: not a device"),
        (["--offspring", "0"], "settings: offspring: must be an integer in 1..10000, got 0"),
        (["--offspring", "1000000000"], "offspring: must be an integer in 1..10000, got 1000000000"),
        (["--schedule", "fastest"], "unknown schedule 'fastest'"),
        (["--method", "quant", "--target", "3", "--search-tokens", "0"], "settings: search_tokens: must be an integer"),
        (["--method", "quant", "--target", "3", "--random-n", "-1"], "random_n: must be an integer in 1..1000000"),
        (["--heuristics", "angular,nosuch"], "--heuristics: unknown heuristic 'nosuch'; known: "),
        (["--start", "nosuch"], "--start 'nosuch' is not a start of this run; one of: best-heuristic"),
        (["--heuristics", "angular", "--start", "shortgpt"], "--start 'shortgpt' is not a start of this run"),
        (["--method", "quant", "--target", "3", "--start", "owl"], "--start 'owl' is not a start of this run"),
        (["--method", "sparsity", "--target", "0.5", "--start", "gptq"], "one of: best-heuristic, best-baseline, "
         "random, uniform, owl, dp, dp-fisher"),
    ],
)
def test_bad_compress_settings_are_one_line_and_write_nothing(model_dir, tmp_path, capsys, extra, words):
    out = tmp_path / "o"
    argv = ["compress", "--model", str(model_dir), "--out", str(out), *SMALL, *extra]
    if "--target" not in extra:
        argv += ["--target", "0.5"]
    err = one_line_error(argv, capsys)
    assert words in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_machine_without_it_is_one_line(model_dir, tmp_path, capsys, device):
    out = tmp_path / "o"
    argv = ["compress", "--model", str(model_dir), "--target", "0.5", "--out", str(out), "--device", device, *SMALL]
    err = one_line_error(argv, capsys)
    assert f"--device {device}: CUDA is not available on this machine; use --device cpu" in err
    assert not out.exists()


def test_a_database_directory_that_cannot_be_created_is_one_line(model_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["compress", "--model", str(model_dir), "--method", "quant", "--target", "3", "--out", str(tmp_path / "o")]
    err = one_line_error([*argv, "--database", str(blocker / "db"), "--estimates", "layer", *SMALL], capsys)
    assert f"cannot create the database directory {blocker / 'db'}" in err


def test_a_database_path_that_is_a_file_is_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "db").write_text("x")
    argv = ["compress", "--model", str(model_dir), "--method", "quant", "--target", "3", "--out", str(tmp_path / "o")]
    err = one_line_error([*argv, "--database", str(tmp_path / "db"), "--estimates", "layer", *SMALL], capsys)
    assert f"the database directory {tmp_path / 'db'} is a file" in err
    assert (tmp_path / "db").read_text() == "x"


def test_an_empty_model_name_is_one_line_and_loads_nothing_from_the_current_directory(tmp_path, capsys):
    err = one_line_error(["compress", "--model", "", "--target", "0.5", "--out", str(tmp_path / "o"), *SMALL], capsys)
    assert "--model is empty" in err
    assert not (tmp_path / "o").exists()
