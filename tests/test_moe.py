"""Mixture-of-experts models: every expert of a fused parameter is a unit of the weight codecs.

Tiny random Mixtral, Qwen3-MoE, OLMoE, gpt-oss (transposed experts with biases) and Qwen2-MoE (a shared expert
of ``nn.Linear`` modules beside the routed ones), built from configs (no download): quant, sparsity and joint
compress the experts (≥ 95% of the decoder layers' weights searched), a layer's experts of one fused parameter
share one level by default (engine ties), the dense export reloads to the searched logits, an expert no token
reaches gets the pooled statistics of its parameter, and an architecture the finder cannot map is one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.joint.problem import JointProblem  # noqa: E402
from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.codecs.sparsity.problem import SparsityProblem  # noqa: E402
from levelsearch.adapters.formats import export  # noqa: E402
from levelsearch.adapters.formats.verify import check_export  # noqa: E402
from levelsearch.adapters.model.experts import ExpertUnit, UnmappableExperts, find_experts  # noqa: E402
from levelsearch.adapters.model.models import save_model  # noqa: E402
from levelsearch.adapters.model.units import layer_units  # noqa: E402
from test_adapters_drop import byte_tokenizer  # noqa: E402

from levelsearch.cli import main  # noqa: E402
from levelsearch.ties import TiedSpace  # noqa: E402

pytestmark = pytest.mark.llm

BASE = dict(
    vocab_size=257,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    bos_token_id=256,
    eos_token_id=256,
)
DATA = dict(seq_len=16, calibration_tokens=64, heldout_tokens=32, top_k=16, chunk_tokens=32, progress=False)


def _config(arch: str):
    t = transformers
    if arch == "mixtral":
        return t.MixtralConfig(**BASE, num_local_experts=4, num_experts_per_tok=2)
    if arch == "qwen3_moe":
        return t.Qwen3MoeConfig(**BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=8)
    if arch == "olmoe":
        return t.OlmoeConfig(**BASE, num_experts=4, num_experts_per_tok=2)
    if arch == "gpt_oss":
        types = ["sliding_attention", "full_attention"]
        return t.GptOssConfig(
            **BASE, num_local_experts=4, num_experts_per_tok=2, head_dim=8, layer_types=types, sliding_window=8
        )
    if arch == "qwen2_moe":
        return t.Qwen2MoeConfig(
            **BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32
        )
    raise AssertionError(arch)


ARCHS = ["mixtral", "qwen3_moe", "olmoe", "gpt_oss", "qwen2_moe"]


def tiny_moe(arch: str):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(arch)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger than the default init, so that the logits tell models apart
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model


def make(kind: str, arch: str, data_file: str, db, **extra):
    loaded = {"loaded": (tiny_moe(arch), byte_tokenizer()), "data": data_file, "database": str(db), **DATA}
    if kind == "quant":
        return QuantProblem(target=3.0, bits=(2, 3, 4), group_size=16, estimates="layer", **loaded, **extra)
    if kind == "sparsity":
        return SparsityProblem(target=0.5, max_offset=1, estimates="layer", **loaded, **extra)
    return JointProblem(
        target=3.0, sparsities=(0.0, 0.5), bits=(2, 4), group_size=16, estimates="layer", **loaded, **extra
    )


CASES = [(arch, "quant") for arch in ARCHS] + [(a, k) for a in ("mixtral", "gpt_oss") for k in ("sparsity", "joint")]


@pytest.mark.parametrize(("arch", "kind"), CASES)
def test_experts_are_searched_and_the_dense_export_reloads_to_the_searched_logits(arch, kind, data_file, tmp_path):
    prob = make(kind, arch, data_file, tmp_path / "db")
    experts = [n for n, m in zip(prob.unit_names, prob.modules) if isinstance(m, ExpertUnit)]
    assert len(experts) == 2 * 4 * 2  # two fused parameters, four experts, two layers
    assert prob.searched_fraction() >= 0.95
    errors = prob.db.errors()
    assert all(np.isfinite(errors[i, : len(c)]).all() for i, c in enumerate(prob.costs))
    rng = np.random.default_rng(0)
    lv = prob.space.switch(prob.space.sample(rng), rng, 2)
    ids = prob.heldout.tokens[:2]
    with torch.inference_mode():
        dense = prob.model(input_ids=ids, use_cache=False).logits.float()
    path = export(prob, lv, tmp_path / "out", method=kind, format="dense")
    checked = check_export(prob, lv, path)
    assert checked["max_abs_logit_diff"] <= checked["tolerance"]
    prob.apply(lv)
    with torch.inference_mode():
        searched = prob.model(input_ids=ids, use_cache=False).logits.float()
    assert float((searched - dense).abs().max()) > 1e-4  # the levels changed the experts' model


def test_quant_ties_a_layers_experts_per_fused_parameter_and_fused_shards(data_file, tmp_path):
    prob = make("quant", "mixtral", data_file, tmp_path / "db")
    assert isinstance(prob.space, TiedSpace)
    # per layer: q/k/v (one value menu: one group), o_proj, the experts' gate_up_proj, the experts' down_proj
    assert prob.space.n_units == 4 * 2
    rng = np.random.default_rng(1)
    for _ in range(20):
        members = prob.member_levels(prob.space.switch(prob.space.sample(rng), rng, 1))
        for name, param in [("gate_up_proj", 0), ("down_proj", 1)]:
            idx = [i for i, n in enumerate(prob.unit_names) if n.startswith("model.layers.0.mlp.experts.")]
            levels = {int(members[i]) for i in idx if prob.unit_names[i].endswith(name)}
            assert len(levels) == 1, (name, param)
    untied = make("quant", "mixtral", data_file, tmp_path / "db", ties="none")
    assert not isinstance(untied.space, TiedSpace) and untied.space.n_units == len(untied.unit_names)


def test_an_expert_no_token_reaches_gets_the_pooled_statistics(data_file, tmp_path):
    model = tiny_moe("gpt_oss")
    with torch.no_grad():  # expert 3 of every layer is never chosen
        for layer in model.model.layers:
            layer.mlp.router.bias[3] = -1e4
    loaded = {"loaded": (model, byte_tokenizer()), "data": data_file, "database": str(tmp_path / "db"), **DATA}
    prob = QuantProblem(target=3.0, bits=(2, 3, 4), group_size=16, estimates="layer", ties="none", **loaded)
    errors = prob.layer_errors()
    assert np.isfinite(errors).all()
    unreached = [i for i, n in enumerate(prob.unit_names) if ".experts.3." in n]
    assert unreached and all(errors[i, 0] > errors[i, -1] for i in unreached)


def test_the_finder_reads_orientation_and_leaves_the_router_dense():
    for arch, transposed in [("mixtral", False), ("gpt_oss", True)]:
        layer = tiny_moe(arch).model.layers[0]
        (found,) = find_experts(layer)
        assert found.n_experts == 4 and found.transposed is transposed
        names = [n for n, _ in layer_units(layer)]
        assert not any(n.startswith(found.router.rsplit(".", 1)[0] + ".") or n == found.router for n in names)


def test_a_shared_experts_scalar_gate_stays_dense_like_the_router():
    layer = tiny_moe("qwen2_moe").model.layers[0]
    names = [n for n, _ in layer_units(layer)]
    assert "mlp.shared_expert_gate" not in names and "mlp.gate" not in names
    assert {"mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"} <= set(names)


def test_an_unmappable_mixture_of_experts_is_one_line():
    # JetMoE's mixture of attention heads: fused 4×16×32 and 4×32×16 read both ways, no is_transposed declared
    cfg = transformers.JetMoeConfig(
        vocab_size=257, hidden_size=32, num_hidden_layers=1, num_key_value_heads=2, kv_channels=8,
        intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    layer = transformers.AutoModelForCausalLM.from_config(cfg).model.layers[0]
    with pytest.raises(UnmappableExperts) as err:
        layer_units(layer)
    msg = str(err.value)
    assert "\n" not in msg and "self_attention.experts.input_linear.weight (4×16×32)" in msg and "not supported" in msg


SMALL = ["--seq-len", "16", "--calibration-tokens", "64", "--heldout-tokens", "32", "--top-k", "16"]
SMALL += ["--heuristic-tokens", "32", "--offspring", "4", "--generations", "1", "--quiet"]


def test_compress_quant_on_a_moe_reports_the_searched_fraction_and_peak_memory(data_file, tmp_path):
    model_dir = tmp_path / "mixtral"
    save_model(tiny_moe("mixtral"), byte_tokenizer(), model_dir)
    out = tmp_path / "run"
    argv = ["compress", "--model", str(model_dir), "--method", "quant", "--target", "3", "--data", data_file]
    argv += ["--out", str(out), "--format", "dense", "--estimates", "layer", "--schedule", "cpu", *SMALL]
    argv += ["--database", str(tmp_path / "db")]  # not the user's cache
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["searched_fraction"] >= 0.95
    assert res["memory"]["peak_rss_mib"] > 0
    assert res["export"]["max_abs_logit_diff"] <= 1e-4


def test_compress_on_an_unmappable_moe_is_one_line_exit_2_and_writes_nothing(data_file, tmp_path, capsys):
    cfg = transformers.JetMoeConfig(
        vocab_size=257, hidden_size=32, num_hidden_layers=1, num_key_value_heads=2, kv_channels=8,
        intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, bos_token_id=256, eos_token_id=256,
    )  # fmt: skip
    model_dir = tmp_path / "jetmoe"
    save_model(transformers.AutoModelForCausalLM.from_config(cfg), byte_tokenizer(), model_dir)
    out = tmp_path / "run"
    argv = ["compress", "--model", str(model_dir), "--method", "quant", "--target", "3", "--data", data_file]
    rc = main([*argv, "--out", str(out), "--database", str(tmp_path / "db"), *SMALL])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("levelsearch: error:")
    assert "input_linear.weight (4×16×32)" in err and "not supported" in err
    assert not (tmp_path / "db").exists()
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_compress_with_a_per_module_format_on_fused_only_experts_is_one_line_before_the_search(
    data_file, tmp_path, capsys
):
    # gpt-oss's checkpoints keep its experts fused: there are no per-expert modules to write them as
    model_dir = tmp_path / "gpt_oss"
    save_model(tiny_moe("gpt_oss"), byte_tokenizer(), model_dir)
    out = tmp_path / "run"
    argv = ["compress", "--model", str(model_dir), "--method", "quant", "--target", "3", "--data", data_file]
    assert main([*argv, "--out", str(out), "--estimates", "layer", "--database", str(tmp_path / "db"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pack-quantized format" in err and "--format dense" in err
    assert "fused" in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_fisher_estimates_of_experts_come_from_their_slices_of_the_fused_gradient(data_file, tmp_path):
    loaded = {"loaded": (tiny_moe("olmoe"), byte_tokenizer()), "data": data_file, "database": str(tmp_path / "db")}
    prob = QuantProblem(target=3.0, bits=(2, 4), group_size=16, ties="none", **loaded, **DATA)
    est = prob.unit_errors()
    experts = [i for i, m in enumerate(prob.modules) if isinstance(m, ExpertUnit)]
    assert np.isfinite(est).all() and (est[experts, 0] > est[experts, 1]).all()  # fewer bits, larger estimate
    assert len({round(float(est[i, 0]), 12) for i in experts}) == len(experts)  # each expert its own
