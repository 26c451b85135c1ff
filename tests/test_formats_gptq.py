"""GPTQ exports (``--format gptq``) of a mixed 2/3/4/5/8-bit profile on a tiny Llama: the packing against a
layout built by hand, the reload (our own unpacking) to the searched logits, the ``dynamic`` map vLLM reads,
and the requests it refuses in one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.formats import export  # noqa: E402
from levelsearch.adapters.formats.gptq import (  # noqa: E402
    gptq_vllm_warnings,
    pack_along_rows,
    unpack_along_rows,
    write_gptq,
)
from levelsearch.adapters.formats.verify import ExportCheckFailed, check_export, weights_bytes  # noqa: E402
from test_adapters_compress import SMALL  # noqa: E402
from test_sparsity_quant import common  # noqa: E402

from levelsearch.cli import main  # noqa: E402

pytestmark = pytest.mark.llm

BITS = (2, 3, 4, 5, 8)
#: per layer, the bit-width of each projection: fused shards (q/k/v, gate/up) share one, as vLLM needs
PLAN = [
    {"q_proj": 3, "k_proj": 3, "v_proj": 3, "o_proj": 2, "gate_proj": 4, "up_proj": 4, "down_proj": 8},
    {"q_proj": 5, "k_proj": 5, "v_proj": 5, "o_proj": 8, "gate_proj": 2, "up_proj": 2, "down_proj": 3},
]


# ------------------------------------------------------------------------------------------ packing by hand
def hand_packed_3bit(v: list[int]) -> list[int]:
    """32 three-bit values in 3 words, written out piece by piece as GPTQ's 3-bit layout has them."""
    w0 = sum(v[k] << (3 * k) for k in range(10)) | ((v[10] & 0b011) << 30)
    w1 = (v[10] >> 2) | sum(v[11 + k] << (3 * k + 1) for k in range(10)) | ((v[21] & 0b001) << 31)
    w2 = (v[21] >> 1) | sum(v[22 + k] << (3 * k + 2) for k in range(10))
    return [w - (1 << 32) if w >= 1 << 31 else w for w in (w0, w1, w2)]


def test_three_bit_codes_cross_word_boundaries_as_gptq_lays_them_out():
    rng = np.random.default_rng(0)
    cols = [rng.integers(0, 8, 64).tolist(), [7] * 64, [k % 8 for k in range(64)]]
    values = torch.tensor(cols).T  # (64, 3): two blocks of 32 per column
    want = torch.tensor([[w for b in (0, 32) for w in hand_packed_3bit(c[b : b + 32])] for c in cols]).T
    got = pack_along_rows(values, 3)
    assert got.dtype == torch.int32 and got.shape == (6, 3)
    assert torch.equal(got, want.to(torch.int32))
    assert torch.equal(unpack_along_rows(want.to(torch.int32), 3, 64), values)  # the loader's own reading


def test_two_four_and_eight_bits_fill_words_whole_low_bits_first():
    v = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]]).T
    assert int(pack_along_rows(v, 4)[0, 0]) == int(sum(int(x) << (4 * k) for k, x in enumerate(v[:, 0]))) - (1 << 32)
    v8 = torch.tensor([[1, 2, 3, 200]]).T
    assert int(pack_along_rows(v8, 8)[0, 0]) == (1 | 2 << 8 | 3 << 16 | 200 << 24) - (1 << 32)
    v2 = torch.tensor([[3] + [0] * 15]).T
    assert int(pack_along_rows(v2, 2)[0, 0]) == 3
    assert torch.equal(unpack_along_rows(pack_along_rows(v8, 8), 8, 4), v8)
    with pytest.raises(ValueError, match="do not fill whole 32-bit words"):
        pack_along_rows(torch.zeros(5, 1, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="outside 0..7"):
        pack_along_rows(torch.full((32, 1), 8), 3)


# --------------------------------------------------------------------------------------- exports and reloads
@pytest.fixture(scope="module")
def problem(data_file, tmp_path_factory):
    return QuantProblem(target=3.0, bits=BITS, group_size=32, **common(data_file, tmp_path_factory.mktemp("db")))


def planned_levels(prob) -> np.ndarray:
    levels = []
    for name in prob.unit_names:
        layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
        levels.append(BITS.index(PLAN[layer][name.rsplit(".", 1)[1]]))
    return np.array(levels)


@pytest.fixture(scope="module")
def exported(problem, tmp_path_factory):
    lv = planned_levels(problem)
    path = export(problem, lv, tmp_path_factory.mktemp("gptq") / "g", method="quant", format="gptq")
    return lv, path


def vllm_override(dynamic: dict, name: str):
    """vLLM's reading of ``dynamic`` for a module (gptq_utils.get_dynamic_override: first re.match wins)."""
    for pattern, value in dynamic.items():
        if re.match(pattern[2:], name):
            return False if pattern.startswith("-:") else value
    return None


def test_a_mixed_profile_reloads_to_the_searched_logits_and_is_much_smaller(problem, exported, tmp_path):
    lv, path = exported
    res = check_export(problem, lv, path)  # load_compressed: our unpacking, the stock Llama
    assert res["max_abs_logit_diff"] < 1e-4 and res["loader"] == "levelsearch.adapters.load_compressed"
    dense = export(problem, lv, tmp_path / "dense", method="quant", format="dense")
    assert weights_bytes(path) < 0.5 * weights_bytes(dense)
    assert {int(b) for b in problem.profile(lv)} == set(BITS)


def test_config_holds_gptq_with_a_dynamic_entry_per_module_and_fused_layer(problem, exported):
    lv, path = exported
    qcfg = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "gptq" and qcfg["sym"] is False and qcfg["desc_act"] is False
    assert qcfg["checkpoint_format"] in ("gptq", "gptq_v2") and qcfg["bits"] in (2, 3, 4, 8)
    dyn = qcfg["dynamic"]
    for name in problem.unit_names:
        layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
        bits = PLAN[layer][name.rsplit(".", 1)[1]]
        assert vllm_override(dyn, name) == {"bits": 8 if bits == 5 else bits, "group_size": 32}, name
        assert vllm_override(dyn, name + "_x") is None and vllm_override(dyn, "x." + name) is None
    for layer, plan in enumerate(PLAN):  # the modules vLLM builds: qkv_proj, gate_up_proj
        qkv = vllm_override(dyn, f"model.layers.{layer}.self_attn.qkv_proj")
        gate_up = vllm_override(dyn, f"model.layers.{layer}.mlp.gate_up_proj")
        assert qkv == {"bits": 8 if plan["q_proj"] == 5 else plan["q_proj"], "group_size": 32}
        assert gate_up == {"bits": plan["gate_proj"], "group_size": 32}
    meta = json.loads((path / "levelsearch_compression.json").read_text())
    assert meta["format"] == "gptq" and meta["vllm"][0].startswith("serve: vllm serve DIR --quantization gptq")
    assert any("5 as 8" in line for line in meta["vllm"])  # 5 bits stored as 8: named
    assert not any("fuses" in line for line in meta["vllm"])  # the fused shards share their bits here


def test_tensors_have_gptq_shapes_and_dtypes(problem, exported):
    from safetensors.torch import load_file

    _, path = exported
    t = load_file(str(path / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"  # 3 bits, 64 x 64, groups of 32
    assert t[f"{name}.qweight"].shape == (64 * 3 // 32, 64) and t[f"{name}.qweight"].dtype == torch.int32
    assert t[f"{name}.qzeros"].shape == (2, 64 * 3 // 32) and t[f"{name}.qzeros"].dtype == torch.int32
    assert t[f"{name}.scales"].shape == (2, 64) and t[f"{name}.g_idx"].tolist() == [0] * 32 + [1] * 32
    assert f"{name}.weight" not in t and "model.embed_tokens.weight" in t


def test_the_check_fails_when_the_zero_point_convention_is_flipped(problem, exported, tmp_path):
    import shutil

    lv, path = exported
    bad = tmp_path / "flipped"
    shutil.copytree(path, bad)
    cfg = json.loads((bad / "config.json").read_text())
    q = cfg["quantization_config"]
    q["checkpoint_format"] = {"gptq": "gptq_v2", "gptq_v2": "gptq"}[q["checkpoint_format"]]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportCheckFailed, match="it is not the searched model"):
        check_export(problem, lv, bad)
    assert (tmp_path / "flipped.FAILED" / "FAILED").is_file()


def test_the_loader_reads_each_modules_bits_from_the_dynamic_map(problem, exported, tmp_path):
    import shutil

    lv, path = exported
    bad = tmp_path / "wrongbits"
    shutil.copytree(path, bad)
    cfg = json.loads((bad / "config.json").read_text())
    key = "+:^model\\.layers\\.0\\.mlp\\.down_proj$"
    assert cfg["quantization_config"]["dynamic"][key]["bits"] == 8
    cfg["quantization_config"]["dynamic"][key]["bits"] = 4
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportCheckFailed, match="does not reload"):
        check_export(problem, lv, bad)


def test_gptq_v2_holds_zero_points_of_zero_which_v1_refuses(problem, tmp_path, monkeypatch):
    from levelsearch.adapters.formats import gptq as gptq_format

    lv = planned_levels(problem)
    v2 = write_gptq(problem, lv, tmp_path / "v2", None, checkpoint_format="gptq_v2")
    assert check_export(problem, lv, v2)["max_abs_logit_diff"] < 1e-4  # the zeros stored as they are
    parts = gptq_format.stored_parts

    def with_a_zero_point_of_zero(db, unit, level, names):
        out = parts(db, unit, level, names)
        out["zeros"] = out["zeros"].clone()
        out["zeros"][0, 0] = 0
        return out

    monkeypatch.setattr(gptq_format, "stored_parts", with_a_zero_point_of_zero)
    with pytest.raises(ValueError, match="8-bit codes and a zero point of 0, which the v1 gptq checkpoint_format"):
        write_gptq(problem, lv, tmp_path / "v1", None, checkpoint_format="gptq")
    auto = write_gptq(problem, lv, tmp_path / "auto", None)
    assert json.loads((auto / "config.json").read_text())["quantization_config"]["checkpoint_format"] == "gptq_v2"
    meta = json.loads((auto / "levelsearch_compression.json").read_text())
    assert any("vllm-project/vllm#26092" in line for line in meta["vllm"])


def test_v1_holds_a_zero_point_of_zero_as_codes_plus_one_in_a_wider_field(problem, tmp_path, monkeypatch):
    from levelsearch.adapters import load_compressed
    from levelsearch.adapters.formats import gptq as gptq_format
    from levelsearch.adapters.kernels.grid import Quantized, unpack_codes

    lv = planned_levels(problem)
    parts = gptq_format.stored_parts
    flat = ("model.layers.1.mlp.down_proj", "model.layers.0.self_attn.k_proj")  # 3 bits; k: a q/k/v shard

    def patched(db, unit, level, names):
        out = dict(parts(db, unit, level, names))
        if unit in flat:
            out["zeros"] = out["zeros"].clone()
            out["zeros"][1, 0] = 0
        return out

    monkeypatch.setattr(gptq_format, "stored_parts", patched)
    path = write_gptq(problem, lv, tmp_path / "v1", None)
    qcfg = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qcfg["checkpoint_format"] == "gptq"
    meta = json.loads((path / "levelsearch_compression.json").read_text())
    model = load_compressed(path)
    for name in flat:
        u = problem.unit_names.index(name)
        p = patched(problem.db, name, int(lv[u]), ("codes", "scales", "zeros"))
        assert meta["units"][name]["groups_shifted"] == 1 and meta["units"][name]["stored_bits"] == 4
        q = Quantized(3, 32, unpack_codes(p["codes"].numpy(), 3, problem.db.shape(name)), p["scales"], p["zeros"])
        assert torch.equal(model.get_submodule(name).weight, q.dequantize())  # scale · (code − 0), exactly
    assert vllm_override(qcfg["dynamic"], "model.layers.0.self_attn.qkv_proj") == {"bits": 4, "group_size": 32}
    assert any("zero point of 0" in line for line in meta["vllm"])


def test_fused_shards_searched_at_different_bits_are_stored_at_the_widest(data_file, tmp_path):
    # shards at different bits: a search without ties (with them, the default, shards share one level)
    problem = QuantProblem(target=3.0, bits=BITS, group_size=32, ties="none", **common(data_file, tmp_path / "db"))
    lv = planned_levels(problem)
    searched = {"q_proj": 2, "k_proj": 3, "v_proj": 5, "gate_proj": 2, "up_proj": 4}
    for u, name in enumerate(problem.unit_names):
        if name.startswith("model.layers.0.") and name.rsplit(".", 1)[1] in searched:
            lv[u] = BITS.index(searched[name.rsplit(".", 1)[1]])
    path = write_gptq(problem, lv, tmp_path / "w", None)
    assert check_export(problem, lv, path)["max_abs_logit_diff"] < 1e-4  # the same weights in wider fields
    dyn = json.loads((path / "config.json").read_text())["quantization_config"]["dynamic"]
    assert vllm_override(dyn, "model.layers.0.self_attn.qkv_proj") == {"bits": 8, "group_size": 32}
    assert vllm_override(dyn, "model.layers.0.self_attn.q_proj") == {"bits": 8, "group_size": 32}
    assert vllm_override(dyn, "model.layers.0.mlp.gate_up_proj") == {"bits": 4, "group_size": 32}
    meta = json.loads((path / "levelsearch_compression.json").read_text())
    assert meta["units"]["model.layers.0.self_attn.q_proj"]["bits"] == 2
    assert meta["units"]["model.layers.0.self_attn.q_proj"]["stored_bits"] == 8
    assert any("fused module's widest" in line for line in meta["vllm"])
    as_searched = write_gptq(problem, lv, tmp_path / "s", None, widen_fused=False)
    dyn = json.loads((as_searched / "config.json").read_text())["quantization_config"]["dynamic"]
    assert vllm_override(dyn, "model.layers.0.self_attn.qkv_proj") is None  # no one scheme to give it
    meta = json.loads((as_searched / "levelsearch_compression.json").read_text())
    assert any("cannot load them" in line for line in meta["vllm"])


def test_vllm_warnings_name_mixed_fused_shards_and_widened_bits():
    def unit(bits, stored=None):
        return {"bits": bits, "stored_bits": stored or bits, "stored_group_size": 128}

    units = {
        "model.layers.0.self_attn.q_proj": unit(4),
        "model.layers.0.self_attn.k_proj": unit(3),
        "model.layers.0.self_attn.v_proj": unit(6, 8),
    }
    text = " ".join(gptq_vllm_warnings(units))
    assert "q_proj/k_proj/v_proj of 1 layers" in text and "6 as 8 bits" in text
    assert gptq_vllm_warnings({k: unit(3) for k in units}) == []
    partial = gptq_vllm_warnings({"model.layers.0.mlp.gate_proj": unit(3)})
    assert len(partial) == 1 and "only some of gate_proj/up_proj" in partial[0]


# -------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(("method", "target", "fits"), [("drop", "0.5", "drop, zeroed"), ("sparsity", "0.5", None)])
def test_gptq_for_a_method_without_bit_widths_is_one_line_and_exit_2(method, target, fits, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["compress", "--model", str(tmp_path / "absent"), "--method", method, "--target", target, "--out", str(out)]
    assert main([*args, "--format", "gptq", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--format gptq does not fit --method {method}; use one of {fits or 'sparse-bitmask, dense'}" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_compress_writes_gptq_and_records_its_check(tmp_path, monkeypatch):
    from levelsearch.adapters.model.models import save_model
    from test_adapters_drop import byte_tokenizer

    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(  # widths that fill int32 words at 3 bits (k/v: 2 heads of 16 = 32 rows)
        vocab_size=257,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.25,
    )
    save_model(transformers.LlamaForCausalLM(cfg).eval(), byte_tokenizer(), tmp_path / "llama")
    out = tmp_path / "run"
    args = ["compress", "--model", str(tmp_path / "llama"), "--method", "quant", "--target", "3", "--out", str(out)]
    assert main([*args, "--format", "gptq", "--generations", "1", *SMALL]) == 0
    e = json.loads((out / "results.json").read_text())["export"]
    assert e["format"] == "gptq" and e["max_abs_logit_diff"] <= e["tolerance"] == 1e-4 and e["size"]["ratio"] < 0.5
    assert json.loads((out / "model" / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"


def test_a_joint_profile_is_written_as_gptq_with_its_pruned_zeros_kept(data_file, tmp_path):
    from levelsearch.adapters import load_compressed
    from levelsearch.adapters.codecs.joint.problem import JointProblem

    prob = JointProblem(
        target=3.0, sparsities=(0.0, 0.5), bits=(2, 4, 8), group_size=32, tol=0.1, **common(data_file, tmp_path / "db")
    )
    rng = np.random.default_rng(0)
    lv = prob.member_levels(prob.space.switch(prob.space.sample(rng), rng, 2))  # every unit's level
    path = export(prob, lv, tmp_path / "j", method="joint", format="gptq")
    assert check_export(prob, lv, path)["max_abs_logit_diff"] < 1e-4
    assert json.loads((path / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    model = load_compressed(path)
    pruned = 0
    for u, name in enumerate(prob.unit_names):
        zeros = prob.db.values(name)[int(lv[u])][0]
        pruned += zeros
        assert int((model.get_submodule(name).weight == 0).sum()) >= zeros
    assert pruned > 0  # the profile prunes something: the zeros survive the gptq codes
