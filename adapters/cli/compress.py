"""``levelsearch compress``: search a compression profile for a real model, compare, export.

    levelsearch compress --model smollm2 --method drop --target 0.25 --out runs/drop
    levelsearch compress --config examples/compress-drop.yaml      # same keys as the options

A method is a registered codec (:mod:`levelsearch.adapters.codecs`: ``drop``, ``sparsity``,
``quant``, ``joint`` and every entry point of the group ``levelsearch.codecs``), run by the one
pipeline :func:`levelsearch.adapters.run.pipeline.run`; a whole flow of one's own can still be added
with :func:`register_method` (:data:`METHODS`: name → ``"module:function"`` or a callable taking
the merged settings dict and returning the results dict). This module imports nothing heavy at
import time, so ``levelsearch --help`` stays fast.

The ``drop`` method (:func:`run_drop`):

1. builds an ``llm-drop`` problem (calibration pool and disjoint held-out set, dense teacher);
2. computes every heuristic (ShortGPT, ShortGPT per sub-block, angular distance, single-drop
   KL, random) on calibration data and scores them on the full calibration pool;
3. runs EvoPress from ``--start`` (default: the heuristic with the lowest calibration KL) with
   the selection schedule ``--schedule`` (below), journaled in ``OUT/journal.db`` so an
   interrupted run resumes where it stopped (same command again);
4. evaluates dense, EvoPress and every heuristic on the held-out set (perplexity and KL),
   writes ``OUT/results.json`` and ``OUT/profile.png``, exports ``OUT/model`` (a Hugging
   Face directory, dropped sub-blocks zeroed) and checks its logits against the search's.

Selection schedules (fidelity = calibration tokens per candidate):

- ``cpu`` (default): λ = 16 offspring screened on one sequence (256 tokens), the best 3 on
  four sequences (1,024 tokens), and the best one then faces the parent on the *whole*
  calibration pool (default 4,096 tokens). The final step always uses the same tokens, so
  the parent's value is remembered (no lucky-minibatch replacement of a better parent, and
  the parent costs nothing to re-check) and the survivor reuses the parent's layer states
  up to its first changed layer.
- ``drop``: the reference's GPU schedule (λ = 32; 2 @ 2,048 → 1 @ 32,768 tokens; start best
  of 64 random on 2,048 tokens) — needs ``--calibration-tokens`` ≥ 32,768.
- ``super-fast``: the paper's λ = 16; 1 @ 512 → 1 @ 8,192.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .settings import CompressSettings

__all__ = [
    "DEFAULTS",
    "METHODS",
    "METHOD_SETTINGS",
    "add_parser",
    "check_method_settings",
    "register_method",
    "run_compress",
    "run_drop",
]

#: Settings of ``levelsearch compress`` (CLI options and YAML keys), with their defaults: the plain-dict
#: view of :class:`~levelsearch.adapters.cli.settings.CompressSettings`.
DEFAULTS: dict[str, Any] = CompressSettings().to_dict()

#: whole flows added by :func:`register_method`: name → callable(settings) -> results, or
#: "module:function" resolved on use. Codecs need no entry here: they are found in the codec registry.
METHODS: dict[str, Callable[[dict[str, Any]], dict[str, Any]] | str] = {}


#: settings only the methods that list them in their codec's ``method_settings`` take (others refuse them,
#: one line): the setting → its option
METHOD_SETTINGS: dict[str, str] = {"tol": "--tol", "target_bytes": "--target-bytes", "extra_tensors": "--extra-tensors"}


def check_method_settings(name: str, cfg: Mapping[str, Any], given: Mapping[str, Any] | None = None) -> None:
    """``ValueError`` (one line) when ``cfg`` sets one of :data:`METHOD_SETTINGS` that ``--method name`` does not
    take, or, for a method taking ``target_bytes``, both it and a ``target`` the user gave (``given``: the
    settings as given, when known; else a ``target`` other than the default counts as given)."""
    from ..codecs import CODECS, available_codecs

    def takes(method: str) -> frozenset[str]:
        if method in METHODS or method not in available_codecs():
            return frozenset()
        try:
            return frozenset(getattr(CODECS.get(method), "method_settings", frozenset()))
        except (ImportError, ValueError):  # a plug-in that does not load says so when it runs
            return frozenset()

    mine = takes(name)
    for key, option in METHOD_SETTINGS.items():
        if cfg.get(key) is not None and key not in mine:
            others = [m for m in available_codecs() if m != name and key in takes(m)]
            raise ValueError(
                f"--method {name} does not take {option} (it is a setting of --method {', '.join(others)})"
            )
    if "target_bytes" in mine and cfg.get("target_bytes") is not None:
        target = given.get("target") if given is not None else cfg.get("target")
        if target is not None and (given is not None or target != DEFAULTS["target"]):
            raise ValueError("give one budget: --target (bits per weight) or --target-bytes (bytes), not both")


def register_method(name: str, fn: Callable[[dict[str, Any]], dict[str, Any]] | str, *, replace: bool = False) -> None:
    """Add a ``--method`` (``fn(settings) -> results``); ``ValueError`` if the name is taken (by a codec too)."""
    from ..codecs import available_codecs

    taken = (name in METHODS and METHODS[name] != fn) or name in available_codecs()
    if taken and not replace:
        raise ValueError(f"compress method {name!r} is already registered")
    METHODS[name] = fn


def run_drop(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method drop``: search, compare and export a sub-block dropping profile (see the module docstring)."""
    from ..codecs import get_codec
    from ..run.pipeline import run

    return run(get_codec("drop"), cfg)


# ---------------------------------------------------------------------- CLI
def run_compress(settings: Mapping[str, Any] | CompressSettings) -> dict[str, Any]:
    """Run ``settings["method"]`` with ``settings`` (a :class:`CompressSettings` or a mapping of some of its
    keys, the others at their defaults); ``ValueError`` for an unknown key."""
    from functools import partial

    from ..codecs import available_codecs, get_codec
    from ..run.pipeline import run

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
        fn = partial(run, get_codec(name))
    if isinstance(fn, str):
        mod_name, _, attr = fn.partition(":")
        fn = getattr(__import__(mod_name, fromlist=[attr]), attr)
    try:
        return fn(cfg)
    finally:
        lock = cfg.pop("_lock", None)  # see lock_out
        if lock is not None:
            lock.close()


def _load_config(path: str) -> dict[str, Any]:
    import yaml

    from levelsearch.config import read_text, safe_load

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
    for key in DEFAULTS:
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
    dense = res.get("dense", {})
    print(f"dense: held-out ppl {dense.get('heldout_ppl', math.nan):.2f}")
    for name, m in sorted(res.get("methods", {}).items(), key=lambda kv: kv[1]["heldout_ppl"]):
        extra = f", {m['generations']} generations" if "generations" in m else ""
        print(f"{name:>14}: held-out ppl {m['heldout_ppl']:.2f}, KL {m['heldout_kl']:.4f}{extra}")
    if "export" in res:
        print(f"exported {res['export']['dir']} (max |logit diff| {res['export']['max_abs_logit_diff']:.2e})")


def command_parser(subparsers: Any, name: str, help: str, doc: str | None) -> Any:
    """A ``levelsearch NAME`` sub-command's parser, described by the first paragraph of ``doc``."""
    return subparsers.add_parser(name, help=help, description=doc.split("\n\n")[0] if doc else None)


def add_parser(subparsers: Any) -> None:
    """Add ``levelsearch compress`` to the CLI (entry point ``levelsearch.commands``)."""
    p = command_parser(subparsers, "compress", "search a compression profile for a model, compare, export", __doc__)
    p.add_argument("--config", help="YAML file with the same keys as these options")
    p.add_argument("--model", help="smollm2 (offline default), a model directory, GGUF file or hub id")
    p.add_argument(
        "--method", help="a registered codec: drop (sub-block dropping, default), sparsity, quant, joint, plug-ins"
    )
    p.add_argument(
        "--target",
        type=float,
        help="drop: fraction of sub-blocks (0.25); sparsity: average sparsity (0.5); quant/joint: bits per weight (3); "
        "gguf: bits per weight of the searched tensors (4.6; or --target-bytes)",
    )
    p.add_argument("--out", help="output directory (results.json, profile.png, journal.db, model/)")
    p.add_argument("--seed", type=int)
    p.add_argument("--schedule", help="selection schedule: cpu (default), drop (reference GPU), super-fast")
    p.add_argument("--offspring", type=int, help="override λ of the schedule")
    p.add_argument("--optimizer", help="evopress (default) or evopress-ref (the reference algorithm, for comparisons)")
    p.add_argument("--generations", type=int, help="maximum EvoPress generations (default 400)")
    p.add_argument("--search-minutes", type=float, help="also stop the search after this many minutes")
    p.add_argument("--start", help="best-heuristic (default), random, or a heuristic name")
    p.add_argument("--calibration-tokens", type=int, help="calibration pool size (default 4096)")
    p.add_argument("--heldout-tokens", type=int, help="held-out set size (default 4096)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 256)")
    p.add_argument("--top-k", type=int, help="teacher tokens kept per position (default 256)")
    p.add_argument("--heuristic-tokens", type=int, help="calibration tokens for heuristic statistics (default 2048)")
    p.add_argument("--heuristics", type=lambda s: [x for x in s.split(",") if x], help="comma list (default all)")
    p.add_argument("--whole-blocks", action="store_true", default=None, help="drop whole layers, not sub-blocks")
    p.add_argument("--budget", help="per-type (k attention + k MLP, default) or total")
    p.add_argument("--data", help="calibration/held-out documents: .txt, .jsonl, a directory (default pydoc topics)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 (default fp32 on CPU)")
    p.add_argument(
        "--search-tokens", type=int, help="sparsity/quant/joint: calibration tokens of the fitness (default: the pool)"
    )
    p.add_argument("--database", help="sparsity/quant/joint: variant database directory (default: under the cache)")
    p.add_argument("--random-n", type=int, help="sparsity/quant/joint: size of the best-of-N random baseline (16)")
    p.add_argument(
        "--estimates",
        choices=["fisher", "layer"],
        help="sparsity/quant/joint: the per-unit error estimates EvoPress starts from and screens with: fisher "
        "(default; one forward and backward pass over the search pool, counted in the search's tokens; adds "
        "the dp-fisher baseline) or layer (the variant database's normalised layer errors, free)",
    )
    p.add_argument("--types", help="gguf: comma list of ggml quant types (default Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0)")
    p.add_argument(
        "--tol",
        help="gguf: width of the budget band, a fraction of the budget in (0, 0.5) (default 0.005: the searched "
        "tensors' bits per weight, or bytes, within 0.5%% below the target); other methods refuse it",
    )
    p.add_argument(
        "--target-bytes",
        help="gguf, instead of --target: budget in bytes of the searched tensors (their exact sizes in their types; "
        "the file adds the tensors not searched and the metadata): an integer or a number with a unit, "
        "B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. 80MB; rounded down to a byte",
    )
    p.add_argument(
        "--extra-tensors",
        help="gguf: also search these tensors outside the decoder layers, a comma list of token_embd, output "
        "(default none: copied from the source); they count in the budget; a model without output.weight "
        "computes its logits with token_embd, which is then both; other methods refuse it",
    )
    p.add_argument(
        "--format",
        help="format of OUT/model, as levelsearch export's: drop: drop (default), drop-lean, zeroed; quant/joint: "
        "pack-quantized (default), dense; quant and joint also: gptq (vLLM at 2/3/4/8 bits); "
        "sparsity: sparse-bitmask (default), dense",
    )
    p.add_argument("--no-export", action="store_true", help="skip writing the Hugging Face model directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
