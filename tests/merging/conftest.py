"""Fixtures of the merge-engine tests."""

from __future__ import annotations

import json

import pytest
import torch

from .helpers import shared_dir


@pytest.fixture(scope="session")
def reference() -> tuple[dict[str, torch.Tensor], dict]:
    """The authors'-implementation vectors of the spec: (tensors, case descriptions)."""
    folder = shared_dir() / "spec" / "reference"
    tensors_path = folder / "neuromerging_vectors.safetensors"
    meta_path = folder / "neuromerging_vectors.json"
    if not tensors_path.is_file() or not meta_path.is_file():
        pytest.skip(f"reference vectors not found under {folder} (set NEUROFLOW_SHARED_DIR to the shared dir)")
    from safetensors.torch import load_file

    return load_file(str(tensors_path)), json.loads(meta_path.read_text())
