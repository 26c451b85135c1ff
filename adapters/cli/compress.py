"""``levelsearch compress``: search a compression profile for a real model, compare, export.

    levelsearch compress --model smollm2 --method METHOD --target T --out runs/run
    levelsearch compress --config CONFIG.yaml      # same keys as the options

A method is a registered codec (:mod:`levelsearch.adapters.codecs`: the built-in kinds and every entry
point of the group ``levelsearch.codecs``), run by the one pipeline
:func:`levelsearch.adapters.run.pipeline.run`: it builds the codec's level problem (calibration pool
and disjoint held-out set, dense teacher), scores the codec's baselines on calibration data, runs
EvoPress from ``--start`` with the selection schedule ``--schedule``
(:mod:`levelsearch.adapters.run.schedules`), journaled in ``OUT/journal.db`` so an interrupted run
resumes where it stopped (same command again), evaluates every method on the held-out set, writes
``OUT/results.json`` and the profile plot, and exports ``OUT/model`` in ``--format`` (checked against
the search's logits). A codec declares its own settings, formats and what ``--target`` means
(:attr:`~levelsearch.adapters.codecs.base.Codec.compress_settings`,
:attr:`~levelsearch.adapters.codecs.base.Codec.formats`,
:attr:`~levelsearch.adapters.codecs.base.Codec.target_help`): they become options here.

A whole flow of one's own can still be added with :func:`register_method` (:data:`METHODS`: name →
``"module:function"`` or a callable taking the merged settings dict and returning the results dict).
This module imports nothing heavy at import time, and the codecs (which import torch) are loaded only
when ``compress`` itself parses its options, so ``levelsearch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from levelsearch.config import read_text, safe_load

from ..codecs.registry import available_codecs, get_codec
from ..run.settings import CompressSettings, declared_settings, kind_settings, takers, with_default_target
from .settings import add_setting_options

__all__ = [
    "DEFAULTS",  # noqa: F822 (built on use by __getattr__)
    "METHODS",
    "add_parser",
    "check_method_settings",
    "register_method",
    "run_compress",
]

#: whole flows added by :func:`register_method`: name → callable(settings) -> results, or
#: "module:function" resolved on use. Codecs need no entry here: they are found in the codec registry.
METHODS: dict[str, Callable[[dict[str, Any]], dict[str, Any]] | str] = {}


def __getattr__(name: str) -> Any:
    if name == "DEFAULTS":
        # Settings of ``levelsearch compress`` (CLI options and YAML keys) with their defaults, the plain-dict
        # view of :class:`~levelsearch.adapters.run.settings.CompressSettings`: built on use, since the kinds'
        # settings come from the codecs (which import torch) and a codec registered later adds its own
        return CompressSettings().to_dict()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_method_settings(name: str, cfg: Mapping[str, Any], given: Mapping[str, Any] | None = None) -> None:
    """``ValueError`` (one line) when ``cfg`` sets a ``strict`` setting of another kind that ``--method name`` does
    not declare, or both a setting and the one it replaces (``instead_of``: e.g. a byte budget and a ``target``)
    when the user gave both (``given``: the settings as given, when known; else a value other than the
    default counts as given)."""
    mine = kind_settings(name) if name not in METHODS else ()
    own = {s.name for s in mine}
    for s in declared_settings().values():
        if s.strict and cfg.get(s.name) is not None and s.name not in own:
            option = "--" + s.name.replace("_", "-")
            others = ", ".join(m for m in takers(s.name) if m != name)
            raise ValueError(f"--method {name} does not take {option} (it is a setting of --method {others})")
    defaults = {s.name: s.default for s in declared_settings().values()}
    for s in mine:
        if s.instead_of is None or cfg.get(s.name) is None:
            continue
        other = given.get(s.instead_of) if given is not None else cfg.get(s.instead_of)
        if other is not None and (given is not None or other != defaults.get(s.instead_of)):
            raise ValueError(s.conflict or f"give --{s.name} or --{s.instead_of}, not both")


def register_method(name: str, fn: Callable[[dict[str, Any]], dict[str, Any]] | str, *, replace: bool = False) -> None:
    """Add a ``--method`` (``fn(settings) -> results``); ``ValueError`` if the name is taken (by a codec too)."""
    taken = (name in METHODS and METHODS[name] != fn) or name in available_codecs()
    if taken and not replace:
        raise ValueError(f"compress method {name!r} is already registered")
    METHODS[name] = fn


# ---------------------------------------------------------------------- CLI
def run_compress(settings: Mapping[str, Any] | CompressSettings) -> dict[str, Any]:
    """Run ``settings["method"]`` with ``settings`` (a :class:`CompressSettings` or a mapping of some of its
    keys, the others at their defaults); ``ValueError`` for an unknown key."""
    from ..run.curve import run_any as run  # one target or several; the run's machinery is loaded when it starts

    typed = settings if isinstance(settings, CompressSettings) else CompressSettings.from_mapping(settings)
    cfg = typed.to_dict()
    name = str(cfg["method"])
    if name in METHODS or name in available_codecs():
        check_method_settings(name, cfg, None if isinstance(settings, CompressSettings) else settings)
    fn = METHODS.get(name)
    if fn is None:
        if name not in available_codecs():
            known = sorted({*METHODS, *available_codecs()})
            raise ValueError(f"unknown --method {name!r}; available: {', '.join(known)}")
        codec = get_codec(name)
        cfg = with_default_target(codec, cfg)
        fn = partial(run, codec)
    if isinstance(fn, str):
        mod_name, _, attr = fn.partition(":")
        fn = getattr(importlib.import_module(mod_name), attr)
    try:
        return fn(cfg)
    finally:
        lock = cfg.pop("_lock", None)  # see lock_out
        if lock is not None:
            lock.close()


def _load_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        data = safe_load(read_text(p, "config")) or {}
    except yaml.YAMLError:
        raise ValueError(f"config {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping of option: value")
    CompressSettings.from_mapping(data, source=f"config {path}")  # unknown keys: one line, before anything runs
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _cmd(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = _load_config(args.config) if args.config else {}
    for key in declared_settings():
        v = getattr(args, key, None)
        if v is not None:
            settings[key] = v
    if args.no_export:
        settings["export"] = False
    if args.quiet:
        settings["progress"] = False
    res = run_compress(settings)
    _print_summary(res)
    return 0


def _print_summary(res: dict[str, Any]) -> None:
    if "points" in res:  # several targets: one table (levelsearch.adapters.run.curve)
        from ..run.curve import curve_table

        print(curve_table(res))
        return
    dense = res.get("dense", {})
    print(f"dense: held-out ppl {dense.get('heldout_ppl', math.nan):.2f}")
    for name, m in sorted(res.get("methods", {}).items(), key=lambda kv: kv[1]["heldout_ppl"]):
        extra = f", {m['generations']} generations" if "generations" in m else ""
        stats = ""
        if "heldout_top1" in m:  # the KL statistics beside the mean
            top1 = 100 * m["heldout_top1"]
            stats = f" (median {m['heldout_kl_median']:.4f}, p99 {m['heldout_kl_p99']:.3f}, top-1 {top1:.1f}%)"
        print(f"{name:>14}: held-out ppl {m['heldout_ppl']:.2f}, KL {m['heldout_kl']:.4f}{stats}{extra}")
    if "export" in res:
        print(f"exported {res['export']['dir']} (max |logit diff| {res['export']['max_abs_logit_diff']:.2e})")


def command_parser(subparsers: Any, name: str, help: str, doc: str | None) -> Any:
    """A ``levelsearch NAME`` sub-command's parser, described by the first paragraph of ``doc``."""
    return subparsers.add_parser(name, help=help, description=doc.split("\n\n")[0] if doc else None)


class _KindOptions(argparse.ArgumentParser):
    """A parser that adds every registered kind's options (:func:`.settings.add_setting_options`) when it
    parses or prints its help, not when it is built: loading the codecs imports torch, and building the
    ``levelsearch`` parser must stay fast."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        add_setting_options(self)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        add_setting_options(self)
        return super().format_help()


def add_parser(subparsers: Any) -> None:
    """Add ``levelsearch compress`` to the CLI (entry point ``levelsearch.commands``): its own options here, the
    settings' options (every shared and every kind's setting) when it parses."""
    p = command_parser(subparsers, "compress", "search a compression profile for a model, compare, export", __doc__)
    p.__class__ = type("CompressParser", (_KindOptions, type(p)), {})
    p.add_argument("--config", help="YAML file with the same keys as these options")
    p.add_argument("--no-export", action="store_true", help="skip writing the Hugging Face model directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
