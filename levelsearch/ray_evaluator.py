"""Distributed evaluation on Ray: a pool of actors, each holding its own oracle.

Imported only when a run asks for it (``evaluator: {kind: ray, ...}``), so
``import levelsearch`` never imports Ray. Each worker is a Ray actor that builds
the problem once from its config (``make_problem``), so a model is loaded once
per GPU, not once per evaluation. A batch (one selection step of EvoPress) is
spread over the workers; the driver is told each result as it finishes, so it
is journaled at once.

A worker that dies (killed, crashed, its node lost) is replaced and the
requests it held are sent again; because the oracle is deterministic in
(levels, fidelity, sample), results are identical to the serial evaluator's.
A request whose evaluation kills its worker twice is recorded as a failure
(the candidate, not the cluster, is the problem).

Example::

    from levelsearch import minimize, make_problem
    from levelsearch.ray_evaluator import RayEvaluator

    cfg = {"kind": "residual-net", "n_blocks": 16}
    with RayEvaluator(cfg, workers=4, resources_per_worker={"CPU": 1}) as ev:
        result = minimize(make_problem(cfg), evaluator=ev, max_evaluations=2000)
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from .evaluators import Evaluator, OnResult, Outcome, WorkersLostError, evaluate_one
from .optimizer import Request
from .problem import Problem, make_problem

__all__ = ["RayEvaluator"]

# in-flight evaluations per worker: one running, one queued behind it, so a worker
# never waits for the driver's round trip between two evaluations
_DEPTH = 2
# a request that kills its worker this many times is recorded as failed
_MAX_CRASHES_PER_REQUEST = 2
# seconds to wait for the workers to start and build their oracle (a model load can take minutes)
_START_TIMEOUT = 900.0


class _Worker:
    """The actor: builds the oracle once, then evaluates requests one at a time."""

    def __init__(self, problem: dict[str, Any] | Callable[[], Problem], retries: int, name: str) -> None:
        self.problem = problem() if callable(problem) else make_problem(problem)
        self.retries = retries
        self.name = f"{name}@{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        return self.name

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, levels: Any, fidelity: int | None, sample: int | None) -> tuple[float, str | None, float, str]:
        out = evaluate_one(self.problem, Request(levels, fidelity, sample), self.retries, self.name)
        return out.value, out.error, out.seconds, out.worker


class RayEvaluator(Evaluator):
    """Evaluate batches on a pool of Ray actors.

    Args:
        problem: the problem config (``{"kind": NAME, **params}``) each worker
            builds its oracle from; the kind must be importable on every node
            (built in, or registered through the ``levelsearch.problems`` entry
            points). A zero-argument callable returning a :class:`Problem` works
            too (Ray pickles it to the workers), for oracles that are not registered.
        workers: number of actors (default 1).
        resources_per_worker: Ray resources of each actor, e.g. ``{"CPU": 1, "GPU": 1}``
            (default ``{"CPU": 1}``); other keys are custom Ray resources.
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``); default:
            join a running ``ray.init`` of this process, else start Ray locally.
        retries: extra attempts for an evaluation that raised an exception.
        max_worker_restarts: how many dead workers may be replaced in total
            before :class:`~levelsearch.evaluators.WorkersLostError` stops the run
            (default ``4 * workers``).

    Raises:
        ValueError: bad options, or the workers could not build the problem.
    """

    def __init__(
        self,
        problem: Mapping[str, Any] | Callable[[], Problem],
        *,
        workers: int = 1,
        resources_per_worker: Mapping[str, float] | None = None,
        address: str | None = None,
        retries: int = 0,
        max_worker_restarts: int | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        self.problem_config: dict[str, Any] | Callable[[], Problem] = problem if callable(problem) else dict(problem)
        self.n_workers = workers
        self.retries = retries
        self.max_worker_restarts = 4 * workers if max_worker_restarts is None else int(max_worker_restarts)
        self.restarts = 0
        self._options = _actor_options(resources_per_worker)
        self._owns_ray = False
        if not ray.is_initialized():
            # no dashboard for a local instance; a cluster (or a ray:// client) keeps its own settings
            kwargs: dict[str, Any] = {"address": address} if address else {"include_dashboard": False}
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ValueError(f"could not start or join {where}: {_first_line(exc)}") from None
            self._owns_ray = True
        self._check_resources()
        self._cls = ray.remote(_Worker)
        self._generation = [0] * workers
        self.workers: list[Any] = [self._start(slot) for slot in range(workers)]
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=_START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ValueError(
                f"Ray workers did not start within {_START_TIMEOUT:g} s (waiting for resources "
                f"{self._options}); lower resources_per_worker or workers"
            ) from None
        except ray.exceptions.RayError as exc:
            self.close()
            what = getattr(problem, "get", lambda _: problem)("kind")
            raise ValueError(f"Ray workers could not build problem {what!r}: {_first_line(exc)}") from None

    def _check_resources(self) -> None:
        """Refuse at once what the cluster can never give one worker (else the actors wait forever)."""
        total = ray.cluster_resources()
        want = {"CPU": self._options["num_cpus"], "GPU": self._options.get("num_gpus", 0)}
        want.update(self._options.get("resources", {}))
        for name, amount in want.items():
            if amount > total.get(name, 0):
                self.close()
                raise ValueError(
                    f"resources_per_worker asks for {amount:g} {name} per worker but the Ray cluster has "
                    f"{total.get(name, 0):g}; lower it or join a cluster that has {name} (evaluator.address)"
                )

    def _start(self, slot: int) -> Any:
        name = f"ray-{slot}" if self._generation[slot] == 0 else f"ray-{slot}.{self._generation[slot]}"
        return self._cls.options(**self._options).remote(self.problem_config, self.retries, name)

    def _replace(self, slot: int, reason: str) -> None:
        self.restarts += 1
        if self.restarts > self.max_worker_restarts:
            raise WorkersLostError(
                f"Ray workers died {self.restarts} times (last: {reason}); check the cluster and the oracle, "
                "then resume the run"
            )
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.workers[slot])
        self._generation[slot] += 1
        self.workers[slot] = self._start(slot)

    def evaluate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Outcome]:
        n = len(requests)
        outs: list[Outcome | None] = [None] * n
        queue: deque[int] = deque(range(n))
        inflight: dict[Any, tuple[int, int]] = {}  # object ref -> (slot, request index)
        per_slot: list[deque[tuple[Any, int]]] = [deque() for _ in self.workers]  # in submission order
        crashes = [0] * n

        def finish(idx: int, out: Outcome) -> None:
            outs[idx] = out
            if on_result is not None:
                on_result(idx, out)

        def fill() -> None:
            for slot in range(len(self.workers)):
                while queue and len(per_slot[slot]) < _DEPTH:
                    idx = queue.popleft()
                    r = requests[idx]
                    ref = self.workers[slot].evaluate.remote(r.levels, r.fidelity, r.sample)
                    inflight[ref] = (slot, idx)
                    per_slot[slot].append((ref, idx))

        try:
            fill()
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                ref = ready[0]
                slot, idx = inflight.pop(ref)
                try:
                    value, error, seconds, worker = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task itself raised (not the oracle)
                    _drop(per_slot[slot], ref)
                    finish(idx, Outcome(math.inf, f"worker error: {_first_line(exc)}", 0.0, f"ray-{slot}"))
                except ray.exceptions.RayError as exc:  # the worker died: replace it, resend its requests
                    held = list(per_slot[slot])
                    per_slot[slot].clear()
                    for other, _ in held:
                        inflight.pop(other, None)
                    running = held[0][1] if held else idx
                    crashes[running] += 1
                    again = [i for _, i in held if i != running or crashes[running] < _MAX_CRASHES_PER_REQUEST]
                    if crashes[running] >= _MAX_CRASHES_PER_REQUEST:
                        finish(running, Outcome(math.inf, f"evaluation killed its worker twice ({_first_line(exc)})"))
                    queue.extendleft(reversed(again))
                    self._replace(slot, _first_line(exc))
                else:
                    _drop(per_slot[slot], ref)
                    finish(idx, Outcome(float(value), error, float(seconds), str(worker)))
                fill()
        except BaseException:
            for ref in inflight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise
        missing = [i for i, o in enumerate(outs) if o is None]
        if missing:  # cannot happen: every request is either finished or resent
            raise RuntimeError(f"Ray evaluator lost requests {missing}")
        return [o for o in outs if o is not None]

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring)."""
        return [int(p) for p in ray.get([w.pid.remote() for w in self.workers])]

    def close(self) -> None:
        """Stop the workers (and Ray, when this evaluator started it)."""
        for w in getattr(self, "workers", []):
            with contextlib.suppress(Exception):
                ray.kill(w)
        self.workers = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop(held: deque[tuple[Any, int]], ref: Any) -> None:
    for k, (r, _) in enumerate(held):
        if r == ref:
            del held[k]
            return


def _actor_options(resources: Mapping[str, float] | None) -> dict[str, Any]:
    res = dict(resources or {"CPU": 1})
    for k, v in res.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"resources_per_worker must map resource names to numbers >= 0, got {resources!r}")
    opts: dict[str, Any] = {"num_cpus": res.pop("CPU", 1), "max_restarts": 0, "max_task_retries": 0}
    if "GPU" in res:
        opts["num_gpus"] = res.pop("GPU")
    if res:
        opts["resources"] = res
    return opts


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
