"""Index samplers: multi-task mixing for training, and unpadded shards for evaluation.

Both shard across processes themselves (rank, world size), which is why `NeuroTrainer` turns off
Lightning's `DistributedSampler`. Training: every rank derives the same global schedule of
"global batches" (batch_size x world_size examples of one task) from the seed and epoch, and takes
its own slice of each, so all ranks run the same number of steps on the same task at each step.
Evaluation: rank r takes examples r, r + W, r + 2W, ...; nothing is padded or repeated, so the
metric states summed over ranks equal the single-process ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
from torch.utils.data import Sampler

Sampling = Literal["proportional", "round_robin", "temperature"]
SAMPLING_MODES: tuple[str, ...] = ("proportional", "round_robin", "temperature")


class MultiTaskBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields single-task batches of `(task_index, row)` keys for this rank.

    Epoch length and task order, per `sampling`:
    - `proportional`: every example of every task once per epoch; the tasks' batches are
      interleaved in a seeded random order, so a task's share of steps is its share of examples.
    - `round_robin`: tasks take turns in their listed order (t0, t1, ..., t0, t1, ...) until the
      task with the most batches has been through its data once; smaller tasks restart with a
      fresh shuffle when they run out.
    - `temperature`: each step's task is drawn with probability proportional to
      `n_task ** (1 / temperature)` (1 = proportional, large = uniform); as many steps as
      `proportional`; tasks restart with a fresh shuffle when they run out.

    Args:
        sizes: number of training examples per task.
        batch_size: examples per batch on each rank.
        sampling: the mixing mode.
        temperature: the temperature of `temperature` sampling.
        seed: base seed; the schedule depends on (seed, epoch) only, never on the rank.
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop each task's last incomplete global batch (otherwise it is kept, split
            over the ranks, when it holds at least one example per rank).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        sampling: Sampling = "proportional",
        temperature: float = 2.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling {sampling!r} must be one of {list(SAMPLING_MODES)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size/rank/world_size: {batch_size}/{rank}/{world_size}")
        if sampling == "temperature" and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.sizes, self.batch_size, self.sampling = list(sizes), batch_size, sampling
        self.temperature, self.seed, self.rank, self.world_size = temperature, seed, rank, world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._epoch_was_set = False
        self._iterated = False
        too_small = [i for i, n in enumerate(self.sizes) if self._batches(n) == 0]
        if too_small:
            raise ValueError(
                f"tasks at positions {too_small} have too few training examples "
                f"({[self.sizes[i] for i in too_small]}) for one batch on {world_size} process(es)"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _batches(self, n: int) -> int:
        full, rest = divmod(n, self.global_batch)
        keep_rest = rest >= self.world_size and not self.drop_last
        return full + int(keep_rest)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (Lightning calls this before each training epoch)."""
        self.epoch = int(epoch)
        self._epoch_was_set = True

    def task_probabilities(self) -> np.ndarray:
        """Per-task probability of a step under `temperature` sampling."""
        weights = np.asarray(self.sizes, dtype=np.float64) ** (1.0 / self.temperature)
        return weights / weights.sum()

    def __len__(self) -> int:
        counts = [self._batches(n) for n in self.sizes]
        if self.sampling == "round_robin":
            return max(counts) * len(counts)
        return sum(counts)

    def _chunks(self, task: int, n: int, rng_pass: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.seed, self.epoch, task, rng_pass]).permutation(n)
        g = self.global_batch
        return [perm[i:i + g] for i in range(0, self._batches(n) * g, g)]

    def _stream(self, task: int) -> Iterator[np.ndarray]:
        # Endless: each pass over the task's data is a fresh permutation.
        rng_pass = 0
        while True:
            yield from self._chunks(task, self.sizes[task], rng_pass)
            rng_pass += 1

    def schedule(self) -> list[int]:
        """The task index of every step of the current epoch (identical on every rank)."""
        counts = [self._batches(n) for n in self.sizes]
        rng = np.random.default_rng([self.seed, self.epoch, len(self.sizes) + 1])
        if self.sampling == "proportional":
            order = np.repeat(np.arange(len(counts)), counts)
            return rng.permutation(order).tolist()
        if self.sampling == "round_robin":
            return list(range(len(counts))) * max(counts)
        return rng.choice(len(counts), size=sum(counts), p=self.task_probabilities()).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self._iterated and not self._epoch_was_set:
            self.epoch += 1  # used outside Lightning: reshuffle on every new iteration anyway
        self._iterated, self._epoch_was_set = True, False
        streams = [self._stream(t) for t in range(len(self.sizes))]
        for task in self.schedule():
            chunk = next(streams[task])
            yield [(task, int(i)) for i in chunk[self.rank::self.world_size]]


class ShardSampler(Sampler[int]):
    """Rank r of W gets indices r, r + W, ... of a dataset of `size`, in order, without padding.

    Args:
        size: dataset length.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank/world_size: {rank}/{world_size}")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))
