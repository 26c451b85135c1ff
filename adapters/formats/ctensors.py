"""compressed-tensors checkpoints: ``pack-quantized`` for bit-widths (quant, joint), ``sparse-bitmask`` for sparsity.

**pack-quantized.** Each quantized linear is stored as compressed-tensors stores a GPTQ result:
``weight_packed`` (int32 words holding the codes, packed with the library's own packer),
``weight_scale`` (per group, in the model's dtype), ``weight_zero_point`` (packed along the output
rows) and ``weight_shape``. ``config.json`` gets a ``quantization_config`` with one config group per
(bit-width, group size): asymmetric int weights, ``strategy: group`` (``channel`` when the search used
one group per row), the modules named exactly in ``targets``. Codes and grid are the search's
(:class:`~levelsearch.adapters.kernels.grid.Quantized`: ``W = scale · (code − zero)``), shifted by
``2^(bits−1)`` to the library's signed range, so the reload dequantizes to the searched weights.
compressed-tensors needs the group size to divide a layer's input width; where the search's does not
(SmolLM2's 576 = 4·128 + 64), the layer is written with the largest group size that divides both
(64) and each scale and zero point repeated: the same weights, 1/128 bit more per weight. A unit is packed
``out × in`` whatever its module stores (GPT-2's ``Conv1D`` keeps ``in × out``); the loader puts it back
in the module's layout (:func:`~levelsearch.adapters.model.units.module_layout`).
:func:`load_pack_quantized` reloads it with compressed-tensors' own decompressor, module by module with
each module's config group. Stock ``from_pretrained`` refuses such a directory (the packed zero points
do not fit the shape it builds for them: an error, not a silent re-initialisation, as of transformers
5.25), except where a unit is not an ``nn.Linear``: transformers' compressed-tensors integration leaves
GPT-2's ``Conv1D`` dense and would initialise its weights at random, so such a profile is written to
``model.pack-quantized.safetensors`` (:data:`PACK_QUANTIZED_FILE`), which the stock loader does not read
(the export check loads every directory with the stock loader too and fails on a random weight).
(transformers 5.24 with compressed-tensors 0.20 gets a profile of several
bit-widths wrong both ways: ``from_pretrained`` re-initialises the packed zero points, which it expects
unpacked, and ``CompressedTensorsConfig(dequantize=True)`` decodes every module with the first group's
scheme; a single bit-width loads right with the latter.) vLLM's kernels for such weights
(``CompressedTensorsWNA16``: Marlin, Machete ...) take 4 and 8 bits only, and need the shards it
fuses (q/k/v, gate/up) at one bit-width: :func:`vllm_warnings` says when a profile breaks either.

**sparse-bitmask.** compressed-tensors' bitmask layout per pruned linear: ``weight.shape``,
``weight.compressed`` (the nonzeros, row-major), ``weight.bitmask`` (a bit per weight, each row
packed little-endian) and ``weight.row_offsets`` (where each row's nonzeros start), of the state dict's
tensor as the module stores it (``in × out`` for a ``Conv1D``); the nonzeros in fp16
when that loses nothing (a database keeps them in fp16), else in the model's dtype. config.json
names it under ``quantization_config.sparsity_config``. Current transformers and compressed-tensors
releases (0.15 on) no longer decompress it, so :func:`load_sparse_bitmask` does (``load_compressed``).
They do not refuse it either: ``from_pretrained`` would ignore the sparsity config, leave the bitmask
tensors unused and initialise every pruned weight at random. So the tensors are written to
``model.sparse-bitmask.safetensors`` (:data:`SPARSE_BITMASK_FILE`), a name the stock loader does not read:
``from_pretrained`` stops with an error (no ``model.safetensors``) instead of returning another model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from levelsearch.ties import member_levels

from ..kernels.grid import unpack_codes
from ..model.experts import ExpertUnit
from ..model.models import save_model
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

__all__ = [
    "PACK_QUANTIZED_FILE",
    "SPARSE_BITMASK_FILE",
    "VLLM_BITS",
    "load_pack_quantized",
    "load_sparse_bitmask",
    "vllm_warnings",
    "write_pack_quantized",
    "write_sparse_bitmask",
]

#: the weights file of a sparse-bitmask directory (not ``model.safetensors``: the stock loader must refuse it)
SPARSE_BITMASK_FILE = "model.sparse-bitmask.safetensors"
#: the weights file of a pack-quantized directory with units that are not ``nn.Linear`` (GPT-2's ``Conv1D``)
PACK_QUANTIZED_FILE = "model.pack-quantized.safetensors"
#: bit-widths vLLM's compressed-tensors weight-only kernels run (WNA16_SUPPORTED_BITS)
VLLM_BITS = (4, 8)
#: module-name endings vLLM fuses into one layer, whose shards must share a scheme
_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _need_compressed_tensors() -> Any:
    try:
        import compressed_tensors
    except ImportError:
        raise ValueError(
            "the pack-quantized format needs compressed-tensors: pip install 'levelsearch[compressed-tensors]'"
        ) from None
    return compressed_tensors


def _scheme(bits: int, group: int | None) -> dict[str, Any]:
    weights = {
        "num_bits": bits,
        "type": "int",
        "symmetric": False,
        "strategy": "group" if group else "channel",
        "group_size": group,
        "dynamic": False,
    }
    return {"weights": weights, "input_activations": None, "output_activations": None, "format": "pack-quantized"}


def write_pack_quantized(problem: Any, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None) -> Path:
    """Write a quant or joint problem's model at ``levels`` as a compressed-tensors pack-quantized checkpoint."""
    ct = _need_compressed_tensors()
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationConfig

    if "bits" not in problem.spec:
        raise ValueError("the pack-quantized format holds bit-widths; this run's levels have none")
    lv = member_levels(problem.space, levels)
    problem.apply(None)
    dtype = next(problem.model.parameters()).dtype
    layout = checkpoint_layout(problem.model, "pack-quantized")  # experts as the per-expert modules engines read
    state = to_checkpoint(layout, dict(problem.model.state_dict()))
    targets = unit_pieces(layout, problem.model, list(problem.unit_names), list(problem.modules))
    gs = problem.spec.get("group_size", 128)
    groups: dict[tuple[int, int | None], list[str]] = {}
    per_unit: dict[str, Any] = {}
    for u, name in enumerate(problem.unit_names):
        level = int(lv[u])
        bits = value_bits(problem.db.values(name)[level])
        rows, cols = problem.db.shape(name)
        p = stored_parts(problem.db, name, level, ("codes", "scales", "zeros"))
        codes = unpack_codes(p["codes"].numpy(), bits, (rows, cols))
        scales, zeros = p["scales"], p["zeros"]
        group = None if gs is None else (gs if cols % gs == 0 else math.gcd(int(gs), cols))
        if group is not None and group != gs:  # the search's groups as runs of smaller ones
            idx = torch.arange(cols // group) * group // int(gs)
            scales, zeros = scales[:, idx], zeros[:, idx]
        off = 1 << (bits - 1)
        for module, part in targets[name]:  # one module, or an expert's per-expert modules (rows of its slice)
            state.pop(f"{module}.weight", None)  # codes are out × in, as compressed-tensors packs a linear
            c = codes[part]
            state[f"{module}.weight_packed"] = pack_to_int32((c.to(torch.int16) - off).to(torch.int8), bits)
            state[f"{module}.weight_scale"] = scales[part].to(dtype).contiguous()
            zp = (zeros[part].to(torch.int16) - off).to(torch.int8)
            state[f"{module}.weight_zero_point"] = pack_to_int32(zp, bits, packed_dim=0)
            state[f"{module}.weight_shape"] = torch.tensor([int(c.shape[0]), cols])
            groups.setdefault((bits, group), []).append(module)
        entry = problem.db.codec.export_entry(problem.spec, problem.db.values(name)[level], rows * cols)
        per_unit[name] = {"level": level, **entry, "bits": bits, "stored_group_size": group}
        if isinstance(problem.modules[u], ExpertUnit):
            per_unit[name]["modules"] = [m for m, _ in targets[name]]
    config_groups = {
        f"group_{k}": {"targets": names, **_scheme(bits, group)}
        for k, ((bits, group), names) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)))
    }
    qcfg = QuantizationConfig.model_validate(
        {
            "config_groups": config_groups,
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "ignore": [],
        }
    ).model_dump()
    qcfg["version"] = getattr(ct, "__version__", None)
    path = save_model(problem.model, problem.tokenizer, out, state_dict=state)
    write_quantization_config(path, qcfg)
    not_linear = [
        n
        for n, m in zip(problem.unit_names, problem.modules)
        if not isinstance(m, (torch.nn.Linear, ExpertUnit))  # an expert is written as per-expert linears
    ]
    if not_linear:  # transformers would leave these modules dense and initialise their weights at random
        (path / "model.safetensors").rename(path / PACK_QUANTIZED_FILE)
    warnings = vllm_warnings(per_unit)
    vllm = warnings or ["loads with vLLM's compressed-tensors WNA16 kernels"]
    return write_meta(path, "pack-quantized", problem, lv, per_unit, {"vllm": vllm, **(info or {})})


def vllm_warnings(units: dict[str, dict[str, Any]]) -> list[str]:
    """What keeps vLLM from running a pack-quantized profile: bit-widths its kernels lack, fused shards
    (q/k/v, gate/up) at different bit-widths, group sizes its Marlin kernel lacks. Empty when none."""
    out = []
    other = sorted({u["bits"] for u in units.values()} - set(VLLM_BITS))
    if other:
        out.append(
            f"bit-widths {other} have no vLLM kernel (it runs {list(VLLM_BITS)}): transformers dequantizes them, "
            "vLLM refuses the checkpoint"
        )
    stored = [u["stored_group_size"] for u in units.values()]
    groups = sorted({g for g in stored if g not in (None, 32, 64, 128)})
    if groups:
        out.append(f"group sizes {groups} have no vLLM Marlin kernel (it runs 32, 64, 128 and per-channel)")
    for fused in _FUSED:
        by_prefix: dict[str, set[tuple[int, Any]]] = {}
        for name, u in units.items():
            head, _, tail = name.rpartition(".")
            if tail in fused:
                by_prefix.setdefault(head, set()).add((u["bits"], u["stored_group_size"]))
        mixed = [h for h, s in by_prefix.items() if len(s) > 1]
        if mixed:
            out.append(
                f"{'/'.join(fused)} of {len(mixed)} layers (first: {mixed[0]}) differ in bits or groups; vLLM "
                "fuses them into one layer with one scheme and refuses this"
            )
    moe = mixed_experts({n: (u["bits"], u["stored_group_size"]) for n, u in units.items()})
    if moe:
        out.append(moe)
    return out


# ---------------------------------------------------------------------------------------------- sparse bitmask
def write_sparse_bitmask(problem: Any, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None) -> Path:
    """Write a weight problem's model at ``levels`` in compressed-tensors' sparse-bitmask layout (meant for
    sparsity; any unit's weights are written exactly, the file shrinks with their zeros)."""

    lv = member_levels(problem.space, levels)
    layout = checkpoint_layout(problem.model, "sparse-bitmask")  # experts as the per-expert modules engines read
    problem.apply(lv)
    try:
        model_state = {k: v.detach().clone() for k, v in problem.model.state_dict().items()}
        pairs = zip(problem.unit_names, problem.modules)
        # an expert's slice of its fused parameter, which the checkpoint writes as its own modules
        weights = {n: m.weight.detach().clone() for n, m in pairs if isinstance(m, ExpertUnit)}
    finally:
        problem.apply(None)
    state = to_checkpoint(layout, model_state)
    targets = unit_pieces(layout, problem.model, list(problem.unit_names), list(problem.modules))
    per_unit: dict[str, Any] = {}
    zeros_total = numel_total = 0
    modules: list[str] = []
    for u, name in enumerate(problem.unit_names):
        expert = isinstance(problem.modules[u], ExpertUnit)
        numel = 0
        for module, part in targets[name]:
            # the state dict's tensor as the module stores it (in × out for a Conv1D); an expert's rows out × in
            w = weights[name][part] if expert else state[f"{module}.weight"]
            state.pop(f"{module}.weight", None)
            mask = w != 0
            state[f"{module}.weight.shape"] = torch.tensor(list(w.shape))
            values = w[mask]
            half = values.to(torch.float16)  # a database stores nonzeros in fp16: then fp16 loses nothing
            state[f"{module}.weight.compressed"] = half if bool((half.to(values.dtype) == values).all()) else values
            bits = np.packbits(mask.cpu().numpy(), axis=-1, bitorder="little")
            state[f"{module}.weight.bitmask"] = torch.from_numpy(bits)
            counts = mask.sum(dim=1)
            state[f"{module}.weight.row_offsets"] = torch.cumsum(counts, 0).sub(counts).to(torch.int32)
            zeros_total += w.numel() - int(mask.sum())
            numel_total += w.numel()
            numel += w.numel()
            modules.append(module)
        value = problem.db.values(name)[int(lv[u])]
        per_unit[name] = {"level": int(lv[u]), **problem.db.codec.export_entry(problem.spec, value, numel)}
        if expert:
            per_unit[name]["modules"] = [m for m, _ in targets[name]]
    path = save_model(problem.model, problem.tokenizer, out, state_dict=state)
    (path / "model.safetensors").rename(path / SPARSE_BITMASK_FILE)  # so that stock loaders refuse it
    sparsity = {
        "format": "sparse-bitmask",
        "global_sparsity": zeros_total / max(1, numel_total),
        "sparsity_structure": "unstructured",
        "targets": modules,
        "ignore": [],
    }
    write_quantization_config(path, {"quant_method": "compressed-tensors", "sparsity_config": sparsity})
    return write_meta(path, "sparse-bitmask", problem, lv, per_unit, info)


def load_sparse_bitmask(path: Path, dtype: torch.dtype | None) -> Any:
    """The model of a sparse-bitmask directory: the stock architecture, each pruned weight decompressed."""
    cfg = json.loads((path / "config.json").read_text())
    sparsity = (cfg.get("quantization_config") or {}).get("sparsity_config") or {}
    if sparsity.get("format") != "sparse-bitmask":
        raise ValueError(f"{path}: config.json names no sparse-bitmask sparsity_config")
    state = read_state_dict(path)
    for key in [k for k in state if k.endswith(".weight.bitmask")]:
        base = key[: -len(".bitmask")]
        shape = [int(x) for x in state.pop(f"{base}.shape").tolist()]
        bits = state.pop(key).numpy()
        mask = torch.from_numpy(np.unpackbits(bits, axis=-1, count=shape[-1], bitorder="little").astype(bool))
        values = state.pop(f"{base}.compressed")
        state.pop(f"{base}.row_offsets")
        w = torch.zeros(shape, dtype=values.dtype)
        w[mask.reshape(shape)] = values
        state[base] = w
    config = config_without_quantization(path)
    state, _ = from_checkpoint(checkpoint_layout(_skeleton(config), "sparse-bitmask"), state)
    return load_strict(path, config, state, dtype)


def _skeleton(config: Any) -> Any:
    """The stock architecture of ``config`` on the meta device (its names and shapes, no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_pack_quantized(path: Path, dtype: torch.dtype | None) -> Any:
    """The model of a pack-quantized directory, each module decompressed by compressed-tensors with its group."""
    _need_compressed_tensors()
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    qcfg = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    if qcfg.get("format") != "pack-quantized":
        raise ValueError(f"{path}: config.json names no pack-quantized quantization_config")
    state = read_state_dict(path)
    units: dict[str, torch.Tensor] = {}
    for group in qcfg["config_groups"].values():
        scheme = QuantizationScheme.model_validate(group)
        for name in group["targets"]:
            parts = {p: state.pop(f"{name}.{p}") for p in ("weight_packed", "weight_scale", "weight_zero_point")}
            parts["weight_shape"] = state.pop(f"{name}.weight_shape")
            units[name] = PackedQuantizationCompressor.decompress(parts, scheme)["weight"]  # out × in
    config = config_without_quantization(path)
    state, units = from_checkpoint(checkpoint_layout(_skeleton(config), "pack-quantized"), state, units)
    return load_strict(path, config, state, dtype, units)
