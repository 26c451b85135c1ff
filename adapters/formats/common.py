"""What the packed formats share: reading a directory's tensors and a database's stored parts, writing the
quantization config and ``levelsearch_compression.json``, and loading a stock architecture strictly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from ..model.integrity import check_safetensors
from ..model.units import module_layout
from .drop import META_FILE

__all__ = [
    "value_bits",
    "config_without_quantization",
    "load_strict",
    "read_state_dict",
    "stored_parts",
    "write_meta",
    "write_quantization_config",
]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files (checked first: a truncated file is one line)."""

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds no .safetensors file; is it an exported model directory?")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        check_safetensors(f)
        out.update(load_file(str(f)))
    return out


def stored_parts(db: Any, unit: str, level: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The stored tensors of ``unit`` at ``level`` in a variant database (read with safetensors)."""

    layer = str(db.manifest["units"][unit]["layer"])
    with safe_open(str(Path(db.root) / db.manifest["layers"][layer]["file"]), framework="pt") as f:
        return {n: f.get_tensor(f"{unit}/{level}/{n}") for n in names}


def value_bits(value: Any) -> int:
    """The bit width of a stored level value (``bits``, or ``[zeros, bits]`` for ``joint``)."""
    return int(value[1]) if isinstance(value, (list, tuple)) else int(value)


def write_quantization_config(path: Path, qcfg: dict[str, Any]) -> None:
    """Set ``quantization_config`` in the directory's ``config.json``."""
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (path / "config.json").write_text(json.dumps(cfg, indent=2))


def write_meta(
    path: Path, fmt: str, problem: Any, lv: np.ndarray, per_unit: dict[str, Any], info: dict[str, Any] | None
) -> Path:
    """Write the export's ``levelsearch_compression.json`` (format, loader, spec, levels, per-unit facts)."""
    meta = {
        "format": fmt,
        "loader": "levelsearch.adapters.load_compressed",
        "kind": problem.spec["kind"],
        "spec": problem.spec,
        "levels": lv.tolist(),
        "units": per_unit,
        **(info or {}),
    }
    (path / META_FILE).write_text(json.dumps(meta, indent=1))
    return path


def config_without_quantization(path: Path) -> Any:
    """The directory's config without its ``quantization_config`` (the tensors are decompressed by us)."""

    config = AutoConfig.from_pretrained(str(path))
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the tensors are decompressed here, not by transformers' quantizer
    return config


def load_strict(
    path: Path,
    config: Any,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype | None,
    units: dict[str, torch.Tensor] | None = None,
) -> Any:
    """The stock architecture of ``config`` with ``state`` loaded, and each of ``units`` (module name →
    ``out × in`` weight) as its module's weight in the module's layout; tensors missing or extra are errors."""

    model: Any = (
        AutoModelForCausalLM.from_config(config, dtype=dtype) if dtype else AutoModelForCausalLM.from_config(config)
    )
    for name, w in (units or {}).items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: no module {name} in the {type(model).__name__} its config builds") from None
        state[f"{name}.weight"] = module_layout(module, w)
    target = next(model.parameters()).dtype
    missing, unexpected = model.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=False)
    if unexpected:
        raise ValueError(f"{path}: tensor {unexpected[0]} has no place in the model")
    model.tie_weights()
    want = model.state_dict()
    loaded = {want[k].data_ptr() for k in state if k in want}
    lacking = [k for k in missing if want[k].data_ptr() not in loaded]
    if lacking:
        raise ValueError(f"{path}: the checkpoint lacks {lacking[0]}; export again")
    return model
