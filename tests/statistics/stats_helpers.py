"""Direct computations the statistics tests compare against (plain transformers, no neuroflow loop)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel

from neuroflow.data import MultiTaskDataModule
from neuroflow.data.task_spec import TaskSpec
from neuroflow.experts import ExpertSet, load_task_vector

TASKS = ["trec", "sst2"]
BATCH = 8


def data_args(tiny_bert: str, data_dir: str, cache: Path) -> dict:
    """The data config of these tests (the same for fitting the experts and for their statistics)."""
    return dict(tasks=list(TASKS), data_dir=data_dir, tokenizer=tiny_bert, max_length=32, batch_size=BATCH,
                eval_batch_size=32, max_train_examples=48, max_eval_examples=24, cache_dir=str(cache))


class HandExpert:
    """One expert as plain tensors: its backbone (base + task vector), head, and training batches.

    Args:
        experts: the experts directory.
        task: the expert's task.
        data: the data config's init args.
    """

    def __init__(self, experts: Path, task: str, data: dict) -> None:
        expert = ExpertSet(experts, [task])[task]
        self.model = AutoModel.from_pretrained(expert.base_model)
        self.base = {k: v.clone() for k, v in self.model.state_dict().items()}
        tv = load_task_vector(experts, expert, self.base)
        self.model.load_state_dict({k: self.base[k] + tv[k] if k in tv else self.base[k] for k in self.base})
        self.model.eval()
        heads = load_file(str(expert.heads[task].path))
        self.head_w, self.head_b = heads[f"{task}.linear.weight"], heads[f"{task}.linear.bias"]
        spec = TaskSpec.from_dict(dict(expert.task_specs[task]))
        self.datamodule = MultiTaskDataModule(**{**data, "tasks": [spec]})

    def batches(self, n: int) -> list[dict]:
        """The first `n` training batches (the loop's loader is built the same way: same order)."""
        return list(islice(iter(self.datamodule.train_dataloader()), n))

    def logits(self, example: dict) -> torch.Tensor:
        hidden = self.model(input_ids=example["input_ids"], attention_mask=example["attention_mask"],
                            token_type_ids=example.get("token_type_ids")).last_hidden_state
        return hidden[:, 0] @ self.head_w.T + self.head_b

    def inputs_of(self, module_name: str, batches: list[dict]) -> list[torch.Tensor]:
        """The inputs of module `module_name` on each batch, `(batch, seq, fan_in)` or `(batch, fan_in)`."""
        captured: list[torch.Tensor] = []
        module = self.model.get_submodule(module_name)
        handle = module.register_forward_hook(lambda m, args, out: captured.append(args[0].detach().clone()))
        try:
            with torch.no_grad():
                for batch in batches:
                    self.logits(batch)
        finally:
            handle.remove()
        return captured

    def fisher(self, batches: list[dict], labels: str, generator: torch.Generator | None = None
               ) -> dict[str, torch.Tensor]:
        """The diagonal Fisher by hand: per example (unpadded, batch of one), the squared gradient of
        log p(y | x) with y drawn from the softmax (`sample`) or every class weighted by p (`expected`)."""
        params = dict(self.model.named_parameters())
        sums = {k: torch.zeros_like(p) for k, p in params.items()}
        count = 0
        for batch in batches:
            for j in range(batch["input_ids"].shape[0]):
                length = int(batch["attention_mask"][j].sum())
                example = {k: batch[k][j:j + 1, :length] for k in ("input_ids", "attention_mask", "token_type_ids")}
                log_probs = torch.log_softmax(self.logits(example)[0], dim=-1)
                probs = log_probs.detach().exp().double()
                if labels == "sample":
                    pairs = [(int(torch.multinomial(probs, 1, generator=generator)), 1.0)]
                else:
                    pairs = [(c, float(probs[c])) for c in range(probs.numel())]
                for c, weight in pairs:
                    self.model.zero_grad()
                    log_probs[c].backward(retain_graph=True)
                    for k, p in params.items():
                        if p.grad is not None:
                            sums[k] += weight * p.grad.square()
                count += 1
        return {k: v / count for k, v in sums.items()}
