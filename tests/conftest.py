"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer tiny Llama (hidden 32, byte tokenizer, seeded weights) saved as a model directory, once a session.

    Made by ``test_adapters_drop.tiny_llama`` and ``byte_tokenizer``; tests that load it must not change it.
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from levelsearch.adapters.models import save_model
    from test_adapters_drop import byte_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), path)
    return path
