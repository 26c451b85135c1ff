"""Calibration Hessians and the pruning / quantization primitives on a tiny random Llama."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.kernels.gptq import gptq_quantize  # noqa: E402
from levelsearch.adapters.kernels.grid import pack_codes, unpack_codes  # noqa: E402
from levelsearch.adapters.kernels.hessian import relative_output_error  # noqa: E402
from levelsearch.adapters.kernels.magnitude import magnitude_prune  # noqa: E402
from levelsearch.adapters.kernels.rtn import rtn_quantize  # noqa: E402
from levelsearch.adapters.kernels.sparsegpt import sparsegpt_prune  # noqa: E402
from levelsearch.adapters.kernels.wanda import wanda_prune  # noqa: E402
from levelsearch.adapters.model.calibration import (  # noqa: E402
    capture_layer_inputs,
    layer_hessians,
    linear_units,
)
from levelsearch.adapters.model.models import decoder_layers  # noqa: E402

pytestmark = pytest.mark.llm


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=80,
        intermediate_size=144,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model_and_hessians():
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 128, (12, 24), generator=g)
    hessians = dict(layer_hessians(model, tokens, batch_size=4, progress=False))
    return model, tokens, hessians


def test_every_linear_of_every_decoder_layer_gets_a_hessian(model_and_hessians):
    model, _, hessians = model_and_hessians
    units = linear_units(model)
    assert len(units) == 2 * 7
    for name, layer, mod in units:
        local = name.split(f"layers.{layer}.", 1)[1]
        h = hessians[layer][local]
        assert h.shape == (mod.in_features, mod.in_features)
        assert torch.allclose(h, h.T, atol=1e-5)


def test_hessian_equals_two_x_xt_over_n_of_the_layer_inputs(model_and_hessians):
    model, tokens, hessians = model_and_hessians
    captured = []
    mlp = decoder_layers(model)[1].mlp
    handle = mlp.down_proj.register_forward_hook(lambda m, a, o: captured.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(tokens)
    handle.remove()
    x = torch.cat(captured)
    expected = 2 * x.T @ x / x.shape[0]
    assert torch.allclose(hessians[1]["mlp.down_proj"], expected, rtol=1e-4, atol=1e-5)


def test_capture_stops_at_the_first_layer():
    model = tiny_llama()
    calls = []
    decoder_layers(model)[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    inputs = capture_layer_inputs(model, torch.zeros(4, 8, dtype=torch.long), batch_size=2)
    assert len(inputs.hidden) == 2 and not calls


@pytest.mark.parametrize("prune", ["magnitude", "wanda", "sparsegpt"])
def test_every_pruning_level_has_exactly_its_number_of_zeros(model_and_hessians, prune):
    model, _, hessians = model_and_hessians
    w = decoder_layers(model)[0].mlp.down_proj.weight.detach()
    h = hessians[0]["mlp.down_proj"]
    counts = [0, 1, 777, w.numel() // 2, w.numel() - 3, w.numel()]
    if prune == "magnitude":
        out = magnitude_prune(w, counts)
    elif prune == "wanda":
        out = wanda_prune(w, h, counts)
    else:
        out = sparsegpt_prune(w, h, counts, block_size=32)
    assert [int((o == 0).sum()) for o in out] == counts


def test_sparsegpt_output_error_is_below_magnitude_at_equal_sparsity(model_and_hessians):
    model, _, hessians = model_and_hessians
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        w = getattr(getattr(decoder_layers(model)[1], name.split(".")[0]), name.split(".")[1]).weight.detach()
        h = hessians[1][name]
        zs = [w.numel() // 2, int(w.numel() * 0.7)]
        mag = magnitude_prune(w, zs)
        sgpt = sparsegpt_prune(w, h, zs, block_size=32)
        for k in range(2):
            assert relative_output_error(w, sgpt[k], h) < relative_output_error(w, mag[k], h)


def test_wanda_output_error_is_below_magnitude_when_inputs_are_scaled(model_and_hessians):
    model, _, hessians = model_and_hessians
    w = decoder_layers(model)[0].self_attn.o_proj.weight.detach()
    scale = torch.linspace(0.1, 3.0, w.shape[1])
    h = hessians[0]["self_attn.o_proj"] * scale[:, None] * scale[None, :]
    z = [w.numel() // 2]
    assert relative_output_error(w, wanda_prune(w, h, z)[0], h) < relative_output_error(w, magnitude_prune(w, z)[0], h)


def test_several_sparsegpt_levels_in_one_pass_match_separate_passes(model_and_hessians):
    model, _, hessians = model_and_hessians
    w = decoder_layers(model)[0].mlp.up_proj.weight.detach()
    h = hessians[0]["mlp.up_proj"]
    together = sparsegpt_prune(w, h, [100, 5000], block_size=32)
    alone = sparsegpt_prune(w, h, [5000], block_size=32)
    assert torch.allclose(together[1], alone[0], atol=1e-5)


@pytest.mark.parametrize("group_size", [32, None])
def test_gptq_output_error_is_below_rtn_at_equal_bits(model_and_hessians, group_size):
    model, _, hessians = model_and_hessians
    w = decoder_layers(model)[1].mlp.down_proj.weight.detach()
    h = hessians[1]["mlp.down_proj"]
    bits = [2, 3, 4]
    for r, g in zip(rtn_quantize(w, bits, group_size=group_size), gptq_quantize(w, h, bits, group_size=group_size)):
        assert relative_output_error(w, g.dequantize(), h) < relative_output_error(w, r.dequantize(), h)


def test_quantized_codes_use_exactly_their_bit_width_with_a_ragged_last_group(model_and_hessians):
    model, _, hessians = model_and_hessians
    w = decoder_layers(model)[0].self_attn.q_proj.weight.detach()  # 80 inputs: groups 32, 32, 16
    for q in gptq_quantize(w, hessians[0]["self_attn.q_proj"], [2, 3, 8], group_size=32):
        assert q.scales.shape == (w.shape[0], 3)
        assert int(q.codes.max()) <= 2**q.bits - 1
        per_group_levels = [len(torch.unique(q.dequantize()[r, 64:])) for r in range(w.shape[0])]
        assert max(per_group_levels) <= 2**q.bits


def test_rtn_dequantized_weight_is_within_half_a_step_of_the_original():
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(3))
    q = rtn_quantize(w, [4], group_size=16)[0]
    step = q.scales.repeat_interleave(16, dim=1)[:, :40]
    assert torch.all((q.dequantize() - w).abs() <= step / 2 + 1e-6)


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_packed_codes_round_trip_in_bits_per_weight(bits):
    codes = torch.randint(0, 2**bits, (7, 13), generator=torch.Generator().manual_seed(bits)).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.nbytes == -(-codes.numel() * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, (7, 13)), codes)
