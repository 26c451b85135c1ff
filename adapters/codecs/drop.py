"""The ``drop`` codec: sub-block (or whole-block) dropping of a decoder.

Units are the attention and MLP sub-blocks of every decoder layer (``whole_blocks``: one unit
per layer); level 0 keeps a unit, level 1 drops it: its residual branch adds nothing. Each drop
costs 1 in the budget. The variant needs no calibration statistic and no storage: the layer
runner switches a sub-module's ``forward`` to zeros (:meth:`~levelsearch.adapters.fitness.LayerRunner.drop_module`),
and an export zeroes the dropped sub-blocks' output projections (:mod:`levelsearch.adapters.export`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec, Settings, model_and_data_settings

__all__ = ["DropCodec"]


class DropCodec(Codec):
    """Drop ``--target`` (a fraction in (0, 1)) of the sub-blocks; ``--budget``, ``--whole-blocks``."""

    name = "drop"
    profile_label = "dropped"
    flow = "levelsearch.adapters.compress:run_drop"
    example_target = 0.25

    def make_problem(self, settings: Settings) -> Any:
        from ..dropping import DropProblem

        return DropProblem(
            settings["model"],
            target=float(settings["target"]),
            whole_blocks=bool(settings["whole_blocks"]),
            budget=settings["budget"],
            **model_and_data_settings(settings),
        )

    def export(self, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None) -> Any:
        """The model with the dropped sub-blocks' output projections zeroed (loads with the stock architecture)."""
        from ..export import export_dropped

        return export_dropped(problem, levels, out, info)

    def verify_export(self, problem: Any, levels: np.ndarray, path: Any) -> float:
        from ..export import verify_export

        return verify_export(problem, levels, path)

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        attn, mlp = problem.dropped_modules(levels)
        return {"dropped": {"attention": attn, "mlp": mlp}}
