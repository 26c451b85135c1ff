"""A Mixtral-style GGUF file (llama.cpp's ``llama`` architecture with experts) loaded as a transformers model.

llama.cpp stores Mixtral as its ``llama`` architecture with ``llama.expert_count`` experts, ``expert_used_count``
of them per token: each layer's experts in three 3-D tensors ``blk.N.ffn_{gate,up,down}_exps`` (``E × rows ×
row`` in numpy order) and the router ``blk.N.ffn_gate_inp``, the experts' width in ``llama.feed_forward_length``.
transformers' GGUF loader has no such model (it maps a ``llama`` file to ``LlamaForCausalLM``, which has no
experts), so :func:`load_llama_moe` builds the ``MixtralForCausalLM`` itself:

- the config from the metadata (widths, heads, rope base, RMS epsilon, experts; the head tied to the embedding
  when the file has no ``output.weight``), softmax routing with the top-k weights renormalised, as llama.cpp
  runs a ``llama`` file's experts and as Mixtral does;
- every tensor dequantized with gguf-py to float32, the q/k rows put back in Hugging Face order
  (:func:`unpermute_rows`, the inverse of llama.cpp's converter's
  per-head permutation), ``ffn_gate_exps`` and ``ffn_up_exps`` concatenated into transformers 5's fused
  ``mlp.experts.gate_up_proj`` (gate rows, then up rows), ``ffn_down_exps`` into ``mlp.experts.down_proj`` and the
  router into ``mlp.gate.weight``;
- the tokenizer through transformers' own GGUF tokenizer path, which reads a ``llama`` file's vocabulary.

:func:`is_llama_moe` tells such a file from the ones transformers loads itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "gguf_moe_model",
    "is_llama_moe",
    "llama_moe_config",
    "llama_moe_model",
    "load_llama_moe",
    "permute_rows",
    "unpermute_rows",
]

_EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
# a llama file's tensor (in layer N: ``blk.N.<kind>``) → its Mixtral parameter
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate_inp": "mlp.gate",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """``w`` (``heads · head_dim`` rows, Hugging Face order) with its rows in a ``llama`` GGUF file's order: within
    each head, row ``2j`` is the Hugging Face row ``j`` and row ``2j + 1`` the row ``j + head_dim/2`` (llama.cpp's
    converter, ``LlamaModel.permute``, for ``attn_q`` by the query heads and ``attn_k`` by the key-value heads).
    :func:`unpermute_rows` undoes it."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """The Hugging Face row order of a ``llama`` GGUF file's ``attn_q``/``attn_k`` rows (inverse of
    :func:`permute_rows`)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def is_llama_moe(path: str | Path) -> bool:
    """Whether ``path`` is a GGUF file of llama.cpp's ``llama`` architecture with expert tensors (Mixtral's layout)."""
    from .gguf_config import gguf_metadata

    meta, names = gguf_metadata(path)
    if meta.get("general.architecture") != "llama":
        return False
    return any(n.endswith(".ffn_gate_exps.weight") or n.endswith(".ffn_down_exps.weight") for n in names)


def llama_moe_config(meta: Mapping[str, Any], tensor_names: Sequence[str]) -> Any:
    """The ``MixtralConfig`` of a ``llama`` GGUF file with experts, from its metadata (``meta``: keys as gguf-py or
    transformers' header reader gives them) and tensor names.

    Raises:
        ValueError: a key llama.cpp needs is missing, or the file asks for a rope scaling this loader does not
            reproduce (one line naming it).
    """
    from transformers import MixtralConfig

    a = "llama"

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{a}.{key}", default)
        if value is None:
            raise ValueError(f"the GGUF file has no {a}.{key} in its metadata; llama.cpp cannot run it")
        return value

    scaling = str(meta.get(f"{a}.rope.scaling.type", "none") or "none")
    if scaling != "none" or "rope_freqs.weight" in tensor_names:
        raise ValueError(f"cannot load a {a} GGUF file with experts and rope scaling ({scaling}): not supported")
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    vocab = meta.get(f"{a}.vocab_size", meta.get("tokenizer.ggml.tokens"))
    if vocab is None:
        raise ValueError(
            f"the GGUF file has neither {a}.vocab_size nor tokenizer.ggml.tokens; cannot size its vocabulary"
        )
    n_vocab = vocab if isinstance(vocab, int) else len(vocab)
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    return MixtralConfig(
        vocab_size=int(n_vocab),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(meta.get(f"{a}.attention.head_count_kv", heads)),
        head_dim=int(meta.get(f"{a}.attention.key_length", hidden // heads)),
        max_position_embeddings=int(get("context_length")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(meta.get(f"{a}.rope.freq_base", 10000.0))},
        num_local_experts=int(get("expert_count")),
        num_experts_per_tok=int(get("expert_used_count")),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=None if ids["bos"] is None else int(ids["bos"]),
        eos_token_id=None if ids["eos"] is None else int(ids["eos"]),
        pad_token_id=None if ids["padding"] is None else int(ids["padding"]),
        hidden_act="silu",
        sliding_window=None,
        router_aux_loss_coef=0.0,
        architectures=["MixtralForCausalLM"],
    )


def _state_dict(reader: Any, config: Any) -> dict[str, torch.Tensor]:
    """Every tensor of the file by its Mixtral parameter name, float32, in Hugging Face layout (module docstring)."""
    from gguf.quants import dequantize

    heads = {"attn_q": int(config.num_attention_heads), "attn_k": int(config.num_key_value_heads)}
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], np.ndarray] = {}
    for t in reader.tensors:
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape([int(x) for x in t.shape][::-1])
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", t.name)
        top = re.fullmatch(r"(\w+)\.(weight|bias)", t.name)
        if m is not None and m.group(2) in _EXPERTS and m.group(3) == "weight":
            experts[(int(m.group(1)), m.group(2))] = w
            continue
        if m is not None and m.group(2) in _LAYER:
            if m.group(2) in heads:
                w = unpermute_rows(w, heads[m.group(2)])
            name = f"model.layers.{int(m.group(1))}.{_LAYER[m.group(2)]}.{m.group(3)}"
        elif m is None and top is not None and top.group(1) in _TOP:
            name = f"{_TOP[top.group(1)]}.{top.group(2)}"
        else:
            raise ValueError(f"cannot load {t.name} of a llama GGUF file with experts: no Mixtral parameter holds it")
        out[name] = torch.from_numpy(np.ascontiguousarray(w))
    for i in range(int(config.num_hidden_layers)):
        missing = [k for k in _EXPERTS if (i, k) not in experts]
        if missing:
            raise ValueError(f"the GGUF file has no blk.{i}.{missing[0]}.weight: every layer needs its experts")
        gate, up, down = (experts.pop((i, k)) for k in _EXPERTS)
        mlp = f"model.layers.{i}.mlp.experts"
        out[f"{mlp}.gate_up_proj"] = torch.from_numpy(np.concatenate([gate, up], axis=1))
        out[f"{mlp}.down_proj"] = torch.from_numpy(np.ascontiguousarray(down))
    return out


def load_llama_moe(path: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(MixtralForCausalLM, tokenizer)`` of a ``llama`` GGUF file with experts (module docstring), on the CPU in
    ``dtype``, in eval mode.

    Raises:
        ValueError: not such a file, a tensor no Mixtral parameter holds, a layer without experts, a parameter the
            file does not give (one line naming it).
    """
    from transformers import AutoTokenizer

    p = Path(path)
    return llama_moe_model(p, dtype=dtype), AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


def gguf_moe_model(folder: Path, kwargs: Mapping[str, Any], dtype: torch.dtype) -> Any:
    """:func:`llama_moe_model` of ``folder / kwargs["gguf_file"]`` where that is a ``llama`` GGUF file with experts
    (:func:`is_llama_moe`), else ``None`` (no GGUF file, or one transformers loads itself)."""
    name = kwargs.get("gguf_file")
    if name is None or not is_llama_moe(folder / str(name)):
        return None
    return llama_moe_model(folder / str(name), dtype=dtype)


def llama_moe_model(path: str | Path, *, dtype: torch.dtype = torch.float32) -> Any:
    """The ``MixtralForCausalLM`` of :func:`load_llama_moe`, without the tokenizer."""
    from gguf import GGUFReader
    from transformers import MixtralForCausalLM
    from transformers.initialization import no_init_weights

    from .gguf_config import gguf_metadata

    p = Path(path)
    reader = GGUFReader(str(p))
    meta, names = gguf_metadata(reader)
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{p} is a {meta.get('general.architecture')} GGUF file, not llama with experts")
    config = llama_moe_config(meta, names)
    sd = _state_dict(reader, config)
    with no_init_weights():
        model: Any = MixtralForCausalLM(config)
    if config.tie_word_embeddings:
        sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    keys = set(model.state_dict())
    unknown, absent = sorted(set(sd) - keys), sorted(keys - set(sd))
    if unknown or absent:
        what = f"has no Mixtral parameter for {unknown[0]}" if unknown else f"gives no {absent[0]}"
        raise ValueError(f"{p} {what}")
    model.load_state_dict(sd, strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(dtype)
    return model.eval()
