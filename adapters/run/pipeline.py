"""The one ``levelsearch compress`` pipeline, for every registered codec (:func:`run`):

load (the codec builds its problem; a weight codec's variant database is built or reused there)
→ dense teachers (cached in ``OUT/cache`` when the problem computes them lazily) → baselines on
calibration data (the codec's: heuristics for ``drop``; uniform, the codec's own, DP and random
for weight codecs) → search (EvoPress from the best baseline, journaled in ``OUT/journal.db``, so
the same command again resumes) → held-out perplexity and KL of dense and every method → export
through the codec, checked against the searched logits → ``OUT/results.json`` and
``OUT/profile.png``. Nothing heavy is imported at import time.

The journal is the record of a run: every method's final levels and values are stored in it
(:func:`record_results`, under the journal's integrity chain), and ``levelsearch export`` and the
gguf export read them from there (:func:`journal_results`, :func:`journal_levels`).
``results.json`` is a report for people, never read back as an input.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from levelsearch import Journal, Request, get_optimizer, minimize
from levelsearch.runner import DirectoryLock
from levelsearch.schema import validate

from ..formats import check_format
from ..formats.experts import refuse_experts
from ..formats.run import export_and_check
from ..formats.verify import ExportCheckFailed
from ..model.integrity import json_checksum, say_rebuild
from ..model.models import resolve_device, resolve_dtype
from ..scoring.fitness import Teacher
from .schedules import schedule_options
from .settings import compress_schema

__all__ = [
    "run",
    "run_target",
    "Teachers",
    "check_settings",
    "choose_start",
    "read_cache",
    "write_cache",
    "check_numbers",
    "check_device",
    "check_out",
    "lock_out",
    "check_journal_problem",
    "say",
    "jsonable",
    "make_optimizer",
    "search",
    "evopress_entry",
    "export_and_write",
    "record_results",
    "journal_results",
    "journal_levels",
]


def check_numbers(cfg: dict[str, Any]) -> None:
    """Every setting's type and range (token counts, generations, minutes, threads ...) against the declared
    :func:`~levelsearch.adapters.run.settings.compress_schema`, before the model loads (one line naming the key)."""

    schema = compress_schema()  # built on use: the kinds registered by now add their settings
    validate({k: v for k, v in cfg.items() if k in schema.fields}, schema, where="settings")


def check_device(cfg: dict[str, Any]) -> None:
    """``--device`` names a device this machine has and ``--dtype`` a known dtype (before the model loads)."""

    resolve_dtype(cfg.get("dtype"), resolve_device(cfg.get("device")))


def check_out(out: Any) -> None:
    """``--out`` must be a directory or not exist yet: an existing file is refused before the model loads."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is an existing file, not a directory; choose a directory with --out")


def lock_out(cfg: dict[str, Any], out: Path) -> None:
    """Create ``out`` and lock it before anything is written into it (released by :func:`run_compress`).

    A second ``compress`` into the same directory is refused (one line) while the first runs.
    """

    out.mkdir(parents=True, exist_ok=True)
    cfg["_lock"] = DirectoryLock(out)


def check_journal_problem(out: Any, problem: Any) -> None:
    """Refuse ``out`` when its journal was written for another problem (other weights, data or
    settings), before any cache in it is read or rebuilt: one line."""
    path = Path(out) / "journal.db"
    if not path.exists():
        return

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
    if name not in ("evopress", "evopress-ref"):
        raise ValueError(f"--optimizer must be evopress (default) or evopress-ref (the reference), got {name!r}")
    base = get_optimizer(name)

    class TimedEvoPress(base):  # type: ignore[valid-type,misc]
        """EvoPress that also stops once ``seconds`` of wall time have passed since it was built."""

        def __init__(self, space: Any, *, seconds: float | None = None, **kw: Any) -> None:
            super().__init__(space, **kw)
            self._deadline = None if seconds is None else time.monotonic() + float(seconds)

        def stop(self) -> bool:
            if super().stop():
                return True
            if self._deadline is not None and time.monotonic() > self._deadline:
                self.stop_reason = "search_minutes reached"
                return True
            return False

    return TimedEvoPress


def make_optimizer(space: Any, *, optimizer: str = "evopress", **kw: Any) -> Any:
    return _timed_evopress(optimizer)(space, **kw)


def search(problem: Any, cfg: dict[str, Any], options: dict[str, Any], start_name: str, out: Path) -> tuple[Any, Any]:
    """Run the optimizer ``cfg["optimizer"]`` on ``problem`` with the schedule ``options`` (start included).

    Journaled in ``out/journal.db`` under an identity made of the schedule, the optimizer, its options
    and the start, so the same command again resumes. Stops after ``cfg["generations"]`` generations
    or ``cfg["search_minutes"]``. Returns ``(result, optimizer)``.
    """

    seconds = None if cfg["search_minutes"] is None else 60.0 * float(cfg["search_minutes"])
    stopping = stopping_rule(cfg)
    opt = make_optimizer(
        problem.space,
        optimizer=str(cfg["optimizer"]),
        seed=int(cfg["seed"]),
        max_generations=int(cfg["generations"]),
        seconds=seconds,
        **stopping,
        **options,
    )
    ident = {
        "schedule": cfg["schedule"],
        "optimizer": cfg["optimizer"],
        "options": jsonable(options),
        "start": start_name,
    }
    if stopping:  # a journal of a run without the rule resumes as before
        ident["stopping_rule"] = stopping
    bar: Any = GenerationBar(opt, int(cfg["generations"])) if cfg["progress"] else False
    try:
        result = minimize(
            problem, optimizer=opt, journal=out / "journal.db", identity=ident, progress=bar, seed=int(cfg["seed"])
        )
    finally:
        if bar:
            bar.close()
    return result, opt


#: compress's stopping rule: stop once this many generations in a row gained less than
#: ``COMPRESS_MIN_IMPROVEMENT`` (relative calibration KL, on each final step's shared tokens)
COMPRESS_PATIENCE = 20
COMPRESS_MIN_IMPROVEMENT = 1e-3


def stopping_rule(cfg: dict[str, Any]) -> dict[str, Any]:
    """EvoPress's stopping-rule options for compress: ``cfg["patience"]`` generations in a row under
    ``cfg["min_improvement"]`` (defaults :data:`COMPRESS_PATIENCE`, :data:`COMPRESS_MIN_IMPROVEMENT`);
    ``patience`` 0 (or ``None`` given explicitly) turns it off: the search runs its generations."""
    patience = cfg.get("patience", COMPRESS_PATIENCE)
    if not patience:
        return {}
    return {"patience": int(patience), "min_improvement": float(cfg.get("min_improvement", COMPRESS_MIN_IMPROVEMENT))}


def _tokens_saved(result: Any, opt: Any) -> float:
    """Forward tokens the stopping rule saved: the generations left to ``max_generations`` at the run's
    mean tokens per generation (0 when something else stopped the search)."""
    if not str(getattr(opt, "stop_reason", "")).startswith("stopping rule") or not opt.generation:
        return 0.0
    left = int(getattr(opt, "max_generations", None) or opt.generation) - int(opt.generation)
    return float(max(left, 0) * float(result.cost) / int(opt.generation))


def evopress_entry(result: Any, opt: Any, seconds: float, start_name: str) -> dict[str, Any]:
    """What ``results.json`` says of the search beside the held-out numbers: among them why it stopped
    (``stop_reason``) and, when the stopping rule ended it, the tokens that saved (``tokens_saved``)."""
    return {
        "calibration_kl": float(result.best_value),
        "evaluations": int(result.n_evaluations),
        "tokens": float(result.cost),
        "generations": int(opt.generation),
        "seconds": seconds,
        "start": start_name,
        "stopped_by": result.stopped_by,
        "stop_reason": str(getattr(opt, "stop_reason", "") or result.stopped_by),
        "tokens_saved": _tokens_saved(result, opt),
        "replayed_evaluations": int(result.n_replayed),
        "notes": list(result.notes),  # fallbacks that changed the search, said once when they happened
    }


#: formats that write one tensor per module: a mixture of experts' fused experts as per-expert modules, where the
#: architecture's checkpoints have them
PER_MODULE_FORMATS = ("pack-quantized", "sparse-bitmask", "gptq")


def check_format_holds(codec: Any, problem: Any, cfg: dict[str, Any]) -> None:
    """One line, before the search, when the run's export format cannot hold its units (a mixture of experts'
    fused experts in a per-module format, for an architecture whose checkpoints keep them fused), instead of
    after it."""
    fmt = cfg.get("format") or codec.formats[0]
    if cfg.get("export", True) and fmt in PER_MODULE_FORMATS and hasattr(problem, "modules"):
        refuse_experts(problem.model, problem.modules, fmt)


def peak_memory() -> dict[str, float]:
    """This process's peak resident memory so far (``peak_rss_mib``, MiB) and, when CUDA was used, the peak of
    tensor memory allocated on the GPU (``cuda_peak_mib``): what a user scales to a larger model."""
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def export_and_write(
    codec: Any, problem: Any, best: Any, results: dict[str, Any], timings: dict[str, float], t_all: float, cfg: Any
) -> dict[str, Any]:
    """Export the search's best model (unless ``cfg["export"]`` is off) in ``cfg["format"]`` (default: its
    codec's first format), check that it reloads to the searched logits, measure its size and speed against
    the dense model's (:func:`~levelsearch.adapters.formats.run.export_and_check`), then write
    ``OUT/results.json`` with the timings (seconds since ``t_all``). A failed check is recorded there and
    raised. Returns ``results``."""

    out = Path(cfg["out"])

    def write() -> None:
        timings["total"] = time.perf_counter() - t_all
        results["timings"] = timings
        results["memory"] = peak_memory()
        if hasattr(problem, "searched_fraction"):  # weight codecs: the decoder layers' weights the search compresses
            results["searched_fraction"] = problem.searched_fraction()
        (out / "results.json").write_text(json.dumps(jsonable(results), indent=1))

    if cfg["export"]:
        t0 = time.perf_counter()
        info = {"heldout_ppl": results["methods"]["evopress"]["heldout_ppl"]}
        try:  # an export that does not reload to the searched logits stops the run (model.FAILED, exit 2)
            fmt = cfg.get("format")
            results["export"] = export_and_check(codec, problem, best, out / "model", format=fmt, info=info)
        except ExportCheckFailed as exc:
            results["export"] = {"failed": str(exc)}
            write()
            raise
        timings["export"] = time.perf_counter() - t0
    write()
    return results


def check_settings(cfg: dict[str, Any]) -> None:
    """What every codec's run needs, checked before the model loads (one-line ``ValueError``)."""

    if not cfg.get("out"):
        raise ValueError("give an output directory with --out DIR (or out: in the config)")
    if cfg.get("optimizer", "evopress") not in ("evopress", "evopress-ref"):
        raise ValueError(f"--optimizer must be evopress (default) or evopress-ref, got {cfg['optimizer']!r}")
    check_out(cfg["out"])
    check_numbers(cfg)
    check_device(cfg)
    # an unknown schedule, or one asking for more tokens than the pool can hold: before anything is computed
    opt = str(cfg.get("optimizer", "evopress"))
    schedule_options(cfg["schedule"], cfg["calibration_tokens"], cfg["offspring"], cfg["seq_len"], opt)
    check_format(str(cfg["method"]), cfg.get("format"))  # a format that does not fit: before anything is written


def choose_start(setting: Any, baselines: dict[str, dict[str, Any]], label: str = "") -> tuple[str, Any]:
    """``(name in the journal identity, EvoPress start)`` from the ``start`` setting.

    ``best-baseline`` (or ``best-heuristic``, or unset): the baseline with the lowest calibration KL
    among those not marked ``"feasible": False`` (a codec may report baselines outside the budget, e.g.
    a fixed-size recipe); ``random``; or a baseline's name. With a ``label`` (``"heuristic"`` for
    ``drop``) the names read ``best-heuristic:NAME`` / ``heuristic:NAME`` as they always have, so old
    journals resume.
    """
    names = list(baselines)
    if setting in (None, "best-heuristic", "best-baseline"):
        names = [n for n in names if baselines[n].get("feasible", True)]
        if not names:
            return "random", "random"
        best = names[min(range(len(names)), key=lambda i: baselines[names[i]]["calibration_kl"])]
        return (f"best-{label}:{best}" if label else best), baselines[best]["levels"]
    if setting == "random" or (label and setting == "uniform"):
        return str(setting), "random"
    if setting in baselines:
        return (f"{label}:{setting}" if label else str(setting)), baselines[setting]["levels"]
    best_word = f"best-{label}" if label else "best-baseline"
    raise ValueError(f"start must be {best_word}, random or one of {', '.join(names)}; got {setting!r}")


#: Part of every run cache's key: raised when what the cached baselines compute changes, so older caches
#: are rebuilt rather than reused.
CACHE_VERSION = 2


def write_cache(path: Path, key: dict[str, Any], name: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` under ``name`` with its ``key`` (and :data:`CACHE_VERSION`) and a checksum of all of
    it, atomically."""

    body = {"key": jsonable({**key, "code": CACHE_VERSION}), name: jsonable(payload)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**body, "sha256": json_checksum(body)}))
    os.replace(tmp, path)


def read_cache(path: Path, key: dict[str, Any], name: str) -> dict[str, Any] | None:
    """What :func:`write_cache` wrote under ``name``, when its checksum and its ``key`` match; else ``None``.

    The key holds the problem's identity hash (every byte of the weights and of the token sets), the
    settings the payload depends on and :data:`CACHE_VERSION`; a file that fails its checksum or its
    key is rebuilt, said in one line.
    """

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        body = {"key": data["key"], name: data[name]}
        ok = data.get("sha256") == json_checksum(body)
    except (ValueError, TypeError, KeyError, AttributeError, OSError):
        say_rebuild(path, "is unreadable")
        return None
    if not ok:
        say_rebuild(path, "fails its checksum (edited or corrupted)")
        return None
    if data["key"] != jsonable({**key, "code": CACHE_VERSION}):
        say_rebuild(path, "was made for another model, data or settings")
        return None
    return dict(data[name])


def _teachers(problem: Any, cache: Path, tag: dict[str, str]) -> set[str]:
    """Read back cached teachers the problem has not computed; compute and cache the calibration one.

    Returns the sets whose teacher this run still has to cache (the held-out one, after its pass).
    """

    todo = set()
    for which in ("calibration", "heldout"):
        if problem.has_teacher(which):
            continue  # a problem that needs its teachers early (before swapping weights) made them
        cached = Teacher.load(cache / f"teacher-{which}.safetensors", tag)
        if cached is not None:
            problem.use_teacher(which, cached)
        else:
            todo.add(which)
    if "calibration" in todo:
        problem.teacher("calibration").save(cache / "teacher-calibration.safetensors", tag)
    return todo - {"calibration"}


def _methods(codec: Any, problem: Any, cands: list[Any], report: list[Any], names: list[str], base: Any) -> Any:
    """The ``methods`` of ``results.json``: held-out numbers, levels, the codec's summary, how each was found."""
    methods: dict[str, Any] = {}
    for i, name in enumerate(names):
        lv = cands[i + 1]
        entry = {**report[i + 1], "levels": lv.tolist(), **codec.summary(problem, lv)}
        entry["feasible"] = bool(problem.space.is_feasible(lv))
        entry.update({k: v for k, v in base[name].items() if k != "levels"})
        methods[name] = entry
    return methods


def run(codec: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run ``codec`` with the merged ``levelsearch compress`` settings ``cfg`` (see the module docstring), for one
    target (several: :func:`levelsearch.adapters.run.curve.run_any`)."""
    check_settings(cfg)
    codec.check_settings(cfg)
    out = Path(cfg["out"])
    timings: dict[str, float] = {}
    t_all = t0 = time.perf_counter()
    problem = codec.make_problem(cfg)
    timings["load"] = time.perf_counter() - t0
    check_format_holds(codec, problem, cfg)
    say(cfg, f"loaded {cfg['model']} in {timings['load']:.1f} s; {problem.space.n_units} units")
    check_journal_problem(out, problem)
    lock_out(cfg, out)
    cache = out / "cache"  # teachers and baselines of this exact problem: a rerun (resume) skips them
    cache.mkdir(exist_ok=True)
    tag = {"problem": problem.identity_hash()}
    t0 = time.perf_counter()
    to_save = _teachers(problem, cache, tag)
    timings["teacher"] = time.perf_counter() - t0
    return run_target(codec, problem, cfg, Teachers(cache, tag, to_save), timings, t_all)


class Teachers:
    """Where a run caches its teachers (``cache``, under ``tag``) and which it has yet to write (``to_save``)."""

    def __init__(self, cache: Path, tag: dict[str, str], to_save: set[str]) -> None:
        self.cache, self.tag, self.to_save = cache, tag, to_save

    @classmethod
    def prepare(cls, problem: Any, cache: Path, tag: dict[str, str]) -> Teachers:
        """Read back the cached teachers the problem has not computed; compute and cache the calibration one."""
        return cls(cache, tag, _teachers(problem, cache, tag))

    def save_pending(self, problem: Any) -> None:
        """Write the teachers still to be cached that the problem has computed by now."""
        for which in sorted(self.to_save):
            if problem.has_teacher(which):
                problem.teacher(which).save(self.cache / f"teacher-{which}.safetensors", self.tag)
                self.to_save.discard(which)


def run_target(
    codec: Any,
    problem: Any,
    cfg: dict[str, Any],
    teachers: Teachers,
    timings: dict[str, float],
    t_all: float,
    neighbour: tuple[str, Any] | None = None,
) -> dict[str, Any]:
    """One target of a run, its teachers ready: baselines, search, held-out report, results, profile, export.

    Everything goes into ``cfg["out"]`` (its baselines' cache into ``OUT/cache``). ``neighbour``:
    ``(name, levels)`` of another target's result; repaired to this budget, it is EvoPress's start when
    its calibration KL beats the best baseline's (and ``start`` is the default). ``results["forward_tokens"]``
    counts the problem's forward tokens (:attr:`~..scoring.layerwise.LayerwiseProblem.n_forward_tokens`)
    spent in this call, and all before it when this is the run's only target.
    """

    out = Path(cfg["out"])
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    tokens_before = 0 if neighbour is None and not cfg.get("_curve") else int(problem.n_forward_tokens)
    tag = {"problem": problem.identity_hash()}
    t0 = time.perf_counter()
    base = codec.run_baselines(problem, cfg, cache, tag)
    timings["baselines"] = time.perf_counter() - t0
    kls = ", ".join(f"{n} KL {b['calibration_kl']:.4f}" for n, b in base.items())
    say(cfg, f"baselines in {timings['baselines']:.1f} s: {kls}")
    options = schedule_options(
        cfg["schedule"], problem.max_fidelity, cfg["offspring"], cfg["seq_len"], str(cfg["optimizer"])
    )
    start_name, options["start"] = choose_start(cfg["start"], base, codec.start_label)
    if neighbour is not None and cfg["start"] in (None, "best-heuristic", "best-baseline"):
        start_name, options["start"] = _neighbour_start(problem, cfg, base, neighbour, (start_name, options["start"]))
    t0 = time.perf_counter()
    result, opt = search(problem, cfg, options, start_name, out)
    timings["search"] = time.perf_counter() - t0
    if result.stopped_by == "interrupted":
        # Ctrl-C or SIGTERM (a scheduler preempting the job) ends the run now, not after a held-out pass and an
        # export: the journal keeps every evaluation, and the same command resumes; a target is never reported
        # half-searched
        raise KeyboardInterrupt
    say(cfg, f"search from {start_name}: {opt.generation} generations in {timings['search']:.1f} s")
    best = np.asarray(result.best_levels, dtype=np.int64)
    best, accepted = accept_or_start(problem, best, options["start"], cfg.get("accept_p"))
    if accepted.get("kept") == "start":
        say(cfg, f"kept the start {start_name}: the search's result beat it by chance only (p {accepted['p']:.3g})")
    names = list(base)
    t0 = time.perf_counter()
    cands = [problem.dense_candidate(), best, *[base[n]["levels"] for n in names]]
    report = problem.heldout_report(cands)
    timings["heldout"] = time.perf_counter() - t0
    teachers.save_pending(problem)
    base["evopress"] = evopress_entry(result, opt, timings["search"], start_name)
    if accepted:
        base["evopress"]["acceptance"] = accepted
        if accepted["kept"] == "start":
            base["evopress"]["calibration_kl"] = accepted["start_kl"]
    methods = _methods(codec, problem, cands, report, ["evopress", *names], base)
    results: dict[str, Any] = {
        "model": cfg["model"],
        "method": codec.name,
        "target": None if cfg["target"] is None else float(cfg["target"]),  # gguf: its results_fields give it
        **codec.results_fields(problem, cfg),
        "schedule": {"name": cfg["schedule"], **jsonable(options)},
        "calibration_tokens": problem.calibration.n_tokens,
        "search_tokens": problem.max_fidelity,
        "heldout_tokens": problem.heldout.n_tokens,
        "teacher_bytes": problem.teacher("calibration").nbytes,
        "forward_tokens": int(problem.n_forward_tokens) - tokens_before,
        "dense": report[0],
        "methods": methods,
        "best_baseline": min(names, key=lambda n: methods[n]["heldout_ppl"]) if names else None,
    }
    record_results(out, results)
    codec.plot(problem, {n: np.asarray(m["levels"]) for n, m in methods.items()}, out / "profile.png", methods)
    return export_and_write(codec, problem, best, results, timings, t_all, cfg)


def accept_or_start(
    problem: Any, best: np.ndarray, start: Any, p_max: float | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The search's result ``best``, or its ``start`` when ``best`` beats it on the calibration pool by chance only.

    With ``p_max`` (``--accept-p``) and a start that is an assignment (not ``random``), the two are compared
    sequence by sequence on the search pool (:meth:`~..scoring.layerwise.LayerwiseProblem.sequence_kls`: what the
    search ran is remembered): a one-sided paired t-test of "the result's KL is lower". The result is kept when its
    p-value is at most ``p_max``; else the start is, the same levels whose held-out numbers the baselines report.
    A result picked as the best of many on these very sequences is favoured by them, so this only ever errs
    towards keeping it. Returns the levels and what ``results.json`` records (``{}`` when there was no test).
    """
    if p_max is None or isinstance(start, str) or start is None or not hasattr(problem, "sequence_kls"):
        return best, {}
    start = np.asarray(start, dtype=np.int64)
    if np.array_equal(best, problem.space.validate(start)):
        return best, {}
    kl = np.asarray(problem.sequence_kls([best, start]), dtype=np.float64)
    diff = kl[0] - kl[1]
    if diff.size < 2 or np.ptp(diff) == 0:  # one sequence, or one difference on all: no spread to test against
        p = 0.0 if diff.mean() < 0 else 1.0
    else:
        from scipy import stats

        p = float(stats.ttest_rel(kl[0], kl[1], alternative="less").pvalue)
    kept = "result" if p <= float(p_max) else "start"
    info = {
        "accept_p": float(p_max), "p": p, "kept": kept, "sequences": int(diff.size),
        "result_kl": float(kl[0].mean()), "start_kl": float(kl[1].mean()),
        "sequences_better": int((diff < 0).sum()),
    }  # fmt: skip
    return (best if kept == "result" else start), info


def _neighbour_start(
    problem: Any, cfg: dict[str, Any], base: dict[str, Any], neighbour: tuple[str, Any], chosen: tuple[str, Any]
) -> tuple[str, Any]:
    """``chosen`` (the best baseline's start) or the neighbour's levels repaired to this budget, whichever has
    the lower calibration KL on the whole search pool (the baseline on a tie)."""

    name, levels = neighbour
    rng = np.random.default_rng([int(cfg["seed"]), 24])
    moved = problem.space.repair(np.asarray(levels, dtype=np.int64), rng)
    kl = float(problem.evaluate_many([Request(moved)])[0])
    feasible = [b["calibration_kl"] for b in base.values() if b.get("feasible", True)]
    if isinstance(chosen[1], str) or not feasible or kl < min(feasible):
        say(cfg, f"start from {name}'s result moved to this budget (calibration KL {kl:.4f})")
        return f"neighbour:{name}", moved
    return chosen


#: The journal meta key of a run's description (model, method, target, the codec's fields ...) and the
#: prefix of each method's result.
RUN_KEY = "compress"
RESULT_PREFIX = "result:"


def record_results(out: Path, results: dict[str, Any]) -> None:
    """Store ``results`` in ``out/journal.db``: each method's entry (levels, calibration and held-out values)
    under ``result:<method>``, the rest (model, method, target, the codec's fields) under ``compress``.

    The journal's integrity chain covers them: an edited value is refused when the journal is opened.
    """

    body = jsonable(results)
    with Journal(out / "journal.db") as jr:
        for name, entry in body["methods"].items():
            jr.set_meta(f"{RESULT_PREFIX}{name}", entry)
        run = {k: v for k, v in body.items() if k not in ("methods", "timings", "export", "exports")}
        jr.set_meta(RUN_KEY, {**run, "method_names": list(body["methods"])})


def journal_results(run: str | Path) -> dict[str, Any]:
    """What the journal of the finished compress run ``run`` records of it, shaped as ``results.json``
    (model, method, target, the codec's fields and ``methods`` with every method's levels and values).

    Raises:
        FileNotFoundError: ``run`` holds no journal.
        ValueError: the journal was altered (its integrity chain breaks), or records no finished run
            (a search that did not reach its held-out report, or a run of an older levelsearch).
    """

    path = Path(run) / "journal.db"
    if not path.is_file():
        what = "journal.db" if (Path(run) / "results.json").is_file() else "results.json and no journal.db"
        raise FileNotFoundError(f"{run} holds no {what}; give the directory of a finished levelsearch compress")
    with Journal(path, readonly=True) as jr:
        desc = jr.meta(RUN_KEY)
        if not isinstance(desc, dict) or not isinstance(desc.get("method_names"), list):
            raise ValueError(
                f"the journal {path} records no finished compress run (stopped before its results, or written "
                "by an older levelsearch); run the same compress command again to finish it"
            )
        methods = {str(n): jr.meta(f"{RESULT_PREFIX}{n}") for n in desc["method_names"]}
    if any(not isinstance(m, dict) or "levels" not in m for m in methods.values()):
        raise ValueError(f"the journal {path} lacks a method's levels; run the same compress command again")
    out = {k: v for k, v in desc.items() if k != "method_names"}
    out["methods"] = methods
    return out


def journal_levels(run: str | Path, method: str = "evopress") -> Any:
    """The levels ``method`` ended with in the finished run ``run``, from its journal (an int64 array).

    Raises:
        ValueError: as :func:`journal_results`, or the run has no method of that name.
    """

    methods = journal_results(run)["methods"]
    if method not in methods:
        raise ValueError(f"the run {run} has no method {method!r}; it has {', '.join(sorted(methods))}")
    return np.asarray(methods[method]["levels"], dtype=np.int64)
