"""NeuroMerging speed: neuroflow's Gram-matrix neuron merge vs a straightforward per-neuron SVD loop.

Run: `python benchmarks/merge_speed.py` (options: `--experts 8 --vocab 8192 --layers 2 --dtype float32
--threads 1`).

Builds seeded synthetic MiniLM-shaped weights (a vocab x 384 embedding; per layer 4 x (384x384)
attention projections, the 1536x384 and 384x1536 feed-forward weights, their biases and two
LayerNorms) and T experts (base + random task vectors), merges them with NeuroMerging
(mask_rate 0.8, Lite) both ways in one run, and prints both times, the speed-up, the maximum relative
error between the two results, and the peak extra memory of each (resident memory over the inputs,
measured in a fresh subprocess per implementation so one does not hide the other's peak, with glibc
told to return freed memory immediately so that RSS tracks live data).

The baseline follows the spec literally: the global threshold by `kthvalue` over the concatenated
model, then for every neuron `torch.linalg.svd` of its T x n orthogonal rows, `C = A V`, the disjoint
mean of each column of C and `psi = V c`. It runs twice: in the input precision (float32: the literal
implementation) and with float64 math after the trim (an accurate oracle of the same inputs). The
float32 one disagrees with both on a few neurons by O(1) of the neuron: their sign elections are
near-ties (|sum_t C_tj| / sum_t |C_tj| ~ 1e-6) that float32 SVD coordinates cannot resolve. It is a
benchmark (and test) oracle, not library code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from torch import Tensor

from neuroflow.merging import NeuroMerging, kernels, merge


def build_weights(
    experts: int, vocab: int, layers: int, dtype: torch.dtype, seed: int = 0, hidden: int = 384
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Seeded MiniLM-shaped base weights and `experts` fine-tuned copies.

    Args:
        experts: number of experts T.
        vocab: rows of the embedding table.
        layers: number of transformer layers.
        dtype: dtype of every tensor.
        seed: the generator seed.
        hidden: hidden size (the feed-forward size is 4x).
    """
    ffn = 4 * hidden
    g = torch.Generator().manual_seed(seed)
    shapes = {"embeddings.word_embeddings.weight": (vocab, hidden), "embeddings.LayerNorm.weight": (hidden,)}
    for layer in range(layers):
        p = f"encoder.layer.{layer}."
        for proj in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + proj + ".weight"] = (hidden, hidden)
            shapes[p + proj + ".bias"] = (hidden,)
        shapes[p + "intermediate.dense.weight"] = (ffn, hidden)
        shapes[p + "intermediate.dense.bias"] = (ffn,)
        shapes[p + "output.dense.weight"] = (hidden, ffn)
        shapes[p + "output.dense.bias"] = (hidden,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"] = (hidden,)
            shapes[p + norm + ".bias"] = (hidden,)
    base = {n: (0.05 * torch.randn(s, generator=g)).to(dtype) for n, s in shapes.items()}
    tuned = [
        {n: (w + 2e-3 * torch.randn(w.shape, generator=g).to(dtype)) for n, w in base.items()} for _ in range(experts)
    ]
    return base, tuned


def _disjoint_mean(x: Tensor) -> Tensor:
    """Spec's sign election with tie fallback + disjoint mean over dim 0, written out plainly."""
    total = x.sum(dim=0)
    sign = torch.sign(total)
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign > 0, x > 0, x < 0)
    return (x * keep).sum(dim=0) / keep.sum(dim=0).clamp(min=1)


def per_neuron_neuromerging(
    base: dict[str, Tensor],
    experts: list[dict[str, Tensor]],
    mask_rate: float = 0.8,
    math_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """The straightforward NeuroMerging Lite: concatenated kthvalue, one SVD per neuron.

    Args:
        base: pre-trained weights (2-D tensors are neurons by rows, others points).
        experts: fine-tuned weights.
        mask_rate: fraction of entries dropped per task.
        math_dtype: dtype of everything after the trim (projection, SVD, merges); default the
            computation dtype. float64 turns the baseline into an accurate oracle of the same inputs.
    """
    dtype = torch.float64 if next(iter(base.values())).dtype == torch.float64 else torch.float32
    names = list(base)
    taus = [{n: e[n].to(dtype) - base[n].to(dtype) for n in names} for e in experts]
    sigmas, trimmed = [], []
    for tau in taus:
        flat = torch.cat([tau[n].reshape(-1) for n in names]).abs()
        k = int(flat.numel() * mask_rate)
        kth = flat.kthvalue(k).values if k > 0 else None
        kept = {n: t if kth is None else torch.where(t.abs() >= kth, t, 0.0) for n, t in tau.items()}
        removed = 0.0 if kth is None else flat[flat < kth].double().sum().item()
        sigmas.append(removed / flat.double().sum().item())
        trimmed.append(kept)
    lam = 1.0 / (1.0 - max(sigmas))
    math_dtype = math_dtype or dtype
    out = {}
    for n in names:
        w = base[n].to(math_dtype)
        x = torch.stack([t[n] for t in trimmed]).to(math_dtype)
        if w.dim() != 2:
            out[n] = (w + lam * _disjoint_mean(x)).to(base[n].dtype)
            continue
        psi = torch.zeros_like(w)
        for r in range(w.shape[0]):
            w0 = w[r]
            norm_sq = w0 @ w0
            s = x[:, r] @ w0 / norm_sq if norm_sq > 0 else torch.zeros(x.shape[0], dtype=math_dtype)
            a = x[:, r] - s[:, None] * w0
            _, _, vh = torch.linalg.svd(a, full_matrices=False)
            c = _disjoint_mean(a @ vh.T)
            psi[r] = vh.T @ c
        out[n] = (w + lam * psi).to(base[n].dtype)
    return out


def _warm_up(dtype: torch.dtype, mask_rate: float) -> None:
    """Run both implementations once on a tiny model: first calls load library code (LAPACK
    kernels) and grow the allocator, which neither side's time or memory should include."""
    base, experts = build_weights(2, 16, 1, dtype, seed=1, hidden=16)
    merge(base, experts, NeuroMerging(mask_rate=mask_rate))
    per_neuron_neuromerging(base, experts, mask_rate)
    per_neuron_neuromerging(base, experts, mask_rate, torch.float64)


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_memory(args: argparse.Namespace, which: str) -> dict:
    """Peak memory over the inputs of one implementation (run in a fresh process).

    Two measures: the kernel's peak-RSS counter (VmHWM, reset before the merge), which also counts
    library pages faulted in (or back in) during the run, and the peak anonymous RSS (RssAnon,
    sampled every millisecond by a thread; torch releases the GIL), which counts only data.
    """
    import threading

    torch.set_num_threads(args.threads)
    _warm_up(getattr(torch, args.dtype), args.mask_rate)
    base, experts = build_weights(args.experts, args.vocab, args.layers, getattr(torch, args.dtype), hidden=args.hidden)
    inputs = sum(t.numel() * t.element_size() for sd in [base, *experts] for t in sd.values())
    before, before_anon = _rss_bytes("VmRSS"), _rss_bytes("RssAnon")
    peak_anon = [before_anon]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak_anon[0] = max(peak_anon[0], _rss_bytes("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    sampler.start()
    if which == "fast":
        result = merge(base, experts, NeuroMerging(mask_rate=args.mask_rate)).state_dict
    else:
        result = per_neuron_neuromerging(base, experts, args.mask_rate)
    peak = _rss_bytes("VmHWM")
    done.set()
    sampler.join()
    output = sum(t.numel() * t.element_size() for t in result.values())
    return {"inputs": inputs, "peak_extra": peak - before, "peak_extra_anon": peak_anon[0] - before_anon, "output": output}


def _max_relative_error(got: dict[str, Tensor], ref: dict[str, Tensor], base: dict[str, Tensor]) -> float:
    """max over tensors of max|delta_got - delta_ref| / max|delta_ref| (deltas = merged - base)."""
    worst = 0.0
    for n in ref:
        d_ref = ref[n].double() - base[n].double()
        d_got = got[n].double() - base[n].double()
        scale = d_ref.abs().max().item()
        if scale > 0:
            worst = max(worst, (d_got - d_ref).abs().max().item() / scale)
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--mask-rate", type=float, default=0.8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per implementation (best is kept)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-child", choices=["fast", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(_measure_memory(args, args.memory_child)))
        return {}

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    base, experts = build_weights(args.experts, args.vocab, args.layers, dtype, hidden=args.hidden)
    numel = sum(t.numel() for t in base.values())
    print(f"{len(base)} tensors, {numel / 1e6:.2f} M parameters, {args.experts} experts, {args.dtype}, "
          f"mask_rate {args.mask_rate}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"best of {args.repeat} runs")

    _warm_up(dtype, args.mask_rate)

    def timed(fn):
        # Best of `--repeat` runs (as timeit does): other jobs on a shared machine only add time.
        walls, cpus = [], []
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        return out, min(walls), min(cpus)

    fast, t_fast, c_fast = timed(lambda: merge(base, experts, NeuroMerging(mask_rate=args.mask_rate)).state_dict)
    path = "compiled per-neuron Gram + Jacobi" if kernels.enabled() else "batched Gram + eigh"
    rows = [(f"neuroflow ({path})", t_fast, c_fast, None)]
    report = {"fast_s": t_fast, "fast_cpu_s": c_fast}
    math_dtypes = [dtype] if dtype == torch.float64 else [dtype, torch.float64]
    for math_dtype in math_dtypes:
        slow, t_slow, c_slow = timed(lambda: per_neuron_neuromerging(base, experts, args.mask_rate, math_dtype))
        label = str(math_dtype).replace("torch.", "")
        err = _max_relative_error(fast, slow, base)
        rows.append((f"per-neuron torch.linalg.svd ({label} math)", t_slow, c_slow, err))
        report[f"per_neuron_{label}_s"] = t_slow
        report[f"per_neuron_{label}_cpu_s"] = c_slow
        report[f"speedup_vs_{label}"] = t_slow / t_fast
        report[f"cpu_speedup_vs_{label}"] = c_slow / c_fast
        report[f"max_rel_error_vs_{label}"] = err
    print(f"{'implementation':44s} {'wall s':>7s} {'cpu s':>7s} {'speed-up wall/cpu':>18s} {'max rel err':>12s}")
    for label, wall, cpu, err in rows:
        speed = "" if err is None else f"{wall / t_fast:.1f}x / {cpu / c_fast:.1f}x"
        err_text = "" if err is None else f"{err:12.2e}"
        print(f"{label:44s} {wall:7.2f} {cpu:7.2f} {speed:>18s} {err_text}")
    print("max rel err: neuroflow vs that baseline, max over tensors of max |delta - delta_ref| / max |delta_ref|,")
    print("             delta = merged - base; the float64-math baseline is an accurate oracle of the same inputs")
    if not args.no_memory and os.path.exists("/proc/self/clear_refs"):
        for which in ("fast", "baseline"):
            child = [sys.executable, __file__, "--memory-child", which, "--threads", str(args.threads), "--experts", str(args.experts),
                     "--vocab", str(args.vocab), "--layers", str(args.layers), "--hidden", str(args.hidden), "--mask-rate", str(args.mask_rate),
                     "--dtype", args.dtype]
            # glibc returns freed memory at once, so RSS tracks live data (with its defaults, retained
            # free heap makes the high-water mark vary by ~150 MiB from run to run).
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
            mem = json.loads(subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout)
            report[f"{which}_memory"] = mem
            mib = 1024**2
            print(f"peak extra memory, {which:8s}: {mem['peak_extra_anon'] / mib:7.1f} MiB anonymous "
                  f"({mem['peak_extra'] / mib:.1f} MiB RSS high-water mark) over {mem['inputs'] / mib:.1f} MiB of inputs; "
                  f"{mem['output'] / mib:.1f} MiB of it is the merged output")
    return report


if __name__ == "__main__":
    main()
