"""`benchmarks/merge_speed.py` runs, and on a tiny model agrees with its float64 oracle."""

from __future__ import annotations

from .helpers import load_benchmark


def test_benchmark_smoke(capsys) -> None:
    bench = load_benchmark()
    report = bench.main(["--experts", "3", "--vocab", "64", "--layers", "1", "--hidden", "24", "--repeat", "1", "--no-memory"])
    out = capsys.readouterr().out
    assert "speed-up" in out and "per-neuron torch.linalg.svd (float64 math)" in out
    assert report["max_rel_error_vs_float64"] < 1e-5
    assert report["fast_s"] > 0 and report["per_neuron_float64_s"] > 0
