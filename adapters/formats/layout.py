"""Where a model's decoder layers and their attention / MLP branches live in its state dict, and how a
config is cut when whole layers are removed.

The one layer finder is :func:`~levelsearch.adapters.model.models.map_layers`; this module only turns what it
finds into state-dict names (``model.layers.3.self_attn``, ``transformer.h.3.mlp`` ...), so that a writer
can leave a branch's tensors out and renumber the layers that stay.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..model.models import decoder_layers, map_layers

__all__ = ["Layout", "model_layout", "cut_config", "renumber"]

#: config lists indexed by layer *number* (not one entry per layer): their entries are renumbered
_INDEX_LISTS = ("mlp_only_layers",)


@dataclass
class Layout:
    """State-dict names of a decoder.

    Attributes:
        prefix: the layer list's name (``model.layers``, ``transformer.h``, ``gpt_neox.layers`` ...).
        attn: per layer, the attention branch's module name (``model.layers.3.self_attn``).
        mlp: per layer, the MLP branch's module name.
    """

    prefix: str
    attn: list[str]
    mlp: list[str]

    @property
    def n_layers(self) -> int:
        return len(self.attn)


def model_layout(model: nn.Module) -> Layout:
    """The :class:`Layout` of ``model`` (``ValueError`` from :func:`map_layers` when it cannot be mapped)."""

    amap = map_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    prefix = names[id(decoder_layers(model))]
    return Layout(prefix, [names[id(m)] for m in amap.attn], [names[id(m)] for m in amap.mlp])


def renumber(name: str, prefix: str, new_index: dict[int, int]) -> str | None:
    """``name`` with its layer number mapped through ``new_index``; ``None`` when its layer is removed.

    Names outside the layer list come back unchanged.
    """
    m = re.match(rf"^{re.escape(prefix)}\.(\d+)(\..*)?$", name)
    if m is None:
        return name
    old = int(m.group(1))
    if old not in new_index:
        return None
    return f"{prefix}.{new_index[old]}{m.group(2) or ''}"


def cut_config(config: Any, keep: Sequence[int], n_layers: int) -> Any:
    """A copy of ``config`` for the decoder that keeps only layers ``keep`` (in order) of ``n_layers``.

    The layer count is set through the config's own attribute map (``n_layer`` for GPT-2 ...); every
    per-layer list of the text config (a list named like ``*layer*`` with one entry per layer:
    ``layer_types`` — sliding or full attention —, ``no_rope_layers`` ...) keeps the entries of the kept
    layers; lists of layer numbers (``mlp_only_layers``) are renumbered.
    """
    out = copy.deepcopy(config)
    text = out.get_text_config() if hasattr(out, "get_text_config") else out
    new_index = {old: new for new, old in enumerate(keep)}
    for key, value in list(vars(text).items()):
        if key in _INDEX_LISTS and isinstance(value, (list, tuple)):
            setattr(text, key, [new_index[int(i)] for i in value if int(i) in new_index])
        elif isinstance(value, (list, tuple)) and len(value) == n_layers and "layer" in key:
            setattr(text, key, [value[i] for i in keep])
    text.num_hidden_layers = len(keep)
    return out
