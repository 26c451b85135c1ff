"""Sub-block dropping on a tiny randomly initialised Llama (seconds), plus one real SmolLM2 check (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.drop.heuristics import run_heuristics  # noqa: E402
from levelsearch.adapters.codecs.drop.problem import DropProblem, drop_space  # noqa: E402
from levelsearch.adapters.model.data import TokenSet, split_documents  # noqa: E402
from levelsearch.adapters.model.models import map_layers  # noqa: E402
from levelsearch.adapters.run.export import export_dropped, verify_export  # noqa: E402
from levelsearch.adapters.run.schedules import schedule_options  # noqa: E402

from levelsearch import Request  # noqa: E402

pytestmark = pytest.mark.llm


def byte_tokenizer():
    """A 257-token byte-level tokenizer built in memory (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def tiny_llama(n_layers: int = 4, seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=257,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module")
def problem():
    return DropProblem(
        "tiny-llama",
        target=0.5,
        loaded=(tiny_llama(), byte_tokenizer()),
        seq_len=32,
        calibration_tokens=256,
        heldout_tokens=128,
        top_k=32,
        chunk_tokens=64,
    )


def reference_logits(prob: DropProblem, ids, levels):
    """Logits of the plain HF forward with forward hooks zeroing the dropped sub-blocks' outputs."""
    handles = []
    for layer, (a, m) in enumerate(prob.layer_keys(levels)):
        if a:
            handles.append(
                prob.map.attn[layer].register_forward_hook(lambda mod, i, o: (torch.zeros_like(o[0]), *o[1:]))
            )
        if m:
            handles.append(prob.map.mlp[layer].register_forward_hook(lambda mod, i, o: torch.zeros_like(o)))
    prob.runner.set_dropped([])
    try:
        with torch.inference_mode():
            return prob.model(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def runner_logits(prob: DropProblem, ids, levels):
    out = []
    kw = prob.runner.layer_kwargs(ids)
    prob.runner.run_shared(
        ids, [prob.layer_keys(levels)], prob._layer_fn(kw), lambda h, c: out.append(prob.runner.logits(h))
    )
    prob.runner.set_dropped([])
    return out[0]


def test_map_layers_finds_attention_and_mlp_of_each_llama_layer(problem):
    lm = map_layers(problem.model)
    assert lm.n_layers == 4
    assert all(type(a).__name__ == "LlamaAttention" for a in lm.attn)
    assert all(type(m).__name__ == "LlamaMLP" for m in lm.mlp)


def test_map_layers_rejects_a_model_without_attention_and_mlp():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])

    with pytest.raises(ValueError, match="unsupported architecture"):
        map_layers(Odd())


def test_dense_layer_by_layer_run_equals_the_model_forward(problem):
    ids = problem.calibration.tokens[:2]
    levels = np.zeros(problem.space.n_units, dtype=np.int64)
    torch.testing.assert_close(runner_logits(problem, ids, levels), reference_logits(problem, ids, levels))


def test_dropped_sub_blocks_equal_zeroing_their_outputs(problem):
    ids = problem.calibration.tokens[:2]
    levels = np.array([1, 0, 0, 1, 1, 1, 0, 0])
    torch.testing.assert_close(runner_logits(problem, ids, levels), reference_logits(problem, ids, levels))


def test_per_type_budget_drops_k_attention_and_k_mlp(problem):
    lv = problem.space.sample(np.random.default_rng(1))
    assert lv[0::2].sum() == 2 and lv[1::2].sum() == 2


def test_target_outside_zero_one_is_rejected():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        drop_space(30, 1.5)


def test_target_too_small_to_drop_anything_is_rejected():
    with pytest.raises(ValueError, match="drops no"):
        drop_space(4, 0.1)


def test_whole_block_space_has_one_unit_per_layer():
    sp = drop_space(30, 0.25, whole_blocks=True)
    assert sp.n_units == 30 and sp.sample(np.random.default_rng(0)).sum() == 7


def test_shared_batch_evaluation_equals_one_by_one(problem):
    rng = np.random.default_rng(0)
    parent = problem.space.sample(rng)
    kids = [problem.space.switch(parent, rng, 1) for _ in range(5)]
    batch = problem.evaluate_many([Request(k, 64, 3) for k in kids])
    single = [problem.evaluate(k, 64, 3) for k in kids]
    np.testing.assert_allclose(batch, single, rtol=1e-6)


def test_full_pool_value_does_not_depend_on_sample_or_cached_states(problem):
    lv = problem.space.sample(np.random.default_rng(5))
    first = problem.evaluate(lv, None, 1)
    problem._memo.clear()
    problem.store.clear()
    fresh = problem.evaluate(lv, None, 2)
    assert first == pytest.approx(fresh, rel=1e-6)


def test_a_neighbour_reusing_stored_states_gets_its_fresh_value(problem):
    rng = np.random.default_rng(7)
    a = problem.space.sample(rng)
    b = problem.space.switch(a, rng, 1)
    problem.evaluate(a)  # stores a's layer states
    reused = problem.evaluate(b)
    problem._memo.clear()
    problem.store.clear()
    assert reused == pytest.approx(problem.evaluate(b), rel=1e-6)


def test_dense_model_has_near_zero_kl_and_dropping_raises_it(problem):
    dense = np.zeros(problem.space.n_units, dtype=np.int64)
    kl, nll = problem.score([dense, problem.space.sample(np.random.default_rng(0))], with_nll=True)
    assert kl[0] < 1e-3 < kl[1]
    assert np.all(np.isfinite(nll))


def test_same_seed_draws_the_same_minibatch_and_too_many_tokens_is_an_error():
    ts = TokenSet(torch.zeros(8, 16, dtype=torch.long), "calibration")
    np.testing.assert_array_equal(ts.batch(48, 3), ts.batch(48, 3))
    with pytest.raises(ValueError, match="holds 128 tokens but 200"):
        ts.batch(200, 0)


def test_document_split_is_disjoint_and_covers_all_documents():
    docs = [f"doc {i}" for i in range(20)]
    cal, held = split_documents(docs, 0.25, seed=0)
    assert not set(cal) & set(held) and sorted(cal + held) == sorted(docs) and len(held) == 5


def test_schedule_larger_than_calibration_pool_is_rejected():
    with pytest.raises(ValueError, match="calibration pool holds 4096"):
        schedule_options("drop", 4096)


def test_every_heuristic_returns_a_feasible_assignment(problem):
    out = run_heuristics(problem, n_tokens=64)
    assert set(out) == {"shortgpt", "shortgpt-sub", "angular", "single-kl", "random"}
    for h in out.values():
        assert problem.space.is_feasible(h["levels"])


def test_shortgpt_drops_whole_layers(problem):
    lv = run_heuristics(problem, ["shortgpt"], n_tokens=64)["shortgpt"]["levels"]
    np.testing.assert_array_equal(lv[0::2], lv[1::2])


def test_exported_directory_loads_and_gives_the_searched_logits(problem, tmp_path):
    lv = problem.space.sample(np.random.default_rng(2))
    path = export_dropped(problem, lv, tmp_path / "model")
    assert verify_export(problem, lv, path) < 1e-4
    meta = json.loads((path / "levelsearch_compression.json").read_text())
    assert meta["levels"] == lv.tolist()


@pytest.mark.slow
def test_real_smollm2_dense_heldout_perplexity_is_finite_and_below_100():
    prob = DropProblem("smollm2", calibration_tokens=256, heldout_tokens=1024, top_k=64)
    ppl = prob.heldout_report([np.zeros(prob.space.n_units, dtype=np.int64)])[0]["heldout_ppl"]
    assert math.isfinite(ppl) and ppl < 100


def test_dense_heldout_perplexity_from_the_teacher_pass_equals_a_scored_pass(problem):
    dense = np.zeros(problem.space.n_units, dtype=np.int64)
    _, nll = problem.score([dense], "heldout", with_nll=True)
    assert problem.heldout_report([dense])[0]["heldout_ppl"] == pytest.approx(math.exp(nll[0]), rel=1e-5)


def test_final_step_keeps_the_remembered_parents_layer_states(problem):
    rng = np.random.default_rng(11)
    parent = problem.space.sample(rng)
    kid = problem.space.switch(parent, rng, 1)
    problem.evaluate_many(
        [
            Request(parent, None, 1),
            Request(problem.space.sample(rng), None, 1),
            Request(problem.space.sample(rng), None, 1),
        ]
    )  # remembered, states not kept
    problem.store.clear()
    problem.evaluate_many([Request(parent, None, 2), Request(kid, None, 2)])
    assert problem.store.has(tuple(problem.layer_keys(parent))) and problem.store.has(tuple(problem.layer_keys(kid)))


def test_a_survivor_of_a_nested_minibatch_pays_only_for_its_new_sequences(problem):
    from levelsearch import Request

    rng = np.random.default_rng(5)
    kids = list({k.tobytes(): k for k in (problem.space.sample(rng) for _ in range(6))}.values())[:3]
    assert len(kids) == 3
    problem._seq_kl.clear()
    problem._memo.clear()
    seq = problem.calibration.seq_len
    small = problem.evaluate_many([Request(k, 2 * seq, 7) for k in kids])  # 2 sequences of seed 7's order
    before = problem.n_forward_tokens
    big = problem.evaluate_many([Request(k, 4 * seq, 7) for k in kids])  # the same 2 plus 2 more
    assert problem.n_forward_tokens - before == 3 * 2 * seq  # only the 2 new sequences, for each kid
    # the values are those of a fresh evaluation on the 4 sequences
    problem._seq_kl.clear()
    fresh = problem.evaluate_many([Request(k, 4 * seq, 7) for k in kids])
    assert np.allclose(big, fresh, rtol=1e-6) and not np.allclose(small, big)


def test_unit_errors_are_the_single_drop_kls_and_level_0_costs_nothing(problem):
    est = problem.unit_errors()
    assert est.shape == (problem.space.n_units, 2)
    assert np.all(est[:, 0] == 0) and np.all(est[:, 1] > 0)
    assert np.allclose(est[:, 1], problem.single_drop_kl(problem.calibration.seq_len, 0))
