"""Export of a ``gguf`` run: one ``.gguf`` file, its checks, its profile plot, ``levelsearch gguf-recipe``.

:func:`write_gguf` copies the source file (metadata, tokenizer, every tensor that is not searched:
bytes and types unchanged) and puts each searched tensor in its chosen type, as the bytes the
search's variant database holds (q/k rows permuted back to the file's order). :func:`verify_gguf`
reloads the file with gguf-py and stops the run (``ValueError``) unless every searched tensor
dequantizes to exactly the weights the search evaluated, every other tensor and every metadata
value is the source's, and transformers' GGUF loader (a second reader; for a ``llama`` file with experts,
which it cannot load, :mod:`levelsearch.adapters.model.gguf_moe` on gguf-py) gives the search's logits;
where ``llama-cpp-python`` is installed, llama.cpp's own held-out perplexity must agree with ours
within 1%. What was checked goes into ``OUT/gguf_export.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "add_recipe_parser",
    "chosen_tensors",
    "llama_cpp_perplexity",
    "plot_types",
    "recipe",
    "recipe_overrides",
    "tensor_data",
    "tensor_kind",
    "verify_gguf",
    "write_gguf",
    "write_imatrix",
]

LOGIT_TOL = 1e-3  # transformers' reload runs the same fp32 weights: only summation order may differ
LLAMA_CPP_PPL_TOL = 0.01


def chosen_tensors(problem: Any, levels: np.ndarray) -> dict[str, tuple[list[tuple[int, int, slice]], str]]:
    """GGUF tensor name → ``([(unit, level, rows of the unit) ...], type)`` of ``levels`` (a search assignment)."""
    lv = problem.member_levels(levels)
    out = {}
    for g, parts in problem.tensor_parts.items():
        first = parts[0][0]
        out[g] = ([(u, int(lv[u]), rows) for u, rows in parts], problem.unit_types[first][int(lv[first])])
    return out


def tensor_data(problem: Any, name: str, parts: list[tuple[int, int, slice]]) -> np.ndarray:
    """The ggml bytes of the searched tensor ``name`` made of ``parts`` (:func:`chosen_tensors`), as the file
    stores them: ``rows × row bytes`` (q/k rows permuted to the file's order), or ``experts × rows × row bytes``."""
    chunks = [problem.variant_bytes(u, k)[rows] for u, k, rows in parts]
    if len(parts) > 1:  # a 3-D expert tensor: expert e's rows are parts[e]
        return np.ascontiguousarray(np.stack(chunks))
    order = problem.source.row_order(name, chunks[0].shape[0])
    return chunks[0] if order is None else chunks[0][order]


def tensor_kind(gguf_name: str) -> str:
    """``attn_v`` of ``blk.3.attn_v.weight``; ``token_embd`` / ``output`` of the tensors outside the layers."""
    parts = gguf_name.split(".")
    return parts[2] if parts[0] == "blk" and len(parts) > 2 else parts[0]


def write_gguf(problem: Any, levels: np.ndarray, path: str | Path) -> Path:
    """Write the source file with the searched tensors at ``levels`` to ``path`` (atomically); returns ``path``.

    Raises:
        ValueError: ``levels`` does not meet the problem's budget.
    """
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

    lv = problem.space.validate(levels)
    if not problem.space.is_feasible(lv):
        raise ValueError("the assignment to export does not meet the budget")
    src = problem.source
    if src is None:
        raise ValueError(
            f"{problem.model_name} is not a GGUF file: convert it with llama.cpp first (python convert_hf_to_gguf.py "
            "MODEL_DIR --outtype f16 --outfile model-f16.gguf) and pass --model model-f16.gguf"
        )
    chosen = chosen_tensors(problem, lv)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = GGUFWriter(str(tmp), src.arch)
    for key, field in src.reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the writer's own header fields
        if key == "general.alignment":
            writer.add_custom_alignment(int(field.contents()))
            continue
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main, sub_type=sub)
    for t in src.reader.tensors:
        if t.name in chosen:
            parts, qtype = chosen[t.name]
            writer.add_tensor(t.name, tensor_data(problem, t.name, parts), raw_dtype=GGMLQuantizationType[qtype])
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def write_imatrix(problem: Any, path: str | Path) -> dict[str, Any]:
    """Write the importance matrix the search quantized with to ``path`` in llama.cpp's legacy binary format
    (``save_imatrix_legacy`` of llama.cpp's ``tools/imatrix/imatrix.cpp``, read by ``llama-quantize --imatrix``);
    what ``gguf_export.json`` records of it.

    The layout (little-endian): ``int32`` entry count; per entry, names sorted, ``int32`` name length, the
    name (no terminator), ``int32`` ncall, ``int32`` value count, the values (``float32``); then ``int32`` chunk
    count, ``int32`` length and the dataset's name. A reader divides the values by ncall: ncall is 1, so it gets
    exactly the fp32 values the search's variants were quantized with (the mean squared activation of each input
    channel over the calibration pool). The tensors outside the decoder layers have no entry: llama-imatrix
    collects none for them, and the search quantized them without one.
    """

    found: dict[str, Any] = {}
    for g, parts in problem.tensor_parts.items():  # a 3-D expert tensor: one matrix per expert, expert 0 first
        if parts[0][0] < problem.n_linear:
            ims = [problem.imatrix_of(u) for u, _rows in parts]
            found[g] = None if any(im is None for im in ims) else np.concatenate(ims)
    entries = {g: np.ascontiguousarray(im, dtype="<f4") for g, im in found.items() if im is not None}
    if len(entries) < len(found):  # all or nothing: llama-quantize would quantize a missing one without
        if problem.spec["method"] != "ggml-imatrix":
            why = "the search used no importance matrix"
        else:
            why = "the variant database predates stored importance matrices (build a new one: --database NEW_DIR)"
        return {"written": False, "why": why}
    dataset = str(problem.settings.get("data") or "pydoc_data.topics").encode()
    out = Path(path)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name in sorted(entries):
            key, values = name.encode(), entries[name]
            f.write(struct.pack("<i", len(key)) + key + struct.pack("<ii", 1, values.size) + values.tobytes())
        f.write(struct.pack("<i", int(problem.calibration.n_seq)) + struct.pack("<i", len(dataset)) + dataset)
    os.replace(tmp, out)
    return {
        "written": True,
        "file": str(out),
        "entries": len(entries),
        "format": "llama.cpp legacy imatrix (ncall 1: the values are the means)",
        "calibration_tokens": int(problem.calibration.n_tokens),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _check_file(problem: Any, levels: np.ndarray, path: Path) -> dict[str, Any]:
    """The tensor and metadata checks of :func:`verify_gguf`; ``ValueError`` naming the first mismatch."""
    import torch
    from gguf import GGUFReader

    from ...model.units import unit_weight
    from .types import dequantize, row_bytes

    src = problem.source
    chosen = chosen_tensors(problem, levels)
    reader = GGUFReader(str(path))
    bad = f"the exported {path} does not match the search:"
    for key, field in src.reader.fields.items():
        if key.startswith("GGUF."):
            continue
        got = reader.fields.get(key)
        if got is None or not _same(got.contents(), field.contents()):
            raise ValueError(f"{bad} metadata {key} differs from the source's")
    names = [t.name for t in reader.tensors]
    if names != [t.name for t in src.reader.tensors]:
        raise ValueError(f"{bad} its tensors are not the source's tensors in the source's order")
    problem.apply(levels)
    try:
        for t in reader.tensors:
            if t.name not in chosen:
                s = src.tensors[t.name]
                if t.tensor_type != s.tensor_type or not np.array_equal(np.asarray(t.data), np.asarray(s.data)):
                    raise ValueError(f"{bad} {t.name} is not the source's tensor")
                continue
            parts, qtype = chosen[t.name]
            if t.tensor_type.name != qtype:
                raise ValueError(f"{bad} {t.name} is {t.tensor_type.name}, the search chose {qtype}")
            n_per_row = int(t.shape[0])
            raw = np.asarray(t.data).view(np.uint8).reshape(-1, row_bytes(qtype, n_per_row))
            w = dequantize(raw, qtype)
            order = src.row_order(t.name, w.shape[0])
            if order is not None:
                w = w[np.argsort(order)]
            weights = [unit_weight(problem.modules[u]).detach().to("cpu", torch.float32) for u, _k, _r in parts]
            live = np.concatenate([w_u.numpy()[rows] for w_u, (_u, _k, rows) in zip(weights, parts)])
            if w.shape != live.shape or not np.array_equal(w, live):
                diff = float(np.abs(w - live).max()) if w.shape == live.shape else math.inf
                raise ValueError(f"{bad} {t.name} dequantizes (gguf-py) to other weights (max |diff| {diff:.3g})")
    finally:
        problem.apply(None)
    return {"tensors_checked": len(names), "searched_tensors": len(chosen), "bytes": path.stat().st_size}


def _transformers_logits(problem: Any, levels: np.ndarray, path: Path, n_seq: int = 2) -> float:
    """Largest |logit difference| between transformers' load of ``path`` and the search's model at ``levels``."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ...model.gguf_config import gguf_model_config
    from ...model.gguf_moe import gguf_moe_model

    hf_logging.disable_progress_bar()
    loaded: Any = gguf_moe_model(path.parent, {"gguf_file": path.name}, torch.float32)  # Mixtral: transformers can't
    if loaded is None:
        config = gguf_model_config(path)  # llama.cpp's reading where transformers' defaults differ (expert widths ...)
        extra = {} if config is None else {"config": config}
        loaded = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, **extra
        )
    return float(problem.logit_diff(levels, loaded, n_seq))


def _llama_cpp_ppl_in_process(path: Path, seqs: np.ndarray, threads: int | None) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=int(seqs.shape[1]),
        n_batch=int(seqs.shape[1]),
        logits_all=True,
        verbose=False,
        n_threads=threads,
        seed=0,
    )
    nll, n = 0.0, 0
    for row in seqs:
        llm.reset()
        llm.eval([int(x) for x in row])
        z = np.asarray(llm.scores[: len(row) - 1], dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll -= float(lp[np.arange(len(row) - 1), row[1:]].sum())
        n += len(row) - 1
    llm.close() if hasattr(llm, "close") else None
    return math.exp(nll / n)


def _llama_cpp_child(argv: list[str]) -> None:
    """Child-process entry of :func:`llama_cpp_perplexity`: ``MODEL TOKENS.npy THREADS`` → the perplexity on stdout."""
    threads = int(argv[2]) if argv[2] != "-" else None
    print(json.dumps(_llama_cpp_ppl_in_process(Path(argv[0]), np.load(argv[1]), threads)))


def llama_cpp_perplexity(path: Path, tokens: Any, threads: int | None = None) -> float:
    """llama.cpp's perplexity (``llama-cpp-python``) of ``tokens`` (``n_seq × seq_len``), each sequence on its
    own, every token after the first predicted: the same tokens and positions as our held-out perplexity.

    llama.cpp runs in a child process, so that a library built for another CPU (an illegal instruction) or any
    other crash of it is an error with one line, not the end of the run.

    Raises:
        RuntimeError: llama.cpp failed or crashed (the message says how, and how to rebuild it).
    """

    seqs = np.asarray(tokens, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokens.npy"
        np.save(tok, seqs)
        code = "import sys; from levelsearch.adapters.codecs.gguf import export as g; g._llama_cpp_child(sys.argv[1:])"
        # the child must import the installed package, not a checkout's levelsearch/ in the caller's directory:
        # it runs in the temporary directory, and with -P (no script or current directory on sys.path)
        safe = ["-P"] if sys.version_info >= (3, 11) else []
        model = str(Path(path).absolute())
        args = [sys.executable, *safe, "-c", code, model, str(tok), "-" if threads is None else str(int(threads))]
        done = subprocess.run(args, capture_output=True, text=True, cwd=tmp)
    if done.returncode != 0:
        if done.returncode < 0:

            how = f"crashed with {signal.Signals(-done.returncode).name}"
        else:
            tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
            how = f"failed ({tail})"
        hint = "; rebuild llama-cpp-python for this CPU (make llama-cpp)" if done.returncode == -4 else ""  # SIGILL
        raise RuntimeError(f"llama.cpp {how} on {path}{hint}")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def verify_gguf(
    problem: Any, levels: np.ndarray, path: str | Path, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Check the exported file (module docstring); write ``gguf_export.json`` beside it and return what it says.

    Raises:
        ValueError: any check fails (the message names which).
    """
    p = Path(path)
    info = dict(info or {})
    lv = problem.space.validate(levels)
    report: dict[str, Any] = {"file": str(p), **_check_file(problem, lv, p)}
    report["bits_per_weight"] = problem.average_bits(lv)
    report["searched_bytes"] = problem.bytes_of(lv)
    report["types"] = problem.tensor_types(lv)
    diff = _transformers_logits(problem, lv, p)
    report["transformers_max_abs_logit_diff"] = diff
    if not diff <= LOGIT_TOL:
        raise ValueError(f"transformers' GGUF loader gives other logits for {p} (max |diff| {diff:.3g} > {LOGIT_TOL})")

    if importlib.util.find_spec("llama_cpp") is None:  # not imported here: llama.cpp runs in a child process
        report["llama_cpp"] = "not checked: llama-cpp-python is not installed (make llama-cpp)"
    else:
        ours = info.get("heldout_ppl")
        try:
            theirs = llama_cpp_perplexity(p, problem.heldout.tokens.cpu().numpy())
        except RuntimeError as e:
            raise ValueError(str(e)) from None
        report["llama_cpp"] = {"heldout_ppl": theirs, "ours": ours}
        if ours is not None and not abs(theirs / float(ours) - 1.0) <= LLAMA_CPP_PPL_TOL:
            raise ValueError(
                f"llama.cpp's held-out perplexity of {p} is {theirs:.4f}, ours {float(ours):.4f}: more than "
                f"{LLAMA_CPP_PPL_TOL:.0%} apart"
            )
    report.update({k: v for k, v in info.items() if k not in report})
    (p.parent / "gguf_export.json").write_text(json.dumps(report, indent=1))
    return report


def plot_types(problem: Any, assignments: dict[str, np.ndarray], path: Any, methods: dict[str, Any]) -> Path:
    """Bits per weight of every tensor under each method, one panel per tensor kind, against the layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    of = [tensor_kind(problem.gguf_names[u]) for u in problem.unit_names]
    kinds = list(dict.fromkeys(of))
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.6 * len(kinds), 3.0), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        idx = [i for i, k in enumerate(of) if k == kind]
        for name, lv in assignments.items():
            m = methods.get(name, {})
            label = f"{name} ({m['heldout_ppl']:.2f}, {problem.average_bits(lv):.3f} bpw)" if m else name
            mark = "o" if len(idx) == 1 else None  # token_embd, output: one tensor, one point
            ax.plot(problem.unit_layer[idx], problem.profile(lv)[idx], lw=1, marker=mark, label=label)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
    axes[0][0].set_ylabel("bits per weight")
    axes[0][-1].legend(fontsize=5)
    fig.suptitle("ggml type per tensor (held-out ppl, bits per weight)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------- levelsearch gguf-recipe
def recipe_overrides(results: dict[str, Any], method: str = "evopress") -> list[str]:
    """:func:`recipe`'s overrides as bare ``PATTERN=TYPE`` strings: one ``--tensor-type`` argument each, or the
    lines of a ``llama-quantize --tensor-type-file``."""
    return [line[len("--tensor-type '") : -1] for line in recipe(results, method)]


def recipe(results: dict[str, Any], method: str = "evopress") -> list[str]:
    """``--tensor-type PATTERN=TYPE`` overrides of llama-quantize giving every searched tensor ``method``'s type.

    One anchored regex per tensor kind and type (``^blk\\.(0|4|7)\\.attn_v\\.weight$=q6_k``; llama-quantize
    lower-cases patterns and takes the first that matches, so the patterns never overlap), and one per searched
    tensor outside the layers (``^token_embd\\.weight$=q8_0``, ``^output\\.weight$=q6_k``). With the run's
    ``kept_tensors`` (the 2-D tensors it copied from the source), one per kept tensor giving it its source type:
    llama-quantize copies a tensor asked for in its own type, so they stay as the export has them.

    Raises:
        ValueError: ``results`` is not a ``gguf`` run's, or has no method of that name.
    """
    if results.get("method") != "gguf" or "gguf_tensors" not in results:
        raise ValueError("not the results of a --method gguf run (no gguf_tensors in results.json)")
    methods = results.get("methods", {})
    if method not in methods or "types" not in methods[method]:
        raise ValueError(f"results.json has no method {method!r}; it has {', '.join(sorted(methods))}")
    groups: dict[tuple[str, str], list[int]] = {}
    lines = []
    for name, qtype in zip(results["gguf_tensors"], methods[method]["types"]):
        if not name.startswith("blk."):  # token_embd.weight, output.weight
            lines.append(f"--tensor-type '^{re.escape(name)}$={qtype.lower()}'")
            continue
        _, layer, kind, *_ = name.split(".")
        groups.setdefault((kind, qtype), []).append(int(layer))
    for (kind, qtype), layers in sorted(groups.items(), key=lambda kv: (kv[0][0], min(kv[1]))):
        alt = "|".join(str(i) for i in sorted(layers))
        lines.append(f"--tensor-type '^blk\\.({alt})\\.{kind}\\.weight$={qtype.lower()}'")
    for name, qtype in sorted((results.get("kept_tensors") or {}).items()):
        lines.append(f"--tensor-type '^{re.escape(name)}$={str(qtype).lower()}'")
    return lines


def _recipe_cmd(args: argparse.Namespace) -> int:
    from ...run.pipeline import journal_results

    run = Path(args.run_dir)
    results = journal_results(run)  # the journal, never results.json (a report a person may have edited)
    lines = recipe(results, args.name)
    m = results["methods"][args.name]
    print(
        f"# {args.name}: {m['bits_per_weight']:.4f} bits per weight over the searched tensors; "
        f"types as written in {run / 'model.gguf'} (llama.cpp's row-length fallbacks already applied)"
    )
    source = (results.get("source") or {}).get("file", "SOURCE.gguf")
    imatrix = run / "imatrix.dat"
    with_im = f"--imatrix {imatrix} " if imatrix.is_file() else ""
    print(
        f"# with your llama.cpp: llama-quantize --allow-requantize {with_im}OVERRIDES {source} OUT.gguf Q4_K_M "
        "(every 2-D tensor has an override, so the mix named last only labels the file)"
    )
    if with_im:
        print(f"# {imatrix}: the importance matrix the search quantized with (llama.cpp's legacy format)")
    else:
        print("# the run left no imatrix.dat: the overrides give its types, quantized with your own imatrix")
    print(" \\\n".join(lines))
    return 0


def add_recipe_parser(subparsers: Any) -> None:
    """``levelsearch gguf-recipe RUN_DIR``: print a gguf run's choice as llama-quantize ``--tensor-type`` overrides."""
    p = subparsers.add_parser(
        "gguf-recipe",
        help="print a --method gguf run's types as llama-quantize --tensor-type overrides",
        description="Print the ggml type EvoPress (or another method) chose for every tensor of a --method gguf "
        "run as llama-quantize --tensor-type overrides, to apply to a model of your own llama.cpp build.",
    )
    p.add_argument("run_dir", help="the --out directory of a levelsearch compress --method gguf run")
    p.add_argument("--method", dest="name", default="evopress", help="which method's types (default evopress)")
    p.set_defaults(func=_recipe_cmd)
