"""Same numbers: ``levelsearch compress`` for every built-in codec gives the results it gave before the
codec refactor.

``golden/compress_tiny.json`` was written by the code of b673fc1 (before the codecs) with the settings
below: the reference optimizer (``evopress-ref``, stable by design), 2 generations, a 2-layer tiny
Llama. Held-out perplexities must agree to 4 significant digits and every method's levels exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.cli.compress import run_compress  # noqa: E402

pytestmark = pytest.mark.llm

GOLDEN = json.loads((Path(__file__).parent / "golden" / "compress_tiny.json").read_text())
SETTINGS = dict(
    seq_len=32,
    calibration_tokens=128,
    heldout_tokens=64,
    top_k=16,
    heuristic_tokens=64,
    offspring=4,
    progress=False,
    generations=2,
    optimizer="evopress-ref",
    export=False,
    estimates="layer",  # the per-unit estimates of b673fc1 (the Fisher ones add a baseline, dp-fisher, since)
)
TARGETS = {"drop": 0.5, "sparsity": 0.5, "quant": 3, "joint": 3}


@pytest.fixture
def model_dir(tiny_llama_dir):
    return tiny_llama_dir


@pytest.mark.parametrize("method", sorted(TARGETS))
def test_compress_gives_the_numbers_it_gave_before_the_codec_refactor(method, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    res = run_compress(
        {
            **SETTINGS,
            "model": str(model_dir),
            "method": method,
            "target": TARGETS[method],
            "out": str(tmp_path / "run"),
            "database": str(tmp_path / "db"),
            **({"ties": "none"} if method in ("quant", "joint") else {}),  # the units of b673fc1, untied
        }
    )
    want = GOLDEN[method]
    assert math.isclose(res["dense"]["heldout_ppl"], want["dense"], rel_tol=1e-4)
    assert list(res["methods"]) == list(want["methods"])
    for name, m in want["methods"].items():
        got = res["methods"][name]
        assert got["levels"] == m["levels"], name
        assert math.isclose(got["heldout_ppl"], m["heldout_ppl"], rel_tol=1e-4), name
