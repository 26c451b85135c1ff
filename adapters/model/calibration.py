"""Calibration driver: per-linear-layer Hessians ``H = 2 X Xᵀ / N``, one decoder layer at a time.

The model is never run end to end with hooks everywhere: the inputs of the first
decoder layer are captured once (one pass up to that layer), then every decoder
layer is run on them on its own, with forward hooks on its units (``nn.Linear`` and GPT-2's
``Conv1D``, see :mod:`.units`) accumulating ``Xᵀ X`` in fp32, and its outputs become the next layer's
inputs. Only one layer's activations for the calibration set live in memory.

Works on any Hugging Face causal LM whose decoder layers form an
``nn.ModuleList`` (Llama, Mistral, Qwen, SmolLM, Phi-3, Gemma ... all do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..kernels.hessian import accumulate_xtx
from .capture import call_layer, capture_inputs
from .experts import ExpertUnit, capture_expert_inputs
from .models import decoder_layers
from .units import layer_units

__all__ = [
    "linear_units",
    "LayerInputs",
    "capture_layer_inputs",
    "run_layer",
    "layer_calibration",
    "layer_hessians",
]


def linear_units(model: nn.Module) -> list[tuple[str, int, nn.Module]]:
    """Every unit (``nn.Linear``, GPT-2's ``Conv1D`` or an expert of a fused parameter, :func:`~.units.layer_units`)
    of every decoder layer as ``(name, layer index, module)``, in layer order.

    ``name`` is the path relative to the model (e.g. ``model.layers.3.mlp.up_proj``,
    ``model.layers.3.mlp.experts.5.down_proj`` for expert 5 of a fused ``down_proj``).
    """
    layers = decoder_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    out: list[tuple[str, int, nn.Module]] = []
    for i, layer in enumerate(layers):
        for local, mod in layer_units(layer):
            out.append((f"{names[id(layer)]}.{local}", i, mod))
    return out


@dataclass
class LayerInputs:
    """Inputs of one decoder layer for every calibration batch.

    ``hidden`` holds one ``(batch, seq, hidden)`` tensor per batch; ``kwargs``
    the other keyword arguments the model passed to its layers (attention mask,
    position embeddings ...), the same for every layer.
    """

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8) -> LayerInputs:
    """Run the model up to its first decoder layer on ``tokens`` (``(n_seq, seq_len)`` int64).

    Only the embedding (and rotary tables) run; the pass stops at layer 0. The keyword
    arguments are layer 0's, cleaned by :func:`~levelsearch.adapters.model.capture.layer_call_kwargs`.
    """
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []
    kwargs_list: list[dict[str, Any]] = []
    for start in range(0, tokens.shape[0], batch_size):
        h, kw = capture_inputs(model, layers, tokens[start : start + batch_size].to(device), record=1)
        hidden.append(h)
        kwargs_list.append(kw[0])
    return LayerInputs(hidden, kwargs_list)


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: LayerInputs) -> LayerInputs:
    """Outputs of ``layer`` for every batch, as the next layer's inputs."""
    outs = []
    for h, kw in zip(inputs.hidden, inputs.kwargs):
        outs.append(call_layer(layer, h, kw).detach())
    return LayerInputs(outs, inputs.kwargs)


@torch.no_grad()
def _accumulate(
    layer: nn.Module, inputs: LayerInputs, *, keep_inputs: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """``2 Xᵀ X / N`` (fp32) of every unit in ``layer`` over all tokens of ``inputs``, and with
    ``keep_inputs`` the inputs ``X`` themselves (``tokens × in``, fp32). An expert's ``X`` are the tokens
    routed to it; an expert no token reaches gets its fused parameter's pooled statistics (every expert's
    tokens), see :func:`_pool_unreached`."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    kept: dict[str, list[torch.Tensor]] = {}
    handles = []

    def add(name: str, x: torch.Tensor) -> None:
        sums[name], rows = accumulate_xtx(sums.get(name), x)
        counts[name] = counts.get(name, 0) + rows
        if keep_inputs:
            kept.setdefault(name, []).append(x.detach().reshape(-1, x.shape[-1]).float().cpu())

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple[torch.Tensor, ...], _out: Any) -> None:
            add(name, args[0])

        return hook

    units = layer_units(layer)
    experts = [(n, u) for n, u in units if isinstance(u, ExpertUnit)]
    expert_name = {id(u): n for n, u in experts}
    for name, mod in units:
        if not isinstance(mod, ExpertUnit):
            handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        with capture_expert_inputs([layer], [u for _, u in experts], lambda u, x: add(expert_name[id(u)], x)):
            for h, kw in zip(inputs.hidden, inputs.kwargs):
                call_layer(layer, h, kw)
    finally:
        for hd in handles:
            hd.remove()
    _pool_unreached(experts, sums, counts, kept)
    hessians = {name: s.mul_(2.0 / max(counts[name], 1)) for name, s in sums.items()}
    return hessians, ({name: torch.cat(xs) for name, xs in kept.items()} if keep_inputs else None)


def _pool_unreached(
    experts: list[tuple[str, ExpertUnit]],
    sums: dict[str, torch.Tensor],
    counts: dict[str, int],
    kept: dict[str, list[torch.Tensor]],
) -> None:
    """Give every expert no token reached the pooled ``Xᵀ X`` (and inputs) of its fused parameter's experts.

    Raises:
        ValueError: no expert of a fused parameter saw a token (the experts were not run one by one on their
            slices, so their statistics cannot be taken): one line naming the parameter.
    """
    by_param: dict[str, list[str]] = {}
    for name, u in experts:
        by_param.setdefault(u.param_name, []).append(name)
    for param, names in by_param.items():
        reached = [n for n in names if counts.get(n, 0) > 0]
        if not reached:
            raise ValueError(
                f"no calibration token reached any expert of {param}: the experts finder cannot follow how this "
                "mixture-of-experts architecture uses its fused parameters"
            )
        total = torch.stack([sums[n] for n in reached]).sum(0)
        rows = sum(counts[n] for n in reached)
        pooled = [x for n in reached for x in kept.get(n, [])]
        for n in names:
            if counts.get(n, 0) == 0:
                sums[n], counts[n] = total.clone(), rows
                if pooled:
                    kept[n] = list(pooled)


def layer_calibration(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    start_layer: int = 0,
    progress: bool = True,
    transform: Callable[[int, nn.Module], None] | None = None,
    activations: bool = False,
) -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]]:
    """Yield ``(layer index, {linear name within the layer: H}, {linear name: X} or None)`` for each
    decoder layer in order; the inputs ``X`` (``tokens × in``) only with ``activations``.

    Args:
        model: a Hugging Face causal LM (fp32 recommended on CPU).
        tokens: ``(n_seq, seq_len)`` calibration token ids.
        batch_size: sequences per forward call.
        start_layer: first layer to yield; earlier layers are only run forward
            (to resume an interrupted database build).
        progress: show a tqdm bar over layers.
        transform: optional ``fn(layer index, layer)`` called after a layer's
            statistics are yielded and before its outputs feed the next layer
            (e.g. to propagate through a quantized prefix). Default: inputs of
            every layer come from the dense model.
        activations: also keep every linear's inputs (memory: tokens × in × 4 bytes per linear).

    The Hessians are raw (undamped); see :func:`~levelsearch.adapters.kernels.hessian.prepare_hessian`.
    """
    layers = decoder_layers(model)
    inputs = capture_layer_inputs(model, tokens, batch_size=batch_size)
    bar = tqdm(range(len(layers)), desc="calibration", unit="layer", disable=not progress)
    for i in bar:
        layer = layers[i]
        if i >= start_layer:
            yield (i, *_accumulate(layer, inputs, keep_inputs=activations))
            if transform is not None:
                transform(i, layer)
        if i + 1 < len(layers):
            inputs = run_layer(layer, inputs)


def layer_hessians(
    model: nn.Module, tokens: torch.Tensor, **options: Any
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(layer index, {linear name within the layer: H})`` for each decoder layer in order:
    :func:`layer_calibration` (same options, ``activations`` aside) without the inputs."""
    for i, hessians, _ in layer_calibration(model, tokens, **options):
        yield i, hessians
