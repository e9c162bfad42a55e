"""Multi-process runs for the slow tests (Lightning re-launches this script once per rank).

    python causal_script.py validate MODEL DATA_DIR ARITH_FILE CACHE OUT.json DEVICES
    python causal_script.py fsdp-fit MODEL DATA_DIR CACHE OUT_DIR {full,lora}

`validate` scores the three causal-LM task kinds with the Trainer and writes rank 0's metrics;
`fsdp-fit` fine-tunes on 2 CPU processes under `DecoderFSDPStrategy` with an ExpertCollector.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from causal_helpers import arithmetic, sst2_choice, trec_instruction  # noqa: E402

from neuroflow.callbacks import ExpertCollector  # noqa: E402
from neuroflow.commands.trainer import NeuroTrainer  # noqa: E402
from neuroflow.data import MultiTaskDataModule  # noqa: E402
from neuroflow.models import AdamW, MultiTaskModule  # noqa: E402

torch.set_num_threads(1)
QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def validate(model: str, data_dir: str, arith: str, cache: str, out: str, devices: int) -> None:
    # 21 examples per task: odd, so two ranks hold 11 and 10 (batches of 4: 3 and 3, the last uneven).
    tasks = [sst2_choice(), trec_instruction(), arithmetic(Path(arith))]
    dm = MultiTaskDataModule(tasks, data_dir=data_dir, tokenizer=model, max_length=48, max_target_length=16,
                             eval_batch_size=4, max_train_examples=8, max_eval_examples=21, cache_dir=cache)
    module = MultiTaskModule(model, tasks=dm.task_specs)
    trainer = NeuroTrainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", **QUIET)
    trainer.validate(module, dm, verbose=False)
    if trainer.is_global_zero:
        Path(out).write_text(json.dumps({"metrics": module.last_metrics["val"], "world": trainer.world_size,
                                         "truncated": module.last_truncation["val"]}))


def fsdp_fit(model: str, data_dir: str, cache: str, out: str, mode: str) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from neuroflow.models.fsdp import DecoderFSDPStrategy

    dm = MultiTaskDataModule([sst2_choice()], data_dir=data_dir, tokenizer=model, max_length=48, max_target_length=8,
                             batch_size=4, eval_batch_size=8, max_train_examples=32, max_eval_examples=16, cache_dir=cache)
    module = MultiTaskModule(model, tasks=dm.task_specs, lora={"r": 4, "lora_alpha": 8} if mode == "lora" else None,
                             optimizer=partial(AdamW, lr=1e-2), lr_scheduler=None)
    callbacks = [ExpertCollector(os.path.join(out, "experts")),
                 ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), monitor="val/avg/score", mode="max")]
    trainer = NeuroTrainer(accelerator="cpu", devices=2, strategy=DecoderFSDPStrategy(), max_epochs=2,
                           callbacks=callbacks, **QUIET)
    trainer.fit(module, dm)


if __name__ == "__main__":
    if sys.argv[1] == "validate":
        validate(*sys.argv[2:7], int(sys.argv[7]))
    else:
        fsdp_fit(*sys.argv[2:7])
