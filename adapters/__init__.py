"""LLM compression adapters (installed as ``levelsearch.adapters``).

Nothing is imported here, so ``import levelsearch.adapters`` stays light; import the
modules you need (they need torch and transformers: ``pip install 'levelsearch[llm]'``):

- ``models``: :func:`load_model` (hub id, local directory, GGUF file, or the offline
  ``"smollm2"`` default cached as safetensors), :func:`map_layers` (decoder layers and their
  attention / MLP sub-modules), :func:`save_model`.
- ``data``: calibration and held-out :class:`TokenSet` objects from local files or the
  standard library's ``pydoc_data.topics``, split by document.
- ``fitness``: :class:`LayerRunner` (layer-by-layer execution sharing unchanged prefixes),
  :class:`Teacher` (bounded-memory top-k dense distributions), :func:`kl_topk`, ``nll_next``.
- ``dropping``: :class:`DropProblem`, the ``llm-drop`` problem (attention / MLP sub-block or
  whole-block dropping); ``heuristics``: ShortGPT, angular distance, single-drop KL, random;
  ``export``: a Hugging Face directory of the compressed model; ``compress``: the
  ``levelsearch compress`` command and its method registry.
"""
