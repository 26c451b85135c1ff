"""The one hook-based capture of what a decoder layer receives, and the one way to call a layer again.

Both the calibration driver (:mod:`.calibration`) and the layer runner (:mod:`.fitness`) run
decoder layers on their own, outside the model's forward. What a layer needs besides the hidden
states (attention mask, rotary tables, cache position ...) differs between architectures and
``transformers`` releases, so it is taken from an ordinary forward pass by a pre-hook on each
layer, cleaned the same way for both (:func:`layer_call_kwargs`: no KV cache under whatever name
this release gives it, extra positional arguments kept), and replayed by :func:`call_layer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["StopForward", "hidden_arg", "layer_call_kwargs", "call_layer", "capture_inputs", "raise_stop"]

# every name a transformers release has given the KV cache argument of a decoder layer
_CACHE_NAMES = ("past_key_values", "past_key_value", "cache")


class StopForward(Exception):
    """Raised by a hook to end a forward pass early."""


def raise_stop(module: nn.Module, args: Any) -> None:
    """A forward pre-hook that ends the pass before ``module`` runs."""
    raise StopForward


def hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden states among a (sub-)module's inputs: the first positional tensor, else by name."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    for v in kwargs.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v
    raise ValueError("cannot find the hidden states among a sub-module's inputs")


def layer_call_kwargs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a decoder layer was called with besides its hidden states, ready for :func:`call_layer`.

    Positional arguments after the hidden states are kept as ``__arg1``, ``__arg2`` ...; the KV
    cache is cleared (set to ``None`` under the name the release uses: setting a second name, e.g.
    ``past_key_values`` beside 5.x's ``cache``, only earns a deprecation warning) and
    ``use_cache`` is off.
    """
    kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    kw.update({f"__arg{i}": a for i, a in enumerate(args[1:], start=1)})
    kw["use_cache"] = False
    for name in _CACHE_NAMES:
        if name in kw:
            kw[name] = None
    return kw


def call_layer(layer: nn.Module, h: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Apply ``layer`` to ``h`` with keyword arguments from :func:`layer_call_kwargs`; its new hidden states."""
    extra = sorted((k for k in kwargs if k.startswith("__arg")), key=lambda s: int(s[5:]))
    args = [kwargs[k] for k in extra]
    kw = {k: v for k, v in kwargs.items() if not k.startswith("__arg")}
    out = layer(h, *args, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


def capture_inputs(
    model: nn.Module,
    layers: Sequence[nn.Module] | nn.ModuleList,
    input_ids: torch.Tensor,
    *,
    record: int,
    stop_at: nn.Module | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Run ``model`` on ``input_ids``; the first layer's hidden input and the call arguments of layers ``< record``.

    The pass stops before ``stop_at`` runs when given (so hooks of the caller on the layers
    see them run), else right after layer ``record − 1``'s inputs are taken (layer 0's when
    ``record`` is 0): no layer runs for nothing.
    """
    first: list[torch.Tensor] = []
    store: list[dict[str, Any]] = []

    def pre(idx: int) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if idx == 0:
                first.append(hidden_arg(args, kwargs).detach())
            if idx >= record:
                raise StopForward
            store.append(layer_call_kwargs(args, kwargs))
            if stop_at is None and idx == record - 1:
                raise StopForward

        return hook

    handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
    if stop_at is not None:
        handles.append(stop_at.register_forward_pre_hook(raise_stop))
    try:
        model(input_ids=input_ids, use_cache=False)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return first[0], store
