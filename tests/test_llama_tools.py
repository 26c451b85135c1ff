"""llama.cpp's own tools beside a gguf run: found in order, failing in one line, absent without stopping the run."""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("libgguf")
pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
from levelsearch.adapters.codecs.gguf import llamacpp as lc  # noqa: E402
from test_gguf import write_tiny_gguf  # noqa: E402

pytestmark = pytest.mark.llm

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _fake_tools(where: Path, body: str = "exit 0") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    for name in TOOLS:
        _script(where / name, body)
    return where


@pytest.fixture
def no_tools(tmp_path, monkeypatch):
    """No tools anywhere: LLAMA_CPP_BIN unset, an empty cache, PATH without a directory that holds one."""
    monkeypatch.delenv("LLAMA_CPP_BIN", raising=False)
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep) if not (Path(d) / "llama-quantize").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))


def test_tools_are_looked_for_in_llama_cpp_bin_then_the_cache_then_path(tmp_path, monkeypatch, no_tools):
    assert lc.find_tools() is None
    on_path = _fake_tools(tmp_path / "path")
    monkeypatch.setenv("PATH", str(on_path) + os.pathsep + os.environ["PATH"])
    assert lc.find_tools()["llama-quantize"].parent == on_path
    cached = _fake_tools(lc.tools_dir())
    assert lc.tools_dir() == tmp_path / "cache" / "llama-tools" / lc.LLAMA_TOOLS_VERSION / "bin"
    assert lc.find_tools()["llama-perplexity"].parent == cached
    env = _fake_tools(tmp_path / "env")
    monkeypatch.setenv("LLAMA_CPP_BIN", str(env))
    assert {p.parent for p in lc.find_tools().values()} == {env}


def test_a_place_that_lacks_one_tool_is_passed_over(tmp_path, monkeypatch, no_tools):
    partial = _fake_tools(tmp_path / "partial")
    (partial / "llama-imatrix").unlink()
    monkeypatch.setenv("LLAMA_CPP_BIN", str(partial))
    assert lc.find_tools() is None
    assert "make llama-tools" in lc.missing_line()


@pytest.mark.parametrize(
    ("body", "says"),
    [("kill -SEGV $$", "crashed with SIGSEGV"), ("echo 'bad model' >&2; exit 3", "failed (exit 3): bad model"),
     ("sleep 5", "ran past its 0.5 s limit")],
)
def test_a_tool_that_crashes_fails_or_hangs_is_one_line_naming_it(body, says, tmp_path):
    exe = _script(tmp_path / "llama-quantize", body)
    with pytest.raises(lc.LlamaToolError) as err:
        lc.run_tool(exe, ["x"], timeout=0.5)
    msg = str(err.value)
    assert msg.startswith("llama-quantize ") and says in msg and "\n" not in msg


KL_OUTPUT = """
====== Perplexity statistics ======
Mean PPL(Q)                   :  12.345600 ±   0.100000
Mean PPL(base)                :  12.000000 ±   0.100000
====== KL divergence statistics ======
Mean    KLD:   0.041000 ±   0.001000
Maximum KLD:   2.500000
99.9%   KLD:   1.200000
99.0%   KLD:   0.400000
95.0%   KLD:   0.150000
Median  KLD:   0.020000
====== Token probability statistics ======
Same top p: 91.250 ± 0.300 %
"""


def test_llama_perplexitys_kl_summary_is_read_top1_as_a_fraction():
    got = lc.parse_kl_statistics(KL_OUTPUT)
    assert got == {"ppl": 12.3456, "ppl_base": 12.0, "kl_mean": 0.041, "kl_max": 2.5, "kl_p99_9": 1.2,
                   "kl_p99": 0.4, "kl_median": 0.02, "top1": 0.9125}
    with pytest.raises(lc.LlamaToolError, match="no kl_mean"):
        lc.parse_kl_statistics(KL_OUTPUT.replace("Mean    KLD", "Mean KL"))


def test_a_run_that_lost_the_end_of_its_log_is_run_again_until_the_summary_comes(tmp_path):
    # the third run prints the summary; the first two exit 0 with their log cut short, as llama.cpp's
    # unflushed logger does on a busy machine
    (tmp_path / "summary.txt").write_text(KL_OUTPUT)
    count = tmp_path / "count"
    exe = _script(tmp_path / "llama-perplexity",
                  f'echo x >> {count}; echo "perplexity: 0.5 seconds per pass - ETA" >&2; '
                  f'[ $(wc -l < {count}) -ge 3 ] && cat {tmp_path / "summary.txt"}; exit 0')
    got = lc.kl_divergence(exe, tmp_path / "m.gguf", tmp_path / "base.kld", n_ctx=32)
    assert got["kl_mean"] == 0.041 and len(count.read_text().split()) == 3
    count.unlink()
    with pytest.raises(lc.LlamaToolError, match=r"gave no KL summary for m.gguf in 2 runs: .*ETA$"):
        lc.run_logged(exe, [], lambda out: lc.parse_kl_statistics(out) if "Mean" in out else None,
                      what="no KL summary for m.gguf", attempts=2)


def test_the_tokens_of_a_kl_base_file_are_read_back(tmp_path):
    toks = np.arange(12, dtype="<i4").reshape(3, 4)
    f = tmp_path / "base.kld"
    f.write_bytes(b"_logits_" + struct.pack("<Iii", 4, 100, 3) + toks.tobytes() + b"\0" * 64)
    assert np.array_equal(lc.read_kl_base_tokens(f), toks)
    (tmp_path / "other").write_bytes(b"nothing here at all!")
    with pytest.raises(ValueError, match="not a llama-perplexity"):
        lc.read_kl_base_tokens(tmp_path / "other")


def test_a_dry_runs_types_are_read_per_tensor():
    out = (
        "[   1/  30]                   token_embd.weight - [  256,   260,     1,     1], type =    f16, "
        "size =    0.127 MiB\n"
        "[   2/  30]                 blk.0.attn_q.weight - [  256,   256,     1,     1], type =    f16, "
        "size =     0.12 MiB ->     0.03 MiB (q4_K)\n"
    )
    assert lc.dry_run_types(out) == {"token_embd.weight": "F16", "blk.0.attn_q.weight": "Q4_K"}


# ---------------------------------------------------------------------- a compress run with and without the tools
def _compress(src: Path, db: Path, out: Path, heldout: int = 128) -> list[str]:
    return ["compress", "--method", "gguf", "--model", str(src), "--target", "4.0", "--types",
            "Q2_K,Q3_K,Q4_K,Q6_K", "--seq-len", "32", "--calibration-tokens", "256", "--heldout-tokens",
            str(heldout), "--top-k", "16", "--generations", "1", "--database", str(db), "--out", str(out), "--quiet"]


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-tools")
    return write_tiny_gguf(root / "tiny-f16.gguf", tied=True), root


def test_without_the_tools_the_run_says_how_to_build_them_and_marks_them_not_run(tiny_src, tmp_path, capsys,
                                                                                 no_tools):
    from levelsearch.cli import main

    src, root = tiny_src
    assert main(_compress(src, root / "db", tmp_path / "run")) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "llama-tools" in ln]
    assert len(err) == 1 and "make llama-tools" in err[0]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    tools = res["llama_tools"]
    assert tools["tools"] is None and "--target-bpw" in tools["allocator"]
    assert all(v.startswith("not run") for v in tools["baselines"].values())
    assert set(tools["baselines"]) == {"llama-quantize-Q3_K_M", "llama-quantize-Q4_K_M"}
    assert "llama.cpp-Q4_K_M" in res["methods"] and "llama_tools" not in res["export"]  # the fallback rules


def test_tools_that_crash_are_failed_checks_and_the_run_goes_on(tiny_src, tmp_path, capsys, monkeypatch, no_tools):
    from levelsearch.cli import main

    src, root = tiny_src
    monkeypatch.setenv("LLAMA_CPP_BIN", str(_fake_tools(tmp_path / "bin", "kill -SEGV $$")))
    assert main(_compress(src, root / "db", tmp_path / "run")) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    record = res["llama_tools"]["baselines"]
    assert record["nearest_mix"].startswith("failed: llama-quantize crashed with SIGSEGV")
    assert all(m["failed"].startswith("llama-quantize crashed") for m in record["mixes"].values())
    assert res["export"]["llama_tools"]["failed"].startswith("llama-perplexity crashed with SIGSEGV")
    assert (tmp_path / "run" / "model.gguf").is_file()
    err = capsys.readouterr().err
    assert all(len(ln) < 400 for ln in err.splitlines())
