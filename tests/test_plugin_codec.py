"""A codec from outside the package (examples/plugins/lowrank_codec.py) plugs in with no change to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs import base  # noqa: E402
from test_adapters_compress import SMALL  # noqa: E402

from levelsearch.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "plugins"))
from lowrank_codec import LowRankCodec, params_kept  # noqa: E402

pytestmark = pytest.mark.llm


@pytest.fixture
def lowrank():
    base.register_codec("lowrank", LowRankCodec)
    yield base.get_codec("lowrank")
    base.CODECS.unregister("lowrank")


@pytest.fixture
def model_dir(tiny_llama_dir):
    return tiny_llama_dir


def test_a_registered_third_party_codec_runs_compress_end_to_end(lowrank, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["compress", "--model", str(model_dir), "--method", "lowrank", "--target", "0.6", "--out", str(out)]
    assert main([*args, "--generations", "2", *SMALL]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "lowrank" and res["database"]["spec"]["kind"] == "lowrank"
    evo = res["methods"]["evopress"]
    assert 0.58 <= evo["average"] <= 0.6 and evo["feasible"]
    assert {"dp", "evopress"} <= set(res["methods"])
    assert res["export"]["max_abs_logit_diff"] < 1e-4
    meta = json.loads((out / "model" / "levelsearch_compression.json").read_text())
    assert meta["kind"] == "lowrank" and meta["how"] == "dense product of the factors"
    assert (out / "profile.png").stat().st_size > 0


def test_a_codec_plugs_into_the_generic_problem_with_no_subclass(lowrank, model_dir, tmp_path):
    from levelsearch.adapters.weights.problem import WeightLevelProblem

    small = dict(seq_len=32, calibration_tokens=128, heldout_tokens=64, top_k=16, progress=False)
    problem = WeightLevelProblem(str(model_dir), codec="lowrank", target=0.6, database=str(tmp_path / "db"), **small)
    assert type(problem) is WeightLevelProblem and problem.name == "llm-lowrank"
    shapes = [problem.db.shape(u) for u in problem.unit_names]
    assert problem.costs == [[float(params_kept(p, s)) for p in (1.0, 0.75, 0.5, 0.35, 0.25)] for s in shapes]
    lv = problem.space.sample(np.random.default_rng(0))
    assert 0.58 <= problem.average(lv) <= 0.6 and problem.average(lv) == problem.space.cost(lv) / problem.numel.sum()


def test_the_third_party_codecs_variants_keep_their_level_and_decode_to_what_they_stand_for(lowrank):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=g)
    spec = {"kind": "lowrank", "method": "svd", "fractions": [1.0, 0.5, 0.25]}
    lowrank.check_spec(spec)
    values = lowrank.level_values(spec, w.numel())
    for value, var in zip(values, lowrank.make_variants(spec, w, None, values)):
        assert lowrank.keeps_level(spec, value, var)
        dense = lowrank.dense(var)
        assert torch.linalg.matrix_rank(dense) <= params_kept(value, (24, 40)) // 64 or value == 1.0
        back = lowrank.decode(spec, value, (24, 40), lowrank.encode(var).__getitem__)
        assert torch.allclose(back, dense)
