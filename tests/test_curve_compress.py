"""compress with several targets: one problem for all, a sub-directory per target, curve.json and curve.png,
exact resume per target, bad target lists refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from levelsearch.adapters.codecs import get_codec  # noqa: E402
from levelsearch.adapters.run.curve import curve_table, run_any  # noqa: E402
from levelsearch.adapters.scoring.layerwise import LayerwiseProblem  # noqa: E402

pytestmark = pytest.mark.llm

SMALL = dict(
    method="quant",
    seq_len=32,
    calibration_tokens=128,
    heldout_tokens=64,
    top_k=16,
    heuristic_tokens=64,
    offspring=4,
    generations=2,
    progress=False,
    export=False,
    random_n=4,
)


def _cfg(model_dir, out, target, **kw):
    try:
        from levelsearch.adapters.run.settings import CompressSettings
    except ImportError:  # the settings' older home
        from levelsearch.adapters.cli.settings import CompressSettings

    cfg = CompressSettings(**{**SMALL, **kw}).to_dict()
    cfg.update(model=str(model_dir), out=str(out))
    if target is not None:
        cfg["target"] = target
    return cfg


def _run(model_dir, out, target, **kw):
    cfg = _cfg(model_dir, out, target, **kw)
    try:
        return run_any(get_codec(cfg["method"]), cfg)
    finally:
        lock = cfg.pop("_lock", None)
        if lock is not None:
            lock.close()


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """Variant databases of the tiny model go to a cache of this module's own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEVELSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from levelsearch.adapters.model.models import save_model
    from test_adapters_drop import byte_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("m") / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), path)
    return path


@pytest.fixture(scope="module")
def curve_run(model_dir, tmp_path_factory):
    """A three-target run, and how many times it loaded the model."""
    from levelsearch.adapters.scoring import layerwise

    out = tmp_path_factory.mktemp("curve") / "run"
    loads = []
    real = layerwise.load_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layerwise, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
        curve = _run(model_dir, out, [2.5, 3, 3.5])
    curve_run_loads.extend(loads)
    return out, curve


curve_run_loads: list = []


def test_every_target_has_its_own_results_and_the_run_its_curve(curve_run):
    out, curve = curve_run
    assert [p["name"] for p in curve["points"]] == ["target-2.5", "target-3", "target-3.5"]
    for p in curve["points"]:
        res = json.loads((out / p["name"] / "results.json").read_text())
        assert res["target"] == p["target"] and (out / p["name"] / "profile.png").stat().st_size > 0
        for m in res["methods"].values():
            assert {"heldout_kl_median", "heldout_kl_p99", "heldout_kl_p99_9", "heldout_top1"} <= set(m)
        ev = p["methods"]["evopress"]
        assert ev["bits_per_weight"] == pytest.approx(p["target"], abs=1e-6)
        assert ev["bytes"] == pytest.approx(ev["bits_per_weight"] * curve["dense"]["bytes"] / 32)
    assert json.loads((out / "curve.json").read_text()) == json.loads(json.dumps(curve))
    assert (out / "curve.png").stat().st_size > 0
    assert "target-3.5" in curve_table(curve)


def test_the_curve_counts_every_forward_and_checks_evopress_against_the_best_baseline(curve_run, model_dir):
    out, curve = curve_run
    teacher = curve["shared_forward_tokens"]  # the calibration teacher's pass, before the first target
    assert teacher == SMALL["calibration_tokens"]
    assert curve["forward_tokens"] == teacher + sum(p["forward_tokens"] for p in curve["points"])
    for p in curve["points"]:
        ms = p["methods"]
        kls = {n: m["heldout_kl"] for n, m in ms.items() if n != "evopress" and m.get("feasible", True)}
        assert p["best_baseline"] == min(kls, key=kls.get) and p["best_baseline_kl"] == min(kls.values())
        assert p["evopress_at_most_best_baseline"] == (ms["evopress"]["heldout_kl"] <= min(kls.values()))
    assert curve["evopress_at_most_best_baseline"] == all(p["evopress_at_most_best_baseline"] for p in curve["points"])


def test_later_targets_start_from_the_best_of_the_baselines_and_the_previous_result(curve_run):
    out, curve = curve_run
    for p in curve["points"][1:]:
        res = json.loads((out / p["name"] / "results.json").read_text())
        start = res["methods"]["evopress"]["start"]
        base = [m["calibration_kl"] for n, m in res["methods"].items() if n != "evopress" and m["feasible"]]
        assert start.startswith("neighbour:") or start in res["methods"]
        if start.startswith("neighbour:"):
            assert res["methods"]["evopress"]["calibration_kl"] <= min(base)


def test_one_model_load_serves_every_target(curve_run):
    assert len(curve_run_loads) == 1


@pytest.mark.slow
def test_a_run_stopped_during_a_target_resumes_to_the_uninterrupted_curve(model_dir, curve_run, tmp_path, monkeypatch):
    full_out, full = curve_run
    real = LayerwiseProblem.evaluate_many
    calls = {"n": 0}

    def stop_in_the_second_target(self, requests):
        if getattr(self, "target", None) == 3.0:
            calls["n"] += 1
            if calls["n"] == 6:  # inside the second target's search (Ctrl-C)
                raise KeyboardInterrupt
        return real(self, requests)

    monkeypatch.setattr(LayerwiseProblem, "evaluate_many", stop_in_the_second_target)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(model_dir, out, [2.5, 3, 3.5])
    assert (out / "target-2.5" / "results.json").is_file() and not (out / "target-3" / "results.json").exists()
    monkeypatch.setattr(LayerwiseProblem, "evaluate_many", real)
    resumed = _run(model_dir, out, [2.5, 3, 3.5])
    assert resumed["shared_forward_tokens"] == full["shared_forward_tokens"] > 0  # the teacher, read back, still counts
    for a, b in zip(full["points"], resumed["points"], strict=True):
        assert np.array_equal(_levels(full_out / a["name"]), _levels(out / b["name"]))
        for name in a["methods"]:
            x, y = a["methods"][name], b["methods"][name]
            assert x["calibration_kl"] == pytest.approx(y["calibration_kl"], rel=1e-9), (a["name"], name)
            assert x["heldout_kl"] == pytest.approx(y["heldout_kl"], rel=1e-9), (a["name"], name)


def _levels(sub):
    return np.asarray(json.loads((sub / "results.json").read_text())["methods"]["evopress"]["levels"])


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([3, 2.5], "2.5 comes after 3"),
        ([2.5, 2.5], "2.5 is given twice"),
        ([], "--target is empty"),
        ([2.5, 9], "got 9.0"),
        (["3", "x"], "'x' is not a number"),
    ],
)
def test_bad_target_lists_name_the_value_and_write_nothing(model_dir, tmp_path, targets, message):
    out = tmp_path / "run"
    cfg = _cfg(model_dir, out, targets)
    with pytest.raises(ValueError, match=message) as err:
        run_any(get_codec("quant"), cfg)
    assert "\n" not in str(err.value)
    assert not out.exists()


@pytest.mark.slow
def test_a_gguf_byte_list_gives_a_point_per_size_within_its_band_and_a_recipe(tmp_path, capsys):
    from test_gguf import write_tiny_gguf

    src = write_tiny_gguf(tmp_path / "tiny-f16.gguf")
    sizes = ["0.5MB", "550KB"]
    kw = dict(method="gguf", types="Q2_K,Q3_K,Q4_K,Q6_K", tol="0.03", generations=1, database=str(tmp_path / "db"))
    cfg_target = {"target_bytes": sizes}
    out = tmp_path / "run"
    curve = _run(src, out, None, **kw, **cfg_target)
    assert [p["name"] for p in curve["points"]] == ["bytes-500000", "bytes-550000"]
    assert curve["in"] == "bytes" and curve["targets"] == [500_000, 550_000]
    for p, size in zip(curve["points"], (500_000, 550_000)):
        res = json.loads((out / p["name"] / "results.json").read_text())
        assert res["target_bytes"] == size
        ev = p["methods"]["evopress"]
        assert 0.97 * size <= ev["bytes"] <= size
        assert ev["bytes"] == res["methods"]["evopress"]["searched_bytes"]
    from levelsearch.cli import main

    for p in curve["points"]:  # llama-quantize's overrides, per size
        assert main(["gguf-recipe", str(out / p["name"])]) == 0
    recipes = capsys.readouterr().out
    assert recipes.count("--tensor-type") >= 2


def _cli_small(model_dir):
    return ["--model", str(model_dir), "--method", "quant", "--seq-len", "32", "--calibration-tokens", "128",
            "--heldout-tokens", "64", "--top-k", "16", "--heuristic-tokens", "64", "--offspring", "4",
            "--generations", "2", "--random-n", "4", "--quiet", "--no-export"]  # fmt: skip


@pytest.mark.parametrize(("value", "says"), [("3,2.5", "2.5 comes after 3"), ("2.5,x", "'x' is not a number")])
def test_a_bad_target_list_on_the_command_line_is_one_line_exit_2_nothing_written(
    model_dir, tmp_path, capsys, value, says
):
    from levelsearch.cli import main

    out = tmp_path / "run"
    assert main(["compress", *_cli_small(model_dir), "--target", value, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
    assert not out.exists()


def test_a_yaml_target_list_with_a_value_twice_is_refused_the_same_way(model_dir, tmp_path, capsys):
    from levelsearch.cli import main

    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: quant\nmodel: {model_dir}\ntarget: [2.5, 3, 3]\nout: {out}\n")
    assert main(["compress", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "3 is given twice" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.slow
def test_a_target_list_on_the_command_line_runs_the_curve_and_prints_its_table(model_dir, tmp_path, capsys):
    from levelsearch.cli import main

    out = tmp_path / "run"
    assert main(["compress", *_cli_small(model_dir), "--target", "2.5,3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target-2.5" in printed and "target-3" in printed and "forward tokens" in printed
    assert json.loads((out / "curve.json").read_text())["targets"] == [2.5, 3.0]
