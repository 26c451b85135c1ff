"""Where levelsearch caches what it builds (dequantized models, variant databases, file hashes)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "smollm2_cache_dir"]


def cache_root() -> Path:
    """Where dequantized models are cached: ``$LEVELSEARCH_CACHE`` or ``~/.cache/levelsearch``."""
    env = os.environ.get("LEVELSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "levelsearch"


def smollm2_cache_dir() -> Path:
    """The directory of the offline ``"smollm2"`` default, dequantized to safetensors (built on first load)."""
    return cache_root() / "smollm2-135m-instruct"
