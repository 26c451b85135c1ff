"""What a weight codec's unit is, and its weight as ``out × in`` whatever the module stores.

A unit is a projection of a decoder layer: an ``nn.Linear`` (weight ``out × in``) or GPT-2's
``transformers.pytorch_utils.Conv1D`` (weight ``in × out``: it computes ``x @ W + b``). Both compute
``y = x Wᵀ`` for an ``out × in`` ``W``, and their layer input is the same ``x``, so the calibration
statistics (Hessian ``2XᵀX/N``, inputs) are the same. Everything that reads or writes a unit's weight
goes through :func:`unit_weight`, :func:`set_unit_weight` and :func:`module_layout`, so the codecs,
the variant database and the exporters see one ``out × in`` weight and never branch on the module type.
Fused expert parameters (Mixtral's, Qwen3-MoE's, gpt-oss's experts in transformers 5) are not modules: each
expert's slice is a unit of its own (:class:`~.experts.ExpertUnit`, found by :mod:`.experts`), read and written
through the same three functions; :func:`layer_units` and :func:`named_units` list modules and experts alike,
the routers left out (they stay dense).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import nn

from .experts import ExpertUnit, expert_units, router_modules
from .models import decoder_layers

__all__ = ["is_unit", "layer_units", "module_layout", "named_units", "set_unit_weight", "unit_weight"]


@lru_cache(maxsize=1)
def _transposed_types() -> tuple[type, ...]:
    """Module types that store their weight ``in × out`` (GPT-2's ``Conv1D``; none without transformers)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - the llm extra brings transformers
        return ()
    return (Conv1D,)


def _transposed(module: Any) -> bool:
    if isinstance(module, ExpertUnit):
        return module.transposed
    return isinstance(module, _transposed_types())


def is_unit(module: Any) -> bool:
    """Whether ``module`` is a projection the weight codecs compress (``nn.Linear``, ``Conv1D`` or an expert)."""
    return isinstance(module, (nn.Linear, ExpertUnit)) or _transposed(module)


def layer_units(layer: nn.Module) -> list[tuple[str, Any]]:
    """``(name within the layer, unit)`` of every unit of a decoder layer: its projection modules in module
    order (routers left out), then its experts (``mlp.experts.3.down_proj``: expert 3 of ``down_proj``).

    Raises:
        ValueError: fused parameters the experts finder cannot map (one line naming them).
    """
    experts = expert_units(layer)
    routers = router_modules(layer)
    mods = [(n, m) for n, m in layer.named_modules() if is_unit(m) and n not in routers]
    return [*mods, *experts]


def named_units(model: nn.Module) -> dict[str, Any]:
    """Every module of ``model`` by path (as ``named_modules``) and every expert unit of its decoder layers by
    its unit name (``model.layers.0.mlp.experts.3.down_proj``): what a unit name looks up."""
    out: dict[str, Any] = dict(model.named_modules())
    names = {id(m): n for n, m in out.items()}
    for layer in decoder_layers(model):
        prefix = names[id(layer)]
        for name, unit in expert_units(layer):
            out[f"{prefix}.{name}"] = unit
    return out


def unit_weight(module: Any) -> torch.Tensor:
    """``module``'s weight as ``out × in`` (a view of the parameter: for ``Conv1D`` its transpose)."""
    w: torch.Tensor = module.weight
    return w.T if _transposed(module) else w


def module_layout(module: Any, weight: torch.Tensor) -> torch.Tensor:
    """An ``out × in`` ``weight`` in the layout ``module`` stores (its ``weight`` parameter's shape)."""
    return weight.T.contiguous() if _transposed(module) else weight


def set_unit_weight(module: Any, weight: torch.Tensor) -> None:
    """Copy an ``out × in`` ``weight`` into ``module``'s weight parameter, in the module's layout and dtype."""
    with torch.no_grad():
        unit_weight(module).copy_(weight.to(module.weight.device, module.weight.dtype))


#: shards an engine fuses into one layer of one scheme (vLLM's ``qkv_proj`` and ``gate_up_proj``)
FUSED_SHARDS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def engine_ties(names: list[str], units: list[Any]) -> list[str]:
    """A tie label per unit (units with one label share one level): the shards an engine fuses (q/k/v, gate/up
    of one parent) and a layer's experts of one fused parameter (``model.layers.3.mlp.experts.down_proj``, one
    3-D tensor of one type in llama.cpp, one scheme in fused-MoE kernels); every other unit alone."""
    labels = []
    for name, unit in zip(names, units):
        parent, _, leaf = name.rpartition(".")
        if isinstance(unit, ExpertUnit):  # ``...experts.{e}.{param}``: every expert of the parameter at once
            labels.append(f"{parent.rpartition('.')[0]}.{leaf}")
            continue
        shards = next((s for s in FUSED_SHARDS if leaf in s), None)
        labels.append(f"{parent}:{'+'.join(shards)}" if shards else name)
    return labels
