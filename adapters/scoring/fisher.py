"""Fisher-weighted per-unit error estimates of a weight codec's variants (the optimizer's prior, ``dp-fisher``).

To second order, the KL per token from the dense model to one whose unit holds ``W + ΔW`` is
``½ · vec(ΔW)ᵀ F vec(ΔW)``, where ``F`` is the Fisher information of the dense model's own predictive
distribution (the Hessian of that KL at ``ΔW = 0``). Three approximations of ``F`` restricted to one unit,
with ``x`` the unit's input and ``g`` the gradient at its output, per token:

- ``"diag"``: the diagonal of ``F``, ``½ · Σ F ⊙ ΔW²``: each weight's change weighed by how much the
  predictions depend on it, the changes taken as independent;
- ``"kfac"``: ``E[(g gᵀ) ⊗ (x xᵀ)] ≈ diag(E[g²]) ⊗ E[x xᵀ]``, so ``½ · Σ_o E[g_o²] · (ΔW A ΔWᵀ)_oo`` with
  ``A = E[x xᵀ]``: it keeps the input correlations that SparseGPT's and GPTQ's updates exploit (``A`` is the
  layer Hessian they compensate with) but loses each weight's own scale within a row;
- ``"hybrid"`` (the default): both, ``½ · Σ_o uₒ C uₒᵀ`` with ``uₒ = ΔWₒ ⊙ √Fₒ`` and ``C`` the correlation
  matrix of the unit's inputs (``A`` normalised to a unit diagonal): the exact diagonal, K-FAC's correlations.
  It equals ``"diag"`` when the changes are independent noise and follows ``"kfac"`` when they are correlated.

Both are estimated without bias from one backward pass per sequence and label sample: labels ``y_t`` are
drawn from the model at every position, and the gradient of ``Σ_t log p(y_t)`` at a unit's output (or
weight) squares to the sum of the per-position squares in expectation (a position's gradient has mean
zero given the inputs, so cross terms vanish). The cost: one forward and one backward pass (counted as
two forwards) per sequence and sample.

Measured on SmolLM2-135M (``bench/fisher_prior.py``, 4,096 calibration tokens, 12,288 token-equivalents), the
calibration KL of dp on each: 3 bits, diag 0.684, kfac 0.817, hybrid 0.682 (uniform 0.882, dp on the
database's layer errors 1.084); 70% sparsity, diag 1.486, kfac 1.361 (OWL 1.632, dp on layer errors 1.720).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..model.experts import ExpertUnit, capture_expert_inputs
from ..model.units import unit_weight

__all__ = ["FISHER_KINDS", "FisherStats", "fisher_stats", "fisher_estimates"]

#: the approximations of the Fisher :func:`fisher_estimates` takes
FISHER_KINDS = ("hybrid", "kfac", "diag")


class FisherStats:
    """Per unit, per token, on the CPU: ``diag`` (the diagonal Fisher, ``out × in``) for ``"diag"`` and
    ``"hybrid"``; ``a`` (``in × in``, one tensor shared by units that read the same input): ``E[x xᵀ]`` for
    ``"kfac"``, its correlation matrix for ``"hybrid"``; ``g2`` (``E[g_o²]``, ``out``) for ``"kfac"``."""

    def __init__(
        self, kind: str, g2: list[torch.Tensor], a: list[torch.Tensor | None], diag: list[torch.Tensor]
    ) -> None:
        self.kind, self.g2, self.a, self.diag = kind, g2, a, diag

    def estimate(self, i: int, delta: torch.Tensor) -> float:
        """The KL estimate of unit ``i`` changed by ``delta`` (``out × in``)."""
        a = self.a[i] if self.a else None
        if a is None:  # "diag", or an embedding (its input is token ids: no correlations)
            return 0.5 * float((self.diag[i] * delta.square()).sum())
        if self.kind == "hybrid":
            u = delta * self.diag[i].sqrt()
            return 0.5 * float(((u @ a) * u).sum())  # a: the input correlations here
        return 0.5 * float((self.g2[i] * ((delta @ a) * delta).sum(1)).sum())


def fisher_stats(
    model: Any,
    modules: list[Any],
    tokens: torch.Tensor,
    *,
    kind: str = "hybrid",
    samples: int = 1,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FisherStats:
    """:class:`FisherStats` of ``modules`` (units of ``model``) on ``tokens`` (``n_seq × len``), per token.

    Deterministic given ``seed`` (labels drawn by a seeded generator). ``progress`` is called with the
    number of sequences done."""
    experts = _check_units(kind, modules)
    gen = torch.Generator().manual_seed(int(seed))  # labels drawn on the CPU: the same on every device
    leaves, leaf_of = _leaves(modules)
    dev = leaves[0].device
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in leaves:
        p.requires_grad_(True)
    acc = _Sums(kind, modules, dev)
    watched = [i for i, m in enumerate(modules) if not isinstance(m, ExpertUnit)] if kind != "diag" else []
    handles = [modules[i].register_forward_hook(acc.hook(i)) for i in watched]
    expert_hook = {id(m): acc.hook(i) for i, m in enumerate(modules) if isinstance(m, ExpertUnit)}
    capture = [model] if kind != "diag" else []
    try:
        for s_i in range(tokens.shape[0]):
            acc.seen.clear()
            with capture_expert_inputs(capture, experts, lambda u, x: expert_hook[id(u)](None, (x,), None)):
                logits = model(input_ids=tokens[s_i : s_i + 1].to(dev)).logits
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            wrt = acc.outs if kind == "kfac" else leaves
            for s in range(samples):
                y = torch.multinomial(logp.detach().exp().cpu(), 1, generator=gen).to(dev)
                grads = torch.autograd.grad(logp.gather(1, y).sum(), wrt, retain_graph=s < samples - 1)
                if kind != "kfac":
                    grads = tuple(_unit_grad(grads[leaf_of[i]], m) for i, m in enumerate(modules))
                acc.add(grads)
            if progress is not None:
                progress(s_i + 1)
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
    return acc.result(tokens.numel(), samples)


def _check_units(kind: str, modules: list[Any]) -> list[Any]:
    """The expert units of ``modules``, after checking that ``kind`` is known and takes these units."""
    if kind not in FISHER_KINDS:
        raise ValueError(f"Fisher approximation {kind!r}: choose one of {', '.join(FISHER_KINDS)}")
    if kind == "kfac" and any(isinstance(m, torch.nn.Embedding) for m in modules):
        raise ValueError("the kfac Fisher approximation takes linear units only, not an embedding")
    experts = [m for m in modules if isinstance(m, ExpertUnit)]
    if kind == "kfac" and experts:
        raise ValueError("the kfac Fisher approximation takes module units only, not experts; use hybrid or diag")
    return experts


def _leaves(modules: list[Any]) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct parameters the gradient is taken for, and each unit's index among them (an expert's weight
    is a slice of a fused parameter: the gradient is taken for the parameter, then sliced)."""
    leaf_index: dict[int, int] = {}
    leaves: list[torch.Tensor] = []
    for m in modules:
        p = m.param if isinstance(m, ExpertUnit) else m.weight
        if id(p) not in leaf_index:
            leaf_index[id(p)] = len(leaves)
            leaves.append(p)
    return leaves, [leaf_index[id(m.param if isinstance(m, ExpertUnit) else m.weight)] for m in modules]


class _Sums:
    """What :func:`fisher_stats` sums over sequences and label samples: the squared gradients (``g2`` at a unit's
    output for ``"kfac"``, ``diag`` at its weight otherwise) and the input products ``a`` (one per distinct
    input: q/k/v read one, gate/up one), filled by forward hooks (:meth:`hook`)."""

    def __init__(self, kind: str, modules: list[Any], dev: Any) -> None:
        self.kind = kind
        self.shapes = [tuple(unit_weight(m).shape) for m in modules]  # out × in
        self.need_a, need_diag = kind in ("kfac", "hybrid"), kind in ("diag", "hybrid")
        self.g2 = [torch.zeros(s[0], device=dev) for s in self.shapes] if kind == "kfac" else []
        self.diag = [torch.zeros(s, device=dev) for s in self.shapes] if need_diag else []
        self.a: list[torch.Tensor] = []
        self.a_of = [-1] * len(modules)
        self.outs: list[Any] = [None] * len(modules)
        self.seen: dict[tuple[int, tuple[int, ...]], int] = {}  # this forward: input storage → its A index
        self.dev = dev

    def hook(self, i: int) -> Any:
        """The forward hook of unit ``i``: keeps its output (``"kfac"``) and adds its input's ``xᵀx``."""

        def fn(_mod: Any, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if self.kind == "kfac":
                self.outs[i] = out
            if not self.need_a or isinstance(_mod, torch.nn.Embedding):  # an embedding's input is token ids
                return
            x = inp[0]
            key = (x.data_ptr(), tuple(x.shape))
            if key in self.seen:
                self.a_of[i] = self.seen[key]
                return
            if self.a_of[i] < 0:
                self.a.append(torch.zeros(self.shapes[i][1], self.shapes[i][1], device=self.dev))
                self.a_of[i] = len(self.a) - 1
            self.seen[key] = self.a_of[i]
            x2 = x.detach().reshape(-1, x.shape[-1]).float()
            self.a[self.a_of[i]].addmm_(x2.T, x2)

        return fn

    def add(self, grads: tuple[torch.Tensor, ...]) -> None:
        """Add one label sample's gradients (at the outputs for ``"kfac"``, else at each unit's weight)."""
        for i, g in enumerate(grads):
            g = g.float()
            if self.kind == "kfac":
                self.g2[i] += g.reshape(-1, g.shape[-1]).square().sum(0)
            else:
                self.diag[i] += (g if tuple(g.shape) == self.shapes[i] else g.T).square()

    def result(self, n: int, samples: int) -> FisherStats:
        """The sums per token (``n`` tokens, ``samples`` label samples each), on the CPU."""
        a = self.a
        if self.kind == "hybrid":  # the input correlation matrix: the diagonal Fisher carries the scales
            corr = []
            for x in a:
                d = x.diagonal().clamp_min(1e-30).rsqrt()
                corr.append(x * d[:, None] * d[None, :])
            a = corr
        a = [(x / n if self.kind == "kfac" else x).cpu() for x in a]
        return FisherStats(
            self.kind,
            [(g / (n * samples)).cpu() for g in self.g2],
            [a[j] if j >= 0 else None for j in self.a_of] if self.need_a else [],
            [(d / (n * samples)).cpu() for d in self.diag],
        )


def _unit_grad(g: torch.Tensor, module: Any) -> torch.Tensor:
    """A unit's part of its leaf parameter's gradient: an expert's slice of the fused parameter's, else all."""
    return g[module.index] if isinstance(module, ExpertUnit) else g


def fisher_estimates(
    problem: Any, *, kind: str = "hybrid", samples: int = 1, seed: int = 0, progress: bool = False
) -> tuple[np.ndarray, int]:
    """``(n_units, max_levels)`` Fisher KL estimates of a weight-codec problem's variants (nan-padded), on its
    search pool, and the token-equivalents spent (the forward tokens, each backward pass counted as two).

    ``problem`` is a :class:`~levelsearch.adapters.weights.problem.WeightLevelProblem` (its model is left dense; its
    ``variant_weight(unit, level)`` gives each variant's weight). Embedding units get the diagonal estimate."""
    problem.apply(None)
    tokens = problem.search_pool.tokens
    bar = None
    if progress:
        bar = tqdm(total=int(tokens.shape[0]), unit="seq", desc="Fisher", dynamic_ncols=True, leave=False)
    try:
        st = fisher_stats(
            problem.model,
            problem.modules,
            tokens,
            kind=kind,
            samples=samples,
            seed=seed,
            progress=(lambda k: bar.update(k - bar.n)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    n_levels = np.array([len(c) for c in problem.costs])  # every unit's, tied or not
    out = np.full((len(problem.unit_names), int(n_levels.max())), np.nan)
    for i in range(len(problem.unit_names)):
        dense = problem._dense[i].float()
        for lv in range(int(n_levels[i])):
            out[i, lv] = st.estimate(i, problem.variant_weight(i, lv).float() - dense)
    return out, int(tokens.numel()) * (1 + 2 * samples)
