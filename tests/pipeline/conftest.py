"""Fixtures of the pipeline tests: a tiny experts folder (2 steps per expert), read-only."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_experts import collect_experts


@pytest.fixture(scope="session")
def pipeline_experts(tiny_bert: str, shared_data_dir: str, data_cache_dir: str, tmp_path_factory) -> Path:
    return collect_experts(tmp_path_factory.mktemp("pipeline_experts"), {"trec": tiny_bert, "sst2": tiny_bert},
                           shared_data_dir, data_cache_dir)
