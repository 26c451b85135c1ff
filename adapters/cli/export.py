"""``levelsearch export RUN_DIR --format FORMAT``: write a finished ``compress`` run's model in another format,
without searching again.

The run's problem is rebuilt from what the run's journal recorded (model, method, target, the EvoPress
levels, a weight codec's database, data, sequence length, token counts, seed, and what a codec takes
besides: the settings it declares that the identity records, and what its ``settings_of_run`` reads back)
and checked against the journal's identity (other weights or data: one line, exit 2). The journal is the
record: an altered journal is refused (its integrity chain), and ``results.json`` is only a report,
never read for the levels (one whose EvoPress levels differ from the journal's, e.g. edited by hand, is
refused rather than silently overruled). Rebuilding the problem loads the model, the token sets and a
weight codec's variant database (built only if it is missing), never the dense teacher: that is computed
on first use, and the export, its check and its measurements do not use it. The export goes to ``--out``
(default ``RUN_DIR/model-FORMAT``, which must not hold anything yet; a codec with a file format of its own
writes ``model.EXT`` there, with what its check reports beside it), is reloaded and compared with the searched
logits (a mismatch renames it ``NAME.FAILED``, exit 2) and measured (size on disk and tokens/s beside
the dense model; ``--no-measure`` skips it); the entry is added to ``results.json`` under ``exports``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from levelsearch import Journal

from ..codecs import available_codecs, get_codec
from ..run.settings import CompressSettings, kind_settings
from .compress import command_parser
from .settings import format_help

__all__ = ["add_parser", "export_run", "run_settings"]

#: the shared settings a problem's identity records (a kind's own settings it records are read too)
_FROM_PROBLEM = ("data", "seq_len", "calibration_tokens", "heldout_tokens", "top_k", "seed")


def _check_report(run: Path, res: dict[str, Any]) -> dict[str, Any] | None:
    """``results.json`` of ``run`` (a report, ``None`` when missing or unreadable), refused when it names another
    model, method, target or other EvoPress levels than the journal's ``res``: the export would not be the
    model the report describes."""
    f = run / "results.json"
    try:
        report = json.loads(f.read_text())
        levels = report["methods"]["evopress"]["levels"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    differ = [k for k in ("model", "method", "target") if report.get(k) != res.get(k)]
    if levels != res["methods"]["evopress"]["levels"]:
        differ.append("EvoPress levels")
    if differ:
        raise ValueError(
            f"{f} differs from the run's journal in its {', '.join(differ)} (edited by hand?); the journal is the "
            f"record: restore {f.name} or delete it, and the export writes the journal's model"
        )
    return dict(report)


def run_settings(run: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(results, compress settings)`` of a finished run, both from its journal (the results shaped as
    ``results.json``: see :func:`~levelsearch.adapters.run.pipeline.journal_results`)."""

    from ..run.pipeline import journal_results  # torch and transformers: when a run is exported, not at --help

    run = Path(run)
    res = journal_results(run)
    if "evopress" not in res["methods"]:
        raise ValueError(f"the journal of {run} records no EvoPress levels; run the same compress command again")
    with Journal(run / "journal.db", readonly=True) as jr:
        stored = (jr.meta("identity") or {}).get("problem") or {}
    settings = CompressSettings(model=res["model"], method=res["method"], target=res["target"]).to_dict()
    keys = [*_FROM_PROBLEM, *(s.name for s in kind_settings(str(res["method"])))]
    settings.update({k: stored[k] for k in keys if stored.get(k) is not None})
    if str(res["method"]) in available_codecs():  # what a codec reads back of its own settings
        settings.update(get_codec(str(res["method"])).settings_of_run(stored, res))
    settings.update(progress=False, out=str(run))
    return res, settings


def export_run(
    run: str | Path,
    format: str | None = None,
    out: str | Path | None = None,
    *,
    measure: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export the EvoPress model of the finished run ``run`` in ``format``; the ``exports`` entry it records."""

    # torch and transformers: when a run is exported, not when `levelsearch` builds its parser
    from ..formats import check_format
    from ..formats.run import check_new_dir, export_and_check
    from ..run.pipeline import check_journal_problem, jsonable

    if out is not None and not str(out).strip():
        raise ValueError("--out is empty; give a new directory (default RUN_DIR/model-FORMAT)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"--threads must be a positive integer (torch CPU threads), got {threads!r}")
    run = Path(run)
    res, settings = run_settings(run)
    report = _check_report(run, res)
    method = str(res["method"])
    codec = get_codec(method)
    # a codec with a file format of its own (one file llama.cpp runs, say) writes, checks and measures it itself
    own = callable(getattr(codec, "export_and_check", None))
    if own and format not in (None, codec.formats[0]):
        raise ValueError(
            f"--format {format} does not fit the run's method {method}: it writes one {codec.formats[0]} file"
        )
    fmt = codec.formats[0] if own else check_format(method, format, f"the run's method {method}")
    dest = check_new_dir(out if out is not None else run / f"model-{fmt}")
    settings["threads"] = threads
    problem = codec.make_problem(settings)
    check_journal_problem(run, problem)  # the same weights, data and settings as the search
    levels = np.asarray(res["methods"]["evopress"]["levels"], dtype=np.int64)  # the journal's
    info: dict[str, Any] = {"run": str(run)}
    if own:  # checked against the search's held-out perplexity where the codec can (with its own engine)
        info["heldout_ppl"] = res["methods"]["evopress"].get("heldout_ppl")
    where = dest / "model" if own else dest  # DEST/model.EXT and its check's report
    entry = export_and_check(codec, problem, levels, where, format=None if own else fmt, info=info, measure=measure)
    report = report if report is not None else res  # a missing report is written again from the journal
    report.setdefault("exports", {})[fmt] = entry
    tmp = run / "results.json.tmp"
    tmp.write_text(json.dumps(jsonable(report), indent=1))
    os.replace(tmp, run / "results.json")
    return entry


def _cmd(args: argparse.Namespace) -> int:
    e = export_run(args.run_dir, args.format, args.out, measure=not args.no_measure, threads=args.threads)
    line = f"exported {e['dir']} ({e['format']}): max |logit diff| {e['max_abs_logit_diff']:.2e}"
    if "size" in e:
        s, v = e["size"], e["speed"]
        line += (
            f"; {s['bytes'] / 2**20:.1f} MiB vs dense {s['dense_bytes'] / 2**20:.1f} MiB ({s['ratio']:.3f}x);"
            f" {v['exported_tokens_per_s']:.0f} vs {v['dense_tokens_per_s']:.0f} tokens/s ({v['speedup']:.2f}x)"
        )
    print(line)
    return 0


class _FormatHelp(argparse.ArgumentParser):
    """A parser whose ``--format`` help lists each registered codec's formats when it is printed (loading the
    codecs imports torch, building the ``levelsearch`` parser must stay fast)."""

    def format_help(self) -> str:
        for action in self._actions:
            if action.dest == "format":
                action.help = f"{format_help()} (default: the codec's first)"
        return super().format_help()


def add_parser(subparsers: Any) -> None:
    """Add ``levelsearch export`` to the CLI (entry point ``levelsearch.commands``)."""

    p = command_parser(
        subparsers, "export", "write a finished compress run's model in another format (no search)", __doc__
    )
    p.add_argument("run_dir", help="directory of a finished levelsearch compress run")
    p.__class__ = type("ExportParser", (_FormatHelp, type(p)), {})
    p.add_argument("--format", help="the run's codec's formats (default its first)")
    p.add_argument("--out", help="where to write it (default RUN_DIR/model-FORMAT; must not hold anything)")
    p.add_argument("--no-measure", action="store_true", help="skip the size and tokens/s measurements")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=_cmd)
