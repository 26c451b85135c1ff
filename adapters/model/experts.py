"""Fused expert parameters: each expert's projection as a unit a weight codec can compress.

transformers 5 stores a mixture-of-experts block's experts as fused 3-D parameters (Mixtral's, Qwen3-MoE's,
OLMoE's ``gate_up_proj`` ``E × 2I × H`` and ``down_proj`` ``E × H × I``; gpt-oss's transposed ``E × H × 2I``
and ``E × I × H``), not as ``nn.Linear`` modules. They are found by their shape relation to the router, as
:func:`~.models.decoder_layers` finds blocks, with no list of classes: in a decoder layer, a module's 3-D
parameters whose leading dimension ``E`` is the number of rows of a 2-D weight of the same block (the router,
``E × H``) whose column count ``H`` is one of their other dimensions are the experts' weights, ``E`` of them.

Which way round a slice ``W[e]`` is stored (``out × in`` and used as ``F.linear(x, W[e])``, or ``in × out``
and used as ``x @ W[e]``) is what transformers' experts classes declare as ``is_transposed``; a module
without that attribute is read from the shapes, when only one reading makes a chain ``H → I′ → H`` (the
up projection's output ``I′`` is the down projection's input ``I``, or twice it when gate and up are fused).
A block neither tells is refused in one line naming its parameters (:class:`UnmappableExperts`).

:class:`ExpertUnit` is expert ``e`` of one fused parameter: its ``weight`` is the view ``param[e]``, so
reading and writing it through :mod:`.units` reads and writes the fused parameter in place. Units of one
module are made once and kept (the same objects on every call: callers key maps by identity).

Calibration statistics per expert (:func:`capture_expert_inputs`): while a layer runs, the slices of fused
parameters it takes (``param[e]``) and the ``F.linear`` / ``@`` that use them are watched (a
:class:`torch.overrides.TorchFunctionMode`), so an expert's statistics come only from the tokens routed to it,
as the expert sees them (unweighted by the routing weight, as GPTQ for mixtures of experts does). The experts
run their eager per-expert loop while watched (the batched kernels take every expert's slice at once). An
expert that no calibration token reaches gets the pooled statistics of its parameter (all experts' tokens),
so its variants are still defined; the router stays dense.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "ExpertUnit",
    "FusedExperts",
    "UnmappableExperts",
    "capture_expert_inputs",
    "expert_units",
    "find_experts",
    "router_modules",
]


class UnmappableExperts(ValueError):
    """A decoder layer holds fused parameters the finder cannot read as experts (one line, naming them)."""


@dataclass(eq=False)
class ExpertUnit:
    """Expert ``index`` of the fused parameter ``param``: a unit whose ``weight`` is ``param[index]``.

    ``transposed``: the slice is stored ``in × out`` (used as ``x @ W``); else ``out × in`` (``F.linear``).
    ``param_name`` names the fused parameter within its decoder layer (``mlp.experts.gate_up_proj``).
    """

    param: nn.Parameter
    index: int
    transposed: bool
    param_name: str

    @property
    def weight(self) -> torch.Tensor:
        """The expert's slice of the fused parameter (a view: writing it writes the parameter)."""
        return self.param[self.index]


@dataclass(eq=False)
class FusedExperts:
    """One module's fused expert parameters: ``params`` (local parameter name → parameter), all ``E × · × ·``.

    ``name`` is the module's path within its decoder layer, ``router`` the path of the router's weight.
    """

    name: str
    module: nn.Module
    n_experts: int
    router: str
    params: dict[str, nn.Parameter]
    transposed: bool
    units: list[tuple[str, ExpertUnit]] = field(default_factory=list)


# fused experts found per decoder layer (weakly keyed: the layer's lifetime); the same objects every call
_FOUND: weakref.WeakKeyDictionary[nn.Module, list[FusedExperts]] = weakref.WeakKeyDictionary()


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(int(s)) for s in t.shape)


def _two_d_weights(layer: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in layer.named_parameters() if p.dim() == 2]


def _find_router(layer: nn.Module, owner: str, n_experts: int, dims: set[int]) -> tuple[str, int] | None:
    """The router of experts under ``owner``: a 2-D weight ``E × H`` with ``H`` among the experts' dimensions,
    nearest to them (in their parent block first, then anywhere in the layer)."""
    parent = owner.rsplit(".", 1)[0] if "." in owner else ""
    found = [(n, int(p.shape[1])) for n, p in _two_d_weights(layer) if p.shape[0] == n_experts and p.shape[1] in dims]
    near = [f for f in found if parent == "" or f[0].startswith(parent + ".")]
    best = near or found
    return best[0] if best else None


def _orientation(modules: list[tuple[str, nn.Module]], params: dict[str, nn.Parameter], hidden: int) -> bool:
    """Whether the slices of one block's fused ``params`` (path within the layer → parameter) are stored
    ``in × out``: as its modules declare (``is_transposed``), else as the only reading of the shapes that
    makes a chain (see the module docstring)."""
    declared = {getattr(m, "is_transposed", None) for _, m in modules}
    if len(declared) == 1 and isinstance(next(iter(declared)), bool):
        return bool(next(iter(declared)))
    readings = []
    for transposed in (False, True):
        ups, downs, ok = set(), set(), True
        for p in params.values():
            out_dim, in_dim = (int(p.shape[2]), int(p.shape[1])) if transposed else (int(p.shape[1]), int(p.shape[2]))
            if in_dim == hidden and out_dim != hidden:
                ups.add(out_dim)
            elif out_dim == hidden and in_dim != hidden:
                downs.add(in_dim)
            else:
                ok = False
        if ok and ups and downs and all(d in ups or 2 * d in ups for d in downs):
            readings.append(transposed)
    if len(readings) == 1:
        return readings[0]
    shapes = ", ".join(f"{n} ({_shape(p)})" for n, p in params.items())
    why = "read both ways" if readings else "make no chain hidden → intermediate → hidden either way"
    kinds = ", ".join(sorted({type(m).__name__ for _, m in modules}))
    raise UnmappableExperts(
        f"cannot map the experts of {kinds} at {shapes}: their shapes {why} and the module declares no "
        "is_transposed; this mixture-of-experts architecture is not supported"
    )


def find_experts(layer: nn.Module) -> list[FusedExperts]:
    """The fused experts of a decoder layer (none for a dense layer), found once and kept.

    Raises:
        UnmappableExperts: 3-D parameters with no router whose shape relates to them, or whose orientation
            neither the modules nor their shapes tell.
    """
    if layer in _FOUND:
        return _FOUND[layer]
    blocks: dict[str, list[tuple[str, nn.Module, dict[str, nn.Parameter]]]] = {}
    hidden: dict[str, int] = {}
    for name, module in layer.named_modules():
        fused = {n: p for n, p in module.named_parameters(recurse=False) if p.dim() == 3}
        if not fused:
            continue
        lead = {int(p.shape[0]) for p in fused.values()}
        dims = {int(s) for p in fused.values() for s in p.shape[1:]}
        router = _find_router(layer, name, next(iter(lead)), dims) if len(lead) == 1 else None
        if router is None:
            where = f"{name}." if name else ""
            shapes = ", ".join(f"{where}{n} ({_shape(p)})" for n, p in fused.items())
            raise UnmappableExperts(
                f"cannot map the 3-D parameters {shapes} of {type(module).__name__}: no router (a 2-D weight with "
                "one row per expert) relates to them; this mixture-of-experts architecture is not supported"
            )
        blocks.setdefault(router[0], []).append((name, module, fused))
        hidden[router[0]] = router[1]
    found: list[FusedExperts] = []
    for router_name, members in blocks.items():
        params = {f"{n}.{p}" if n else p: t for n, _m, fused in members for p, t in fused.items()}
        transposed = _orientation([(n, m) for n, m, _ in members], params, hidden[router_name])
        for name, module, fused in members:
            entry = FusedExperts(name, module, int(next(iter(fused.values())).shape[0]), router_name, fused, transposed)
            prefix = f"{name}." if name else ""
            for e in range(entry.n_experts):
                for pname, p in fused.items():
                    entry.units.append((f"{prefix}{e}.{pname}", ExpertUnit(p, e, transposed, f"{prefix}{pname}")))
            found.append(entry)
    _FOUND[layer] = found
    return found


def expert_units(layer: nn.Module) -> list[tuple[str, ExpertUnit]]:
    """``(name within the layer, unit)`` of every expert of every fused parameter of ``layer``, expert-major
    (``mlp.experts.0.gate_up_proj``, ``mlp.experts.0.down_proj``, ``mlp.experts.1.gate_up_proj`` ...)."""
    return [u for entry in find_experts(layer) for u in entry.units]


def router_modules(layer: nn.Module) -> set[str]:
    """Paths within ``layer`` of the modules holding its routers' weights (they stay dense): each fused experts'
    router, and in a layer with experts every scalar gate ``1 × H`` on the hidden states (Qwen2-MoE's
    ``shared_expert_gate``, which weighs the shared expert's output per token as the router weighs the experts')."""
    found = find_experts(layer)
    out = {entry.router.rsplit(".", 1)[0] for entry in found if "." in entry.router}
    if found:
        params = dict(layer.named_parameters())
        hidden = {int(params[entry.router].shape[1]) for entry in found}
        gates = [n for n, p in params.items() if p.dim() == 2 and p.shape[0] == 1 and int(p.shape[1]) in hidden]
        out |= {n.rsplit(".", 1)[0] for n in gates if n.endswith(".weight") and "." in n}
    return out


def _index(idx: Any) -> int | None:
    """An expert index from what a slice was taken with: an int or a one-element integer tensor."""
    if isinstance(idx, bool):
        return None
    if isinstance(idx, int):
        return idx
    if isinstance(idx, torch.Tensor) and idx.numel() == 1 and not idx.is_floating_point() and idx.dim() <= 1:
        return int(idx.reshape(()).item())
    return None


class _Watch(TorchFunctionMode):
    """Calls ``fn(unit, x)`` whenever an expert's slice is used on inputs ``x`` (see the module docstring)."""

    def __init__(self, by_param: dict[int, dict[int, ExpertUnit]], fn: Callable[[ExpertUnit, torch.Tensor], None]):
        super().__init__()
        self.by_param, self.fn = by_param, fn
        self.slices: dict[int, tuple[ExpertUnit, weakref.ref[torch.Tensor]]] = {}

    def _unit_of(self, w: Any) -> ExpertUnit | None:
        hit = self.slices.get(id(w))
        return hit[0] if hit is not None and hit[1]() is w else None

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        what = getattr(func, "__name__", "")
        if what == "linear":
            unit = self._unit_of(args[1] if len(args) > 1 else kwargs.get("weight"))
            if unit is not None:
                self._seen(unit, args[0], linear=True)
        elif what in ("matmul", "__matmul__") and len(args) == 2:
            unit = self._unit_of(args[1])
            if unit is not None:
                self._seen(unit, args[0], linear=False)
        out = func(*args, **kwargs)
        if what == "__getitem__" and id(args[0]) in self.by_param and isinstance(out, torch.Tensor):
            e = _index(args[1])
            unit = self.by_param[id(args[0])].get(e) if e is not None else None
            if unit is not None:
                self.slices[id(out)] = (unit, weakref.ref(out))
        return out

    def _seen(self, unit: ExpertUnit, x: torch.Tensor, *, linear: bool) -> None:
        if linear == unit.transposed:
            how = "F.linear" if linear else "x @ W"
            raise UnmappableExperts(
                f"the experts {unit.param_name} are used as {how}, not as their shapes or is_transposed say; this "
                "mixture-of-experts architecture is not supported"
            )
        self.fn(unit, x)


@contextmanager
def capture_expert_inputs(
    modules: list[nn.Module], units: list[ExpertUnit], fn: Callable[[ExpertUnit, torch.Tensor], None]
) -> Iterator[None]:
    """While the block is open, ``fn(unit, x)`` is called with every input ``x`` (``tokens × in``) an expert unit
    of ``units`` computes on; the experts of ``modules`` (decoder layers or models) run their eager loop."""
    by_param: dict[int, dict[int, ExpertUnit]] = {}
    for u in units:
        by_param.setdefault(id(u.param), {})[u.index] = u
    configs: dict[int, Any] = {}
    for root in modules:
        for layer_mod in root.modules():
            cfg = getattr(layer_mod, "config", None)
            if getattr(layer_mod, "is_transposed", None) is not None and cfg is not None:
                configs[id(cfg)] = cfg
    saved = {k: getattr(c, "_experts_implementation", None) for k, c in configs.items()}
    try:
        for c in configs.values():
            c._experts_implementation = "eager"
        with _Watch(by_param, fn):
            yield
    finally:
        for k, c in configs.items():
            c._experts_implementation = saved[k]
