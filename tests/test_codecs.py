"""The codec contract: the registry, and a conformance suite every registered weight codec must pass."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.cli.compress import DEFAULTS  # noqa: E402
from levelsearch.adapters.codecs import (  # noqa: E402
    Codec,
    WeightCodec,
    available_codecs,
    get_codec,
    get_weight_codec,
    register_codec,
)

pytestmark = pytest.mark.llm

BUILT_IN = {"drop", "sparsity", "quant", "joint"}
WEIGHT_CODECS = [n for n in available_codecs() if isinstance(get_codec(n), WeightCodec)]


def test_every_built_in_compression_kind_is_a_registered_codec_under_its_name():
    assert set(available_codecs()) >= BUILT_IN
    for name in available_codecs():
        codec = get_codec(name)
        assert isinstance(codec, Codec) and codec.name == name


def test_the_entry_point_group_declares_the_built_in_codecs():
    assert {ep.name for ep in metadata.entry_points(group="levelsearch.codecs")} >= BUILT_IN


def test_an_unknown_codec_is_a_sentence_listing_the_known_ones():
    with pytest.raises(ValueError, match="available: drop, .*joint, .*quant, sparsity"):
        get_codec("no-such-codec")


def test_a_taken_name_cannot_be_registered_again():
    with pytest.raises(ValueError, match="already registered"):
        register_codec("sparsity", "somewhere:Else")


def test_a_database_of_a_codec_without_variants_is_refused():
    with pytest.raises(ValueError, match="database kind must be one of"):
        get_weight_codec("drop")


@pytest.fixture(scope="module")
def problems(tmp_path_factory, tiny_llama_dir):
    """One small problem per registered codec, built the way ``levelsearch compress`` builds it."""
    model_dir = tiny_llama_dir
    out = {}
    for name in available_codecs():
        codec = get_codec(name)
        settings = {
            **DEFAULTS,
            "model": str(model_dir),
            "method": name,
            "target": codec.example_target,
            "seq_len": 32,
            "calibration_tokens": 128,
            "heldout_tokens": 64,
            "top_k": 16,
            "progress": False,
            "database": str(tmp_path_factory.mktemp(f"db-{name}")),
        }
        out[name] = codec.make_problem(settings)
    return out


@pytest.mark.parametrize("name", WEIGHT_CODECS)
def test_every_variant_keeps_its_level_and_decodes_to_the_weight_it_stands_for(name, problems):
    codec, problem = get_weight_codec(name), problems[name]
    g = torch.Generator().manual_seed(0)
    for unit in (0, len(problem.unit_names) - 1):
        w = problem._dense[unit].to(torch.float32)
        x = torch.randn(256, w.shape[1], generator=g)
        h = 2 * x.T @ x / x.shape[0]
        values = problem.db.values(problem.unit_names[unit])
        variants = codec.make_variants(problem.spec, w, h, values)
        assert len(variants) == len(values)
        for value, var in zip(values, variants):
            assert codec.keeps_level(problem.spec, value, var), (unit, value)
            parts = codec.encode(var)
            back = codec.decode(problem.spec, value, tuple(w.shape), parts.__getitem__)
            dense = codec.dense(var)
            assert torch.equal(back == 0, dense == 0)
            assert torch.allclose(back, dense, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_applying_an_assignment_then_dense_leaves_the_model_bit_identical(name, problems):
    problem = problems[name]
    ids = problem.heldout.tokens[:2]
    with torch.inference_mode():
        before = problem.model(input_ids=ids, use_cache=False).logits.clone()
        weights = {k: v.clone() for k, v in problem.model.state_dict().items()}
        problem.apply(problem.space.sample(np.random.default_rng(0)))
        changed = problem.model(input_ids=ids, use_cache=False).logits.clone()
        problem.apply(None)
        after = problem.model(input_ids=ids, use_cache=False).logits
    assert not torch.equal(before, changed)  # the assignment did compress the live model
    assert torch.equal(before, after)
    assert all(torch.equal(weights[k], v) for k, v in problem.model.state_dict().items())


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_an_export_reloads_to_the_searched_logits(name, problems, tmp_path):
    codec, problem = get_codec(name), problems[name]
    levels = problem.space.sample(np.random.default_rng(1))
    path = codec.export(problem, levels, tmp_path / "model")
    assert codec.verify_export(problem, levels, path) < 1e-4
    problem.apply(None)


@pytest.mark.parametrize("kind", ["llm-drop", "llm-sparsity", "llm-quant", "llm-joint"])
def test_every_llm_problem_lists_the_shared_options_and_refuses_an_unknown_one(kind):
    import inspect

    from levelsearch import make_problem
    from levelsearch.problem import get_problem_factory

    params = inspect.signature(get_problem_factory(kind)).parameters
    assert {"model", "target", "data", "seq_len", "calibration_tokens", "seed", "loaded"} <= set(params)
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    with pytest.raises(ValueError, match="has no parameter 'bogus'"):
        make_problem({"kind": kind, "bogus": 1})


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_codecs_problem_remembers_sequences_full_pool_values_and_layer_states(name, problems):
    from levelsearch import Request

    problem = problems[name]
    rng = np.random.default_rng(5)
    kids = list({k.tobytes(): k for k in (problem.space.sample(rng) for _ in range(8))}.values())[:2]
    assert len(kids) == 2
    problem._seq_kl.clear()
    problem._memo.clear()
    problem.store.clear()
    seq = problem.search_pool.seq_len
    problem.evaluate_many([Request(k, seq, 7) for k in kids])
    before = problem.n_forward_tokens
    problem.evaluate_many([Request(k, 2 * seq, 7) for k in kids])  # the same sequence plus one more
    assert problem.n_forward_tokens - before == 2 * seq  # only the new sequence, for each kid
    full = problem.evaluate_many([Request(k, None, 0) for k in kids])
    assert all(problem.store.has(problem.candidate_keys(k)) for k in kids)
    before = problem.n_forward_tokens
    assert problem.evaluate_many([Request(k, None, 3) for k in kids]) == full  # remembered: no forward pass
    assert problem.n_forward_tokens == before


def test_a_bad_budget_option_is_one_line_before_the_model_loads(tmp_path):
    from levelsearch.adapters.codecs.quant.problem import QuantProblem
    from levelsearch.adapters.weights.problem import WeightLevelProblem

    missing = str(tmp_path / "no-model")  # never read: the budget is checked first
    with pytest.raises(ValueError, match="budget must be 'exact' or 'band', got 'wide'"):
        QuantProblem(missing, budget="wide")
    with pytest.raises(ValueError, match="tol must be a number in"):
        WeightLevelProblem(missing, codec="joint", target=3, tol=-1)
