"""An LLM problem's defaults through ``levelsearch run``: the CPU schedule sized to its pool, and (drop)
compress's start, the best published heuristic."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from levelsearch import make_problem  # noqa: E402
from levelsearch.config import parse_config  # noqa: E402
from levelsearch.runner import run_config  # noqa: E402

pytestmark = pytest.mark.llm


def _drop(model_dir) -> dict:
    return {
        "kind": "llm-drop",
        "model": str(model_dir),
        "target": 0.5,
        "seq_len": 16,
        "calibration_tokens": 128,
        "heldout_tokens": 32,
        "top_k": 8,
    }


def test_the_drop_problems_schedule_is_sized_to_its_pool(tiny_llama_dir) -> None:
    problem = make_problem(_drop(tiny_llama_dir))
    opts = problem.default_schedule("evopress")
    assert opts["steps"] == [(16, 3), (64, 1), (128, 1)]
    assert opts["offspring"] == 8 and opts["screen"] == 8 and opts["no_repeats"] is True
    assert problem.default_schedule("evopress-ref")["offspring"] == 16


def test_run_with_evopress_and_nothing_else_uses_the_problems_schedule_and_best_heuristic(tiny_llama_dir, tmp_path):
    cfg = parse_config(
        {"problem": _drop(tiny_llama_dir), "optimizer": {"name": "evopress"}, "budget": {"max_cost": 800}}
    )
    summary = run_config(cfg, tmp_path / "run", progress=False, plot=False)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["defaults"] == summary["defaults"]
    assert summary["defaults"]["schedule_from"] == "problem"
    assert summary["defaults"]["schedule"]["steps"] == [[16, 3], [64, 1], [128, 1]]
    assert summary["defaults"]["start_from"] == "problem"
    from levelsearch.journal import Journal

    first = next(iter(Journal(tmp_path / "run" / "journal.db", readonly=True).records()))
    # the search began at a feasible heuristic, measured on the whole pool, and never ends worse than it
    assert first.fidelity == 128
    assert summary["best_value"] <= first.value + 1e-9
