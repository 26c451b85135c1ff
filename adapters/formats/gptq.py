"""GPTQ checkpoints (``format: gptq``): a bit-width profile vLLM serves with ``--quantization gptq``.

vLLM runs compressed-tensors weights at 4 and 8 bits only; its ``gptq`` method
(``GPTQLinearMethod``, the exllama-derived ``gptq_gemm`` kernel) runs 2, 3, 4 and 8 bits, asymmetric
grids included, and reads a per-module ``dynamic`` override from ``quantization_config``. This module
writes that checkpoint (:func:`write_gptq`) and reads it back with its own unpacking (:func:`load_gptq`).

**Tensors**, per quantized linear ``NAME`` (``in`` input columns, ``out`` output rows, ``b`` bits,
``G`` groups of ``g`` columns):

- ``NAME.qweight``: int32 ``(in·b/32, out)``, the codes packed along the *input* dimension: for each
  output column the ``in`` codes form one little-endian bit stream (code ``k`` at bits ``k·b .. k·b+b−1``)
  cut into 32-bit words. At 2, 4 and 8 bits a word holds ``32/b`` whole codes; at 3 bits 32 codes fill
  3 words and codes 10 and 21 straddle a word boundary (the layout GPTQ's 3-bit kernels unpack).
- ``NAME.qzeros``: int32 ``(G, out·b/32)``, the zero points packed the same way along the *output*
  dimension: ``zero − 1`` in the v1 ``checkpoint_format: gptq``, the zero itself in ``gptq_v2``.
- ``NAME.scales``: ``(G, out)``: fp32 for an fp32 model, else fp16 (vLLM's GPTQ kernels compute in fp16).
- ``NAME.g_idx``: int32 ``(in,)``, column ``i`` in group ``i // g`` (``desc_act: false``: no reordering).

The codes, scales and zero points are the search's
(:class:`~levelsearch.adapters.kernels.grid.Quantized`: ``W = scale · (code − zero)``), so the weights
are exactly the searched ones. Where they cannot be written as they are:

- **Bit-widths** vLLM's GPTQ kernels lack (1, 5, 6, 7) are stored at the next one they have (2 or 8):
  the same codes and grid in a wider field, so the same weights at more bits per weight.
- **Fused shards**: vLLM fuses q/k/v and gate/up into one layer with one scheme; where the search gave the
  shards different bit-widths, each is stored at the widest of them (its codes in a wider field: the same
  weights, more bytes), so that the profile loads (``widen_fused=False`` writes them as searched).
- **Group sizes**: vLLM needs the group size to divide a layer's input width; where the search's does not
  (SmolLM2's 576 = 4·128 + 64) the layer is written with the largest size that divides both (64) and each
  scale and zero point repeated, as the pack-quantized writer does.
- **Zero point 0**: v1 stores ``zero − 1`` and cannot hold 0 (its kernels read back ``2^b``). Such a
  group is written as codes + 1 with zero point 1 (the same weights), its unit one bit-width wider where
  its codes filled their field (SmolLM2 at 3 bits: 3 groups of 898,560). Only 8-bit codes cannot be
  widened: then the whole checkpoint is ``gptq_v2`` (zero points as they are), which vLLM reads since
  vllm-project/vllm#26092; older vLLM releases would misread it.

**Config.** ``config.json`` gets ``quantization_config``: ``quant_method: gptq``, ``sym: false``,
``desc_act: false``, ``lm_head: false``, ``checkpoint_format``, the most common (bits, group size) as the
base, and a ``dynamic`` map naming every module exactly (a ``+:`` regex anchored at both ends, as vLLM's
``get_dynamic_override`` matches them with ``re.match``): each quantized unit with its bits and group size;
the fused modules vLLM builds (``qkv_proj``, ``gate_up_proj``) with their shards' scheme when the shards
share one; every other linear of the decoder layers with ``-:`` (left dense). vLLM picks
``GPTQLinearMethod`` for it: Marlin (``gptq_marlin``) takes symmetric 4 and 8 bits only, and this grid is
asymmetric. vLLM runs the method in fp16 only (``--dtype float16``); :func:`gptq_vllm_warnings` says what
of the above a profile needed, or what keeps vLLM from loading it.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from levelsearch.ties import member_levels

from ..kernels.grid import unpack_codes
from ..model.experts import ExpertUnit
from ..model.models import save_model
from ..model.units import is_unit
from .common import (
    config_without_quantization,
    load_strict,
    read_state_dict,
    stored_parts,
    value_bits,
    write_meta,
    write_quantization_config,
)
from .experts import checkpoint_layout, from_checkpoint, mixed_experts, to_checkpoint, unit_pieces
from .layout import model_layout

__all__ = [
    "VLLM_GPTQ_BITS",
    "VLLM_COMMAND",
    "gptq_vllm_warnings",
    "load_gptq",
    "pack_along_rows",
    "stored_bits",
    "unpack_along_rows",
    "write_gptq",
]

#: bit-widths vLLM's ``gptq`` method runs (``GPTQConfig``: 2/3/4/8)
VLLM_GPTQ_BITS = (2, 3, 4, 8)
#: how vLLM serves the directory (its GPTQ kernels take fp16 activations only)
VLLM_COMMAND = "vllm serve DIR --quantization gptq --dtype float16"
#: vLLM's fused module name per group of shard names (Llama-style models)
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_MASK32 = (1 << 32) - 1


def stored_bits(bits: int) -> int:
    """The narrowest bit-width of :data:`VLLM_GPTQ_BITS` that holds ``bits``-bit codes."""
    for b in VLLM_GPTQ_BITS:
        if b >= int(bits):
            return b
    raise ValueError(f"{bits}-bit codes do not fit the gptq format (at most 8 bits)")


def pack_along_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``(n, m)`` unsigned ``bits``-bit integers along dim 0 into int32 words ``(n·bits/32, m)``.

    Each column is one little-endian bit stream: value ``k`` occupies stream bits ``k·bits`` onwards,
    stream bit ``j`` is bit ``j % 32`` of word ``j // 32``; a value may straddle two words (3 bits).
    """
    n, m = values.shape
    if (n * bits) % 32:
        raise ValueError(f"{n} values of {bits} bits do not fill whole 32-bit words")
    v = values.to(torch.int64)
    if bool((v < 0).any()) or bool((v >= (1 << bits)).any()):
        raise ValueError(f"values outside 0..{(1 << bits) - 1} cannot be packed at {bits} bits")
    start = torch.arange(n, dtype=torch.int64) * bits
    word, shift = start // 32, (start % 32)[:, None]
    words = torch.zeros(n * bits // 32, m, dtype=torch.int64)
    words.index_add_(0, word, (v << shift) & _MASK32)  # disjoint bit fields: adding is or-ing
    spill = (start % 32 + bits) > 32  # the high bits of a value that crosses into the next word
    if bool(spill.any()):
        words.index_add_(0, word[spill] + 1, v[spill] >> (32 - shift[spill]))
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def unpack_along_rows(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The ``(n, m)`` values of int32 ``words`` packed along dim 0 at ``bits`` bits (the loader's reading,
    bit by bit: stream bit ``k·bits + j`` is bit ``j`` of value ``k``)."""
    if words.shape[0] * 32 != n * bits:
        raise ValueError(f"{words.shape[0]} words do not hold {n} values of {bits} bits")
    u = words.to(torch.int64) & _MASK32
    out = torch.zeros(n, words.shape[1], dtype=torch.int64)
    base = torch.arange(n, dtype=torch.int64) * bits
    for j in range(bits):
        pos = base + j
        out |= ((u[pos // 32] >> (pos % 32)[:, None]) & 1) << j
    return out


def _module_regex(name: str) -> str:
    return f"^{re.escape(name)}$"


def _decoder_linears(model: Any) -> list[str]:
    """Names of the ``nn.Linear`` / ``Conv1D`` modules inside the decoder layers."""
    prefix = model_layout(model).prefix + "."
    return [n for n, m in model.named_modules() if n.startswith(prefix) and is_unit(m)]


def write_gptq(
    problem: Any,
    levels: np.ndarray,
    out: str | Path,
    info: dict[str, Any] | None,
    *,
    checkpoint_format: str | None = None,
    widen_fused: bool = True,
) -> Path:
    """Write a quant problem's model at ``levels`` as a GPTQ checkpoint (see the module docstring).

    ``checkpoint_format``: ``"gptq"`` (v1) or ``"gptq_v2"``; default v1 unless an 8-bit unit has a zero
    point of 0.
    ``widen_fused``: store the shards vLLM fuses (q/k/v, gate/up) at their widest shard's bit-width.

    Raises:
        ValueError: one line, when the run has no bit-widths, a layer's width does not fill the int32
            words of its bit-width, or v1 is asked for with an 8-bit unit's zero point of 0.
    """
    if "bits" not in problem.spec:
        raise ValueError("the gptq format holds bit-widths; this run's levels have none")
    if checkpoint_format not in (None, "gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be gptq or gptq_v2, not {checkpoint_format}")
    lv = member_levels(problem.space, levels)
    problem.apply(None)
    dtype = next(problem.model.parameters()).dtype
    scale_dtype = torch.float32 if dtype == torch.float32 else torch.float16
    layout = checkpoint_layout(problem.model, "gptq")  # experts as the per-expert modules engines read
    state = to_checkpoint(layout, dict(problem.model.state_dict()))
    targets = unit_pieces(layout, problem.model, list(problem.unit_names), list(problem.modules))
    gs = problem.spec.get("group_size", 128)
    grids, bits_of = _search_grids(problem, lv, gs)
    fmt, has_zero = _checkpoint_format(grids, bits_of, checkpoint_format)
    width = {name: stored_bits(b) for name, b in bits_of.items()}
    if fmt == "gptq":  # v1: a zero point of 0 becomes 1 with codes + 1, in a wider field where they filled theirs
        for name in has_zero:
            if width[name] == bits_of[name]:
                width[name] = stored_bits(width[name] + 1)
    if widen_fused:
        width = _widen_fused(width)
    per_unit: dict[str, Any] = {}
    per_module: dict[str, Any] = {}  # what the checkpoint holds: a unit's module, or an expert's per-expert modules
    for u, name in enumerate(problem.unit_names):
        level, bits, sb = int(lv[u]), bits_of[name], width[name]
        codes, scales, zeros, group = grids.pop(name)
        cols, shifted, rows = int(codes.shape[1]), 0, 0
        for module, part in targets[name]:
            grid = (codes[part], scales[part], zeros[part], group)
            r, _, _, s = _write_unit(state, module, grid, sb, v1=fmt == "gptq", dtype=scale_dtype)
            rows, shifted = rows + r, shifted + s
            per_module[module] = {"bits": bits, "stored_bits": sb, "stored_group_size": -1 if gs is None else group}
            if s:
                per_module[module]["groups_shifted"] = s
        entry = problem.db.codec.export_entry(problem.spec, problem.db.values(name)[level], rows * cols)
        per_unit[name] = {
            "level": level,
            **entry,
            "bits": bits,
            "stored_bits": sb,
            "stored_group_size": -1 if gs is None else group,
        }
        if shifted:
            per_unit[name]["groups_shifted"] = shifted
        if isinstance(problem.modules[u], ExpertUnit):
            per_unit[name]["modules"] = [m for m, _ in targets[name]]
    path = save_model(problem.model, problem.tokenizer, out, state_dict=state)
    write_quantization_config(path, _quantization_config(problem.model, per_module, fmt, layout.renamed))
    notes = gptq_vllm_warnings(per_module, fmt)
    vllm = [f"serve: {VLLM_COMMAND} (GPTQLinearMethod: gptq_gemm kernel)", *notes]
    return write_meta(path, "gptq", problem, lv, per_unit, {"vllm": vllm, **(info or {})})


Grid = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]


def _search_grids(problem: Any, lv: np.ndarray, gs: int | None) -> tuple[dict[str, Grid], dict[str, int]]:
    """Every unit's ``(codes, scales, zeros, group)`` at its level, as the search stored them, in groups that
    divide the unit's width (the search's groups as runs of smaller ones where they do not); and its bits."""
    grids: dict[str, Grid] = {}
    bits_of: dict[str, int] = {}
    for u, name in enumerate(problem.unit_names):
        bits = bits_of[name] = value_bits(problem.db.values(name)[int(lv[u])])
        rows, cols = problem.db.shape(name)
        p = stored_parts(problem.db, name, int(lv[u]), ("codes", "scales", "zeros"))
        codes = unpack_codes(p["codes"].numpy(), bits, (rows, cols))  # uint8 until written
        scales, zeros = p["scales"], p["zeros"].to(torch.int64)
        group = cols if gs is None else (int(gs) if cols % int(gs) == 0 else math.gcd(int(gs), cols))
        if gs is not None and group != gs:
            idx = torch.arange(cols // group) * group // int(gs)
            scales, zeros = scales[:, idx], zeros[:, idx]
        grids[name] = (codes, scales, zeros, group)
    return grids, bits_of


def _checkpoint_format(grids: dict[str, Grid], bits_of: dict[str, int], asked: str | None) -> tuple[str, set[str]]:
    """The checkpoint format (``asked``, or v1 unless an 8-bit unit has a zero point of 0) and the units with a
    zero point of 0; ``ValueError`` when v1 is asked for such an 8-bit unit (no wider field holds it)."""
    has_zero = {n for n, g in grids.items() if bool((g[2] == 0).any())}
    stuck = sorted(n for n in has_zero if bits_of[n] == 8)
    fmt = asked or ("gptq_v2" if stuck else "gptq")
    if fmt == "gptq" and stuck:
        raise ValueError(
            f"{stuck[0]} has 8-bit codes and a zero point of 0, which the v1 gptq checkpoint_format cannot hold; "
            "use gptq_v2"
        )
    return fmt, has_zero


def _write_unit(
    state: dict[str, Any], name: str, grid: Grid, sb: int, *, v1: bool, dtype: torch.dtype
) -> tuple[int, int, int, int]:
    """Replace unit ``name``'s weight in ``state`` by its ``qweight``/``qzeros``/``scales``/``g_idx`` at ``sb``
    stored bits (``v1``: zero points stored minus one, a zero point of 0 shifted to 1 with its codes); returns
    ``(rows, cols, group, groups shifted)``."""
    codes, scales, zeros, group = grid
    codes = codes.to(torch.int64)
    rows, cols = codes.shape
    if (cols * sb) % 32 or (rows * sb) % 32:
        need = 32 // math.gcd(32, sb)
        raise ValueError(
            f"{name} ({rows}x{cols}) cannot be written at {sb} bits in the gptq format: its input and "
            f"output widths must be multiples of {need}; use --format pack-quantized"
        )
    g_idx = torch.arange(cols) // group
    shifted = 0
    if v1:
        flat = zeros == 0  # (out, groups): scale · (code − 0) = scale · ((code + 1) − 1)
        shifted = int(flat.sum())
        codes = codes + flat[:, g_idx].to(torch.int64)
        zeros = zeros + flat.to(torch.int64) - 1  # v1 stores zero − 1
    state.pop(f"{name}.weight", None)  # an expert's per-expert module has none: its fused parameter is left out
    state[f"{name}.qweight"] = pack_along_rows(codes.T, sb)
    state[f"{name}.qzeros"] = pack_along_rows(zeros, sb).T.contiguous()
    state[f"{name}.scales"] = scales.T.to(dtype).contiguous()
    state[f"{name}.g_idx"] = g_idx.to(torch.int32)
    return rows, cols, group, shifted


def _quantization_config(
    model: Any, per_unit: dict[str, Any], fmt: str, renamed: dict[str, str] | None = None
) -> dict[str, Any]:
    """The ``quantization_config``: the most common scheme as the default, every written module's (and each fused
    module vLLM builds, when its shards agree) in ``dynamic``, and the decoder's other linears left out (``-:``),
    in checkpoint names (``renamed``: model state key → checkpoint key)."""
    renamed = renamed or {}
    schemes = {n: (u["stored_bits"], u["stored_group_size"]) for n, u in per_unit.items()}
    base_bits, base_group = Counter(schemes.values()).most_common(1)[0][0]
    dynamic: dict[str, dict[str, Any]] = {}
    for name, (b, g) in schemes.items():
        dynamic[f"+:{_module_regex(name)}"] = {"bits": b, "group_size": g}
    for fused, shards in _fused_schemes(schemes).items():
        if len(shards) == 1:
            b, g = next(iter(shards))
            dynamic[f"+:{_module_regex(fused)}"] = {"bits": b, "group_size": g}
    for name in _decoder_linears(model):
        name = renamed.get(f"{name}.weight", f"{name}.weight").removesuffix(".weight")
        if name not in schemes:
            dynamic[f"-:{_module_regex(name)}"] = {}
    return {
        "quant_method": "gptq",
        "bits": base_bits,
        "group_size": base_group,
        "desc_act": False,
        "sym": False,
        "lm_head": False,
        "true_sequential": True,
        "checkpoint_format": fmt,
        "dynamic": dynamic,
    }


def _widen_fused(width: dict[str, int]) -> dict[str, int]:
    """``width`` with the shards of each fused module vLLM builds (all of them units) at their widest bit-width."""
    out = dict(width)
    for shards in _FUSED.values():
        heads = {n.rpartition(".")[0] for n in width if n.rpartition(".")[2] in shards}
        for head in heads:
            names = [f"{head}.{s}" for s in shards]
            if all(n in width for n in names):
                top = max(width[n] for n in names)
                out.update({n: top for n in names})
    return out


def _fused_schemes(schemes: dict[str, Any]) -> dict[str, set[Any]]:
    """vLLM's fused module names (``…self_attn.qkv_proj``) whose shards are all units, each with the set of
    its shards' schemes (one element: vLLM can load it)."""
    out: dict[str, set[Any]] = {}
    for fused, shards in _FUSED.items():
        heads = {n.rpartition(".")[0] for n in schemes if n.rpartition(".")[2] in shards}
        for head in sorted(heads):
            names = [f"{head}.{s}" for s in shards]
            if all(n in schemes for n in names):
                out[f"{head}.{fused}"] = {schemes[n] for n in names}
    return out


def gptq_vllm_warnings(units: dict[str, dict[str, Any]], checkpoint_format: str = "gptq") -> list[str]:
    """What keeps vLLM's ``gptq`` method from serving the profile as searched: bit-widths stored wider,
    fused shards (q/k/v, gate/up) in different schemes or not all quantized, the v2 zero points. Empty
    when none."""
    out = []
    lacking = sorted({(u["bits"], stored_bits(u["bits"])) for u in units.values() if u["bits"] not in VLLM_GPTQ_BITS})
    if lacking:
        pairs = ", ".join(f"{b} as {s}" for b, s in lacking)
        out.append(f"bit-widths vLLM's gptq kernels lack are stored wider ({pairs} bits): the same weights, larger")
    shifted = [n for n, u in units.items() if u.get("groups_shifted")]
    if shifted:
        groups = sum(units[n]["groups_shifted"] for n in shifted)
        out.append(
            f"{groups} groups of {len(shifted)} units (first: {shifted[0]}) have a zero point of 0, which v1 cannot "
            "hold: written as codes + 1 with zero point 1 (the same weights), in a wider field where the codes "
            "filled theirs"
        )
    widened = [n for n, u in units.items() if u["stored_bits"] > stored_bits(u["bits"])]
    if widened:
        out.append(
            f"{len(widened)} units (first: {widened[0]}) are stored wider than their bit-width: q/k/v or gate/up "
            "shards at their fused module's widest (vLLM runs one scheme per fused module), or room for a zero "
            "point of 0 in v1: the same weights, larger"
        )
    schemes = {n: (u["stored_bits"], u["stored_group_size"]) for n, u in units.items()}
    for fused, shards in _FUSED.items():
        mixed = [f for f, s in _fused_schemes(schemes).items() if f.endswith("." + fused) and len(s) > 1]
        heads = {n.rpartition(".")[0] for n in schemes if n.rpartition(".")[2] in shards}
        partial = [h for h in heads if not all(f"{h}.{s}" in schemes for s in shards)]
        if mixed:
            out.append(
                f"{'/'.join(shards)} of {len(mixed)} layers (first: {mixed[0]}) differ in bits or group size; "
                "vLLM fuses them into one layer with one scheme and cannot load them"
            )
        if partial:
            out.append(f"only some of {'/'.join(shards)} are quantized in {sorted(partial)[0]}; vLLM refuses that")
    moe = mixed_experts(schemes)
    if moe:
        out.append(moe)
    if checkpoint_format == "gptq_v2":
        out.append(
            "checkpoint_format gptq_v2 (zero points stored as they are): needs a vLLM with vllm-project/vllm#26092; "
            "older ones misread the zero points"
        )
    return out


# ------------------------------------------------------------------------------------------------ loading
def _override(dynamic: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``dynamic`` entry for module ``name`` (first match wins, as in vLLM): its dict for ``+:`` or a bare
    pattern, ``None`` for ``-:`` (left dense), ``{}`` when nothing matches."""
    for pattern, value in dynamic.items():
        if pattern.startswith("-:"):
            if re.match(pattern[2:], name):
                return None
        elif re.match(pattern[2:] if pattern.startswith("+:") else pattern, name):
            return dict(value)
    return {}


def load_gptq(path: str | Path, dtype: torch.dtype | None = None) -> Any:
    """The model of a gptq directory: the stock architecture, each quantized linear dequantized here.

    Every module with a ``qweight`` is read at the bits and group size its ``dynamic`` entry (else the base
    config) gives; the tensor shapes must agree with them (``ValueError`` otherwise).
    """

    path = Path(path)
    qcfg = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    if qcfg.get("quant_method") != "gptq":
        raise ValueError(f"{path}: config.json names no gptq quantization_config")
    fmt = qcfg.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"{path}: checkpoint_format {fmt} is neither gptq nor gptq_v2")
    if qcfg.get("desc_act"):
        raise ValueError(f"{path}: desc_act checkpoints (reordered columns) are not read here")
    dynamic = qcfg.get("dynamic") or {}
    state = read_state_dict(path)
    units: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        over = _override(dynamic, name)
        if over is None:
            raise ValueError(f"{path}: {name} is packed but its dynamic entry leaves it dense")
        bits = int(over.get("bits", qcfg["bits"]))
        qweight, qzeros = state.pop(key), state.pop(f"{name}.qzeros")
        scales, g_idx = state.pop(f"{name}.scales"), state.pop(f"{name}.g_idx").to(torch.int64)
        n_in, n_out = g_idx.numel(), scales.shape[1]
        group = int(over.get("group_size", qcfg["group_size"]))
        if group != -1 and scales.shape[0] != n_in // group:
            raise ValueError(f"{path}: {name} has {scales.shape[0]} groups, not {n_in}/{group}")
        codes = unpack_along_rows(qweight, bits, n_in)  # (in, out)
        zeros = unpack_along_rows(qzeros.T, bits, n_out).T  # (groups, out)
        if fmt == "gptq":
            zeros = zeros + 1
        w = scales.to(torch.float32)[g_idx] * (codes - zeros[g_idx]).to(torch.float32)  # (in, out)
        units[name] = w.T.contiguous()  # out × in
    config = config_without_quantization(path)
    with torch.device("meta"):  # the stock architecture's names and shapes, no memory
        skeleton = AutoModelForCausalLM.from_config(config)
    state, units = from_checkpoint(checkpoint_layout(skeleton, "gptq"), state, units)
    return load_strict(path, config, state, dtype, units)
