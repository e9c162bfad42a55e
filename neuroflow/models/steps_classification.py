"""Steps of the classification kinds (a head on pooled features) and of text2text (seq2seq LM head)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F
from torchmetrics import Metric

from neuroflow.models.metrics import TaskMetrics
from neuroflow.models.task_steps import TaskSteps, nonfinite_rows

if TYPE_CHECKING:
    from neuroflow.data.task_spec import TaskSpec
    from neuroflow.models.multitask_module import MultiTaskModule


def encode_features(
    module: MultiTaskModule, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backbone features of a classification batch: (hidden states, attention mask, pooler output)."""
    model = module.hf_model
    if module.family == "vision":
        pixels = batch["pixel_values"]
        channels = getattr(model.config, "num_channels", pixels.shape[1])
        if pixels.shape[1] == 1 and channels == 3:  # grayscale data on an RGB backbone
            pixels = pixels.expand(-1, 3, -1, -1)
        kwargs: dict[str, Any] = {}
        size = getattr(model.config, "image_size", None)
        if "interpolate_pos_encoding" in module._forward_params and size not in (None, pixels.shape[-1]):
            kwargs["interpolate_pos_encoding"] = True
        out = model(pixel_values=pixels, **kwargs)
        return out.last_hidden_state, None, getattr(out, "pooler_output", None)
    mask = batch.get("attention_mask")
    if module.family == "seq2seq":
        out = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=mask)
        return out.last_hidden_state, mask, None
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
    if "token_type_ids" in batch and "token_type_ids" in module._forward_params:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    out = model(**kwargs)
    return out.last_hidden_state, mask, getattr(out, "pooler_output", None)


class ClassificationSteps(TaskSteps):
    """`text_classification` / `image_classification`: cross-entropy of the task's head."""

    def make_metric(self, spec: TaskSpec) -> Metric:
        return TaskMetrics(spec.num_labels, spec.metrics)

    def training_loss(self, module: MultiTaskModule, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(module(batch).float(), batch["labels"])

    def evaluate(self, module: MultiTaskModule, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        logits = module(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        return loss, logits.argmax(dim=-1), batch["labels"], nonfinite_rows(logits)


class Text2TextSteps(TaskSteps):
    """`text2text`: the seq2seq LM loss on the verbalized label; greedy `generate` decoded back to a
    class index by the task's verbalizer (anything else is wrong)."""

    def make_metric(self, spec: TaskSpec) -> Metric:
        return TaskMetrics(spec.num_labels, spec.metrics)

    @staticmethod
    def _forward(module: MultiTaskModule, batch: dict[str, Any]) -> Any:
        return module.hf_model(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"]
        )

    def training_loss(self, module: MultiTaskModule, batch: dict[str, Any]) -> torch.Tensor:
        return self._forward(module, batch).loss

    def evaluate(self, module: MultiTaskModule, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        out = self._forward(module, batch)
        verbalizer = module.verbalizers[batch["task"]]
        generated = module.hf_model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            max_new_tokens=module.hparams.max_new_tokens or verbalizer.max_target_tokens + 2,
            do_sample=False,
            num_beams=1,
        )
        preds = torch.tensor(verbalizer.decode(generated), device=out.loss.device)
        return out.loss, preds, batch["label_index"], nonfinite_rows(out.logits)
