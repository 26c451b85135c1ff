"""The steps every ``levelsearch compress`` flow shares: checks before the model loads, the output
directory's lock, the search (EvoPress with a journal, a wall-time limit and a progress bar) and
what a results file says of it.

The flows themselves (:func:`levelsearch.adapters.compress.run_drop` for the ``drop`` codec,
:func:`levelsearch.adapters.levelcompress.run_levels` for codecs with a variant database) call
these; nothing heavy is imported at import time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "check_numbers",
    "check_out",
    "lock_out",
    "check_journal_problem",
    "say",
    "jsonable",
    "make_optimizer",
    "search",
    "evopress_entry",
    "export_and_write",
]


def check_numbers(cfg: dict[str, Any]) -> None:
    """Token counts, generations and minutes: finite, positive and below sane limits (before the model loads)."""
    for key in ("calibration_tokens", "heldout_tokens", "seq_len", "generations", "top_k", "heuristic_tokens"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10**9:
            raise ValueError(f"{key} must be a positive integer (at most 1e9), got {v!r}")
    m = cfg.get("search_minutes")
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1e6):
        raise ValueError(f"search_minutes must be a positive number of minutes (finite, at most 1e6), got {m!r}")
    if cfg["calibration_tokens"] < cfg["seq_len"]:
        raise ValueError("calibration_tokens must hold at least one sequence of seq_len tokens")


def check_out(out: Any) -> None:
    """``--out`` must be a directory or not exist yet: an existing file is refused before the model loads."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is an existing file, not a directory; choose a directory with --out")


def lock_out(cfg: dict[str, Any], out: Path) -> None:
    """Create ``out`` and lock it before anything is written into it (released by :func:`run_compress`).

    A second ``compress`` into the same directory is refused (one line) while the first runs.
    """
    from levelsearch.runner import DirectoryLock

    out.mkdir(parents=True, exist_ok=True)
    cfg["_lock"] = DirectoryLock(out)


def check_journal_problem(out: Any, problem: Any) -> None:
    """Refuse ``out`` when its journal was written for another problem (other weights, data or
    settings), before any cache in it is read or rebuilt: one line."""
    path = Path(out) / "journal.db"
    if not path.exists():
        return
    from levelsearch import Journal

    with Journal(path, readonly=True) as jr:
        stored = (jr.meta("identity") or {}).get("problem")
    want = json.loads(json.dumps(problem.describe(), sort_keys=True, default=str))
    if stored != want:
        what = "model weights or data" if (stored or {}).get("content") != want.get("content") else "settings"
        raise ValueError(
            f"{out} holds a run of another problem (its {what} differ: the content fingerprint is part of the "
            "run's identity); choose a new --out"
        )


def say(cfg: dict[str, Any], msg: str) -> None:
    if cfg["progress"]:
        print(f"levelsearch compress: {msg}", file=sys.stderr, flush=True)


class GenerationBar:
    """A tqdm bar over EvoPress generations showing the parent's calibration KL."""

    def __init__(self, opt: Any, total: int) -> None:
        from tqdm.auto import tqdm

        self.opt = opt
        self.bar = tqdm(total=total, unit="gen", dynamic_ncols=True, desc="EvoPress")
        self.seen = 0

    def __call__(self, n: int, cost: float, best: float) -> None:
        if self.opt.generation > self.seen:
            self.bar.update(self.opt.generation - self.seen)
            self.seen = self.opt.generation
            self.bar.set_postfix(kl=f"{self.opt.parent_value:.4f}", evals=n)

    def close(self) -> None:
        self.bar.close()


def jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _timed_evopress(name: str = "evopress") -> type:
    from levelsearch import get_optimizer

    if name not in ("evopress", "evopress-ref"):
        raise ValueError(f"--optimizer must be evopress (default) or evopress-ref (the reference), got {name!r}")
    base = get_optimizer(name)

    class TimedEvoPress(base):  # type: ignore[valid-type,misc]
        """EvoPress that also stops once ``seconds`` of wall time have passed since it was built."""

        def __init__(self, space: Any, *, seconds: float | None = None, **kw: Any) -> None:
            super().__init__(space, **kw)
            self._deadline = None if seconds is None else time.monotonic() + float(seconds)

        def stop(self) -> bool:
            return super().stop() or (self._deadline is not None and time.monotonic() > self._deadline)

    return TimedEvoPress


def make_optimizer(space: Any, *, optimizer: str = "evopress", **kw: Any) -> Any:
    return _timed_evopress(optimizer)(space, **kw)


def search(problem: Any, cfg: dict[str, Any], options: dict[str, Any], start_name: str, out: Path) -> tuple[Any, Any]:
    """Run the optimizer ``cfg["optimizer"]`` on ``problem`` with the schedule ``options`` (start included).

    Journaled in ``out/journal.db`` under an identity made of the schedule, the optimizer, its options
    and the start, so the same command again resumes. Stops after ``cfg["generations"]`` generations
    or ``cfg["search_minutes"]``. Returns ``(result, optimizer)``.
    """
    from levelsearch import minimize

    seconds = None if cfg["search_minutes"] is None else 60.0 * float(cfg["search_minutes"])
    opt = make_optimizer(
        problem.space,
        optimizer=str(cfg["optimizer"]),
        seed=int(cfg["seed"]),
        max_generations=int(cfg["generations"]),
        seconds=seconds,
        **options,
    )
    ident = {
        "schedule": cfg["schedule"],
        "optimizer": cfg["optimizer"],
        "options": jsonable(options),
        "start": start_name,
    }
    bar: Any = GenerationBar(opt, int(cfg["generations"])) if cfg["progress"] else False
    try:
        result = minimize(
            problem, optimizer=opt, journal=out / "journal.db", identity=ident, progress=bar, seed=int(cfg["seed"])
        )
    finally:
        if bar:
            bar.close()
    return result, opt


def evopress_entry(result: Any, opt: Any, seconds: float, start_name: str) -> dict[str, Any]:
    """What ``results.json`` says of the search beside the held-out numbers."""
    return {
        "calibration_kl": float(result.best_value),
        "evaluations": int(result.n_evaluations),
        "tokens": float(result.cost),
        "generations": int(opt.generation),
        "seconds": seconds,
        "start": start_name,
        "stopped_by": result.stopped_by,
        "replayed_evaluations": int(result.n_replayed),
    }


def export_and_write(
    codec: Any, problem: Any, best: Any, results: dict[str, Any], timings: dict[str, float], t_all: float, cfg: Any
) -> dict[str, Any]:
    """Export the search's best model (unless ``cfg["export"]`` is off) and check its logits, then write
    ``OUT/results.json`` with the timings (seconds since ``t_all``). Returns ``results``."""
    out = Path(cfg["out"])
    if cfg["export"]:
        t0 = time.perf_counter()
        path = codec.export(
            problem, best, out / "model", {"heldout_ppl": results["methods"]["evopress"]["heldout_ppl"]}
        )
        results["export"] = {"dir": str(path), "max_abs_logit_diff": codec.verify_export(problem, best, path)}
        timings["export"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    results["timings"] = timings
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=1))
    return results
