"""Load any directory :mod:`levelsearch.adapters.formats` writes: :func:`load_compressed`.

- No ``levelsearch_compression.json``, or one whose ``loader`` is ``transformers``: the stock
  ``AutoModelForCausalLM.from_pretrained`` (a ``compressed-tensors`` checkpoint needs that package).
- ``noop_branches`` (attention or MLP sub-blocks dropped alone): the stock architecture is built from
  ``config.json`` (no ``trust_remote_code``), each listed branch is replaced by a :class:`NoOpBranch`
  (its tensors, written as zeros for the stock loader, must be zero and are skipped), and the weights
  are loaded strictly from the safetensors files: a tensor the model lacks, or a model tensor the file
  lacks (tied weights aside), is an error, never a random initialisation.
- ``format: pack-quantized``: the stock architecture, every module decompressed by compressed-tensors
  with its own config group (:mod:`.ctensors` says why not through transformers' quantizer).
- ``format: gptq``: the stock architecture, every GPTQ-packed linear unpacked and dequantized here
  (:mod:`.gptq`; its ``dynamic`` map gives each module's bits).
- ``format: sparse-bitmask``: the compressed-tensors bitmask layout, decompressed here
  (:mod:`.ctensors`; current transformers releases no longer read it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..model.capture import hidden_arg
from ..model.models import resolve_dtype
from .common import read_state_dict
from .ctensors import load_pack_quantized, load_sparse_bitmask
from .drop import META_FILE
from .gptq import load_gptq

__all__ = ["NoOpBranch", "load_compressed", "read_meta", "read_state_dict"]


class NoOpBranch(nn.Module):
    """A dropped residual branch: returns zeros shaped like its input hidden states.

    ``n_outputs`` is what the branch it replaces returned: ``0`` for a tensor, ``k`` for a tuple of ``k``
    (attention modules return ``(output, weights)``): then ``(zeros, None, ...)``.
    """

    def __init__(self, n_outputs: int = 0) -> None:
        super().__init__()
        self.n_outputs = int(n_outputs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:

        zeros = torch.zeros_like(hidden_arg(args, kwargs))
        if self.n_outputs:
            return (zeros, *([None] * (self.n_outputs - 1)))
        return zeros

    def extra_repr(self) -> str:
        return f"n_outputs={self.n_outputs}"


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``levelsearch_compression.json`` of an exported directory (``{}`` when there is none)."""
    f = Path(path) / META_FILE
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text())
    except ValueError:
        raise ValueError(f"{f} is not valid JSON; export the run again (levelsearch export RUN_DIR)") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{f} must hold a JSON object; export the run again")
    return meta


def _branch_outputs(model: nn.Module, names: list[str]) -> dict[str, int]:
    """How many outputs each named branch returns (0: a tensor), from one 2-token forward with hooks."""
    seen: dict[str, int] = {}
    handles = []
    for name in names:

        def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            seen[name] = len(out) if isinstance(out, (tuple, list)) else 0

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"branch {missing[0]} did not run in a forward pass; this model cannot be loaded so")
    return seen


def _load_with_noop(path: Path, meta: dict[str, Any], dtype: torch.dtype | None) -> nn.Module:

    config = AutoConfig.from_pretrained(str(path))
    model: Any = (
        AutoModelForCausalLM.from_config(config, dtype=dtype) if dtype else AutoModelForCausalLM.from_config(config)
    )
    model.eval()
    names = [str(n) for n in meta["noop_branches"]]
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: no module {name} in the {type(model).__name__} its config builds") from None
    outputs = _branch_outputs(model, names)
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, NoOpBranch(outputs[name]))
    state = read_state_dict(path)
    for key in [k for k in state if any(k.startswith(n + ".") for n in names)]:
        # a dropped branch is written as zeros, so that the stock loader runs it exactly; here it is skipped
        if bool(state.pop(key).any()):
            raise ValueError(f"{path}: {key} of a dropped branch is not zero; the file was changed, export again")
    want = model.state_dict()
    unexpected = sorted(set(state) - set(want))
    if unexpected:
        raise ValueError(f"{path}: tensor {unexpected[0]} has no place in the model (a dropped branch's weights?)")
    target = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    loaded = {want[k].data_ptr() for k in state}
    missing = [k for k in want if k not in state and model.state_dict()[k].data_ptr() not in loaded]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {missing[0]} ({len(missing)} tensors in all); export again")
    return model


def load_compressed(
    path: str | os.PathLike[str], *, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """The model of an exported directory, in eval mode (see the module docstring for each format).

    Args:
        path: a directory written by ``levelsearch compress`` / ``levelsearch export`` (or any Hugging
            Face model directory).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype (default: the checkpoint's).
        device: where to put it (default CPU).

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ValueError: the directory was marked failed by its export check, or its tensors do not match
            its architecture.
    """

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} is not a directory; give an exported model directory")
    if (p / "FAILED").exists():
        raise ValueError(f"{p} failed its export check ({(p / 'FAILED').read_text().strip()}); do not use it")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = resolve_dtype(dtype, dev) if dtype is not None else None
    meta = read_meta(p)
    if meta.get("format") == "sparse-bitmask":
        model: Any = load_sparse_bitmask(p, dt)
    elif meta.get("format") == "pack-quantized":
        model = load_pack_quantized(p, dt)
    elif meta.get("format") == "gptq":
        model = load_gptq(p, dt)
    elif meta.get("noop_branches"):
        model = _load_with_noop(p, meta, dt)
    else:
        kwargs: dict[str, Any] = {"dtype": dt} if dt is not None else {"dtype": "auto"}
        model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    model.to(dev)
    return model.eval()
