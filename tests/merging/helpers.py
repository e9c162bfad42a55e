"""Helpers of the merge-engine tests: locating the shared dir, small seeded random models."""

from __future__ import annotations

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SMALL_SHAPES = {"emb.weight": (12, 5), "lin.weight": (6, 5), "lin.bias": (6,), "norm.weight": (5,)}


def shared_dir() -> Path:
    """`$NEUROFLOW_SHARED_DIR`, else `<repo>/../shared`."""
    env = os.environ.get("NEUROFLOW_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


def random_model(
    shapes: dict[str, tuple[int, ...]], experts: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A seeded base state dict with the given shapes and `experts` perturbed copies."""
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for n, s in shapes.items()}
    tuned = [
        {n: (w.double() + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64)).to(dtype) for n, w in base.items()}
        for _ in range(experts)
    ]
    return base, tuned


def load_benchmark():
    """`benchmarks/merge_speed.py` as a module (its per-neuron SVD baseline is a test oracle)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_speed", REPO / "benchmarks" / "merge_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
