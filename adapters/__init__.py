"""LLM compression adapters (installed as ``levelsearch.adapters``).

Importing this package imports nothing heavy: the public names below are loaded on first use (they need
torch and transformers: ``pip install 'levelsearch[llm]'``), e.g. ``from levelsearch.adapters import
DropProblem``. A compression kind is a **codec**, one folder beside the contract; everything else is shared:

- ``codecs/``: the :class:`~levelsearch.adapters.codecs.Codec` contract and its registry (``base.py``,
  entry-point group ``levelsearch.codecs``), and one folder per built-in kind: ``drop/``, ``sparsity/``,
  ``quant/``, ``joint/``, ``gguf/`` (its codec, its problem, its baselines, and what only it needs).
  ``codecs/README.md`` says how to add a kind; a third party registers one (``examples/plugins/lowrank_codec.py``).
- ``model/``: :func:`load_model` (hub id, local directory, GGUF file, or the offline ``"smollm2"``
  default), the one layer finder and units, the capture of a decoder layer's inputs, calibration and
  held-out :class:`TokenSet` objects, per-layer Hessians, and the integrity checks of cached files.
- ``scoring/``: layer-by-layer execution against a teacher (``fitness``), :class:`LayerwiseProblem`
  (what every codec's problem shares: ``layerwise``), Fisher error estimates (``fisher``).
- ``weights/``: :class:`WeightLevelProblem`, the problem of any weight codec (``problem``), and the
  variant database it reads (``database``).
- ``kernels/``: SparseGPT, Wanda, magnitude, GPTQ, RTN, the quantization grid, Hessians: pure functions.
- ``formats/``: compressed checkpoints, the export check that fails loudly, size and speed;
  :func:`load_compressed` loads any of them.
- ``run/``: the one ``levelsearch compress`` pipeline for every codec, the Hugging Face export, plots.
- ``cli/``: the ``compress`` and ``export`` commands (the settings they check: ``run/settings.py``, collected
  from the kinds).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module (under ``levelsearch.adapters``) that defines it
_PUBLIC = {
    "load_compressed": "formats.loader",
    "Codec": "codecs.base",
    "WeightCodec": "codecs.base",
    "available_codecs": "codecs.base",
    "get_codec": "codecs.base",
    "register_codec": "codecs.base",
    "DropProblem": "codecs.drop.problem",
    "run_heuristics": "codecs.drop.heuristics",
    "SparsityProblem": "codecs.sparsity.problem",
    "QuantProblem": "codecs.quant.problem",
    "JointProblem": "codecs.joint.problem",
    "GGUFProblem": "codecs.gguf.problem",
    "WeightLevelProblem": "weights.problem",
    "VariantDatabase": "weights.database",
    "build_database": "weights.database",
    "LayerwiseProblem": "scoring.layerwise",
    "load_model": "model.models",
    "TokenSet": "model.data",
    "calibration_and_heldout": "model.data",
    "schedule_options": "run.schedules",
    "plot_profile": "run.plots",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:  # levelsearch.adapters.<name> without importing torch up front
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'levelsearch.adapters' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
