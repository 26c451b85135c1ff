"""A Hugging Face mixture-of-experts model written as a GGUF file in llama.cpp's layout (no network, no llama.cpp).

:func:`write_moe_gguf` writes a transformers Qwen3-MoE (GGUF architecture ``qwen3moe``), Qwen2-MoE
(``qwen2moe``, with its shared expert) or Mixtral model (``llama`` with experts: llama.cpp has no architecture of
its own for Mixtral) as llama.cpp's ``convert_hf_to_gguf.py`` would: each layer's
experts as three 3-D tensors ``blk.N.ffn_gate_exps``, ``ffn_up_exps`` (the halves of transformers' fused
``gate_up_proj``) and ``ffn_down_exps`` (``E × rows × row`` in numpy order), the router ``ffn_gate_inp``, a shared
expert's ``ffn_{gate,up,down}_shexp`` and its gate ``ffn_gate_inp_shexp``; matrices in F16 (or F32), norms,
biases and routers in F32, as the converter keeps them. It is our own small writer (gguf-py's ``GGUFWriter``), not
llama.cpp's converter: that script imports the model's own tokenizer files and needs a checkout of llama.cpp's
``gguf-py`` matching it, where a test builds its model from a config in memory.

A ``llama`` file stores ``attn_q`` and ``attn_k`` with their rows permuted per head for llama.cpp's rope
(the converter's ``LlamaModel.permute``, :func:`~levelsearch.adapters.model.gguf_moe.permute_rows`: within each
head, the rows of the two rotated halves interleaved; ``attn_k`` by the key-value heads), and records
``llama.expert_count``, ``llama.expert_used_count`` and the experts' width as ``llama.feed_forward_length``;
llama.cpp runs its experts with softmax routing, the top-k weights renormalised to sum to one, as Mixtral does.
``qwen3moe`` and ``qwen2moe`` permute nothing. transformers cannot load a ``llama`` file with experts;
:mod:`levelsearch.adapters.model.gguf_moe` does.

The tokenizer is a byte-level BPE (``gpt2``) of 256 byte tokens and an end-of-text token, or the ``tokenizer.*``
metadata of another GGUF file (``tokenizer_from``: a model with that file's vocabulary, e.g. an upcycled SmolLM2
with SmolLM2's GGUF).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...model.gguf_moe import permute_rows

__all__ = ["BYTE_VOCAB", "MOE_ARCHS", "write_moe_gguf"]

#: transformers' ``model_type`` → GGUF architecture this writer knows
MOE_ARCHS = {"qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe", "mixtral": "llama"}
_MERGES = ["Ġ t", "h e", "Ġ a"]
_ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
_SHARED = {"gate_proj": "ffn_gate_shexp", "up_proj": "ffn_up_shexp", "down_proj": "ffn_down_shexp"}


def _byte_chars() -> list[str]:
    # GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others for code points from 256
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


#: the default vocabulary: end-of-text (id 0), the 256 byte tokens, three merges' tokens
BYTE_VOCAB = ["<|endoftext|>", *_byte_chars(), *(m.replace(" ", "") for m in _MERGES)]


def _add_byte_tokenizer(w: Any, vocab_size: int) -> None:
    if vocab_size < len(BYTE_VOCAB):
        raise ValueError(
            f"the byte-level tokenizer has {len(BYTE_VOCAB)} tokens but the model's vocabulary {vocab_size}; "
            "give tokenizer_from=a GGUF file with the model's vocabulary"
        )
    pad = [f"<|unused{i}|>" for i in range(vocab_size - len(BYTE_VOCAB))]
    tokens = [*BYTE_VOCAB, *pad]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(BYTE_VOCAB) - 1) + [5] * len(pad))
    w.add_token_merges(_MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)


def _copy_tokenizer(w: Any, path: str | Path, vocab_size: int) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        have = "none" if tokens is None else len(tokens.data)
        raise ValueError(f"{path} has {have} tokens but the model's vocabulary is {vocab_size}")
    for key, f in fields.items():
        main = f.types[0]
        w.add_key_value(key, f.contents(), main, sub_type=f.types[-1] if main == GGUFValueType.ARRAY else None)


def _np(t: Any, dtype: Any) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().astype(dtype)


def write_moe_gguf(
    model: Any, path: str | Path, *, tokenizer_from: str | Path | None = None, dtype: str = "F16"
) -> Path:
    """Write ``model`` (a transformers Qwen3-MoE, Qwen2-MoE or Mixtral causal LM) to ``path`` in llama.cpp's layout
    (module docstring), atomically; returns ``path``.

    Raises:
        ValueError: another architecture (the message names the ones known), a layer without experts, or a
            tokenizer that does not fit the model's vocabulary.
    """
    from gguf import GGUFWriter

    cfg = model.config
    arch = MOE_ARCHS.get(str(getattr(cfg, "model_type", "")))
    if arch is None:
        raise ValueError(
            f"cannot write a {getattr(cfg, 'model_type', type(model).__name__)} model as GGUF: this writer knows "
            f"{', '.join(sorted(MOE_ARCHS))}"
        )
    if dtype not in ("F16", "F32"):
        raise ValueError(f"dtype must be F16 or F32, got {dtype!r}")
    mat = np.float16 if dtype == "F16" else np.float32
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    w = GGUFWriter(str(tmp), arch)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    w.add_name(f"tiny {arch}" if arch != "llama" else "tiny mixtral")
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(heads)
    w.add_head_count_kv(int(cfg.num_key_value_heads))
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_expert_count(int(cfg.num_experts if arch != "llama" else cfg.num_local_experts))
    w.add_expert_used_count(int(cfg.num_experts_per_tok))
    if arch == "llama":  # llama.cpp's llama reads the experts' width from feed_forward_length
        w.add_vocab_size(int(cfg.vocab_size))
        w.add_rope_dimension_count(head_dim)
    else:
        w.add_expert_feed_forward_length(int(cfg.moe_intermediate_size))
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(int(cfg.shared_expert_intermediate_size))
    w.add_file_type(1 if dtype == "F16" else 0)
    vocab = int(cfg.vocab_size)
    if tokenizer_from is None:
        _add_byte_tokenizer(w, vocab)
    else:
        _copy_tokenizer(w, tokenizer_from, vocab)
    for name, t in _tensors(model, arch, mat):
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)
    return out


def _tensors(model: Any, arch: str, mat: Any) -> list[tuple[str, np.ndarray]]:
    """``(GGUF name, array)`` of every tensor of ``model`` in llama.cpp's order and layout."""
    f32 = np.float32
    base = model.model
    cfg = model.config
    heads = {"q_proj": int(cfg.num_attention_heads), "k_proj": int(cfg.num_key_value_heads)}
    out = [("token_embd.weight", _np(base.embed_tokens.weight, mat))]
    for i, layer in enumerate(base.layers):
        b = f"blk.{i}"
        attn, mlp = layer.self_attn, layer.mlp
        out.append((f"{b}.attn_norm.weight", _np(layer.input_layernorm.weight, f32)))
        for hf, g in _ATTN.items():
            lin = getattr(attn, hf)
            weight, bias = _np(lin.weight, mat), None if lin.bias is None else _np(lin.bias, f32)
            if arch == "llama" and hf in heads:
                weight = np.ascontiguousarray(permute_rows(weight, heads[hf]))
                bias = None if bias is None else np.ascontiguousarray(permute_rows(bias, heads[hf]))
            out.append((f"{b}.{g}.weight", weight))
            if bias is not None:
                out.append((f"{b}.{g}.bias", bias))
        for hf, g in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
            if hasattr(attn, hf):
                out.append((f"{b}.{g}.weight", _np(getattr(attn, hf).weight, f32)))
        out.append((f"{b}.ffn_norm.weight", _np(layer.post_attention_layernorm.weight, f32)))
        experts = getattr(mlp, "experts", None)
        if experts is None or not hasattr(experts, "gate_up_proj"):
            raise ValueError(f"layer {i} of the model has no fused experts (mlp.experts.gate_up_proj)")
        gate_up = _np(experts.gate_up_proj, mat)  # E × 2I × H: gate rows, then up rows
        half = gate_up.shape[1] // 2
        out.append((f"{b}.ffn_gate_inp.weight", _np(mlp.gate.weight, f32)))
        out.append((f"{b}.ffn_gate_exps.weight", np.ascontiguousarray(gate_up[:, :half])))
        out.append((f"{b}.ffn_up_exps.weight", np.ascontiguousarray(gate_up[:, half:])))
        out.append((f"{b}.ffn_down_exps.weight", _np(experts.down_proj, mat)))
        shared = getattr(mlp, "shared_expert", None)
        if shared is not None:
            out.append((f"{b}.ffn_gate_inp_shexp.weight", _np(mlp.shared_expert_gate.weight, f32).reshape(-1)))
            for hf, g in _SHARED.items():
                out.append((f"{b}.{g}.weight", _np(getattr(shared, hf).weight, mat)))
    out.append(("output_norm.weight", _np(base.norm.weight, f32)))
    if not getattr(model.config, "tie_word_embeddings", False):
        out.append(("output.weight", _np(model.lm_head.weight, mat)))
    return out
