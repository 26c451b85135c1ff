"""LLM compression adapters (installed as ``levelsearch.adapters``).

Nothing is imported here, so ``import levelsearch.adapters`` stays light; import the
modules you need (they need torch and transformers: ``pip install 'levelsearch[llm]'``).
A compression kind is a **codec**; everything else is shared:

- ``codecs/``: the :class:`~levelsearch.adapters.codecs.Codec` contract and its registry (entry-point
  group ``levelsearch.codecs``), and the built-in codecs ``drop``, ``sparsity``, ``quant``, ``joint``.
  A third party adds a kind by registering a codec (``examples/plugins/lowrank_codec.py``).
- ``kernels/``: the numerical kernels (SparseGPT, Wanda, magnitude, GPTQ, RTN, the quantization
  grid, Hessian accumulation and damping), pure functions that know no model and no kind.
- ``models``: :func:`load_model` (hub id, local directory, GGUF file, or the offline
  ``"smollm2"`` default cached as safetensors), :func:`decoder_layers` (the one layer finder),
  :func:`map_layers` (attention / MLP sub-modules, norm, head), :func:`save_model`.
- ``capture``: the one hook-based capture of a decoder layer's call arguments, and
  :func:`call_layer`; ``calibration``: per-layer Hessians, one decoder layer at a time.
- ``data``: calibration and held-out :class:`TokenSet` objects from local files or the
  standard library's ``pydoc_data.topics``, split by document.
- ``fitness``: :class:`LayerRunner` (layer-by-layer execution sharing unchanged prefixes),
  :class:`Teacher` (bounded-memory top-k dense distributions), :func:`kl_topk`, ``nll_next``.
- ``layerwise``: :class:`LayerwiseProblem`, what every codec's problem shares (model, data, teachers,
  the fitness with its prefix sharing, memos and anchor states, the held-out report, per-unit error
  estimates, identity); ``weightsearch``: :class:`WeightLevelProblem`, the problem of any weight codec
  (variants swapped in from a ``database``), no subclass needed; ``sparsity``, ``quantization``,
  ``joint``: its named kinds ``llm-sparsity`` / ``llm-quant`` / ``llm-joint``; ``dropping``:
  :class:`DropProblem` (``llm-drop``).
- ``heuristics``: ShortGPT, angular distance, single-drop KL, random (the ``drop`` baselines);
  ``export``, ``plots``: the Hugging Face export and the per-unit profile plot of every codec.
- ``pipeline``: the one ``levelsearch compress`` pipeline for every codec; ``compress``: the
  command, its settings (``DEFAULTS``) and selection schedules.
- ``formats``: compressed checkpoints (dropped weights left out, compressed-tensors pack-quantized and
  sparse-bitmask), the export check that fails loudly, size and speed; :func:`load_compressed` (here,
  imported on first use) loads any of them; ``export_cli``: ``levelsearch export RUN_DIR --format F``.
"""

from typing import Any

__all__ = ["load_compressed"]


def __getattr__(name: str) -> Any:  # levelsearch.adapters.load_compressed without importing torch up front
    if name == "load_compressed":
        from .formats.loader import load_compressed

        return load_compressed
    raise AttributeError(f"module 'levelsearch.adapters' has no attribute {name!r}")
