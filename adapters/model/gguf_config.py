"""A GGUF file's model as llama.cpp runs it, where transformers' GGUF loader fills the gaps with defaults.

A Gemma 3 GGUF file (llama.cpp's ``convert_hf_to_gguf.py``) records the widths, the sliding window and
the global rope base, but not the pattern of sliding and global layers, the sliding layers' rope base
or the query scaling: llama.cpp fixes those in code (``src/models/gemma3.cpp`` and ``llama-hparams``
of the llama.cpp in ``llama-cpp-python`` 0.3.36), and transformers takes its config class's defaults.
They agree for Gemma 3's published sizes today; :func:`gemma3_settings` writes llama.cpp's reading out,
so the dequantized model is the one llama.cpp runs whatever the defaults become. The RMSNorm weights
(stored by llama.cpp's converter as ``1 + w``: Gemma's norms scale by ``1 + w``) are undone by
transformers' loader (``w − 1``); :func:`~levelsearch.adapters.codecs.gguf.source.hf_tensor_name` maps
the names both ways.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["gemma3_settings", "gguf_metadata", "gguf_model_config", "moe_settings"]

# GGUF key (after ``ARCH.``) → transformers config field, for the mixture-of-experts widths transformers' GGUF
# reader leaves at its config class's defaults (its tables map ``expert_feed_forward_length`` to nothing)
_MOE_KEYS = {
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}
_MOE_ARCHS = ("qwen2moe", "qwen3moe")


def gguf_metadata(path: str | Path | Any) -> tuple[dict[str, Any], list[str]]:
    """``(metadata, tensor names)`` of a GGUF file: a path, or a ``GGUFReader`` already open. Arrays longer than 64
    entries (the vocabulary) are given as their length, others as lists.

    A path is read with transformers' own GGUF header reader where this transformers has one: it walks a
    262k-token vocabulary in about 4 s of CPU where gguf-py's ``GGUFReader`` takes about 15 s.
    """
    from gguf import GGUFReader

    raw: dict[str, Any]
    if isinstance(path, GGUFReader):
        raw, names = {k: f.contents() for k, f in path.fields.items()}, [t.name for t in path.tensors]
    else:
        try:
            from transformers.integrations.gguf.reader import read_gguf_metadata
        except ImportError:  # another transformers: gguf-py's reader
            return gguf_metadata(GGUFReader(str(path)))
        raw, found = read_gguf_metadata(str(path))
        names = list(found)
    meta = {k: len(v) if isinstance(v, (list, tuple)) and len(v) > 64 else v for k, v in raw.items()}
    return meta, names


def gemma3_settings(meta: Mapping[str, Any], tensor_names: Sequence[str]) -> dict[str, Any]:
    """The Gemma 3 config values llama.cpp derives from a GGUF file's metadata and tensors.

    - layer types: with a sliding window, every ``pattern``-th layer (from 1) is global, the others slide
      (``attention.sliding_window_pattern``: a per-layer list or a period, default 6); without one, all global;
    - rope: global layers at ``rope.freq_base`` (scaled by ``rope.scaling.factor`` when linear), sliding layers
      at ``rope.freq_base_swa`` (default 10,000);
    - queries scaled by ``1/sqrt(head_dim)``, by ``1/sqrt(hidden/heads)`` for the 62-layer (27B) model;
    - ``final_logit_softcapping`` when the file has one (Gemma 3 has none), the head tied to the embedding when
      there is no ``output.weight``.
    """
    a = "gemma3"
    n_layer = int(meta[f"{a}.block_count"])
    n_embd = int(meta[f"{a}.embedding_length"])
    n_head = int(meta[f"{a}.attention.head_count"])
    head_dim = int(meta.get(f"{a}.attention.key_length", n_embd // n_head))
    window = int(meta.get(f"{a}.attention.sliding_window", 0) or 0)
    pattern = meta.get(f"{a}.attention.sliding_window_pattern", 6)
    if window <= 0:
        sliding = [False] * n_layer
    elif isinstance(pattern, (list, tuple)):
        sliding = [bool(x) for x in pattern][:n_layer]
    else:
        p = int(pattern)
        sliding = [p == 0 or i % p < p - 1 for i in range(n_layer)]
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": float(meta.get(f"{a}.rope.freq_base", 10000.0))}
    factor = float(meta.get(f"{a}.rope.scaling.factor", 1.0) or 1.0)
    if str(meta.get(f"{a}.rope.scaling.type", "none")) == "linear" and factor != 1.0:
        full = {**full, "rope_type": "linear", "factor": factor}
    local = {"rope_type": "default", "rope_theta": float(meta.get(f"{a}.rope.freq_base_swa", 10000.0))}
    softcap = meta.get(f"{a}.final_logit_softcapping")
    return {
        "num_hidden_layers": n_layer,
        "hidden_size": n_embd,
        "num_attention_heads": n_head,
        "head_dim": head_dim,
        "sliding_window": window if window > 0 else None,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "rope_parameters": {"full_attention": full, "sliding_attention": local},
        "query_pre_attn_scalar": n_embd // n_head if n_layer == 62 else head_dim,
        "final_logit_softcapping": float(softcap) if softcap else None,
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }


def moe_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The expert widths of a Qwen2-MoE / Qwen3-MoE GGUF file (``ARCH.expert_feed_forward_length``, and
    ``expert_shared_feed_forward_length`` for a shared expert), as the transformers config fields llama.cpp's
    reading gives them; ``{}`` for other architectures."""
    arch = str(meta.get("general.architecture"))
    if arch not in _MOE_ARCHS:
        return {}
    return {field: int(meta[f"{arch}.{key}"]) for key, field in _MOE_KEYS.items() if f"{arch}.{key}" in meta}


def gguf_model_config(path: str | Path) -> Any:
    """The transformers config to load the GGUF file ``path`` with, or ``None`` where transformers' own reading
    of the file is llama.cpp's (every architecture but Gemma 3, Qwen2-MoE and Qwen3-MoE)."""
    meta, names = gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch == "gemma3":
        settings = gemma3_settings(meta, names)
    else:
        settings = moe_settings(meta)
        if not settings:
            return None
    from transformers import AutoConfig

    p = Path(path)
    config = AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)
    for key, value in settings.items():
        setattr(config, key, value)
    return config
