"""Held-out KL statistics (mean, median, p99, p99.9 of per-token KL, top-1 agreement) against a direct
full-softmax computation on a tiny random Llama."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.scoring.fitness import kl_statistics  # noqa: E402
from test_sparsity_quant import ByteTokenizer, common, tiny_llama  # noqa: E402

pytestmark = pytest.mark.llm

KEYS = ("heldout_kl", "heldout_kl_median", "heldout_kl_p99", "heldout_kl_p99_9", "heldout_top1")


def _problem(data_file, tmp, top_k):
    settings = {**common(data_file, tmp), "top_k": top_k, "loaded": (tiny_llama(), ByteTokenizer())}
    return QuantProblem(target=3.0, bits=(2, 3, 4), group_size=32, **settings)


@pytest.fixture(scope="module")
def full(data_file, tmp_path_factory):
    """Teacher keeps the whole vocabulary (128 tokens): the per-token KL is the full KL."""
    return _problem(data_file, tmp_path_factory.mktemp("db"), 128)


@pytest.fixture(scope="module")
def topk(data_file, tmp_path_factory):
    return _problem(data_file, tmp_path_factory.mktemp("db"), 8)


@torch.inference_mode()
def _direct(problem, levels):
    """Full-softmax log-probabilities of the dense and the compressed model over the held-out set."""
    ids = problem.heldout.tokens
    problem.apply(None)
    lp = torch.log_softmax(problem.model(input_ids=ids, use_cache=False).logits.double(), -1)
    problem.apply(levels)
    try:
        lq = torch.log_softmax(problem.model(input_ids=ids, use_cache=False).logits.double(), -1)
    finally:
        problem.apply(None)
    return lp, lq


def _levels(problem):
    rng = np.random.default_rng(3)
    return problem.space.switch(problem.uniform_levels(), rng, 3)


def test_heldout_statistics_match_a_full_softmax_computation(full):
    lv = _levels(full)
    lp, lq = _direct(full, lv)
    kl = (lp.exp() * (lp - lq)).sum(-1).numpy()
    top = (lp.argmax(-1) == lq.argmax(-1)).numpy()
    want = kl_statistics(kl, top)
    got = full.heldout_report([lv])[0]
    for key in KEYS:
        assert got[key] == pytest.approx(want[key.removeprefix("heldout_")], rel=2e-2, abs=1e-5), key
    assert 0.0 < got["heldout_kl_median"] < got["heldout_kl_p99"] <= got["heldout_kl_p99_9"]
    assert 0.0 < got["heldout_top1"] <= 1.0


def test_per_token_kl_is_the_top_k_plus_tail_bin_kl(topk):
    lv = _levels(topk)
    lp, lq = _direct(topk, lv)
    top_lp, idx = lp.topk(8, dim=-1)
    lq_k = lq.gather(-1, idx)
    p_tail = (1 - top_lp.exp().sum(-1)).clamp(min=1e-300)
    q_tail = (1 - lq_k.exp().sum(-1)).clamp(min=1e-12)
    binned = (top_lp.exp() * (top_lp - lq_k)).sum(-1) + p_tail * (p_tail.log() - q_tail.log())
    full_kl = (lp.exp() * (lp - lq)).sum(-1)
    kl, same = topk.heldout_tokens([lv])[0]
    assert kl.shape == tuple(topk.heldout.tokens.shape) == same.shape
    np.testing.assert_allclose(kl, binned.clamp(min=0).numpy(), rtol=2e-2, atol=1e-4)
    assert (kl <= full_kl.numpy() + 1e-4).all()  # merging the tail into one bin lowers a KL
    assert (same == (lp.argmax(-1) == lq.argmax(-1)).numpy()).mean() > 0.99  # ties aside


def test_the_dense_model_reports_zero_kl_and_full_agreement(full):
    dense = full.heldout_report([full.dense_candidate()])[0]
    assert {k: dense[k] for k in KEYS} == {**{k: 0.0 for k in KEYS}, "heldout_top1": 1.0}
    assert math.isfinite(dense["heldout_ppl"])


def test_the_mean_is_the_searched_mean_and_unchanged_by_the_statistics(full):
    lv = _levels(full)
    kl, _ = full.score([lv], "heldout")
    assert full.heldout_report([lv])[0]["heldout_kl"] == pytest.approx(float(kl[0]), rel=1e-9)


def test_kl_statistics_use_linear_interpolation_between_order_statistics():
    v = np.arange(1001, dtype=float)  # 0..1000
    s = kl_statistics(v, v % 2 == 0)
    assert (s["kl"], s["kl_median"], s["kl_p99"], s["kl_p99_9"]) == (500.0, 500.0, 990.0, 999.0)
    assert s["top1"] == pytest.approx(501 / 1001)
    with pytest.raises(ValueError, match="positions"):
        kl_statistics([1.0, 2.0], [True])


def test_the_printed_summary_shows_the_statistics_beside_perplexity(capsys):
    from levelsearch.adapters.cli.compress import _print_summary

    m = {"heldout_ppl": 18.1, "heldout_kl": 0.1, "heldout_kl_median": 0.05, "heldout_kl_p99": 0.9, "heldout_top1": 0.91}
    _print_summary({"dense": {"heldout_ppl": 17.5}, "methods": {"evopress": m}})
    line = capsys.readouterr().out.splitlines()[1]
    assert "ppl 18.10" in line and "KL 0.1000" in line and "median 0.0500" in line
    assert "p99 0.900" in line and "top-1 91.0%" in line


def test_a_candidate_measured_before_is_not_run_again_on_the_heldout_set(topk):
    import copy

    lv = _levels(topk)
    rng = np.random.default_rng(9)
    seen = {tuple(topk.candidate_keys(lv))} | set(topk._heldout)
    other = next(c for c in (topk.space.sample(rng) for _ in range(50)) if tuple(topk.candidate_keys(c)) not in seen)
    first = topk.heldout_report([lv])
    before = topk.n_forward_tokens
    again = topk.heldout_report([lv, lv])  # twice in one call, and known from before
    assert topk.n_forward_tokens == before and again == [first[0], first[0]]
    moved = copy.copy(topk)  # a curve's next target: the same problem at another budget shares the memory
    assert moved.heldout_report([lv])[0] == first[0] and moved.n_forward_tokens == before
    new = topk.heldout_report([other, other])
    assert topk.n_forward_tokens - before == topk.heldout.n_tokens and new[0] == new[1]  # one pass for both


def test_the_teacher_pass_counts_its_forward_tokens(data_file, tmp_path):
    p = _problem(data_file, tmp_path / "db", 8)
    before = p.n_forward_tokens
    p.teacher("heldout")
    assert p.n_forward_tokens - before == p.heldout.n_tokens
    p.teacher("heldout")  # computed once
    assert p.n_forward_tokens - before == p.heldout.n_tokens


def test_chunk_statistics_are_the_heldout_statistics_of_the_positions_asked(topk):
    lv = _levels(topk)
    kl, top = topk.heldout_tokens([lv])[0]
    first = topk.heldout.seq_len // 2
    before = topk.n_forward_tokens
    got = topk.chunk_statistics(lv, topk.heldout.tokens.numpy(), first)
    want = kl_statistics(kl[:, first:-1], top[:, first:-1])
    assert got == pytest.approx({**want, "positions": kl[:, first:-1].size})
    assert topk.n_forward_tokens - before == 2 * topk.heldout.n_tokens  # the dense pass and the candidate's
    assert topk.token_set("heldout") is topk.heldout and not topk.has_teacher("chunks")
    with pytest.raises(ValueError, match="first < seq_len - 1"):
        topk.chunk_statistics(lv, topk.heldout.tokens.numpy(), topk.heldout.seq_len - 1)
