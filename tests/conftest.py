"""Shared fixtures: tiny offline models (built once per test session) and the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from neuroflow.testing import build_tiny_bert, build_tiny_t5, build_tiny_vit  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny BERT encoder with its WordPiece tokenizer."""
    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny T5 encoder-decoder with its Unigram tokenizer."""
    return str(build_tiny_t5(tmp_path_factory.mktemp("tiny_t5")))


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny ViT (32 x 32, one channel) with its image processor."""
    return str(build_tiny_vit(tmp_path_factory.mktemp("tiny_vit")))


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    """`../shared/data` (the real datasets); tests that need it skip when it is absent."""
    path = Path(os.environ.get("NEUROFLOW_DATA_DIR", SHARED_DATA)).resolve()
    if not path.is_dir():
        pytest.skip(f"real data directory {path} not found")
    return str(path)
