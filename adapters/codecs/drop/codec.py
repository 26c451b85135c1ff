"""The ``drop`` codec: sub-block (or whole-block) dropping of a decoder.

Units are the attention and MLP sub-blocks of every decoder layer (``whole_blocks``: one unit
per layer); level 0 keeps a unit, level 1 drops it: its residual branch adds nothing. Each drop
costs 1 in the budget. The variant needs no calibration statistic and no storage: the layer
runner switches a sub-module's ``forward`` to zeros (:meth:`~..scoring.fitness.LayerRunner.drop_module`),
and an export zeroes the dropped sub-blocks' parameters (the problem's export state; the shared
:func:`~levelsearch.adapters.run.export.export_model` writes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from levelsearch import Request
from levelsearch.schema import Field

from ...formats.drop import export_drop
from ...run.pipeline import read_cache, write_cache
from ..base import Codec, Setting, Settings, check_start, model_and_data_settings, target_in
from .heuristics import run_heuristics
from .problem import DropProblem

__all__ = ["DropCodec"]


class DropCodec(Codec):
    """Drop ``--target`` (a fraction in (0, 1)) of the sub-blocks; ``--budget``, ``--whole-blocks``."""

    name = "drop"
    profile_label = "dropped"
    start_label = "heuristic"
    example_target = 0.5
    export_how = "parameters of dropped sub-blocks are zero"
    target_help = "fraction of sub-blocks (0.25)"
    default_target = 0.25
    compress_settings: ClassVar[tuple[Setting, ...]] = (
        Setting("heuristics", None, Field("list", items=Field("str"), nullable=True), "comma list (default all)"),
        Setting("whole_blocks", False, Field("bool"), "drop whole layers, not sub-blocks"),
        Setting("budget", "per-type", Field("str"), "per-type (k attention + k MLP, default) or total"),
    )
    #: ``drop``: whole dropped layers removed and renumbered, sub-blocks dropped alone written as zeros that
    #: compute exactly zero (stock loader); ``zeroed``: the dense file with dropped sub-blocks' parameters
    #: zeroed; ``drop-lean``: as ``drop``, sub-blocks dropped alone left out (smaller; only ``load_compressed``
    #: runs it). See :mod:`levelsearch.adapters.formats.drop`.
    formats: ClassVar[tuple[str, ...]] = ("drop", "zeroed", "drop-lean")

    def check_settings(self, settings: Settings) -> None:
        target_in(settings, 0.0, 1.0, "a fraction strictly between 0 and 1", open_ends=True)
        if settings["heuristic_tokens"] > settings["calibration_tokens"]:
            raise ValueError(
                f"heuristic_tokens ({settings['heuristic_tokens']}) exceeds the calibration pool "
                f"({settings['calibration_tokens']}); lower it or raise --calibration-tokens"
            )
        from .heuristics import HEURISTICS  # torch: the codec's class is read without it

        bad = [h for h in settings.get("heuristics") or () if h not in HEURISTICS]
        if bad:
            raise ValueError(f"--heuristics: unknown heuristic {bad[0]!r}; known: {', '.join(HEURISTICS)}")
        check_start(settings, list(settings.get("heuristics") or HEURISTICS), label=self.start_label)

    def make_problem(self, settings: Settings) -> Any:

        return DropProblem(
            settings["model"],
            target=float(settings["target"]),
            whole_blocks=bool(settings["whole_blocks"]),
            budget=settings["budget"],
            **model_and_data_settings(settings),
        )

    def run_baselines(self, problem: Any, settings: Settings, cache: Any, tag: dict[str, str]) -> dict[str, Any]:
        """The dropping heuristics (:mod:`levelsearch.adapters.codecs.drop.heuristics`) and their calibration KL on the
        whole pool, cached in ``cache/heuristics.json`` for this problem and these settings; the KLs go
        into the problem's memo (a start is not evaluated again)."""

        seed = int(settings["seed"])
        path = cache / "heuristics.json"
        key = {**tag, "heuristics": settings["heuristics"], "tokens": settings["heuristic_tokens"], "seed": seed}
        heur = read_cache(path, key, "heuristics")
        if heur is None:
            heur = run_heuristics(problem, settings["heuristics"], n_tokens=settings["heuristic_tokens"], seed=seed)
            cal = problem.evaluate_many([Request(h["levels"], None, 0) for h in heur.values()]) if heur else []
            for n, v in zip(list(heur), cal):
                heur[n]["calibration_kl"] = v
            write_cache(path, key, "heuristics", heur)
        out = {}
        for n, h in heur.items():
            lv = np.asarray(h["levels"], dtype=np.int64)
            problem.remember(lv, h["calibration_kl"])
            out[n] = {"levels": lv, "calibration_kl": float(h["calibration_kl"]), "evaluations": 0}
            out[n]["seconds"] = float(h["seconds"])
        return out

    def results_fields(self, problem: Any, settings: Settings) -> dict[str, Any]:
        return {
            "budget": settings["budget"],
            "whole_blocks": bool(settings["whole_blocks"]),
            "units": problem.unit_names(),
            "space": problem.space.to_dict(),
        }

    def write_format(
        self, format: str, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None
    ) -> Path:
        """``drop`` and ``drop-lean`` (:func:`~levelsearch.adapters.formats.drop.export_drop`); ``zeroed``: the
        dense export."""
        if format in ("drop", "drop-lean"):
            return export_drop(problem, levels, out, info, lean=format == "drop-lean")
        return Path(super().write_format(format, problem, levels, out, info))

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        attn, mlp = problem.dropped_modules(levels)
        return {"dropped": {"attention": attn, "mlp": mlp}}
