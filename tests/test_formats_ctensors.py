"""compressed-tensors exports of bit-width and sparsity profiles on a tiny Llama: packed files that reload
(transformers + compressed-tensors, or our bitmask loader) to the searched logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.codecs.sparsity.problem import SparsityProblem  # noqa: E402
from levelsearch.adapters.formats import export  # noqa: E402
from levelsearch.adapters.formats.ctensors import vllm_warnings  # noqa: E402
from levelsearch.adapters.formats.verify import check_export, weights_bytes  # noqa: E402
from test_sparsity_quant import common  # noqa: E402

pytestmark = pytest.mark.llm


def mixed_levels(problem, seed=0):
    rng = np.random.default_rng(seed)
    return problem.member_levels(problem.space.switch(problem.space.sample(rng), rng, 2))  # every unit's level


@pytest.mark.parametrize("group_size", [32, 48])
def test_pack_quantized_reloads_through_compressed_tensors_to_the_searched_logits(group_size, data_file, tmp_path):
    prob = QuantProblem(
        target=3.0, bits=(2, 3, 4), group_size=group_size, **common(data_file, tmp_path / "db")
    )  # 48 divides neither 64 nor 128: written as groups of 16 with repeated scales
    lv = mixed_levels(prob)
    path = export(prob, lv, tmp_path / "q", method="quant")
    res = check_export(prob, lv, path)
    assert res["max_abs_logit_diff"] < 1e-4
    qcfg = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized"
    bits = {g["weights"]["num_bits"] for g in qcfg["config_groups"].values()}
    assert bits == {int(b) for b in prob.profile(lv)}
    dense = export(prob, lv, tmp_path / "dense", method="quant", format="dense")
    assert weights_bytes(path) < 0.5 * weights_bytes(dense)


def test_a_single_bit_width_loads_through_transformers_own_compressed_tensors_route(data_file, tmp_path):
    from levelsearch.adapters.formats.verify import reference_logits
    from transformers import CompressedTensorsConfig

    prob = QuantProblem(target=3.0, bits=(2, 3, 4), group_size=32, **common(data_file, tmp_path / "db"))
    lv = prob.uniform_levels()
    path = export(prob, lv, tmp_path / "q", method="quant")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    ids = prob.heldout.tokens[:2]
    with torch.inference_mode():
        got = model(input_ids=ids, use_cache=False).logits
    assert float((got - reference_logits(prob, lv, ids)).abs().max()) < 1e-4


def test_sparse_bitmask_shrinks_with_sparsity_and_reloads_exactly(data_file, tmp_path):
    prob = SparsityProblem(target=0.5, max_offset=3, **common(data_file, tmp_path / "db"))
    lv = mixed_levels(prob)
    path = export(prob, lv, tmp_path / "s", method="sparsity")
    assert check_export(prob, lv, path)["max_abs_logit_diff"] < 1e-4
    dense = export(prob, lv, tmp_path / "dense", method="sparsity", format="dense")
    assert weights_bytes(path) < weights_bytes(dense)


def test_a_format_that_does_not_fit_the_method_is_one_line(data_file, tmp_path):
    prob = SparsityProblem(target=0.5, max_offset=3, **common(data_file, tmp_path / "db"))
    with pytest.raises(ValueError, match="does not fit --method sparsity; use one of sparse-bitmask, dense"):
        export(prob, mixed_levels(prob), tmp_path / "x", method="sparsity", format="pack-quantized")


def test_vllm_warnings_name_unsupported_bits_and_mixed_fused_shards():
    units = {
        "model.layers.0.self_attn.q_proj": {"bits": 4, "stored_group_size": 128},
        "model.layers.0.self_attn.k_proj": {"bits": 3, "stored_group_size": 128},
        "model.layers.0.self_attn.v_proj": {"bits": 4, "stored_group_size": 128},
    }
    text = " ".join(vllm_warnings(units))
    assert "bit-widths [3]" in text and "q_proj/k_proj/v_proj of 1 layers" in text
    assert vllm_warnings({k: {"bits": 4, "stored_group_size": 128} for k in units}) == []


def test_joint_profile_is_pack_quantized_with_its_pruned_zeros_kept(data_file, tmp_path):
    from levelsearch.adapters import load_compressed
    from levelsearch.adapters.codecs.joint.problem import JointProblem

    prob = JointProblem(
        target=3.0, sparsities=(0.0, 0.5), bits=(2, 4, 8), group_size=32, tol=0.1, **common(data_file, tmp_path / "db")
    )
    lv = mixed_levels(prob)
    path = export(prob, lv, tmp_path / "j", method="joint")
    assert check_export(prob, lv, path)["max_abs_logit_diff"] < 1e-4
    model = load_compressed(path)
    for u, name in enumerate(prob.unit_names):
        zeros = prob.db.values(name)[int(lv[u])][0]
        assert int((model.get_submodule(name).weight == 0).sum()) >= zeros
