"""What a weight codec's unit is, and its weight as ``out × in`` whatever the module stores.

A unit is a projection of a decoder layer: an ``nn.Linear`` (weight ``out × in``) or GPT-2's
``transformers.pytorch_utils.Conv1D`` (weight ``in × out``: it computes ``x @ W + b``). Both compute
``y = x Wᵀ`` for an ``out × in`` ``W``, and their layer input is the same ``x``, so the calibration
statistics (Hessian ``2XᵀX/N``, inputs) are the same. Everything that reads or writes a unit's weight
goes through :func:`unit_weight`, :func:`set_unit_weight` and :func:`module_layout`, so the codecs,
the variant database and the exporters see one ``out × in`` weight and never branch on the module type.
Fused parameters that are not such modules (Mixtral's experts in transformers 5) are not units: the
weight codecs leave them dense.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import nn

__all__ = ["is_unit", "module_layout", "set_unit_weight", "unit_weight"]


@lru_cache(maxsize=1)
def _transposed_types() -> tuple[type, ...]:
    """Module types that store their weight ``in × out`` (GPT-2's ``Conv1D``; none without transformers)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - the llm extra brings transformers
        return ()
    return (Conv1D,)


def _transposed(module: Any) -> bool:
    return isinstance(module, _transposed_types())


def is_unit(module: Any) -> bool:
    """Whether ``module`` is a projection the weight codecs compress (``nn.Linear`` or ``Conv1D``)."""
    return isinstance(module, nn.Linear) or _transposed(module)


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
