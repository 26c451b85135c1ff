"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _user_databases() -> Path:
    """The variant databases' default home in the user's cache (``levelsearch.adapters.model.cache.cache_root``)."""
    env = os.environ.get("LEVELSEARCH_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "levelsearch") / "databases"


def _test_databases() -> set[str]:
    root = _user_databases()
    return {n for n in os.listdir(root) if "pytest" in n} if root.is_dir() else set()


def pytest_sessionstart(session):
    session.config._databases_before = _test_databases()


def pytest_sessionfinish(session, exitstatus):
    # a test's run must give --database under its tmp_path: the user's cache is not the tests' to fill
    new = sorted(_test_databases() - getattr(session.config, "_databases_before", set()))
    if new:
        print(f"\ntests wrote variant databases into {_user_databases()}: {', '.join(new)} (give --database)")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer tiny Llama (hidden 32, byte tokenizer, seeded weights) saved as a model directory, once a session.

    Made by ``test_adapters_drop.tiny_llama`` and ``byte_tokenizer``; tests that load it must not change it.
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from levelsearch.adapters.model.models import save_model
    from test_adapters_drop import byte_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), path)
    return path


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    """A small text file of documents (``test_sparsity_quant.TEXT`` cut into 300-character pieces): the calibration
    and held-out data of the tiny weight-codec problems."""
    from test_sparsity_quant import TEXT

    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n\n\n".join(TEXT[i : i + 300] for i in range(0, len(TEXT), 300)))
    return str(path)
