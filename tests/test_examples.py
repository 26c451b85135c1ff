"""The shipped example configs run through the CLI and do what their comments promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from levelsearch.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("seed", range(10))
def test_linear_example_finds_the_exact_optimum_within_its_budget(tmp_path, seed):
    out = tmp_path / f"seed{seed}"
    assert main(["run", str(EXAMPLES / "linear.yaml"), "--out", str(out), "--seed", str(seed), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    budget = yaml.safe_load((EXAMPLES / "linear.yaml").read_text())["budget"]["max_evaluations"]
    assert summary["best_value"] == summary["optimum"]
    assert summary["n_evaluations"] <= budget
    assert sum(summary["best_levels"]) == 16


@pytest.mark.parametrize("name", ["interacting.yaml", "noisy.yaml", "residual_net.yaml"])
def test_other_examples_run_and_write_summary_and_plot(tmp_path, name):
    cfg = yaml.safe_load((EXAMPLES / name).read_text())
    # keep the test short: a tenth of the configured budget
    cfg["budget"] = {k: v // 10 for k, v in cfg["budget"].items()}
    small = tmp_path / name
    small.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(small), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = {"problem", "optimizer", "seed", "best_value", "best_levels", "n_evaluations", "cost", "optimum"}
    assert expected <= set(summary)
    assert (out / "convergence.png").stat().st_size > 1000


def test_interacting_example_reaches_its_optimum(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(EXAMPLES / "interacting.yaml"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimum"] is not None
    assert summary["best_value"] == pytest.approx(summary["optimum"])
