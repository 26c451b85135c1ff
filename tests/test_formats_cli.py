"""`levelsearch compress` writes a smaller drop model with its size and speed; `levelsearch export` re-exports a
finished run without searching and without the dense teacher, and refuses bad requests (a format that does not
fit, a run whose recorded problem was tampered with) in one line."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.model.models import save_model  # noqa: E402
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


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory):
    """A finished ``compress --method quant`` run of a 2-layer tiny Llama (its database in the run's cache)."""
    root = tmp_path_factory.mktemp("quant")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEVELSEARCH_CACHE", str(root / "cache"))
        model = root / "llama"
        save_model(tiny_llama(n_layers=2), byte_tokenizer(), model)
        out = root / "run"
        args = ["compress", "--model", str(model), "--method", "quant", "--target", "3", "--out", str(out)]
        assert main([*args, "--generations", "1", *SMALL]) == 0
        yield out


def count_teacher_passes(monkeypatch) -> list[int]:
    """Record the token count of every dense-teacher pass (``Teacher.from_logits_fn``) from now on."""
    from levelsearch.adapters.scoring.fitness import Teacher

    calls: list[int] = []
    build = Teacher.from_logits_fn

    def counted(cls, tokens, *args, **kwargs):
        calls.append(int(tokens.numel()))
        return build(tokens, *args, **kwargs)

    monkeypatch.setattr(Teacher, "from_logits_fn", classmethod(counted))
    return calls


def test_export_rebuilds_a_weight_codec_run_and_writes_its_dense_form(quant_run, monkeypatch):
    out = quant_run
    assert json.loads((out / "results.json").read_text())["export"]["format"] == "pack-quantized"
    teacher_passes = count_teacher_passes(monkeypatch)
    assert main(["export", str(out), "--format", "dense", "--no-measure"]) == 0
    entry = json.loads((out / "results.json").read_text())["exports"]["dense"]
    assert entry["max_abs_logit_diff"] < 1e-4 and (out / "model-dense" / "model.safetensors").is_file()
    assert teacher_passes == []


def test_export_of_a_weight_codec_run_computes_no_teacher_and_reloads_to_the_searched_logits(
    quant_run, tmp_path, monkeypatch
):
    from levelsearch.adapters.cli.export import run_settings
    from levelsearch.adapters.codecs import get_codec
    from levelsearch.adapters.formats.loader import load_compressed

    teacher_passes = count_teacher_passes(monkeypatch)
    dest = tmp_path / "packed"
    assert main(["export", str(quant_run), "--format", "pack-quantized", "--out", str(dest)]) == 0
    assert teacher_passes == []  # the export, its check and its measurements need the searched model only
    entry = json.loads((quant_run / "results.json").read_text())["exports"]["pack-quantized"]
    assert entry["dir"] == str(dest) and entry["max_abs_logit_diff"] <= entry["tolerance"] == 1e-4
    assert entry["size"]["ratio"] < 1 and entry["speed"]["exported_tokens_per_s"] > 0

    # the searched logits, independently of the export's own check: the run's problem rebuilt (still no
    # teacher), its levels run layer by layer with the variants swapped in, as the fitness runs them
    res, settings = run_settings(quant_run)
    problem = get_codec("quant").make_problem(settings)
    assert teacher_passes == [] and not problem.has_teacher("calibration") and not problem.has_teacher("heldout")
    levels = np.asarray(res["methods"]["evopress"]["levels"], dtype=np.int64)
    ids = problem.heldout.tokens[:2]
    runner, found = problem.runner, []
    with torch.inference_mode():
        layer_fn = problem._layer_fn(runner.layer_kwargs(ids))
        runner.run_shared(ids, [problem.candidate_keys(levels)], layer_fn, lambda h, c: found.append(runner.logits(h)))
        got = load_compressed(dest)(input_ids=ids, use_cache=False).logits.float()
    assert float((found[0] - got).abs().max()) < 1e-4

    # computed on first use after variants were swapped in (and counted): bit for bit the teacher of a
    # fresh problem whose weights were never swapped
    late = problem.teacher("heldout")
    assert teacher_passes == [problem.heldout.tokens.numel()]
    fresh = get_codec("quant").make_problem(settings).teacher("heldout")
    assert len(teacher_passes) == 2
    for name in ("logp", "index", "tail"):
        assert torch.equal(getattr(late, name), getattr(fresh, name)), name
    assert late.nll == fresh.nll


def _tamper_results_target(run, method):
    res = json.loads((run / "results.json").read_text())
    res["target"] = {"drop": 0.25, "quant": 3.5}[method]
    (run / "results.json").write_text(json.dumps(res))


def _tamper_journal_content(run, method):
    with sqlite3.connect(run / "journal.db") as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key='identity'").fetchone()
        identity = json.loads(value)
        identity["problem"]["content"]["weights"] = "0" * 20  # another model's weights
        db.execute("UPDATE meta SET value=? WHERE key='identity'", (json.dumps(identity, sort_keys=True),))
    db.close()


@pytest.mark.parametrize("method", ["drop", "quant"])
@pytest.mark.parametrize(
    ("tamper", "what"),
    [
        (_tamper_results_target, "results.json differs from the run's journal in its target"),
        (_tamper_journal_content, "was altered at meta value 'identity'"),
    ],
)
def test_export_refuses_a_run_of_another_problem_in_one_line(
    method, tamper, what, run_dir, quant_run, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("results.json", "journal.db"):  # what export reads of a run
        shutil.copy({"drop": run_dir, "quant": quant_run}[method] / name, run / name)
    tamper(run, method)
    before = (run / "results.json").read_bytes()
    teacher_passes = count_teacher_passes(monkeypatch)
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and what in err, err
    assert not [p.name for p in run.iterdir() if p.name.startswith("model")]  # no export written
    assert (run / "results.json").read_bytes() == before
    assert teacher_passes == []  # refused before any teacher pass
