"""GGUF for mixture-of-experts models: a tiny MoE GGUF written offline, loaded by transformers and llama.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("libgguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.gguf import llamacpp as lc  # noqa: E402
from levelsearch.adapters.codecs.gguf.convert import BYTE_VOCAB, write_moe_gguf  # noqa: E402

pytestmark = pytest.mark.llm

TOOLS = lc.find_tools()
BASE = dict(
    vocab_size=len(BYTE_VOCAB),
    hidden_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=0,
    tie_word_embeddings=False,
)


def tiny_moe(arch: str, seed: int = 0):
    """A 2-layer Qwen3-MoE (4 experts, top 2) or Qwen2-MoE (the same and a shared expert), rows of 256 weights
    (every K-quant holds them), seeded weights."""
    t = transformers
    if arch == "qwen3_moe":
        cfg = t.Qwen3MoeConfig(
            **BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256, head_dim=64, norm_topk_prob=True
        )
    else:
        cfg = t.Qwen2MoeConfig(
            **BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256, shared_expert_intermediate_size=256
        )
    torch.manual_seed(seed)
    model = t.AutoModelForCausalLM.from_config(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.06)
    return model


def write_tiny_moe_gguf(path: Path, arch: str = "qwen3_moe", dtype: str = "F16") -> Path:
    return write_moe_gguf(tiny_moe(arch), path, dtype=dtype)


def _load(path: Path):
    from levelsearch.adapters.model.gguf_config import gguf_model_config

    config = gguf_model_config(path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, config=config
    ).eval()


# ---------------------------------------------------------------------- the tiny MoE file
@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_a_tiny_moe_gguf_has_llama_cpps_expert_tensors_and_reloads_to_the_models_logits(arch, tmp_path):
    model = tiny_moe(arch)
    path = write_moe_gguf(model, tmp_path / "moe.gguf", dtype="F32")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        assert [int(x) for x in tensors[f"blk.1.{kind}.weight"].shape] == [256, 256, 4]  # ggml order: row, rows, E
    assert [int(x) for x in tensors["blk.0.ffn_gate_inp.weight"].shape] == [256, 4]
    assert ("blk.0.ffn_down_shexp.weight" in tensors) == (arch == "qwen2_moe")
    ids = torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        back = _load(path)(input_ids=ids).logits
    assert float((ours - back).abs().max()) < 1e-4


def test_the_writer_names_the_architectures_it_knows():
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=260, hidden_size=32, num_hidden_layers=1,
                                                                   num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="this writer knows qwen2_moe, qwen3_moe"):
        write_moe_gguf(llama, "unused.gguf")


@pytest.mark.skipif(TOOLS is None, reason="llama.cpp's tools are not built (make llama-tools)")
@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_llama_cpp_loads_the_tiny_moe_and_predicts_as_transformers(arch, tmp_path):
    path = write_tiny_moe_gguf(tmp_path / "moe.gguf", arch)
    text = tmp_path / "text.txt"
    text.write_text("quick brown fox jumps over lazy dogs. " * 40)  # no pair the three merges join: byte tokens
    args = ["-m", str(path), "-f", str(text), "-c", "64", "-b", "64", "-t", "1"]

    def final(out: str) -> float | None:
        import re

        m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
        return float(m.group(1)) if m else None

    theirs = lc.run_logged(TOOLS["llama-perplexity"], args, final, what="no final estimate")
    # the same chunks in transformers: llama-perplexity scores the tokens after the first half of each 64-token chunk
    ids = np.frombuffer(text.read_bytes(), dtype=np.uint8).astype(np.int64) + 1  # byte b is token b + 1
    chunks = torch.from_numpy(ids[: len(ids) // 64 * 64].reshape(-1, 64))
    with torch.no_grad():
        logp = torch.log_softmax(_load(path)(input_ids=chunks).logits.double(), -1)
    nll = -logp[:, 32:-1].gather(-1, chunks[:, 33:, None]).mean()
    assert theirs == pytest.approx(float(torch.exp(nll)), rel=0.01)
