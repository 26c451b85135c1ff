"""Fisher-weighted error estimates (``adapters/fisher.py``) and the weight problems' ``estimates`` option."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs import get_codec  # noqa: E402
from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.model.units import set_unit_weight, unit_weight  # noqa: E402
from levelsearch.adapters.scoring.fisher import fisher_stats  # noqa: E402
from test_sparsity_quant import common, tiny_llama  # noqa: E402

pytestmark = pytest.mark.llm


def _kl_per_token(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits.float().log_softmax(-1)


@pytest.mark.parametrize("kind", ["hybrid", "diag", "kfac"])
def test_the_estimate_predicts_the_kl_of_a_small_change(kind):
    model = tiny_llama()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 128, (48, 16), generator=gen)
    units = [model.model.layers[0].mlp.down_proj, model.model.layers[1].self_attn.q_proj]
    st = fisher_stats(model, units, tokens, kind=kind, samples=8, seed=0)
    dense = _kl_per_token(model, tokens)
    for i, mod in enumerate(units):
        w = unit_weight(mod).detach().clone()
        delta = 0.02 * w.abs().mean() * torch.randn(w.shape, generator=gen)
        set_unit_weight(mod, w + delta)
        moved = _kl_per_token(model, tokens)
        set_unit_weight(mod, w)
        kl = float((dense.exp() * (dense - moved)).sum(-1).mean())
        est = st.estimate(i, delta)
        assert 0.75 < est / kl < 1.33, (kind, i, est, kl)


def test_the_estimates_are_deterministic_given_the_seed():
    model = tiny_llama()
    tokens = torch.randint(1, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    units = [model.model.layers[0].self_attn.k_proj]
    requires = [p.requires_grad for p in model.parameters()]
    delta = 0.01 * torch.randn(unit_weight(units[0]).shape, generator=torch.Generator().manual_seed(1))
    for kind in ("hybrid", "kfac", "diag"):
        a, b, c = (fisher_stats(model, units, tokens, kind=kind, seed=s).estimate(0, delta) for s in (3, 3, 4))
        assert a == b != c
    assert [p.requires_grad for p in model.parameters()] == requires  # left as they were


def test_a_weight_problem_counts_the_fisher_tokens_and_offers_dp_fisher(data_file, tmp_path):
    p = QuantProblem(target=3.0, bits=(2, 3, 4), group_size=32, **common(data_file, tmp_path / "db"))
    assert p.estimates == "fisher"
    before = p.n_forward_tokens
    est = p.unit_errors()
    assert p.n_forward_tokens - before == 3 * p.search_pool.n_tokens == p.fisher_tokens
    assert est.shape == p.layer_errors().shape and np.all(est[np.isfinite(est)] >= 0)
    # fewer bits, larger estimate, for every unit
    assert np.all(np.diff(est, axis=1) < 0)
    base = get_codec("quant").run_baselines(p, {"seed": 0, "heuristic_tokens": 64, "random_n": 2}, None, {})
    assert {"uniform", "dp", "dp-fisher"} <= set(base)
    assert p.space.is_feasible(base["dp-fisher"]["levels"])
    assert base["dp-fisher"]["forward_tokens"] == p.fisher_tokens


def test_layer_estimates_are_the_database_errors_and_cost_nothing(data_file, tmp_path):
    p = QuantProblem(target=3.0, bits=(2, 3, 4), group_size=32, estimates="layer", **common(data_file, tmp_path / "db"))
    before = p.n_forward_tokens
    assert np.array_equal(p.unit_errors(), p.layer_errors(), equal_nan=True)
    assert p.n_forward_tokens == before
    base = get_codec("quant").run_baselines(p, {"seed": 0, "heuristic_tokens": 64, "random_n": 2}, None, {})
    assert "dp-fisher" not in base


def test_an_unknown_estimate_kind_is_one_line(data_file, tmp_path):
    with pytest.raises(ValueError, match="estimates 'hessian': choose one of fisher, layer"):
        QuantProblem(target=3.0, estimates="hessian", **common(data_file, tmp_path / "db"))


def test_a_quant_run_with_the_fisher_prior_resumes_to_the_uninterrupted_result(tiny_llama_dir, tmp_path, monkeypatch):
    from levelsearch.adapters.cli.compress import run_compress

    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    settings = dict(
        model=str(tiny_llama_dir),
        method="quant",
        target=3,
        seq_len=32,
        calibration_tokens=128,
        heldout_tokens=64,
        top_k=16,
        heuristic_tokens=64,
        offspring=4,
        progress=False,
        export=False,
        database=str(tmp_path / "db"),
    )
    whole = run_compress({**settings, "generations": 3, "out": str(tmp_path / "whole")})
    run_compress({**settings, "generations": 1, "out": str(tmp_path / "parts")})
    resumed = run_compress({**settings, "generations": 3, "out": str(tmp_path / "parts")})
    a, b = whole["methods"]["evopress"], resumed["methods"]["evopress"]
    assert b["replayed_evaluations"] > 0
    assert a["levels"] == b["levels"] and a["calibration_kl"] == b["calibration_kl"]
    assert "dp-fisher" in whole["methods"]
