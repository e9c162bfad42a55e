"""`StatisticsModule`: the Lightning loop that computes an expert's data statistics.

It is an `ExpertsModule` (the experts' base with each expert's head, the expert's weights swapped in
when a batch of its task arrives), run with `trainer.validate` over one expert's own training
batches (not `predict`: Lightning rebuilds a predict loader's batch sampler to track indices, which
neuroflow's multi-task sampler does not support). Per batch it adds, for `regmean`, the Gram
matrices of every linear layer's inputs (one no-grad forward of the whole batch, padding excluded)
and, for `fisher`, the squared gradients of each example's log-likelihood under a label drawn from
the model itself (one forward and backward per example). The expert's weights are loaded dense
(`theta_0 + tau`, LoRA adapters folded in), so both statistics are of the expert's function and
keyed by plain backbone names.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

import torch
from torch import Tensor

from neuroflow.data.task_spec import TaskSpec
from neuroflow.evaluation.experts_module import ExpertsModule
from neuroflow.statistics.accumulators import FisherAccumulator, GramAccumulator, examples_of, parameter_names
from neuroflow.statistics.files import check_kind

FisherLabels = Literal["sample", "expected"]
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
SUPPORTED_KINDS = ("text_classification", "image_classification", "text2text")


class StatisticsModule(ExpertsModule):
    """Gathers `regmean` / `fisher` statistics of one expert at a time over its training batches.

    Args:
        experts: an experts directory (manifest), or a list of expert folders.
        tasks: the experts' tasks (specs as the DataModule resolves them).
        kinds: which statistics to gather.
        fisher_labels: `sample` (a label drawn from the model's softmax per example, one backward
            pass: an unbiased estimate of the Fisher of the model's predictive distribution) or
            `expected` (every class weighted by its probability: exact, one backward per class;
            classification only).
        seed: seed of the label draws (combined with the task name, so each expert's draws do not
            depend on which other experts run).
        backbone_kwargs: extra `from_pretrained` arguments for the base model.
    """

    def __init__(
        self,
        experts: str | list[str] = "runs/experts",
        tasks: list[TaskSpec] | None = None,
        kinds: list[str] | tuple[str, ...] = ("regmean", "fisher"),
        fisher_labels: FisherLabels = "sample",
        seed: int = 0,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(experts=experts, tasks=tasks, backbone_kwargs=backbone_kwargs)
        self.kinds = [check_kind(k) for k in dict.fromkeys(kinds)]
        if not self.kinds:
            raise ValueError("StatisticsModule: name at least one statistics kind (regmean, fisher)")
        if fisher_labels not in ("sample", "expected"):
            raise ValueError(f"fisher_labels must be 'sample' or 'expected', got {fisher_labels!r}")
        self.fisher_labels = fisher_labels
        self.seed = seed
        self.grams: GramAccumulator | None = None
        self.fisher: FisherAccumulator | None = None
        self.examples = 0
        self.batches = 0
        self.current: str | None = None

    # ----------------------------------------------------------------- one expert at a time
    def start(self, task: str) -> None:
        """Load `task`'s expert and start empty sums for it."""
        self.finish()
        self.activate(task)
        model, state = self.hf_model, self.backbone_state_dict()
        if "regmean" in self.kinds:
            self.grams = GramAccumulator(model, state)
        if "fisher" in self.kinds:
            names = parameter_names(model, state)
            params = {names[id(p)]: p for p in model.parameters() if id(p) in names and p.is_floating_point()}
            self.fisher = FisherAccumulator(params)
            self._generator = torch.Generator().manual_seed(self.seed + zlib.crc32(task.encode()))
        self.examples = self.batches = 0
        self.current = task

    def finish(self) -> None:
        """Drop the hooks of the previous expert (its sums stay readable until `start`)."""
        if self.grams is not None:
            self.grams.remove()

    def results(self) -> dict[str, tuple[dict[str, Tensor], dict[str, Any]]]:
        """kind -> (tensors, header fields) of the expert gathered since `start`."""
        out: dict[str, tuple[dict[str, Tensor], dict[str, Any]]] = {}
        if self.grams is not None:
            out["regmean"] = (dict(self.grams.grams), {"rows": dict(self.grams.rows), "reduction": "sum"})
        if self.fisher is not None:
            out["fisher"] = (self.fisher.mean(), {"fisher_labels": self.fisher_labels, "seed": self.seed,
                                                  "reduction": "mean", "fisher_examples": self.fisher.examples})
        return out

    # ----------------------------------------------------------------- the loop
    def on_validation_start(self) -> None:
        if self.trainer.world_size > 1:
            # Each process would sum its own shard; the files would then hold one shard's sums.
            raise RuntimeError("statistics are gathered on one process: run `stats` with --devices 1")
        if self.current is None:
            raise RuntimeError("StatisticsModule.start(task) must be called before trainer.validate")
        if self.fisher is not None and torch.is_inference_mode_enabled():
            raise RuntimeError("the Fisher needs gradients: run the pass with Trainer(inference_mode=False)")

    def on_validation_epoch_end(self) -> None:
        # The pass scores nothing: the metrics the evaluation modules log here stay empty.
        pass

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch["task"] != self.current:
            raise ValueError(f"a batch of task {batch['task']!r} in the statistics pass of {self.current!r}")
        spec = self.task_specs[self.current]
        if spec.kind not in SUPPORTED_KINDS:
            raise NotImplementedError(f"statistics of {spec.kind} tasks ({spec.name!r}) are not implemented; "
                                      f"supported kinds: {list(SUPPORTED_KINDS)}")
        if self.grams is not None:
            with torch.no_grad(), self.grams.capture(self._masks(batch, spec)):
                self._forward(batch, spec)
        if self.fisher is not None:
            with torch.enable_grad():
                for example in examples_of(batch, _TOKEN_KEYS):
                    self._fisher_example(example, spec)
        self.examples += int(_batch_size(batch))
        self.batches += 1

    @staticmethod
    def _masks(batch: dict[str, Any], spec: TaskSpec) -> dict[str, Tensor | None]:
        masks: dict[str, Tensor | None] = {"encoder": batch.get("attention_mask")}
        if spec.kind == "text2text":
            masks["decoder"] = batch["labels"] != -100
        return masks

    def _forward(self, batch: dict[str, Any], spec: TaskSpec) -> None:
        if spec.kind == "text2text":
            # Teacher-forced on the training targets: the decoder inputs the expert learnt from.
            self.hf_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                          labels=batch["labels"])
        else:
            self.encode(batch)

    def _fisher_example(self, example: dict[str, Any], spec: TaskSpec) -> None:
        assert self.fisher is not None
        if spec.kind != "text2text":
            self.fisher.add_classification(self(example)[0], self.fisher_labels, self._generator)
            return
        if self.fisher_labels != "sample":
            raise ValueError(f"task {spec.name!r} is text2text: its Fisher needs fisher_labels 'sample'")
        target = self._sample_target(example, spec)
        out = self.hf_model(input_ids=example["input_ids"], attention_mask=example.get("attention_mask"),
                            labels=target)
        # `loss` is the mean over target tokens; the log-likelihood of the sequence is the sum.
        self.fisher.add(-out.loss * int((target != -100).sum()))
        self.fisher.examples += 1

    def _sample_target(self, example: dict[str, Any], spec: TaskSpec) -> Tensor:
        """A target sequence drawn from the model (ancestral sampling, full softmax), as labels."""
        verbalizer = self.verbalizers[spec.name]
        seed = int(torch.randint(0, 2**62, (1,), generator=self._generator))
        with torch.no_grad(), torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(seed)
            generated = self.hf_model.generate(
                input_ids=example["input_ids"], attention_mask=example.get("attention_mask"), do_sample=True,
                top_k=0, top_p=1.0, temperature=1.0, num_beams=1,
                max_new_tokens=self.hparams.max_new_tokens or verbalizer.max_target_tokens + 2)
        labels = generated[:, 1:].clone()  # drop the decoder start token
        config = self.hf_model.config
        eos, pad = config.eos_token_id, config.pad_token_id
        if eos is not None:
            # Tokens after the first end-of-sequence are padding from `generate`.
            after = (labels == eos).long().cumsum(dim=1) - (labels == eos).long()
            labels[after > 0] = -100
        if pad is not None and pad != eos:
            labels[labels == pad] = -100
        return labels


def _batch_size(batch: dict[str, Any]) -> int:
    for key in ("labels", "input_ids", "pixel_values"):
        if isinstance(batch.get(key), Tensor):
            return int(batch[key].shape[0])
    raise ValueError(f"cannot tell the size of a batch with keys {sorted(batch)}")
