"""The llm-sparsity and llm-quant problems and their baselines on a tiny random Llama."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.codecs.sparsity.problem import (  # noqa: E402
    SparsityProblem,
    dp_levels,
    owl_levels,
    owl_search,
    random_levels,
)

from levelsearch import Request, available_problems, minimize  # noqa: E402

pytestmark = pytest.mark.llm

TEXT = " ".join(f"the {w} of {v} is {k}." for k, (w, v) in enumerate(zip("abcdefghij" * 30, "klmnopqrst" * 30)))


class ByteTokenizer:
    """Bytes modulo the vocabulary: enough to feed a random model."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [b % 127 + 1 for b in text.encode()]}

    def save_pretrained(self, path: str) -> None:
        (__import__("pathlib").Path(path) / "tokenizer.txt").write_text("bytes modulo 127, plus 1")


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.25,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def common(data_file, tmp):
    return dict(
        loaded=(tiny_llama(), ByteTokenizer()),
        data=data_file,
        database=str(tmp),
        seq_len=16,
        calibration_tokens=256,
        heldout_tokens=128,
        top_k=16,
        chunk_tokens=64,
        progress=False,
    )


@pytest.fixture(scope="module")
def sparse(data_file, tmp_path_factory):
    return SparsityProblem(target=0.5, max_offset=3, **common(data_file, tmp_path_factory.mktemp("db")))


@pytest.fixture(scope="module")
def quant(data_file, tmp_path_factory):
    return QuantProblem(target=3.0, bits=(2, 3, 4), group_size=32, **common(data_file, tmp_path_factory.mktemp("db")))


def test_problems_are_registered_by_entry_point():
    assert {"llm-sparsity", "llm-quant"} <= set(available_problems())


def test_uniform_profile_is_at_the_target_sparsity(sparse):
    assert sparse.space.is_feasible(sparse.uniform_levels())
    assert abs(sparse.average_sparsity(sparse.uniform_levels()) - 0.5) < 1e-3
    assert np.allclose(sparse.profile(sparse.uniform_levels()), 0.5, atol=1e-3)


def test_every_sparsity_baseline_and_search_meets_the_budget_exactly(sparse):
    rng = np.random.default_rng(0)
    exact = sparse.average_sparsity(sparse.uniform_levels())
    found = minimize(
        sparse,
        optimizer="evopress",
        max_evaluations=24,
        seed=0,
        options={"offspring": 4, "steps": [(32, 2), (256, 1)], "start": sparse.uniform_levels()},
    )
    profiles = [
        owl_levels(sparse, 0.1, 5.0, rng),
        owl_search(sparse, fidelity=64)[0],
        dp_levels(sparse),
        random_levels(sparse, n=3, fidelity=32),
        found.best_levels,
    ]
    for lv in profiles:
        assert sparse.space.is_feasible(lv)
        assert sparse.average_sparsity(lv) == exact


def test_search_does_not_end_worse_than_its_uniform_start(sparse):
    start = sparse.uniform_levels()
    found = minimize(
        sparse,
        optimizer="evopress",
        max_evaluations=12,
        seed=1,
        options={"offspring": 4, "steps": [(None, 1)], "start": start},
    )
    assert found.best_value <= sparse.evaluate(start)


def test_a_batch_gives_the_same_values_as_one_by_one(sparse):
    rng = np.random.default_rng(3)
    cands = [sparse.uniform_levels()] + [sparse.space.switch(sparse.uniform_levels(), rng, 2) for _ in range(3)]
    batch = sparse.evaluate_many([Request(c, 64, 5) for c in cands])
    single = [sparse.evaluate(c, 64, 7) * 0 + sparse.evaluate_many([Request(c, 64, 5)])[0] for c in cands]
    assert np.allclose(batch, single, rtol=1e-5, atol=1e-7)


def test_dense_model_is_restored_after_evaluations(sparse):
    sparse.evaluate(sparse.uniform_levels(), 64, 0)
    report = sparse.heldout_report([None, sparse.uniform_levels()])
    assert report[0]["heldout_kl"] < 0.01 * report[1]["heldout_kl"]  # fp16 teacher: not exactly 0


def test_more_sparsity_on_every_layer_costs_more_kl(sparse):
    low = np.maximum(sparse.uniform_levels() - 1, 0)
    high = np.minimum(sparse.uniform_levels() + 1, sparse.space.max_level)
    kl, _ = sparse.score([low, high])
    assert kl[0] < kl[1]


def test_quant_budget_holds_exactly_for_every_searched_profile(quant):
    uni = quant.uniform_levels()
    assert uni is not None and quant.average_bits(uni) == 3.0
    found = minimize(
        quant,
        optimizer="evopress",
        max_evaluations=16,
        seed=0,
        options={"offspring": 4, "steps": [(64, 1)], "start": uni},
    )
    for lv in (found.best_levels, dp_levels(quant), random_levels(quant, n=3, fidelity=32)):
        assert quant.space.is_feasible(lv)
        assert quant.average_bits(lv) == 3.0


def test_fractional_bit_target_is_exact_within_groups_of_equal_size(quant, data_file, tmp_path):
    q = QuantProblem(target=2.5, bits=(2, 3, 4), group_size=32, ties="none", **common(data_file, quant.db.root))
    assert q.uniform_levels() is None
    lv = q.space.sample(np.random.default_rng(0))
    assert q.average_bits(lv) == 2.5
    for label in q.space.group_labels:
        units = q.space.group_units(label)
        assert q.profile(lv)[units].mean() == 2.5


def test_a_band_budget_keeps_the_average_within_the_band(quant, data_file):
    q = QuantProblem(
        target=2.7, bits=(2, 3, 4), group_size=32, budget="band", tol=0.05, **common(data_file, quant.db.root)
    )
    rng = np.random.default_rng(1)
    for _ in range(5):
        lv = q.space.switch(q.space.sample(rng), rng, 3)
        assert 2.65 - 1e-9 <= q.average_bits(lv) <= 2.7 + 1e-9


def test_an_unreachable_exact_bit_target_says_to_use_a_band(quant, data_file):
    with pytest.raises(ValueError, match="band"):
        QuantProblem(target=2.7, bits=(2, 3, 4), group_size=32, **common(data_file, quant.db.root))


def test_lower_bit_profiles_cost_more_kl(quant):
    kl, _ = quant.score([np.full(quant.space.n_units, 2), np.full(quant.space.n_units, 1)])
    assert kl[0] < kl[1]  # 4 bits everywhere beats 3 bits everywhere


@pytest.mark.parametrize("which", ["sparse", "quant"])
def test_export_reloads_to_the_same_logits(which, sparse, quant, tmp_path):
    from levelsearch.adapters.weights.problem import export_levels, verify_levels_export

    problem = sparse if which == "sparse" else quant
    lv = problem.space.switch(problem.space.sample(np.random.default_rng(0)), np.random.default_rng(1), 2)
    path = export_levels(problem, lv, tmp_path / "out")
    assert verify_levels_export(problem, lv, path) < 1e-4
    meta = __import__("json").loads((path / "levelsearch_compression.json").read_text())
    assert [u["level"] for u in meta["units"].values()] == problem.member_levels(lv).tolist()


@pytest.mark.parametrize(("method", "target"), [("sparsity", "0.6"), ("quant", "2.5")])
def test_compress_method_writes_results_profile_and_a_model_that_reloads(method, target, tmp_path, monkeypatch):
    from levelsearch.adapters.model.models import save_model
    from test_adapters_drop import byte_tokenizer
    from test_adapters_drop import tiny_llama as drop_llama

    from levelsearch.cli import main

    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "llama"
    save_model(drop_llama(n_layers=2), byte_tokenizer(), model_dir)
    out = tmp_path / "run"
    small = [
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
        "--generations",
        "2",
        "--quiet",
    ]
    rc = main(
        ["compress", "--model", str(model_dir), "--method", method, "--target", target, "--out", str(out), *small]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    expected = {"evopress", "uniform", "owl"} if method == "sparsity" else {"evopress", "random"}
    expected |= {"dp", "dp-fisher"}
    assert set(res["methods"]) == expected
    for m in res["methods"].values():
        assert m["feasible"] and abs(m["average"] - float(target)) < 1e-3
    assert res["export"]["max_abs_logit_diff"] < 1e-4
    assert (out / "profile.png").stat().st_size > 0
    meta = json.loads((out / "model" / "levelsearch_compression.json").read_text())
    key = "sparsity" if method == "sparsity" else "bits"
    assert [u[key] for u in meta["units"].values()] == res["methods"]["evopress"]["profile"]


@pytest.fixture(scope="module")
def joint(data_file, tmp_path_factory):
    from levelsearch.adapters.codecs.joint.problem import JointProblem

    return JointProblem(
        target=3.0,
        sparsities=(0.0, 0.5),
        bits=(2, 4, 8),
        group_size=32,
        tol=0.1,
        **common(data_file, tmp_path_factory.mktemp("db")),
    )


def test_joint_levels_keep_their_pruned_zeros_after_quantization(joint):
    for name in joint.unit_names:
        for level, (zeros, bits) in enumerate(joint.db.values(name)):
            w = joint.db.weight(name, level)
            assert int((w == 0).sum()) >= zeros
            for g in range(0, w.shape[1], 32):
                assert max(len(torch.unique(w[r, g : g + 32])) for r in range(w.shape[0])) <= 2**bits


def test_every_joint_profile_stays_within_the_memory_band(joint):
    from levelsearch.adapters.codecs.joint.problem import joint_dp_levels

    found = minimize(
        joint,
        optimizer="evopress",
        max_evaluations=12,
        seed=0,
        options={"offspring": 4, "steps": [(64, 1)], "start": "random", "init_candidates": 2},
    )
    for lv in (found.best_levels, joint_dp_levels(joint), random_levels(joint, n=3, fidelity=32)):
        assert 2.9 - 1e-9 <= joint.average_bits(lv) <= 3.0 + 1e-9


def test_joint_dp_prefers_the_lower_error_mix_to_the_worst_feasible_one(joint):
    from levelsearch.adapters.codecs.joint.problem import joint_dp_levels

    err = np.nan_to_num(joint.unit_errors(), nan=0.0)
    dp = joint_dp_levels(joint)
    rng = np.random.default_rng(0)
    randoms = [joint.space.sample(rng) for _ in range(5)]
    total = lambda lv: err[np.arange(len(lv)), lv].sum()  # noqa: E731
    assert total(dp) <= min(total(r) for r in randoms)


def test_owl_gives_the_layer_with_more_outliers_the_lower_sparsity(sparse, monkeypatch):
    monkeypatch.setattr(sparse.db, "statistics", lambda name: {0: {"5": 0.2}, 1: {"5": 0.01}})
    lv = owl_levels(sparse, 0.1, 5.0, np.random.default_rng(0))
    prof, layer = sparse.profile(lv), sparse.unit_layer
    zeros = lambda i: (prof[layer == i] * sparse.numel[layer == i]).sum() / sparse.numel[layer == i].sum()  # noqa: E731
    assert zeros(0) < 0.5 < zeros(1)
