"""A gguf curve on a mixture of experts: each next target's level space keeps the expert tensors' ties."""

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
from test_gguf_moe import moe  # noqa: E402, F401  (the tiny MoE problems, a fixture)

pytestmark = pytest.mark.llm


def test_a_moe_problem_moved_to_another_target_keeps_the_ties(moe):  # noqa: F811
    from levelsearch.adapters.codecs import get_codec
    from levelsearch.adapters.run.curve import moved

    from levelsearch.ties import TiedSpace

    problem, _ = moe
    other = moved(problem, get_codec("gguf"), {"target": 4.5})
    assert isinstance(other.space, TiedSpace) and np.array_equal(other.space.tie_of, problem.space.tie_of)
    assert other.target == 4.5 and problem.target == 4.0  # the first problem keeps its budget
    assert other.space.total == pytest.approx(4.5 * float(problem.numel.sum()) / 8)
