"""Fixtures of the model tests: tiny decoder-only LMs (LLaMA, Mistral, Qwen2, GPT-2), built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from causal_helpers import CAUSAL_ARCHS

from neuroflow.testing import build_tiny_causal_lm, data_corpus

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def causal_corpus() -> list[str]:
    """Tokenizer corpus: the built-in lines plus a few hundred lines of the shared text tasks."""
    return data_corpus(SHARED if SHARED.is_dir() else None)


@pytest.fixture(scope="session")
def causal_models(tmp_path_factory: pytest.TempPathFactory, causal_corpus: list[str]) -> dict[str, str]:
    """Architecture -> folder of a tiny causal LM with its BPE tokenizer."""
    root = tmp_path_factory.mktemp("tiny_causal")
    return {arch: str(build_tiny_causal_lm(root / arch, arch, causal_corpus)) for arch in CAUSAL_ARCHS}


@pytest.fixture(scope="session")
def tiny_llama(causal_models: dict[str, str]) -> str:
    return causal_models["llama"]


@pytest.fixture(scope="session")
def tiny_gpt2(causal_models: dict[str, str]) -> str:
    return causal_models["gpt2"]
