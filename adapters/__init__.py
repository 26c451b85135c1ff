"""LLM compression adapters (installed as ``levelsearch.adapters``)."""
