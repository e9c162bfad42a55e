"""Disk-to-disk merges of LLaMA-shaped checkpoints: neuroflow against MergeKit, in one table.

```bash
python benchmarks/merge_checkpoints.py --size 210M --experts 4 --root /tmp/nf-bench \
    [--mergekit-python /work/mk/bin/python] [--repeats 3] [--runs floor,ta,ties,nm,mk_ta,mk_ties]
```
Builds (once, cached under `--root`) a random bf16 base and `--experts` perturbed copies (`base +
0.002 * noise`, each tensor seeded by its name) with a LLaMA `config.json`, then runs every merge in
a fresh process and reports that child's CPU seconds (user + sys, `os.wait4`), wall seconds and peak
RSS, the median over `--repeats`. Rows:

- `floor`: read every input tensor once (neuroflow's reader) — the cost of the input itself;
- `nf_ta`, `nf_ties`, `nf_nm` (1 thread) and `*_t2` (2 threads): `merge_checkpoints` with
  TaskArithmetic(0.3), TIES(mask_rate=0.8, global), NeuroMerging() writing bf16 5GB shards; with
  1 thread the prefetch reader still runs beside the maths on a second core;
- `*_c1`: the 1-thread merge pinned to one core (`taskset -c 0`), the reader sharing it: what one
  core alone does, the baseline for the 2-thread rows' speed-up on the whole machine;
- `mk_ta`, `mk_ties`: `mergekit-yaml --lazy-unpickle` with `task_arithmetic` (weight 0.3) and `ties`
  (density 0.2, weight 1), one thread (`OMP_NUM_THREADS=1`), when `--mergekit-python` is given.

A second table splits each neuroflow run by phase, from its merge card's `timings` (checks, the
statistics passes, the merge and write, and the rest of the process: start-up, imports, exit), with
the cores each phase kept busy (CPU / wall).

Inputs are in the page cache for every run, as in the issue: the script reads every input file once
before the first run (checkpoints cached from an earlier call may have been evicted since, and the
first row would then time the disk instead of the merge).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": dict(vocab=512, hidden=64, inter=176, layers=2, heads=4),
    "210M": dict(vocab=32000, hidden=1024, inter=2816, layers=11, heads=16),
    "1.26B": dict(vocab=32000, hidden=2048, inter=5632, layers=22, heads=32),
}


def shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a LLaMA checkpoint (untied LM head, no GQA)."""
    v, h, i = spec["vocab"], spec["hidden"], spec["inter"]
    out = {"model.embed_tokens.weight": (v, h)}
    for layer in range(spec["layers"]):
        p = f"model.layers.{layer}."
        out.update({p + f"self_attn.{n}_proj.weight": (h, h) for n in "qkvo"})
        out.update({p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i)})
        out.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    out.update({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    return out


def build(root: Path, size: str, experts: int) -> tuple[Path, list[Path]]:
    """Write (or reuse) the base and the experts under `root/size`."""
    import torch

    from neuroflow.checkpoints.shard_writer import ShardWriter

    spec, folder = SIZES[size], root / size
    names = ["base"] + [f"expert{t}" for t in range(experts)]
    marker = folder / f"complete-{experts}.json"
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": spec["hidden"],
                  "intermediate_size": spec["inter"], "num_hidden_layers": spec["layers"],
                  "num_attention_heads": spec["heads"], "num_key_value_heads": spec["heads"],
                  "vocab_size": spec["vocab"], "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                  "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu"}
        plan = [(n, s, torch.bfloat16) for n, s in shapes(spec).items()]
        writers = []
        for name in names:
            (folder / name).mkdir(parents=True)
            (folder / name / "config.json").write_text(json.dumps(config))
            writers.append(ShardWriter(folder / name, plan, "100GB"))
        for tensor_name, shape, _ in plan:
            g = torch.Generator().manual_seed(zlib.crc32(tensor_name.encode()))
            base = torch.randn(shape, generator=g) * 0.02
            writers[0].write(tensor_name, base.to(torch.bfloat16))
            for writer in writers[1:]:
                writer.write(tensor_name, (base + 0.002 * torch.randn(shape, generator=g)).to(torch.bfloat16))
        for writer in writers:
            writer.close()
        marker.write_text(json.dumps({"size": size, "experts": experts}))
    return folder / "base", [folder / n for n in names[1:]]


FLOOR = """
import sys
from neuroflow.checkpoints import CheckpointFolder
for path in sys.argv[1:]:
    folder = CheckpointFolder(path)
    for name in folder:
        folder[name]
"""
NEUROFLOW = """
import sys
from neuroflow.checkpoints import merge_checkpoints
from neuroflow.merging import NeuroMerging, TIES, TaskArithmetic
method = {"ta": TaskArithmetic(scaling=0.3), "ties": TIES(mask_rate=0.8), "nm": NeuroMerging()}[sys.argv[1]]
merge_checkpoints(sys.argv[4], sys.argv[5:], method, sys.argv[3], dtype="bfloat16", threads=int(sys.argv[2]))
"""


def mergekit_config(method: str, base: Path, experts: list[Path]) -> str:
    params = {"weight": 0.3} if method == "task_arithmetic" else {"weight": 1.0, "density": 0.2}
    models = "".join(f"  - model: {e}\n    parameters: {json.dumps(params)}\n" for e in experts)
    return f"merge_method: {method}\nbase_model: {base}\ndtype: bfloat16\nmodels:\n{models}"


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(CPU s, wall s, peak RSS GiB) of one child process, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{err[-3000:]}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def warm_page_cache(folders: list[Path]) -> None:
    """Read every file under `folders` once, so that no timed run pays for the disk."""
    start, total = time.perf_counter(), 0
    for folder in folders:
        for path in sorted(folder.iterdir()):
            with path.open("rb", buffering=0) as handle:
                while chunk := handle.read(64 << 20):
                    total += len(chunk)
    print(f"page cache warmed: {total / 2**30:.2f} GiB read in {time.perf_counter() - start:.1f} s", flush=True)


def build_in_child(root: Path, size: str, experts: int) -> None:
    """`build` in a child process: a forked child's peak RSS starts from its parent's (Linux carries
    the pre-exec high-water mark into ru_maxrss), so this process must stay small (no torch import)."""
    subprocess.run([sys.executable, __file__, "--build-only", "--size", size, "--experts", str(experts),
                    "--root", str(root)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def warm_kernels(root: Path, experts: int, env: dict[str, str]) -> None:
    """Merge tiny checkpoints once with each method, untimed: numba compiles the kernels into its
    cache on their first call (seconds), which a user pays once per install, not per merge; a fresh
    clone's first timed row would otherwise carry it."""
    build_in_child(root, "tiny", experts)
    folders = [root / "tiny" / "base", *(root / "tiny" / f"expert{t}" for t in range(experts))]
    out = root / "warm-out"
    for key in ("ta", "ties", "nm"):
        subprocess.run([sys.executable, "-c", NEUROFLOW, key, "1", str(out), *map(str, folders)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="210M", choices=sorted(SIZES))
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--root", default="/tmp/neuroflow-merge-bench")
    parser.add_argument("--mergekit-python", default=None, help="python of a venv with mergekit 0.1.5")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs", default="floor,nf_ta,nf_ties,nf_nm,nf_ta_t2,nf_ties_t2,nf_nm_t2,nf_ties_c1,nf_nm_c1,mk_ta,mk_ties")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    root = Path(args.root)
    if args.build_only:
        build(root, args.size, args.experts)
        return
    build_in_child(root, args.size, args.experts)
    base = root / args.size / "base"
    experts = [root / args.size / f"expert{t}" for t in range(args.experts)]
    out = root / "out"
    warm_page_cache([base, *experts])
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    warm_kernels(root, args.experts, env)
    one = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "floor": ([sys.executable, "-c", FLOOR, str(base), *map(str, experts)], one),
    }
    for key in ("ta", "ties", "nm"):
        for threads, suffix in ((1, ""), (2, "_t2")):
            cmd = [sys.executable, "-c", NEUROFLOW, key, str(threads), str(out), str(base), *map(str, experts)]
            commands[f"nf_{key}{suffix}"] = (cmd, one if threads == 1 else env)
        if shutil.which("taskset"):
            commands[f"nf_{key}_c1"] = (["taskset", "-c", "0", *commands[f"nf_{key}"][0]], one)
    if args.mergekit_python:
        mk_bin = Path(args.mergekit_python).parent / "mergekit-yaml"
        for key, method in (("mk_ta", "task_arithmetic"), ("mk_ties", "ties")):
            config = root / f"{method}.yml"
            config.write_text(mergekit_config(method, base, experts))
            commands[key] = ([str(mk_bin), str(config), str(out), "--lazy-unpickle", "--quiet"], one)

    results: dict[str, tuple[float, float, float]] = {}
    phases: dict[str, dict[str, tuple[float, float]]] = {}
    for key in args.runs.split(","):
        if key not in commands:
            continue
        samples, timed = [], []
        for _ in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            samples.append(run_child(*commands[key]))
            print(f"{key}: cpu {samples[-1][0]:.1f} s, wall {samples[-1][1]:.1f} s, peak {samples[-1][2]:.2f} GiB", flush=True)
            if key.startswith("nf_"):
                timed.append(json.loads((out / "merge_card.json").read_text())["timings"])
        results[key] = tuple(statistics.median(s[j] for s in samples) for j in range(3))
        if timed:
            phases[key] = {phase: (statistics.median(t[phase]["wall_s"] for t in timed),
                                   statistics.median(t[phase]["cpu_s"] for t in timed)) for phase in timed[0]}
    shutil.rmtree(out, ignore_errors=True)

    print(f"\n{args.size}, base + {args.experts} experts, bf16; median of {args.repeats}; nproc={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: numbers are noisy)\n")
    print("| run | CPU s | wall s | peak RSS GiB | CPU / MK TIES | CPU / MK TA | CPU / floor | RSS / MK TIES |")
    print("|---|---|---|---|---|---|---|---|")
    ref_ties, ref_ta, floor = results.get("mk_ties"), results.get("mk_ta"), results.get("floor")

    def ratio(a: float, b: tuple | None, j: int = 0) -> str:
        return f"{a / b[j]:.2f}x" if b else "-"

    for key, (cpu, wall, rss) in results.items():
        print(f"| {key} | {cpu:.1f} | {wall:.1f} | {rss:.2f} | {ratio(cpu, ref_ties)} | {ratio(cpu, ref_ta)} | "
              f"{ratio(cpu, floor)} | {ratio(rss, ref_ties, 2)} |")
    for key in ("ta", "ties", "nm"):
        if f"nf_{key}" in results and f"nf_{key}_t2" in results:
            print(f"\n{key}: 2 threads {results[f'nf_{key}'][1] / results[f'nf_{key}_t2'][1]:.2f}x faster wall than 1", end="")
            if f"nf_{key}_c1" in results:
                print(f", {results[f'nf_{key}_c1'][1] / results[f'nf_{key}_t2'][1]:.2f}x faster than 1 thread on one core", end="")
    print()
    if phases:
        print_phases(phases, results)


def print_phases(phases: dict[str, dict[str, tuple[float, float]]], results: dict[str, tuple[float, float, float]]) -> None:
    """Where each neuroflow run's time went (the merge card's `timings`, median per phase), and the
    cores each phase kept busy (CPU / wall); "rest" is the child's total less the phases: interpreter
    and torch start-up, imports, the config/card files, exit."""
    names = list(next(iter(phases.values())))
    print("\nphases, wall s / CPU s (cores busy):\n")
    print("| run | " + " | ".join(names) + " | rest |")
    print("|---|" + "---|" * (len(names) + 1))
    for key, timing in phases.items():
        cells = [f"{w:.2f} / {c:.2f} ({c / w if w else 0:.2f})" for w, c in timing.values()]
        rest_wall = results[key][1] - sum(w for w, _ in timing.values())
        rest_cpu = results[key][0] - sum(c for _, c in timing.values())
        print(f"| {key} | " + " | ".join(cells) + f" | {rest_wall:.2f} / {rest_cpu:.2f} |")


if __name__ == "__main__":
    main()
