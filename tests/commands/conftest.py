"""Fixtures of the command-line tests: a tiny experts folder, and logging restored after each test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tiny_experts import collect_experts

from neuroflow.testing import build_tiny_bert


@pytest.fixture(scope="session")
def tiny_experts(tiny_bert: str, shared_data_dir: str, data_cache_dir: str, tmp_path_factory) -> Path:
    """Experts for trec and sst2 from the tiny BERT (2 steps each), read-only."""
    return collect_experts(tmp_path_factory.mktemp("cli_experts"), {"trec": tiny_bert, "sst2": tiny_bert},
                           shared_data_dir, data_cache_dir)


@pytest.fixture(scope="session")
def mixed_base_experts(tiny_bert: str, shared_data_dir: str, data_cache_dir: str, tmp_path_factory) -> Path:
    """trec from the tiny BERT, sst2 from another one (other seed, other weights): two bases."""
    other = str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_other"), seed=1))
    return collect_experts(tmp_path_factory.mktemp("mixed_experts"), {"trec": tiny_bert, "sst2": other},
                           shared_data_dir, data_cache_dir)


@pytest.fixture(autouse=True)
def restore_logging():
    """The entry point configures the `neuroflow` logger; later tests get it back as it was."""
    names = ("neuroflow", "lightning.pytorch", "lightning.fabric")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for name, (level, handlers) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers
