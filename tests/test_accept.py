"""``--accept-p``: the search's result is kept over its start only when it beats it on the calibration pool's
sequences beyond chance (a one-sided paired t-test); else the start is reported and exported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from levelsearch.adapters.run.pipeline import accept_or_start
from levelsearch.adapters.run.settings import CompressSettings


class _Space:
    def validate(self, levels):
        return np.asarray(levels, dtype=np.int64)


class _Problem:
    """Per-sequence KLs given outright: the result's row, then the start's."""

    def __init__(self, result_kl, start_kl):
        self.space, self.rows, self.asked = _Space(), np.array([result_kl, start_kl], dtype=float), []

    def sequence_kls(self, candidates):
        self.asked.append([np.asarray(c).tolist() for c in candidates])
        return self.rows


BEST, START = np.array([1, 2, 0]), np.array([1, 1, 1])


def test_a_result_better_on_every_sequence_is_kept():
    p = _Problem([0.90, 1.01, 0.80, 1.12], [1.00, 1.10, 0.91, 1.20])
    levels, info = accept_or_start(p, BEST, START, 0.05)
    assert levels is BEST and info["kept"] == "result" and info["p"] < 0.001
    assert info["sequences_better"] == 4 and info["result_kl"] == pytest.approx(0.9575)
    assert p.asked == [[BEST.tolist(), START.tolist()]]


def test_a_result_better_on_average_by_chance_gives_the_start_back():
    # the curve's 5-bits case in shape: 5 of 8 sequences better, a mean gain of about one standard error
    d = np.array([-4.0, -3.7, 1.0, 3.3, -6.1, 1.6, -0.9, -2.0]) * 1e-4
    start = np.full(8, 0.018)
    levels, info = accept_or_start(_Problem(start + d, start), BEST, START, 0.05)
    assert np.array_equal(levels, START) and info["kept"] == "start" and 0.05 < info["p"] < 0.5
    assert info["start_kl"] == pytest.approx(0.018) and info["result_kl"] < info["start_kl"]


def test_no_test_without_the_setting_a_random_start_or_an_unchanged_result():
    p = _Problem([0.9, 1.2], [1.0, 1.0])
    assert accept_or_start(p, BEST, START, None) == (BEST, {})
    assert accept_or_start(p, BEST, "random", 0.05) == (BEST, {})
    assert accept_or_start(p, BEST, BEST.copy(), 0.05) == (BEST, {})
    assert p.asked == []


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "often"])
def test_a_bad_accept_p_is_refused_naming_its_key(bad):
    with pytest.raises(ValueError, match="accept_p"):
        CompressSettings.from_mapping({"method": "drop", "accept_p": bad}).check()


@pytest.mark.llm
def test_a_kept_start_is_what_results_json_reports_and_says_why(tmp_path, monkeypatch):
    """With a p no result can meet, compress reports (and would export) its start's levels and numbers."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent))
    from levelsearch.adapters.model.models import save_model
    from test_adapters_drop import byte_tokenizer, tiny_llama
    from test_curve_compress import _run, model_dir  # noqa: F401

    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), path)
    out = tmp_path / "run"
    curve = _run(path, out, [2.5, 3], accept_p=1e-12, generations=3, start="dp")
    res = json.loads((out / "target-2.5" / "results.json").read_text())
    assert curve["points"][0]["methods"]["evopress"]["acceptance"] == res["methods"]["evopress"]["acceptance"]
    ev = res["methods"]["evopress"]
    acc = ev["acceptance"]
    assert acc["kept"] == "start" and acc["accept_p"] == 1e-12 and acc["sequences"] == 4
    start = res["methods"][ev["start"]]
    assert ev["levels"] == start["levels"] and ev["heldout_kl"] == start["heldout_kl"]
    assert ev["calibration_kl"] == pytest.approx(start["calibration_kl"], rel=1e-9)
    assert acc["result_kl"] < acc["start_kl"]
