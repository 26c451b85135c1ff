"""`levelsearch compress` writes a smaller drop model with its size and speed; `levelsearch export` re-exports a
finished run without searching, and refuses bad requests in one line."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.models import save_model  # noqa: E402
from test_adapters_compress import SMALL  # noqa: E402
from test_adapters_drop import byte_tokenizer, tiny_llama  # noqa: E402

from levelsearch.cli import main  # noqa: E402

pytestmark = pytest.mark.llm


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model = tmp_path_factory.mktemp("tiny") / "llama"
    save_model(tiny_llama(n_layers=4), byte_tokenizer(), model)
    out = tmp_path_factory.mktemp("run") / "drop"
    args = ["compress", "--model", str(model), "--method", "drop", "--target", "0.5", "--out", str(out)]
    assert main([*args, "--generations", "1", *SMALL]) == 0
    return out


def test_compress_records_the_exports_size_and_speed_beside_the_dense_models(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    e = res["export"]
    assert e["format"] == "drop" and e["max_abs_logit_diff"] <= e["tolerance"] == 1e-4
    assert 0 < e["size"]["bytes"] < e["size"]["dense_bytes"] and e["size"]["ratio"] < 1
    assert e["speed"]["exported_tokens_per_s"] > 0 and e["speed"]["dense_tokens_per_s"] > 0
    meta = json.loads((run_dir / "model" / "levelsearch_compression.json").read_text())
    assert meta["levels"] == res["methods"]["evopress"]["levels"]


def test_export_writes_another_format_without_searching_and_records_it(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "zeroed", "--no-measure"]) == 0
    res = json.loads((run_dir / "results.json").read_text())
    assert res["exports"]["zeroed"]["dir"] == str(run_dir / "model-zeroed")
    assert res["exports"]["zeroed"]["max_abs_logit_diff"] < 1e-4
    assert "exported" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "pack-quantized"], "does not fit the run's method drop; use one of drop, zeroed"),
        (["--out", "{run}"], "exists and is not empty"),
    ],
)
def test_bad_export_requests_are_one_line_and_exit_2(run_dir, extra, message, capsys):
    args = [a.replace("{run}", str(run_dir)) for a in extra]
    assert main(["export", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_compress_writes_the_format_asked_for(tmp_path):
    model = tmp_path / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), model)
    out = tmp_path / "run"
    args = ["compress", "--model", str(model), "--method", "drop", "--target", "0.5", "--out", str(out)]
    assert main([*args, "--format", "zeroed", "--generations", "1", *SMALL]) == 0
    e = json.loads((out / "results.json").read_text())["export"]
    assert e["format"] == "zeroed" and e["loader"] == "transformers" and e["max_abs_logit_diff"] <= e["tolerance"]
    assert e["size"]["ratio"] == pytest.approx(1.0, abs=0.01)  # zeroed: the dense file, not the default drop format
    meta = json.loads((out / "model" / "levelsearch_compression.json").read_text())
    assert meta["format"] == "zeroed"


@pytest.mark.parametrize(
    ("method", "target", "fmt", "fits"),
    [("drop", "0.5", "pack-quantized", "drop, zeroed"), ("quant", "3", "sparse-bitmask", "pack-quantized, dense")],
)
def test_compress_refuses_a_format_that_does_not_fit_in_one_line_writing_nothing(
    method, target, fmt, fits, tmp_path, capsys
):
    out = tmp_path / "run"  # the model does not exist either: the format is refused before it would load
    args = ["compress", "--model", str(tmp_path / "absent"), "--method", method, "--target", target, "--out", str(out)]
    assert main([*args, "--format", fmt, *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--format {fmt} does not fit --method {method}; use one of {fits}" in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before the model loads and before anything is written


def test_a_directory_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "holds no results.json" in capsys.readouterr().err


def test_a_failed_export_check_stops_compress_with_exit_2_and_a_failed_directory(tmp_path, monkeypatch, capsys):
    from levelsearch.adapters.formats import verify

    model = tmp_path / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), model)
    monkeypatch.setattr(verify, "tolerance", lambda dtype, scale=1.0: -1.0)  # no reload can be that close
    out = tmp_path / "run"
    args = ["compress", "--model", str(model), "--method", "drop", "--target", "0.5", "--out", str(out)]
    assert main([*args, "--generations", "1", *SMALL]) == 2
    assert "export check failed" in capsys.readouterr().err
    assert (out / "model.FAILED" / "FAILED").is_file() and not (out / "model").exists()
    assert "failed" in json.loads((out / "results.json").read_text())["export"]


def test_export_rebuilds_a_weight_codec_run_and_writes_its_dense_form(tmp_path, monkeypatch):
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), model)
    out = tmp_path / "run"
    args = ["compress", "--model", str(model), "--method", "quant", "--target", "3", "--out", str(out)]
    assert main([*args, "--generations", "1", *SMALL]) == 0
    assert json.loads((out / "results.json").read_text())["export"]["format"] == "pack-quantized"
    assert main(["export", str(out), "--format", "dense", "--no-measure"]) == 0
    entry = json.loads((out / "results.json").read_text())["exports"]["dense"]
    assert entry["max_abs_logit_diff"] < 1e-4 and (out / "model-dense" / "model.safetensors").is_file()
