"""llama.cpp's own command-line tools beside a ``gguf`` run: ``llama-quantize``, ``llama-imatrix``,
``llama-perplexity``.

``make llama-tools`` builds them from the llama.cpp source that the pinned ``llama-cpp-python`` source package
carries (:data:`LLAMA_TOOLS_VERSION`) into :func:`tools_dir`. :func:`find_tools` looks for them in
``$LLAMA_CPP_BIN`` first, then in that cache directory, then on ``PATH``. Every tool runs in a child process with
a time limit: a crash, a non-zero exit or a timeout is :class:`LlamaToolError` with one line saying which tool
and how, never the end of the caller's run.

The pinned llama.cpp has ``--tensor-type``, ``--tensor-type-file`` and ``--prune-layers`` but no automatic
per-tensor allocator to a size or bits-per-weight target (``--target-bpw``), and no newer ``llama-cpp-python``
on the package registry carries one (:data:`ALLOCATOR`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = [
    "ALLOCATOR",
    "K_MIXES",
    "LLAMA_TOOLS_VERSION",
    "TOOLS",
    "LlamaToolError",
    "dry_run_types",
    "find_tools",
    "gguf_tensor_types",
    "kl_base",
    "kl_divergence",
    "missing_line",
    "parse_kl_statistics",
    "quantize",
    "read_kl_base_tokens",
    "run_logged",
    "run_tool",
    "tools_dir",
]

#: the ``llama-cpp-python`` source package whose llama.cpp ``make llama-tools`` builds
LLAMA_TOOLS_VERSION = "0.3.36"
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity")
#: llama-quantize's K-quant mixes, smallest first (the candidates for "the mix nearest the target")
K_MIXES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
#: what the run records of llama.cpp's automatic size-target allocator
ALLOCATOR = (
    f"not run: the llama.cpp of llama-cpp-python {LLAMA_TOOLS_VERSION} (the newest on the package registry) has "
    "no --target-bpw allocator in llama-quantize"
)
#: seconds a tool may run before it counts as failed (llama-perplexity of a large model may need more: raise it)
DEFAULT_TIMEOUT = 1800.0


class LlamaToolError(RuntimeError):
    """A llama.cpp tool crashed, failed or ran out of time; the message is one line naming the tool."""


def tools_dir() -> Path:
    """Where ``make llama-tools`` puts the tools: ``CACHE/llama-tools/VERSION/bin`` (``CACHE`` is
    ``$LEVELSEARCH_CACHE`` or ``~/.cache/levelsearch``)."""
    from ...model.cache import cache_root

    return cache_root() / "llama-tools" / LLAMA_TOOLS_VERSION / "bin"


def _tool_in(directory: Path, name: str) -> Path | None:
    p = directory / name
    return p if p.is_file() and os.access(p, os.X_OK) else None


def find_tools(names: Sequence[str] = TOOLS) -> dict[str, Path] | None:
    """name → executable of every tool of ``names``, all from the first place that has them all:
    ``$LLAMA_CPP_BIN``, then :func:`tools_dir`, then ``PATH``; ``None`` when no place has them all."""
    places: list[Path] = []
    env = os.environ.get("LLAMA_CPP_BIN")
    if env:
        places.append(Path(env).expanduser())
    places.append(tools_dir())
    for place in places:
        found = {n: _tool_in(place, n) for n in names}
        if all(found.values()):
            return {n: p for n, p in found.items() if p is not None}
    on_path = {n: shutil.which(n) for n in names}
    if all(on_path.values()):
        return {n: Path(p) for n, p in on_path.items() if p is not None}
    return None


def missing_line() -> str:
    """The one line a run prints when the tools are not found."""
    return (
        f"llama.cpp's tools ({', '.join(TOOLS)}) not found in $LLAMA_CPP_BIN, {tools_dir()} or PATH: its own "
        "baselines and KL statistics are not run (build them with: make llama-tools)"
    )


def run_tool(exe: Path, args: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, cwd: Path | None = None) -> str:
    """Run ``exe args`` and return its standard output and error together.

    Raises:
        LlamaToolError: the tool is not there, crashed (a signal), exited non-zero or ran past ``timeout``
            seconds; one line naming the tool and its last line of output.
    """
    name = Path(exe).name
    try:
        done = subprocess.run(
            [str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, errors="replace"
        )
    except subprocess.TimeoutExpired:
        raise LlamaToolError(f"{name} ran past its {timeout:g} s limit") from None
    except OSError as exc:
        raise LlamaToolError(f"{name} could not start ({exc.strerror or exc})") from None
    text = done.stdout + done.stderr
    if done.returncode != 0:
        last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no output")
        if done.returncode < 0:
            how = f"crashed with {signal.Signals(-done.returncode).name}"
        else:
            how = f"failed (exit {done.returncode})"
        raise LlamaToolError(f"{name} {how}: {last[:200]}")
    return text


#: how many times a llama.cpp tool that exited 0 without the end of its log is run (see :func:`run_logged`)
LOG_ATTEMPTS = 5


def run_logged(
    exe: Path,
    args: Sequence[str],
    read: Callable[[str], T | None],
    *,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = LOG_ATTEMPTS,
) -> T:
    """Run ``exe args`` (:func:`run_tool`) until ``read`` finds what it needs in the output, at most ``attempts``
    times; returns what ``read`` returned.

    llama.cpp's tools log from a worker thread that the process does not wait for at exit, so on a busy machine
    a run that exits 0 can lose the last lines of its log, the summary among them. The tools are deterministic,
    so one more run prints the same figures.

    Raises:
        LlamaToolError: the tool failed (:func:`run_tool`), or no run printed it: ``"<tool> gave <what>"``.
    """
    out = ""
    for _ in range(max(1, attempts)):
        out = run_tool(exe, args, timeout=timeout)
        got = read(out)
        if got is not None:
            return got
    last = next((ln.strip() for ln in reversed(out.splitlines()) if ln.strip()), "no output")
    raise LlamaToolError(f"{Path(exe).name} gave {what} in {attempts} runs: {last[:200]}")


def quantize(
    exe: Path,
    source: Path,
    out: Path,
    mix: str,
    *,
    imatrix: Path | None = None,
    tensor_types: Sequence[str] = (),
    tensor_type_file: Path | None = None,
    threads: int = 1,
    dry_run: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """``llama-quantize --allow-requantize [--imatrix] [--tensor-type ...] [--tensor-type-file] SOURCE OUT MIX
    THREADS`` (``--allow-requantize``: a source such as SmolLM2's Q4_1 file is already quantized); its output."""
    args: list[str] = ["--allow-requantize"]
    if dry_run:
        args.append("--dry-run")
    if imatrix is not None:
        args += ["--imatrix", str(imatrix)]
    for t in tensor_types:
        args += ["--tensor-type", t]
    if tensor_type_file is not None:
        args += ["--tensor-type-file", str(tensor_type_file)]
    args += [str(source)] + ([] if dry_run else [str(out)]) + [mix, str(int(threads))]
    return run_tool(exe, args, timeout=timeout)


_DRY = re.compile(r"\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+),.*?(?:\((\w+)\))?\s*$")


def dry_run_types(output: str) -> dict[str, str]:
    """tensor name → the ggml type (upper case) llama-quantize gives it, from a ``--dry-run``'s output."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        m = _DRY.search(line)
        if m:
            out[m.group(1)] = (m.group(3) or m.group(2)).upper()
    return out


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """tensor name → ggml type name of the GGUF file ``path`` (gguf-py)."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def _perplexity_args(model: Path, n_ctx: int, threads: int, flash_attn: str | None = None) -> list[str]:
    fa = [] if flash_attn is None else ["-fa", flash_attn]
    return ["-m", str(model), "-c", str(n_ctx), "-b", str(n_ctx), "-t", str(int(threads)), "--no-warmup", *fa]


def kl_base(
    exe: Path,
    model: Path,
    text: Path,
    base: Path,
    *,
    n_ctx: int,
    threads: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    flash_attn: str | None = None,
) -> dict[str, Any]:
    """``llama-perplexity --kl-divergence-base BASE -f TEXT`` on the source ``model``: its log-probabilities over
    ``TEXT`` in chunks of ``n_ctx`` tokens (the second half of each chunk scored) saved to ``base``; returns its
    perplexity (``ppl``) and the chunk count (``chunks``). ``flash_attn``: llama.cpp's ``-fa`` (``on``, ``off``,
    ``auto``; default: its own default)."""
    args = [*_perplexity_args(model, n_ctx, threads, flash_attn), "-f", str(text), "--kl-divergence-base", str(base)]

    def final(out: str) -> float | None:
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
        return float(m.group(1)) if m and base.is_file() else None

    ppl = run_logged(exe, args, final, what=f"no perplexity for {model.name}", timeout=timeout)
    n_chunk = read_kl_base_tokens(base).shape[0]
    return {"ppl": ppl, "chunks": int(n_chunk), "n_ctx": int(n_ctx)}


_KL_LINES = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([0-9.eE+-]+)",
    "ppl_base": r"Mean PPL\(base\)\s*:\s*([0-9.eE+-]+)",
    "kl_mean": r"Mean\s+KLD:\s*([0-9.eE+-]+)",
    "kl_max": r"Maximum KLD:\s*([0-9.eE+-]+)",
    "kl_p99_9": r"99\.9%\s+KLD:\s*([0-9.eE+-]+)",
    "kl_p99": r"99\.0%\s+KLD:\s*([0-9.eE+-]+)",
    "kl_median": r"Median\s+KLD:\s*([0-9.eE+-]+)",
    "top1": r"Same top p:\s*([0-9.eE+-]+)",
}


def parse_kl_statistics(output: str) -> dict[str, float]:
    """llama-perplexity ``--kl-divergence``'s summary: ``ppl``, ``ppl_base``, ``kl_mean``, ``kl_median``,
    ``kl_p99``, ``kl_p99_9``, ``kl_max`` (nats per token) and ``top1`` (the fraction of positions whose likeliest
    token is the base model's; llama.cpp prints it in percent).

    Raises:
        LlamaToolError: a statistic is missing from the output.
    """
    got: dict[str, float] = {}
    for key, pattern in _KL_LINES.items():
        m = re.search(pattern, output)
        if not m:
            raise LlamaToolError(f"llama-perplexity printed no {key} (its KL summary is missing)")
        got[key] = float(m.group(1))
    got["top1"] /= 100.0
    return got


def kl_divergence(
    exe: Path,
    model: Path,
    base: Path,
    *,
    n_ctx: int,
    threads: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    flash_attn: str | None = None,
) -> dict[str, float]:
    """``llama-perplexity --kl-divergence --kl-divergence-base BASE`` on ``model``: its statistics against the
    base model's log-probabilities (:func:`parse_kl_statistics`), on the tokens ``base`` holds (``flash_attn``: as
    :func:`kl_base`'s)."""
    args = [*_perplexity_args(model, n_ctx, threads, flash_attn), "--kl-divergence-base", str(base), "--kl-divergence"]

    def stats(out: str) -> dict[str, float] | None:
        try:
            return parse_kl_statistics(out)
        except LlamaToolError:
            return None

    return run_logged(exe, args, stats, what=f"no KL summary for {model.name}", timeout=timeout)


def read_kl_base_tokens(base: Path) -> np.ndarray:
    """The tokens a ``--kl-divergence-base`` file holds, ``[n_chunk, n_ctx]`` int64 (its header: ``_logits_``,
    ``uint32`` n_ctx, ``int32`` n_vocab, ``int32`` n_chunk, then the tokens as ``int32``).

    Raises:
        ValueError: not such a file.
    """
    with open(base, "rb") as f:
        head = f.read(20)
        if len(head) < 20 or head[:8] != b"_logits_":
            raise ValueError(f"{base} is not a llama-perplexity --kl-divergence-base file")
        n_ctx, _n_vocab, n_chunk = np.frombuffer(head[8:], dtype="<i4")
        tokens = np.frombuffer(f.read(4 * int(n_ctx) * int(n_chunk)), dtype="<i4")
    if tokens.size != int(n_ctx) * int(n_chunk):
        raise ValueError(f"{base} is truncated")
    return tokens.astype(np.int64).reshape(int(n_chunk), int(n_ctx))


# ---------------------------------------------------------------------- llama.cpp's KL yardstick beside a run
def heldout_text(problem: Any) -> str:
    """The run's held-out tokens as text (special tokens left out), for llama-perplexity ``-f``."""
    ids = problem.heldout.tokens.reshape(-1).tolist()
    return str(problem.tokenizer.decode(ids, skip_special_tokens=True))


def _bos(problem: Any) -> int | None:
    """The BOS token llama.cpp puts first in every chunk, or ``None`` when the file says not to add one."""
    fields = problem.source.reader.fields

    def get(key: str) -> Any:
        f = fields.get(key)
        return None if f is None else f.contents()

    add = get("tokenizer.ggml.add_bos_token")
    bos = get("tokenizer.ggml.bos_token_id")
    return int(bos) if add and bos is not None else None


def perplexity_on_chunks(problem: Any, levels: Any, tokens: np.ndarray, batch: int = 4) -> float:
    """Our perplexity (the search's model at ``levels``, ``None``: the source) on llama-perplexity's chunks
    ``tokens`` (``[n_chunk, n_ctx]``, from :func:`read_kl_base_tokens`), scored as llama-perplexity scores them:
    the next-token NLL of positions ``n_ctx/2 .. n_ctx-2`` of each chunk, BOS first where the file adds one."""
    import math

    import torch

    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    bos = _bos(problem)
    if bos is not None:
        ids[:, 0] = bos
    first = ids.shape[1] // 2
    dev = next(problem.model.parameters()).device
    nll, count = 0.0, 0
    problem.apply(levels)
    try:
        with torch.inference_mode():
            for i in range(0, ids.shape[0], batch):
                x = ids[i : i + batch].to(dev)
                z = problem.model(input_ids=x, use_cache=False).logits[:, first:-1].float()
                lp = torch.log_softmax(z, dim=-1).gather(-1, x[:, first + 1 :].unsqueeze(-1))
                nll -= float(lp.double().sum())
                count += int(lp.numel())
    finally:
        problem.apply(None)
    return math.exp(nll / count)


#: our perplexity and llama-perplexity's of the same file on the same chunks may differ this much (fraction)
PPL_TOL = 0.01


def compare_files(
    problem: Any,
    files: dict[str, Path],
    out_dir: Path,
    tools: dict[str, Path],
    *,
    threads: int = 1,
    check: tuple[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """llama-perplexity's KL statistics of every GGUF file of ``files`` (name → path) against the run's source
    file, on the run's held-out text in chunks of its sequence length: the source's log-probabilities are saved
    once (``--kl-divergence-base``, in ``out_dir``, removed after) and each file is run against them.

    ``check`` (``(name, levels)``): that file's perplexity by llama-perplexity against ours on the same chunks
    (:func:`perplexity_on_chunks`), within :data:`PPL_TOL`. A tool that fails is one line in that file's entry
    (``failed``) and on stderr; the others still run. Returns what ``results.json`` records.
    """
    import sys
    import time

    out_dir.mkdir(parents=True, exist_ok=True)
    text, base = out_dir / "heldout.txt", out_dir / "source.kld"
    text.write_text(heldout_text(problem))
    n_ctx = int(problem.heldout.tokens.shape[1])
    exe = tools["llama-perplexity"]
    record: dict[str, Any] = {"tool": str(exe), "text": str(text), "n_ctx": n_ctx, "threads": threads, "files": {}}
    t0 = time.perf_counter()
    try:
        record["source"] = {
            **kl_base(exe, problem.source.path, text, base, n_ctx=n_ctx, threads=threads, timeout=timeout),
            "seconds": time.perf_counter() - t0,
        }
        tokens = read_kl_base_tokens(base)
        record["scored_tokens"] = int(tokens.shape[0] * (n_ctx - 1 - n_ctx // 2))
        for name, path in files.items():
            t0 = time.perf_counter()
            entry: dict[str, Any] = {"file": str(path), "file_bytes": Path(path).stat().st_size}
            try:
                entry.update(kl_divergence(exe, Path(path), base, n_ctx=n_ctx, threads=threads, timeout=timeout))
            except LlamaToolError as exc:
                entry["failed"] = str(exc)
                print(f"levelsearch gguf: llama-perplexity on {name}: {exc}", file=sys.stderr)
            entry["seconds"] = time.perf_counter() - t0
            record["files"][name] = entry
        if check is not None and "ppl" in record["files"].get(check[0], {}):
            ours = perplexity_on_chunks(problem, check[1], tokens)
            theirs = float(record["files"][check[0]]["ppl"])
            ok = abs(theirs / ours - 1.0) <= PPL_TOL
            record["ppl_check"] = {"file": check[0], "ours": ours, "llama_perplexity": theirs, "tol": PPL_TOL, "ok": ok}
            if not ok:
                print(
                    f"levelsearch gguf: llama-perplexity's perplexity of {check[0]} is {theirs:.4f}, ours on the "
                    f"same chunks {ours:.4f}: more than {PPL_TOL:.0%} apart",
                    file=sys.stderr,
                )
    except LlamaToolError as exc:
        record["failed"] = str(exc)
        print(f"levelsearch gguf: llama-perplexity on the source: {exc}", file=sys.stderr)
    finally:
        base.unlink(missing_ok=True)
    return record
