"""The ``levelsearch`` command line.

Commands: ``run``, ``resume``, ``optimizers``, ``problems``; ``bench`` and
``report`` when present; more (e.g. ``compress``) from the
``levelsearch.commands`` entry-point group: each entry point names a function
``add_parser(subparsers)`` that adds a sub-command whose ``func(args)`` returns
an exit status.

Errors a user can cause print one line (``levelsearch: error: ...``) and exit
with status 2; Ctrl-C (or SIGTERM) stops cleanly and exits with 130 after
saying how to resume; an oracle that keeps failing, or running out of memory, exits
with 1 (one line too). A fallback a run takes that changes what it does (see
``Result.notes``) prints one line, ``levelsearch: note: ...``, and goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .registry import Registry

#: subcommands beyond run/resume/optimizers/problems: ``name -> add_parser(subparsers)``; other packages add
#: theirs through the entry-point group (``levelsearch compress`` comes from the adapters)
COMMANDS: Registry[Any] = Registry("command", "levelsearch.commands")
COMMANDS.register("bench", "levelsearch.bench:add_parser")
COMMANDS.register("report", "levelsearch.report:add_parser")

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import run_config

    cfg = load_config(args.config)
    if args.seed is not None:
        cfg.seed = args.seed
    summary = run_config(cfg, args.out, progress=not args.quiet)
    _print_summary(summary, args.out)
    return 130 if summary.get("stopped_by") == "interrupted" else 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from .runner import resume_dir

    summary = resume_dir(args.dir, progress=not args.quiet)
    _print_summary(summary, args.dir)
    return 130 if summary.get("stopped_by") == "interrupted" else 0


def _num(x: float | None) -> str:
    return "none (no evaluation succeeded)" if x is None else f"{x:.6g}"


def _print_summary(summary: dict[str, Any], out: str) -> None:
    if summary.get("stopped_by") == "interrupted":
        print(f"interrupted; resume with: levelsearch resume {out}", file=sys.stderr)
    opt = summary.get("optimum")
    gap = "" if opt is None else f" (optimum {opt:.6g})"
    print(
        f"best {_num(summary['best_value'])}{gap} after {summary['n_evaluations']} evaluations, "
        f"cost {summary['cost']:.6g}; wrote {out}/summary.json"
    )


def _cmd_optimizers(args: argparse.Namespace) -> int:
    from .optimizer import available_optimizers, get_optimizer

    for name in available_optimizers():
        try:
            cls = get_optimizer(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            line = doc[0] if doc else ""
        except ValueError as exc:
            line = f"(unavailable: {exc})"
        print(f"{name:34s} {line}")
    return 0


def _cmd_problems(args: argparse.Namespace) -> int:
    from .problem import available_problems, get_problem_factory

    for name in available_problems():
        try:
            doc = (get_problem_factory(name).__doc__ or "").strip().splitlines()
            line = doc[0] if doc else ""
        except ValueError as exc:
            line = f"(unavailable: {exc})"
        print(f"{name:20s} {line}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="levelsearch", description="Dynamic, non-uniform compression search (EvoPress and baselines)."
    )
    parser.add_argument("--version", action="version", version=f"levelsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a YAML config into an output directory")
    p.add_argument("config", help="YAML run config (see examples/)")
    p.add_argument("--out", required=True, help="run directory (journal, summary.json, convergence.png)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted run from its journal")
    p.add_argument("dir", help="run directory written by `levelsearch run` (or its journal.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("optimizers", help="list registered optimizers")
    p.set_defaults(func=_cmd_optimizers)
    p = sub.add_parser("problems", help="list registered problem kinds")
    p.set_defaults(func=_cmd_problems)

    for name in COMMANDS.names():
        try:
            COMMANDS.load(name)(sub)
        except ImportError as exc:
            # the command's extra is missing: keep a stub that says how to install it
            stub = sub.add_parser(name, help=f"(needs an extra: {exc.name or exc})")
            stub.set_defaults(func=_missing_extra(name, str(exc.name or exc)))
    return parser


def _missing_extra(name: str, module: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise ValueError(f"`levelsearch {name}` needs {module}: pip install 'levelsearch[llm]'")

    return run


class _StopSignals:
    """Ctrl-C and SIGTERM (a scheduler preempting the job) stop the run cleanly, however many arrive.

    The first raises ``KeyboardInterrupt``: the driver stops, keeps the journal and writes the summary.
    More arriving within ``grace`` seconds of it are ignored, so a burst of Ctrl-C cannot break that
    clean stop into a traceback. One arriving later (the clean stop is taking long: an evaluation that
    does not return) ends the process at once with status 130 and one line; the journal keeps every
    evaluation that finished, so ``resume`` continues.
    """

    def __init__(self, hint: str, grace: float = 2.0) -> None:
        self.hint, self.grace = hint, grace
        self.first: float | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        import time

        now = time.monotonic()
        if self.first is None:
            self.first = now
            raise KeyboardInterrupt
        if now - self.first >= self.grace:
            sys.stderr.write(f"levelsearch: interrupted again; stopped at once{self.hint}\n")
            sys.stderr.flush()
            os._exit(130)

    def install(self) -> dict[int, Any]:
        """Handle SIGINT and SIGTERM; returns the previous handlers (none off the main thread)."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}


def _resume_hint(args: argparse.Namespace) -> str:
    where = getattr(args, "out", None) or getattr(args, "dir", None)
    if args.command == "compress":  # its journal is OUT/journal.db
        return "; the same command resumes it"
    return f"; resume with: levelsearch resume {where}" if args.command in ("run", "resume") and where else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``levelsearch`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    previous = _StopSignals(_resume_hint(args)).install()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_notes(warnings.showwarning)
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"levelsearch: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        print("levelsearch: error: out of memory; make the problem or the budget smaller", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `levelsearch optimizers | head`
        return 0
    except OSError as exc:
        print(f"levelsearch: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .driver import AllFailedError
        from .evaluators import WorkersLostError

        if not isinstance(exc, (AllFailedError, WorkersLostError)):
            raise
        where = getattr(args, "out", None) or getattr(args, "dir", None)
        hint = f"; fix it, then: levelsearch resume {where}" if args.command in ("run", "resume") and where else ""
        print(f"levelsearch: error: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"levelsearch: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    finally:
        import signal

        for sig, old in previous.items():
            signal.signal(sig, old)


def _one_line_notes(show: Any) -> Any:
    """``warnings.showwarning`` that prints the core's notes (fallbacks a run took) as one line each.

    Other warnings (from libraries, or a warning of another kind) keep their usual form.
    """
    here = Path(__file__).resolve().parent

    def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
        if issubclass(category, RuntimeWarning) and Path(filename).resolve().is_relative_to(here):
            print(f"levelsearch: note: {str(message).splitlines()[0]}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, *rest)

    return showwarning


def _json(obj: Any) -> str:  # pragma: no cover - debugging helper
    return json.dumps(obj, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
