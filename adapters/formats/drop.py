"""The ``drop`` export: a checkpoint without the dropped weights.

- A layer whose attention **and** MLP are both dropped is removed: the layers after it are renumbered
  and the config's layer count and per-layer lists (``layer_types`` ...) are cut to match
  (:func:`~levelsearch.adapters.formats.layout.cut_config`). When every drop is a whole layer the
  directory is a plain Hugging Face model of the stock architecture, only shallower:
  ``AutoModelForCausalLM.from_pretrained`` (and any engine that loads the architecture) runs it.
- An attention or an MLP dropped alone is written with every parameter of its module zero (weights and
  biases; buffers such as causal masks kept): the stock module then computes exactly zero for every
  architecture the adapters map (a zero value and output projection make attention 0 whatever its softmax;
  a zero down projection makes an MLP 0; a zero router and zero experts make a fused MoE 0; a post-branch
  norm such as Gemma's maps the zero vector to zero, its epsilon keeping it finite), so the residual adds
  nothing and ``AutoModelForCausalLM.from_pretrained`` runs the searched model with nothing initialised at
  random. The branch's tensors cost their dense bytes (the shapes are fixed by the config; safetensors has
  no sparse or broadcast tensor). ``levelsearch_compression.json`` lists those branches under
  ``noop_branches``, and :func:`~levelsearch.adapters.formats.loader.load_compressed` builds the stock
  architecture with a no-op module in their place (checking that their tensors are zero), which skips
  their work. No ``trust_remote_code``, and the same code path for every architecture (``nn.Linear``,
  GPT-2's ``Conv1D``, fused MoE experts alike: a branch is written as a whole).
- ``drop-lean`` (``lean=True``) leaves those branches' tensors out instead, smaller by their bytes (SmolLM2-135M
  in fp32: 3.54 MB per attention, 10.62 MB per MLP). The stock loader would initialise the missing branches
  at random, so the weights then go to ``model.drop-lean.safetensors`` (:data:`LEAN_FILE`), a name
  ``from_pretrained`` does not read: it refuses the directory, and only ``load_compressed`` runs it. With no
  branch dropped alone the two formats write the same directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model.models import save_model
from .layout import cut_config, model_layout, renumber

__all__ = ["LEAN_FILE", "META_FILE", "export_drop", "write_drop"]

META_FILE = "levelsearch_compression.json"
#: the weights file of a ``drop-lean`` directory with branches left out (a name the stock loader does not read)
LEAN_FILE = "model.drop-lean.safetensors"


def write_drop(
    model: nn.Module,
    tokenizer: Any,
    attn: list[int],
    mlp: list[int],
    out: str | Path,
    meta: dict[str, Any] | None = None,
    *,
    lean: bool = False,
) -> Path:
    """Write ``model`` without the attention branches of layers ``attn`` and the MLPs of layers ``mlp``.

    ``model`` is read, never changed (its forward must be the uncompressed one: only its tensors and
    config are used). Returns the directory; ``meta`` is added to ``levelsearch_compression.json``.
    ``lean``: leave the branches dropped alone out of the file (``drop-lean``; see the module docstring).
    """

    lay = model_layout(model)
    n = lay.n_layers
    bad = [i for i in (*attn, *mlp) if not 0 <= int(i) < n]
    if bad:
        raise ValueError(f"layer index {bad[0]} is outside the model's {n} layers")
    removed = sorted(set(attn) & set(mlp))
    keep = [i for i in range(n) if i not in removed]
    if not keep:
        raise ValueError("every layer is dropped: there is no model left to write")
    new_index = {old: new for new, old in enumerate(keep)}
    branches = [lay.attn[i] for i in attn if i not in removed] + [lay.mlp[i] for i in mlp if i not in removed]
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    state: dict[str, Any] = {}
    for name, t in model.state_dict().items():
        if any(name.startswith(b + ".") for b in branches):
            if lean:
                continue
            if name in params:
                t = torch.zeros_like(t)  # the stock module computes exactly zero (see the module docstring)
        new = renumber(name, lay.prefix, new_index)
        if new is not None:
            state[new] = t
    noop = sorted(renumber(b, lay.prefix, new_index) or b for b in branches)
    path = save_model(model, tokenizer, out, state_dict=state)
    hidden = lean and bool(noop)
    if hidden:
        (path / "model.safetensors").rename(path / LEAN_FILE)
    if removed:
        config = cut_config(model.config, keep, n)
        cfg = config.to_dict()
        cfg.pop("quantization_config", None)
        (path / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    info = {
        "format": "drop",
        "loader": "levelsearch.adapters.load_compressed" if hidden else "transformers",
        "removed_layers": removed,
        "kept_layers": keep,
        "noop_branches": noop,
        "dropped_attention_layers": sorted(int(i) for i in attn),
        "dropped_mlp_layers": sorted(int(i) for i in mlp),
        **(meta or {}),
    }
    (path / META_FILE).write_text(json.dumps(info, indent=1))
    return path


def export_drop(
    problem: Any, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None = None, *, lean: bool = False
) -> Path:
    """Write a :class:`~levelsearch.adapters.codecs.drop.problem.DropProblem`'s model at ``levels`` in the
    ``drop`` format (``lean``: ``drop-lean``)."""
    lv = problem.space.validate(levels)
    attn, mlp = problem.dropped_modules(lv)
    problem.apply(None)
    meta = {"method": "drop", "levels": lv.tolist(), "units": problem.unit_names(), **(info or {})}
    return write_drop(problem.model, problem.tokenizer, attn, mlp, out, meta, lean=lean)
