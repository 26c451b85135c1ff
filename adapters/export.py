"""Export a compressed model as a Hugging Face directory, and check it.

Dropped sub-blocks are *zeroed*, not removed: every linear layer inside a dropped
attention or MLP sub-module gets zero weights (and bias), so the sub-block adds exactly
zero to the residual stream and ``AutoModelForCausalLM.from_pretrained`` loads the
directory with the stock architecture (no custom code). The file keeps its size;
``levelsearch_compression.json`` lists what was dropped so a runtime can skip it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .dropping import DropProblem
from .models import save_model

__all__ = ["export_dropped", "verify_export"]


def export_dropped(
    problem: DropProblem, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None = None
) -> Path:
    """Write the model of ``problem`` with the sub-blocks dropped by ``levels`` zeroed into ``out``."""
    lv = problem.space.validate(levels)
    attn, mlp = problem.dropped_modules(lv)
    zeroed: set[int] = set()
    for idx in attn:
        zeroed |= {id(p) for m in problem.map.attn[idx].modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    for idx in mlp:
        zeroed |= {id(p) for m in problem.map.mlp[idx].modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    problem.runner.set_dropped([])
    by_id = {id(p): p for p in problem.model.parameters()}
    state: dict[str, torch.Tensor] = {}
    for name, t in problem.model.state_dict(keep_vars=True).items():
        state[name] = torch.zeros_like(t) if id(t) in zeroed and id(t) in by_id else t
    path = save_model(problem.model, problem.tokenizer, out, state_dict=state)
    meta = {
        "dropped_attention_layers": attn,
        "dropped_mlp_layers": mlp,
        "levels": lv.tolist(),
        "units": problem.unit_names(),
        "how": "linear weights of dropped sub-blocks are zero",
        **(info or {}),
    }
    (path / "levelsearch_compression.json").write_text(json.dumps(meta, indent=2))
    return path


def verify_export(problem: DropProblem, levels: np.ndarray, out: str | Path, n_seq: int = 2) -> float:
    """:meth:`~levelsearch.adapters.layerwise.LayerwiseProblem.verify_export` (kept for callers of this name)."""
    return problem.verify_export(levels, out, n_seq)
