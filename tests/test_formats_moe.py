"""Packed exports of mixture-of-experts runs: pack-quantized, gptq and sparse-bitmask write each expert as the
per-expert modules of the architecture's checkpoints (Mixtral's ``block_sparse_moe.experts.<e>.w1/w3/w2``,
Qwen3-MoE's ``mlp.experts.<e>.gate_proj/up_proj/down_proj``), and reload to the searched logits (fp32 tolerance);
a layer's experts in several schemes are written as searched with vLLM's limit said; an architecture whose
checkpoints keep its experts fused (gpt-oss) is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from levelsearch.adapters.formats import export  # noqa: E402
from levelsearch.adapters.formats.common import read_state_dict  # noqa: E402
from levelsearch.adapters.formats.drop import META_FILE  # noqa: E402
from levelsearch.adapters.formats.verify import check_export  # noqa: E402
from levelsearch.adapters.model.models import save_model  # noqa: E402
from test_adapters_drop import byte_tokenizer  # noqa: E402
from test_moe import SMALL, make, tiny_moe  # noqa: E402

from levelsearch.cli import main  # noqa: E402

pytestmark = pytest.mark.llm

CASES = [
    ("mixtral", "quant", "pack-quantized", "model.layers.1.block_sparse_moe.experts.3.w3.weight_packed"),
    ("qwen3_moe", "quant", "pack-quantized", "model.layers.1.mlp.experts.3.up_proj.weight_packed"),
    ("mixtral", "quant", "gptq", "model.layers.0.block_sparse_moe.experts.2.w2.qweight"),
    ("qwen3_moe", "quant", "gptq", "model.layers.0.mlp.experts.2.down_proj.qweight"),
    ("mixtral", "sparsity", "sparse-bitmask", "model.layers.0.block_sparse_moe.experts.1.w1.weight.bitmask"),
    ("qwen3_moe", "sparsity", "sparse-bitmask", "model.layers.0.mlp.experts.1.gate_proj.weight.bitmask"),
]


def _levels(prob, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return prob.space.switch(prob.space.sample(rng), rng, 2)


@pytest.fixture(scope="module")
def problem(data_file, tmp_path_factory):
    """``problem(arch, kind, ties)``: a tiny MoE problem, built once per module (its database is the slow part)."""
    made: dict[tuple[str, str, str | None], object] = {}

    def get(arch: str, kind: str, ties: str | None = None):
        if (arch, kind, ties) not in made:
            extra = {"ties": ties} if ties else {}
            made[arch, kind, ties] = make(kind, arch, data_file, tmp_path_factory.mktemp("db"), **extra)
        return made[arch, kind, ties]

    return get


@pytest.mark.parametrize(("arch", "kind", "fmt", "key"), CASES)
def test_a_packed_moe_export_holds_per_expert_modules_and_reloads_to_the_searched_logits(
    arch, kind, fmt, key, problem, tmp_path
):
    prob = problem(arch, kind)
    lv = _levels(prob)
    if arch == "qwen3_moe" and fmt == "gptq":  # its 16-row k_proj fills int32 words at 2, 4 and 8 bits only
        lv = np.full(prob.space.n_units, 2)
    path = export(prob, lv, tmp_path / "out", method=kind, format=fmt)
    state = read_state_dict(path)
    assert key in state
    assert not any(k.endswith(("experts.gate_up_proj", "experts.down_proj")) for k in state)  # no fused tensor left
    checked = check_export(prob, lv, path)
    assert checked["max_abs_logit_diff"] <= checked["tolerance"] == 1e-4


def test_experts_untied_are_written_as_searched_and_vllms_one_scheme_per_layer_is_said(problem, tmp_path):
    prob = problem("mixtral", "quant", "none")
    names = prob.unit_names
    lv = np.array(prob.space.sample(np.random.default_rng(0)))
    e0 = names.index("model.layers.0.mlp.experts.0.gate_up_proj")
    e1 = names.index("model.layers.0.mlp.experts.1.gate_up_proj")
    lv[e0], lv[e1] = 0, len(prob.costs[e1]) - 1  # two experts of one fused parameter at different bit-widths
    path = export(prob, lv, tmp_path / "out", method="quant", format="pack-quantized")
    meta = json.loads((path / META_FILE).read_text())
    assert meta["units"][names[e0]]["bits"] != meta["units"][names[e1]]["bits"]
    assert any("experts of" in line and "one scheme" in line for line in meta["vllm"])
    assert meta["units"][names[e0]]["modules"] == [
        "model.layers.0.block_sparse_moe.experts.0.w1",
        "model.layers.0.block_sparse_moe.experts.0.w3",
    ]
    checked = check_export(prob, lv, path)
    assert checked["max_abs_logit_diff"] <= checked["tolerance"]


@pytest.mark.parametrize("fmt", ["pack-quantized", "gptq"])
def test_experts_a_checkpoint_keeps_fused_are_refused_in_one_line(fmt, problem, tmp_path):
    prob = problem("gpt_oss", "quant")
    with pytest.raises(ValueError) as err:
        export(prob, _levels(prob), tmp_path / "out", method="quant", format=fmt)
    msg = str(err.value)
    assert "\n" not in msg and fmt in msg and "--format dense" in msg and "fused" in msg
    assert not (tmp_path / "out").exists()


def test_compress_writes_a_moe_as_pack_quantized_that_reloads_to_the_searched_logits(data_file, tmp_path):
    model_dir = tmp_path / "mixtral"
    save_model(tiny_moe("mixtral"), byte_tokenizer(), model_dir)
    out = tmp_path / "run"
    argv = ["compress", "--model", str(model_dir), "--method", "quant", "--target", "3", "--data", data_file]
    argv += ["--out", str(out), "--format", "pack-quantized", "--estimates", "layer", "--schedule", "cpu", *SMALL]
    argv += ["--database", str(tmp_path / "db")]  # not the user's cache
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["searched_fraction"] >= 0.95
    assert res["export"]["max_abs_logit_diff"] <= 1e-4
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight_packed" in read_state_dict(out / "model")
