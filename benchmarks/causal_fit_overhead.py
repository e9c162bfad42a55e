"""Fine-tuning overhead of neuroflow's causal LoRA fit against a plain PyTorch loop.

    python benchmarks/causal_fit_overhead.py                      # defaults below, about 2-3 min on 2 CPU cores
    python benchmarks/causal_fit_overhead.py --hidden 512 --layers 8 --steps 40 --threads 4

Both sides train the same decoder (a small LLaMA built offline by `neuroflow.testing`, same seed,
same LoRA adapters on every projection) on the same batches: the `MultiTaskDataModule`'s training
loader over a real task (`news_mc`, AG News topics from ../shared/data: prompts + gold choices, loss on
the answer tokens). neuroflow = `NeuroTrainer.fit(MultiTaskModule, MultiTaskDataModule)` with its default
logging; plain = `for batch in loader: model(**batch).loss.backward(); opt.step(); sched.step();
opt.zero_grad()`. The runs alternate (plain, neuroflow, plain, ...) so a load change on a shared
machine hits both, and each run's step time is the median over its steps after `--warmup` steps,
measured from one step's end to the next (data loading and every per-step cost included), in wall
time and in process CPU time (with one thread, the CPU time is what a step costs, however loaded the
machine is). Printed: every run's medians, the median and the best run per side, and the ratios
neuroflow / plain (goal: <= 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Callback, seed_everything

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neuroflow.commands.trainer import NeuroTrainer  # noqa: E402
from neuroflow.data import MultiTaskDataModule  # noqa: E402
from neuroflow.models import AdamW, LinearWarmup, MultiTaskModule  # noqa: E402
from neuroflow.models.causal_lm import causal_lora_config  # noqa: E402
from neuroflow.testing import build_tiny_causal_lm, data_corpus  # noqa: E402

LORA = {"r": 8, "lora_alpha": 16}
LR = 2e-4


class StepClock(Callback):
    """Wall and process CPU time at the end of every training step."""

    def __init__(self) -> None:
        self.ends: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(now())


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def step_times(ends: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds between consecutive step ends after `warmup` steps."""
    kept = ends[warmup:]
    wall = [b[0] - a[0] for a, b in zip(kept, kept[1:])]
    cpu = [b[1] - a[1] for a, b in zip(kept, kept[1:])]
    return statistics.median(wall), statistics.median(cpu)


def neuroflow_run(model_path: str, dm: MultiTaskDataModule, steps: int, warmup: int) -> tuple[float, float]:
    seed_everything(0)
    module = MultiTaskModule(model_path, tasks=dm.task_specs, lora=dict(LORA),
                             optimizer=partial(AdamW, lr=LR, weight_decay=0.0), lr_scheduler=LinearWarmup)
    clock = StepClock()
    trainer = NeuroTrainer(accelerator="cpu", devices=1, max_steps=warmup + steps + 1, limit_val_batches=0,
                           logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(module, dm)
    return step_times(clock.ends, warmup)


def plain_run(model_path: str, dm: MultiTaskDataModule, steps: int, warmup: int) -> tuple[float, float]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    seed_everything(0)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    model = get_peft_model(base, LoraConfig(**causal_lora_config(base, dict(LORA))))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    scheduler = LinearWarmup(optimizer, total_steps=warmup + steps + 1)
    ends: list[tuple[float, float]] = []
    while len(ends) < warmup + steps + 1:
        for batch in dm.train_dataloader():
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         use_cache=False).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ends.append(now())
            if len(ends) == warmup + steps + 1:
                break
    return step_times(ends, warmup)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(REPO / ".." / "shared" / "data"))
    parser.add_argument("--task", default="news_mc")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(build_tiny_causal_lm(Path(tmp) / "model", "llama", data_corpus(args.data_dir, 2000),
                                              hidden_size=args.hidden, num_layers=args.layers, vocab_size=args.vocab))
        dm = MultiTaskDataModule([args.task], data_dir=args.data_dir, tokenizer=model_path, max_length=args.max_length,
                                 max_target_length=16, batch_size=args.batch_size,
                                 max_train_examples=args.batch_size * (args.steps + args.warmup + 2),
                                 cache_dir=str(Path(tmp) / "cache"), seed=0)
        dm.setup("fit")
        params = sum(p.numel() for p in MultiTaskModule(model_path, tasks=dm.task_specs).parameters())
        tokens = sum(len(x) for x in dm.split_data("train")[args.task]["input_ids"]) / len(dm.split_data("train")[args.task])
        print(f"model: LLaMA, {params / 1e6:.2f} M parameters (hidden {args.hidden}, {args.layers} layers, vocab "
              f"{args.vocab}), LoRA r={LORA['r']} on every projection; task {args.task}, batch {args.batch_size}, "
              f"{tokens:.0f} tokens per example on average; {args.threads} thread(s)")
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "neuroflow": []}
        for repeat in range(args.repeats):
            for side, run in (("plain", plain_run), ("neuroflow", neuroflow_run)):
                runs[side].append(run(model_path, dm, args.steps, args.warmup))
                wall, cpu = runs[side][-1]
                print(f"  run {repeat + 1} {side:>9}: wall {wall * 1e3:8.2f} ms/step, CPU {cpu * 1e3:8.2f} ms/step "
                      f"(medians of {args.steps} steps)")
    # Load from other jobs only ever adds time, so the fastest run of each side is the least disturbed
    # estimate; with one thread, CPU time is what the step itself costs.
    print(f"{'':22}{'wall median':>12}{'wall best':>12}{'CPU median':>12}{'CPU best':>12}   (ms/step)")
    stats = {}
    for side in ("plain", "neuroflow"):
        wall, cpu = [r[0] for r in runs[side]], [r[1] for r in runs[side]]
        stats[side] = (statistics.median(wall), min(wall), statistics.median(cpu), min(cpu))
        print(f"{side + (' PyTorch loop' if side == 'plain' else ' fit'):22}" + "".join(f"{v * 1e3:12.2f}" for v in stats[side]))
    ratios = [o / p for o, p in zip(stats["neuroflow"], stats["plain"])]
    print(f"{'ratio neuroflow/plain':22}" + "".join(f"{r:12.3f}" for r in ratios) + "   (goal <= 1.10)")


if __name__ == "__main__":
    main()
