"""The same search through every door: ``levelsearch run`` with ``optimizer: {name: evopress}`` and nothing else
runs, on an LLM drop problem, the search ``levelsearch compress`` runs (same schedule, start and seed): the two
journals hold the same requests and values."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from levelsearch.adapters.cli.compress import run_compress  # noqa: E402

from levelsearch.config import parse_config  # noqa: E402
from levelsearch.journal import Journal  # noqa: E402
from levelsearch.runner import run_config  # noqa: E402

pytestmark = pytest.mark.llm

SHARED = {"target": 0.5, "seq_len": 16, "calibration_tokens": 128, "heldout_tokens": 32, "top_k": 8}


def test_run_and_compress_evaluate_the_same_candidates_on_the_same_tokens(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    problem = {"kind": "llm-drop", "model": str(tiny_llama_dir), **SHARED}
    cfg = parse_config({"problem": problem, "optimizer": {"name": "evopress"}, "seed": 0, "budget": {"max_cost": 500}})
    run_config(cfg, tmp_path / "run", progress=False, plot=False)
    run_compress(
        {
            "model": str(tiny_llama_dir),
            "method": "drop",
            **SHARED,
            "heuristic_tokens": 128,  # the problem's own start ranks them on min(2,048, its pool)
            "seed": 0,
            "generations": 2,
            "progress": False,
            "export": False,
            "out": str(tmp_path / "compress"),
        }
    )
    ran = list(Journal(tmp_path / "run" / "journal.db", readonly=True).records())
    compressed = list(Journal(tmp_path / "compress" / "journal.db", readonly=True).records())
    n = min(len(ran), len(compressed))
    assert n >= 10, n
    for a, b in zip(ran[:n], compressed[:n]):
        assert (a.fidelity, a.sample, a.levels.tolist()) == (b.fidelity, b.sample, b.levels.tolist())
        assert a.value == pytest.approx(b.value, rel=1e-6)
