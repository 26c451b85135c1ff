"""Our held-out KL statistics against llama.cpp's ``llama-perplexity --kl-divergence`` on the same tokens
(``bench/gguf_llama_check.py``'s comparison), on a tiny GGUF model; skipped without llama.cpp's tools."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("libgguf")
pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from levelsearch.adapters.codecs.gguf import llamacpp as lc  # noqa: E402
from test_gguf import write_tiny_gguf  # noqa: E402

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(lc.find_tools() is None, reason="llama.cpp's tools are not built (make llama-tools)"),
]


def test_mean_kl_and_top1_agree_with_llama_perplexity_within_two_percent(tmp_path):
    from gguf_llama_check import TOL, compare
    from levelsearch.adapters.codecs.gguf.export import write_gguf
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem

    src = write_tiny_gguf(tmp_path / "tiny-f16.gguf")
    problem = GGUFProblem(
        str(src), target=4.0, types=("Q2_K", "Q3_K", "Q4_K", "Q6_K"), tol=0.02, seq_len=32,
        calibration_tokens=256, heldout_tokens=512, top_k=260, progress=False, database=str(tmp_path / "db"),
    )  # fmt: skip
    levels = problem.space.repair(np.ones(len(problem.unit_names), dtype=np.int64), np.random.default_rng(0))
    path = write_gguf(problem, levels, tmp_path / "model.gguf")
    got = compare(problem, levels, path, tmp_path / "work", threads=1)
    assert got["chunks"] == problem.heldout.n_seq and got["scored_positions"] == got["chunks"] * 15
    for name, way in got["ways"].items():  # an F16 source: both ways agree
        assert way["llama_perplexity"]["kl_mean"] > 0
        for key in ("kl_mean", "top1"):
            assert abs(way["relative_gap"][key]) <= TOL, (name, key, way["ours"], way["llama_perplexity"])
    assert got["within_tol"] == {"kl_mean": True, "top1": True}
    assert not (tmp_path / "work" / "source.kld").exists()
