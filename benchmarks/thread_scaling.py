"""How much a second thread can buy on this machine: compute, memory streaming, page-cache reads.

```bash
python benchmarks/thread_scaling.py [--folders /tmp/nf-bench/210M/base /tmp/nf-bench/210M/expert0 ...]
```
A streamed merge is bounded by memory traffic (every input byte is copied from the page cache,
converted, combined and written once or twice), so its 2-thread speed-up cannot exceed what two
threads get from the memory system. This measures, side by side in one run, the throughput of one
thread and of two threads working at once (each thread its own buffers, torch held to one thread
per thread) on:

- `in-cache`: an element-wise op on 1 MiB buffers (they stay in each core's L2): the cores' speed;
- `streaming`: the same op on 256 MiB buffers: main-memory bandwidth;
- `page-cache read`: neuroflow's reader (`CheckpointFolder`) reading every tensor of `--folders`
  (the read-once floor of `merge_checkpoints.py`), the tensors split between the threads.

Each ratio is (work done by two threads per second) / (work done by one thread per second), the
median of `--repeats`; 2.00x is perfect scaling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuroflow.checkpoints import CheckpointFolder  # noqa: E402


def timed_together(jobs: list[Callable[[], None]]) -> float:
    """Wall seconds for `jobs` run at once, one thread each, started together."""
    start = threading.Barrier(len(jobs) + 1)

    def run(job: Callable[[], None]) -> None:
        torch.set_num_threads(1)
        start.wait()
        job()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def op_jobs(numel: int, repeats: int) -> list[Callable[[], None]]:
    """Two independent jobs of `repeats` passes of `y = x * 1.5 + y` over `numel` floats."""
    jobs = []
    for _ in range(2):
        x, y = torch.rand(numel), torch.zeros(numel)

        def job(x=x, y=y) -> None:
            for _ in range(repeats):
                y.add_(x, alpha=1.5)

        jobs.append(job)
    return jobs


def read_jobs(folders: list[Path]) -> list[Callable[[], None]]:
    """The tensors of `folders`, every other one per job."""
    opened = [CheckpointFolder(folder) for folder in folders]
    items = [(folder, name) for folder in opened for name in folder]

    def reader(part: list) -> Callable[[], None]:
        def job() -> None:
            for folder, name in part:
                folder[name]
        return job

    return [reader(items[0::2]), reader(items[1::2])]


def scaling(jobs: list[Callable[[], None]], repeats: int, split: bool) -> tuple[float, float, float]:
    """(1-thread s, 2-thread s, throughput ratio). `split`: the two jobs are halves of one piece of
    work (1 thread runs both in turn); else each is a whole unit (1 thread runs one)."""
    ones, twos = [], []
    for _ in range(repeats):
        ones.append(timed_together([lambda: [job() for job in jobs]] if split else jobs[:1]))
        twos.append(timed_together(jobs))
    one, two = statistics.median(ones), statistics.median(twos)
    return one, two, (one / two) if split else (2 * one / two)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="*", type=Path, default=[], help="checkpoint folders to read (page-cache row)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [
        ("in-cache op (1 MiB per thread)", scaling(op_jobs(1 << 18, 2000), args.repeats, split=False)),
        ("streaming op (256 MiB per thread)", scaling(op_jobs(64 << 20, 8), args.repeats, split=False)),
    ]
    if args.folders:
        jobs = read_jobs(args.folders)
        for job in jobs:  # the files into the page cache, and the read buffers into the pool
            job()
        rows.append((f"page-cache read ({len(args.folders)} folders)", scaling(jobs, args.repeats, split=True)))
    print(f"nproc={os.cpu_count()}, median of {args.repeats}\n")
    print("| work | 1 thread s | 2 threads s | 2-thread throughput / 1-thread |")
    print("|---|---|---|---|")
    for label, (one, two, ratio) in rows:
        print(f"| {label} | {one:.3f} | {two:.3f} | {ratio:.2f}x |")
    print("\nop rows: 1 thread does one unit, 2 threads one unit each; read row: 1 thread reads every tensor,"
          " 2 threads half each.")


if __name__ == "__main__":
    main()
