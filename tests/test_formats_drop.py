"""Drop exports on tiny random models of seven architectures: smaller files that reload to the searched logits,
and an export check that fails when they do not."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters import load_compressed  # noqa: E402
from levelsearch.adapters.codecs.drop.problem import DropProblem  # noqa: E402
from levelsearch.adapters.formats.drop import export_drop  # noqa: E402
from levelsearch.adapters.formats.verify import ExportCheckFailed, check_export, weights_bytes  # noqa: E402
from test_adapters_drop import byte_tokenizer  # noqa: E402

pytestmark = pytest.mark.llm

N_LAYERS = 4
COMMON = dict(vocab_size=257, num_attention_heads=4, max_position_embeddings=128)


def _config(arch: str, hidden: int = 32, n_layers: int = N_LAYERS):
    """A tiny random config of ``arch`` (4 heads, MLP width ``2 · hidden``, vocabulary 257: bytes and an eos)."""
    t = transformers
    c = {**COMMON, "hidden_size": hidden, "num_hidden_layers": n_layers, "intermediate_size": 2 * hidden}
    if arch == "llama":
        return t.LlamaConfig(**c, num_key_value_heads=2)
    if arch == "qwen3":
        return t.Qwen3Config(**c, num_key_value_heads=2, head_dim=8)
    if arch == "gemma3":
        types = ["sliding_attention", "full_attention"] * (n_layers // 2)
        return t.Gemma3TextConfig(**c, num_key_value_heads=2, head_dim=8, sliding_window=8, layer_types=types)
    if arch == "phi3":
        return t.Phi3Config(**c, num_key_value_heads=2, pad_token_id=0)
    if arch == "gpt_neox":
        return t.GPTNeoXConfig(**c)
    if arch == "gpt2":
        return t.GPT2Config(
            vocab_size=257,
            n_embd=hidden,
            n_head=4,
            n_layer=n_layers,
            n_positions=128,
            bos_token_id=256,
            eos_token_id=256,
        )
    if arch == "mixtral":
        return t.MixtralConfig(**c, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    raise AssertionError(arch)


ARCHS = ["llama", "qwen3", "gemma3", "phi3", "gpt_neox", "gpt2", "mixtral"]


def tiny_problem(arch: str, dtype=None) -> DropProblem:
    """A drop problem on a tiny random ``arch`` model, built in ``dtype`` (default fp32) as transformers loads one."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(arch), dtype=dtype or torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return DropProblem(
        arch,
        target=0.5,
        loaded=(model, byte_tokenizer()),
        seq_len=16,
        calibration_tokens=64,
        heldout_tokens=32,
        top_k=16,
        chunk_tokens=32,
    )


def levels_of(attn: list[int], mlp: list[int]) -> np.ndarray:
    lv = np.zeros(2 * N_LAYERS, dtype=np.int64)
    lv[[2 * i for i in attn]] = 1
    lv[[2 * i + 1 for i in mlp]] = 1
    return lv


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_drop_export_is_smaller_and_reloads_to_the_searched_logits(arch, tmp_path):
    prob = tiny_problem(arch)
    lv = levels_of([0, 1], [0, 2])  # layer 0 removed; attention of 1 and MLP of 2 dropped alone
    path = export_drop(prob, lv, tmp_path / "model")
    res = check_export(prob, lv, path)  # load_compressed (branches skipped) and stock from_pretrained (zeros)
    assert res["max_abs_logit_diff"] < 1e-4 and res["loader"] == "transformers"
    assert res["stock"]["loads"] and res["stock"]["max_abs_logit_diff"] < 1e-4
    meta = json.loads((path / "levelsearch_compression.json").read_text())
    assert meta["removed_layers"] == [0] and len(meta["noop_branches"]) == 2
    cfg = json.loads((path / "config.json").read_text())
    assert cfg.get("num_hidden_layers", cfg.get("n_layer")) == N_LAYERS - 1
    dense = export_drop(prob, np.zeros_like(lv), tmp_path / "dense")
    assert weights_bytes(path) < weights_bytes(dense)


@pytest.mark.parametrize("arch", ["gemma3", "gpt2", "mixtral"])
def test_whole_layer_drops_load_with_stock_transformers(arch, tmp_path):
    prob = tiny_problem(arch)
    lv = levels_of([1, 2], [1, 2])
    path = export_drop(prob, lv, tmp_path / "model")
    assert json.loads((path / "levelsearch_compression.json").read_text())["loader"] == "transformers"
    stock = transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    ids = prob.heldout.tokens[:2]
    from levelsearch.adapters.formats.verify import reference_logits

    got = stock(input_ids=ids, use_cache=False).logits
    assert float((got - reference_logits(prob, lv, ids)).abs().max()) < 1e-4
    if arch == "gemma3":  # the per-layer list is cut with the layers
        assert stock.config.layer_types == ["sliding_attention", "full_attention"]


def test_a_tampered_export_fails_its_check_and_is_renamed(tmp_path):
    from safetensors.torch import load_file, save_file

    prob = tiny_problem("gpt2")
    lv = levels_of([0, 1], [0, 2])
    path = export_drop(prob, lv, tmp_path / "model")
    sd = load_file(str(path / "model.safetensors"))
    name = next(k for k in sd if k.endswith("mlp.c_fc.weight"))
    sd[name] = sd[name] * 0.5  # e.g. a writer that missed a Conv1D
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportCheckFailed, match="not the searched model"):
        check_export(prob, lv, path)
    assert not path.exists() and (tmp_path / "model.FAILED" / "FAILED").is_file()
    with pytest.raises(ValueError, match="failed its export check"):
        load_compressed(tmp_path / "model.FAILED")


def test_a_checkpoint_missing_a_kept_tensor_is_refused_not_random(tmp_path):
    from safetensors.torch import load_file, save_file

    prob = tiny_problem("llama")
    lv = levels_of([0, 1], [0, 2])
    path = export_drop(prob, lv, tmp_path / "model")
    sd = load_file(str(path / "model.safetensors"))
    sd.pop(next(k for k in sd if k.endswith("mlp.up_proj.weight")))
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks"):
        load_compressed(path)


@pytest.mark.parametrize("arch", ["gpt2", "mixtral"])
def test_the_zeroed_format_zeroes_conv1d_and_fused_experts_too(arch, tmp_path):
    from levelsearch.adapters.formats import export

    prob = tiny_problem(arch)
    lv = levels_of([0, 1], [0, 2])
    path = export(prob, lv, tmp_path / "model", method="drop", format="zeroed")
    res = check_export(prob, lv, path)
    assert res["max_abs_logit_diff"] < 1e-4 and res["stock"]["loads"]
    from levelsearch.adapters.formats.layout import model_layout

    lay = model_layout(prob.model)
    stock = transformers.AutoModelForCausalLM.from_pretrained(str(path))
    for name in (lay.attn[1], lay.mlp[2]):  # Conv1D projections and fused expert parameters included
        assert all(not bool(p.any()) for p in stock.get_submodule(name).parameters())
