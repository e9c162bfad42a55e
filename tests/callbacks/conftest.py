"""Fixtures of the collector tests: a tiny causal LM (the shared ones come from tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny LLaMA with its BPE tokenizer (built-in corpus)."""
    from neuroflow.testing import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama_collector")))
