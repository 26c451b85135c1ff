"""How a mixture of experts' fused parameters are named in the checkpoints engines read: one module per expert.

transformers 5 keeps a layer's experts fused (``mlp.experts.gate_up_proj``, ``E × 2I × H``) and converts the
per-expert checkpoints of the hub at load time with its conversion mapping (Mixtral's
``block_sparse_moe.experts.<e>.w1/w3/w2``, Qwen2/3-MoE's and OLMoE's ``mlp.experts.<e>.gate_proj/up_proj/down_proj``).
vLLM and compressed-tensors read those per-expert modules. So the packed writers (pack-quantized, sparse-bitmask,
gptq) write a model in its checkpoint names: every tensor renamed as transformers' reverse mapping renames it,
and each expert's slice of a fused parameter as the per-expert module(s) it comes from. Which rows of
``param[e]`` each per-expert weight holds is read off the reverse mapping itself, by running it on a tensor of
positions (no names or classes listed here): a :class:`Piece` is such a row range.

A model whose checkpoints keep the experts fused (gpt-oss), or whose reverse mapping does something other than
renaming tensors and cutting fused parameters into per-expert row ranges, has no per-expert modules to write:
:func:`checkpoint_layout` says so in one line (``ValueError``).

:func:`to_checkpoint` turns a state dict (model names) into checkpoint names, the fused expert parameters left out
(the writers add each piece); :func:`from_checkpoint` is the loaders' way back, each fused parameter assembled
from its pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..model.experts import ExpertUnit, find_experts
from ..model.models import decoder_layers

__all__ = [
    "CheckpointLayout",
    "Piece",
    "checkpoint_layout",
    "from_checkpoint",
    "fused_expert_params",
    "mixed_experts",
    "refuse_experts",
    "to_checkpoint",
    "unit_pieces",
]


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop`` of expert ``expert`` of the fused parameter ``param``, stored as checkpoint tensor ``key``
    (``out × in``: ``param[expert, start:stop]``)."""

    key: str
    param: str
    expert: int
    start: int
    stop: int

    @property
    def module(self) -> str:
        """The per-expert module's name (``key`` less ``.weight``)."""
        return self.key.removesuffix(".weight")


@dataclass
class CheckpointLayout:
    """``renamed``: model state key → checkpoint key, for every tensor but the fused experts; ``pieces``: each
    fused expert parameter's pieces."""

    renamed: dict[str, str]
    pieces: dict[str, list[Piece]]


def fused_expert_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """State keys of the fused expert parameters of ``model``'s decoder layers (empty for a dense model)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, nn.Parameter] = {}
    for layer in decoder_layers(model):
        for entry in find_experts(layer):
            for p in entry.params.values():
                out[names[id(p)]] = p
    return out


def _revert(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' reverse conversion of ``state`` with the model's default mapping (a model loaded from a
    fused checkpoint records no conversions, which would leave every name as it is)."""
    from transformers.core_model_loading import revert_weight_conversion

    sentinel = object()
    saved = getattr(model, "_weight_conversions", sentinel)
    try:
        if saved is not sentinel:
            model._weight_conversions = None  # type: ignore[assignment]
        return dict(revert_weight_conversion(model, state))  # type: ignore[arg-type]
    finally:
        if saved is not sentinel:
            model._weight_conversions = saved  # type: ignore[assignment]


def _pieces(model: nn.Module, key: str, param: torch.Tensor, fmt: str) -> list[Piece]:
    n_exp, rows, cols = (int(s) for s in param.shape)
    dtype = torch.int64 if param.numel() >= 2**31 else torch.int32
    probe = torch.arange(param.numel(), dtype=dtype).reshape(param.shape)
    out = _revert(model, {key: probe})
    why = ""
    pieces = []
    for ckpt_key, t in out.items():
        if t.dim() != 2 or t.shape[1] != cols:
            why = f"keeps them fused ({ckpt_key}, {'×'.join(str(int(s)) for s in t.shape)})"
            break
        first = int(t[0, 0])
        e, r0 = first // (rows * cols), (first % (rows * cols)) // cols
        k = int(t.shape[0])
        want = e * rows * cols + (torch.arange(r0, r0 + k, dtype=dtype)[:, None] * cols + torch.arange(cols))
        if not torch.equal(t, want.to(dtype)):
            why = f"stores {ckpt_key} as other than a range of one expert's rows"
            break
        pieces.append(Piece(ckpt_key, key, e, r0, r0 + k))
    covered = sum(p.stop - p.start for p in pieces)
    if not why and covered != n_exp * rows:
        why = f"stores only {covered} of the {n_exp * rows} expert rows of {key}"
    if why:
        kind = type(model).__name__
        raise ValueError(
            f"the {fmt} format writes one module per expert, and {kind}'s checkpoint layout {why}; write this "
            "mixture-of-experts run as --format dense"
        )
    return sorted(pieces, key=lambda p: (p.expert, p.start))


def checkpoint_layout(model: nn.Module, fmt: str) -> CheckpointLayout:
    """The :class:`CheckpointLayout` of ``model``.

    Raises:
        ValueError: (one line, naming ``fmt``) the model's checkpoints keep its experts fused, or its reverse
            mapping is not renaming and per-expert row ranges.
    """
    fused = fused_expert_params(model)
    state = model.state_dict()
    keys = [k for k in state if k not in fused]
    probe = {k: torch.tensor(i) for i, k in enumerate(keys)}
    reverted = _revert(model, probe) if fused else probe
    renamed: dict[str, str] = {}
    for new, t in reverted.items():
        if t.dim() != 0:
            raise ValueError(
                f"the {fmt} format cannot rename {new} of {type(model).__name__} to its checkpoint name; write this "
                "run as --format dense"
            )
        renamed[keys[int(t)]] = new
    pieces = {key: _pieces(model, key, p.detach(), fmt) for key, p in fused.items()}
    return CheckpointLayout(renamed, pieces)


def to_checkpoint(layout: CheckpointLayout, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (model names) in checkpoint names, without the fused expert parameters."""
    return {layout.renamed.get(k, k): v for k, v in state.items() if k not in layout.pieces}


def unit_pieces(
    layout: CheckpointLayout, model: nn.Module, names: list[str], modules: list[Any]
) -> dict[str, list[tuple[str, slice]]]:
    """Per unit: ``(checkpoint module, rows of the unit's out × in weight)`` it is written as; a unit of a
    dense module is its one module, renamed; an expert unit is its expert's pieces."""
    params = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, list[tuple[str, slice]]] = {}
    for name, mod in zip(names, modules):
        if isinstance(mod, ExpertUnit):
            key = params[id(mod.param)]
            out[name] = [(p.module, slice(p.start, p.stop)) for p in layout.pieces[key] if p.expert == mod.index]
        else:
            out[name] = [(layout.renamed.get(f"{name}.weight", f"{name}.weight").removesuffix(".weight"), slice(None))]
    return out


def from_checkpoint(
    layout: CheckpointLayout, state: dict[str, torch.Tensor], units: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(state, units)`` of a checkpoint (checkpoint names; ``units``: module → ``out × in`` weight) in model
    names: the per-expert weights (in ``state`` as ``KEY`` or in ``units`` as its module) assembled into their
    fused parameters, every other tensor renamed back.

    Raises:
        ValueError: an expert's weight is missing from the checkpoint.
    """
    units = dict(units or {})
    back = {v: k for k, v in layout.renamed.items()}
    out: dict[str, torch.Tensor] = {}
    for key, pieces in layout.pieces.items():
        parts = []
        for p in pieces:
            t = units.pop(p.module, None)
            t = state.pop(p.key, None) if t is None else t
            if t is None:
                raise ValueError(f"the checkpoint lacks {p.key}, expert {p.expert} of {key}; export again")
            parts.append((p, t))
        n_exp = max(p.expert for p in pieces) + 1
        rows = max(p.stop for p in pieces)
        fused = torch.empty(n_exp, rows, parts[0][1].shape[1], dtype=parts[0][1].dtype)
        for p, t in parts:
            fused[p.expert, p.start : p.stop] = t
        out[key] = fused
    for k, v in state.items():
        out[back.get(k, k)] = v
    named_units = {back.get(f"{m}.weight", f"{m}.weight").removesuffix(".weight"): w for m, w in units.items()}
    return out, named_units


_EXPERT = re.compile(r"^(.*\.experts)\.\d+\.")


def mixed_experts(schemes: dict[str, Any]) -> str | None:
    """A line saying which layers' experts were written in more than one scheme (``schemes``: unit or module
    name → its scheme; experts named ``….experts.<e>.…``), which vLLM's fused MoE layers cannot run (one scheme
    for all of a layer's experts); ``None`` when every layer's experts share one."""
    by_layer: dict[str, set[Any]] = {}
    for name, scheme in schemes.items():
        m = _EXPERT.match(name)
        if m:
            by_layer.setdefault(m.group(1), set()).add(scheme)
    mixed = sorted(k for k, v in by_layer.items() if len(v) > 1)
    if not mixed:
        return None
    return (
        f"the experts of {len(mixed)} layers (first: {mixed[0]}) differ in bits or group size; vLLM runs a layer's "
        "experts as one fused MoE layer with one scheme and refuses this"
    )


def refuse_experts(model: nn.Module, modules: list[Any], fmt: str) -> None:
    """``ValueError`` (one line, naming ``fmt``) when ``modules`` hold experts of fused parameters that the
    per-module format ``fmt`` cannot write as per-expert modules (see :func:`checkpoint_layout`)."""
    if any(isinstance(m, ExpertUnit) for m in modules):
        checkpoint_layout(model, fmt)
