"""The Ray evaluator: same results as serial evaluation, also when a worker dies mid-run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from levelsearch import make_problem, minimize
from levelsearch.config import parse_config
from levelsearch.runner import run_config

PROBLEM = {"kind": "residual-net", "n_blocks": 10, "width": 16, "mode": "drop", "total": 3, "max_fidelity": 256}
OPTIONS = {"offspring": 8, "steps": [[64, 3], [None, 1]]}


def test_importing_levelsearch_does_not_import_ray():
    code = "import sys, levelsearch, levelsearch.runner, levelsearch.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_with_one_killed_mid_run_give_the_serial_result(ray_local):
    from levelsearch.ray_evaluator import RayEvaluator

    problem = make_problem(PROBLEM)
    serial = minimize(problem, options=OPTIONS, seed=3, max_evaluations=160)
    killed: list[int] = []
    with RayEvaluator(PROBLEM, workers=2) as ev:

        def kill_first_worker(n_evaluations: int, cost: float, best: float) -> None:
            if n_evaluations >= 50 and not killed:  # the next batch goes to a dead actor
                killed.append(n_evaluations)
                ray_local.kill(ev.workers[0])

        res = minimize(problem, options=OPTIONS, seed=3, max_evaluations=160, evaluator=ev, progress=kill_first_worker)
        assert ev.restarts == 1
    assert killed
    assert res.best_levels.tolist() == serial.best_levels.tolist() and res.best_value == serial.best_value
    assert res.trace == serial.trace
    values = {(e.levels.tobytes(), e.fidelity, e.sample): e.value for e in res.history}
    assert len(values) == len(res.history) == len(serial.history)
    assert values == {(e.levels.tobytes(), e.fidelity, e.sample): e.value for e in serial.history}
    workers = {e.worker.split("@")[0] for e in res.history}
    assert {"ray-0", "ray-1", "ray-0.1"} <= workers  # both ran, and the replacement took over


@pytest.mark.slow
def test_a_worker_killed_while_evaluating_is_replaced_and_its_requests_resent(ray_local):

    from levelsearch.optimizer import Request
    from levelsearch.ray_evaluator import RayEvaluator

    problem = make_problem(PROBLEM)
    rng = np.random.default_rng(0)
    requests = [Request(problem.space.sample(rng), 128, k) for k in range(40)]
    seen: list[int] = []
    with RayEvaluator(PROBLEM, workers=2) as ev:

        def on_result(k: int, outcome: object) -> None:
            seen.append(k)
            if len(seen) == 5:  # worker 1 holds requests in flight right now
                ray_local.kill(ev.workers[1])

        outs = ev.evaluate(requests, on_result=on_result)
        assert ev.restarts == 1
    assert sorted(seen) == list(range(40))
    assert [o.value for o in outs] == [problem.evaluate(r.levels, r.fidelity, r.sample) for r in requests]
    assert all(o.ok for o in outs)


@pytest.mark.slow
def test_a_ray_run_config_writes_the_same_summary_as_a_serial_one(ray_local, tmp_path):
    base = {
        "problem": PROBLEM,
        "optimizer": {"name": "evopress", **OPTIONS},
        "seed": 1,
        "budget": {"max_evaluations": 60},
    }
    serial = run_config(parse_config(base), tmp_path / "serial", progress=False, plot=False)
    dist = {**base, "evaluator": {"kind": "ray", "workers": 2, "resources_per_worker": {"CPU": 1}}}
    ray_summary = run_config(parse_config(dist), tmp_path / "ray", progress=False, plot=False)
    drop = ("wall_seconds", "n_replayed")
    assert {k: v for k, v in ray_summary.items() if k not in drop} == {k: v for k, v in serial.items() if k not in drop}
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["n_evaluations"] == 60


@pytest.mark.slow
def test_a_problem_the_workers_cannot_build_is_a_clear_error(ray_local):
    from levelsearch.ray_evaluator import RayEvaluator

    with pytest.raises(ValueError, match="Ray workers could not build problem 'no-such-problem'"):
        RayEvaluator({"kind": "no-such-problem"}, workers=1)


@pytest.mark.slow
def test_losing_more_workers_than_allowed_stops_with_a_clear_error(ray_local):
    from levelsearch.evaluators import WorkersLostError
    from levelsearch.optimizer import Request
    from levelsearch.ray_evaluator import RayEvaluator

    problem = make_problem(PROBLEM)
    with RayEvaluator(PROBLEM, workers=1, max_worker_restarts=0) as ev:
        ray_local.kill(ev.workers[0])
        with pytest.raises(WorkersLostError, match="Ray workers died 1 times"):
            ev.evaluate([Request(problem.space.sample(np.random.default_rng(0)))])


@pytest.mark.slow
def test_asking_for_resources_the_cluster_lacks_is_a_clear_error_not_a_hang(ray_local):
    from levelsearch.ray_evaluator import RayEvaluator

    with pytest.raises(ValueError, match="asks for 1 GPU per worker but the Ray cluster has 0"):
        RayEvaluator(PROBLEM, workers=2, resources_per_worker={"CPU": 1, "GPU": 1})
