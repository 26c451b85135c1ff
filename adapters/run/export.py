"""Export a compressed model as a Hugging Face directory that the stock architecture loads, for every codec.

:func:`export_model` writes the problem's *export state* at an assignment (``problem.export_state``:
a weight codec's units as the dense weights their variants stand for; dropping's dropped sub-blocks
with zeroed linear weights, so they add exactly zero and ``AutoModelForCausalLM.from_pretrained`` loads
the directory with no custom code) and ``levelsearch_compression.json``: the problem's record of the
assignment (``problem.export_record``: each unit's level and what its codec says of it; the dropped
layers), the levels, how the weights were written and what the caller adds. It is the default of
:meth:`Codec.export <levelsearch.adapters.codecs.Codec.export>`; a codec with a packed format overrides that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from levelsearch.ties import member_levels

from ..model.models import save_model

__all__ = ["export_model", "export_dropped", "verify_export"]


def export_model(problem: Any, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``problem``'s model at ``levels`` into ``out`` (see the module docstring); returns the directory."""
    lv = member_levels(problem.space, levels)
    path = save_model(problem.model, problem.tokenizer, out, state_dict=problem.export_state(lv))
    meta = {**problem.export_record(lv), "levels": lv.tolist(), **(info or {})}
    (path / "levelsearch_compression.json").write_text(json.dumps(meta, indent=1))
    return path


def export_dropped(problem: Any, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None = None) -> Path:
    """:func:`export_model` of a dropping problem (kept for callers of this name)."""
    return export_model(problem, levels, out, {"how": problem.codec.export_how, **(info or {})})


def verify_export(problem: Any, levels: np.ndarray, out: str | Path, n_seq: int = 2) -> float:
    """:meth:`~..scoring.layerwise.LayerwiseProblem.verify_export` (kept for callers of this name)."""
    return problem.verify_export(levels, out, n_seq)
