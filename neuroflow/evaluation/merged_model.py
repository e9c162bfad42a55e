"""A saved merged model: writing it, and `MergedModel` / `load_merged` to score it again.

Layout of a merged directory (written by `python -m neuroflow merge`):

    backbone/            the merged backbone (`save_pretrained`, safetensors) + tokenizer/processor
    heads.safetensors    every task's head, keys `<task>.<param>`
    <task>/              the task as a plain Hugging Face classifier, where one is exactly equivalent
                         (config + classifier weights + links into backbone/; see `hf_export`)
    merge_card.json      method, hyperparameters, experts, fingerprints, timings, heads, tasks,
                         `hf_models` (which tasks were exported, or why not), `evaluation`
    report.{json,md,png} the evaluation (unless `--evaluate false`)
    evaluation_error.txt only when the evaluation failed (the model is kept)

`backbone/` loads with plain `transformers.AutoModel.from_pretrained`, `<task>/` with
`AutoModelForSequenceClassification.from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import save_file

from neuroflow.atomic import atomic_write_json
from neuroflow.data.task_spec import TaskSpec
from neuroflow.evaluation.expert_heads_module import Reference, StageReports, fill_module_hparams, task_names_of
from neuroflow.evaluation.hf_export import export_task_models
from neuroflow.experts.artifacts import load_head
from neuroflow.experts.expert import head_ref
from neuroflow.experts.fingerprint import fingerprint_state_dict
from neuroflow.hub import resolve_model_path
from neuroflow.models.multitask_module import MultiTaskModule, as_task_specs

CARD = "merge_card.json"
CARD_FORMAT = "neuroflow-merge-card/1"
HEADS = "heads.safetensors"
BACKBONE = "backbone"


def save_merged(module: MultiTaskModule, out_dir: str | Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write `module`'s backbone, heads and `card` into `out_dir` (which should be a fresh temporary
    directory that the caller renames when everything succeeded); returns the completed card.

    Args:
        module: the merged module (its current backbone weights and heads are written).
        out_dir: the directory to write into.
        card: what to record (method, experts, timings, ...); `heads`, `tasks`, `family`,
            `merged_fingerprint`, `hf_models` are added here.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.hf_model.save_pretrained(str(out / BACKBONE))
    _save_preprocessor(module.hparams.backbone, out / BACKBONE)
    heads = {f"{task}.{k}": v.detach().cpu().contiguous() for task, head in module.heads.items()
             for k, v in head.state_dict().items()}
    if heads:
        save_file(heads, str(out / HEADS))
    hf_models = export_task_models(module, out, BACKBONE)
    card = {
        "format": CARD_FORMAT,
        **card,
        "family": module.family,
        "merged_fingerprint": fingerprint_state_dict(module.backbone_state_dict()),
        "tasks": [module.task_specs[t].to_dict() for t in module.task_names],
        "heads": {task: {"path": HEADS, "prefix": f"{task}.", "config": head.config()}
                  for task, head in module.heads.items()},
        "hf_models": hf_models,
    }
    atomic_write_json(out / CARD, card)
    return card


def _save_preprocessor(base: str, target: Path) -> None:
    """Copy the base model's tokenizer (or image processor) next to the merged weights, so the
    folder is a complete model; a base without one is not an error."""
    from transformers import AutoImageProcessor, AutoTokenizer

    path = resolve_model_path(base)
    for loader in (AutoTokenizer, AutoImageProcessor):
        try:
            loader.from_pretrained(path).save_pretrained(str(target))
            return
        except (OSError, ValueError, KeyError, TypeError):
            continue
    rank_zero_warn(f"{base}: no tokenizer or image processor found; {target} holds weights only")


def read_card(merged_dir: str | Path) -> dict[str, Any]:
    """The merge card of a merged directory.

    Raises:
        FileNotFoundError: not a merged directory (names the missing file).
        ValueError: an unreadable card.
    """
    path = Path(merged_dir) / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{merged_dir} is not a merged model directory: {path} is missing")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from err
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path}: unknown merge card format {card.get('format')!r}")
    return card


class MergedModel(StageReports, MultiTaskModule):
    """A merged model saved by `python -m neuroflow merge`, for `validate`/`test`.

    Args:
        merged_dir: the merged directory (`backbone/`, `heads.safetensors`, `merge_card.json`).
        tasks: the tasks to evaluate (a subset of the merged ones); filled by the CLI from `data`;
            None = every merged task.
        report_dir: where `test` writes `report.{json,md,png}`; None = no report files.
        backbone_kwargs: extra `from_pretrained` arguments.
    """

    report_kind = "merged"
    tokenizer_owner = "the merged model"

    def __init__(
        self,
        merged_dir: str = "runs/merged/neuromerging",
        tasks: list[TaskSpec] | None = None,
        report_dir: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        card = read_card(merged_dir)
        merged_tasks = [t["name"] for t in card["tasks"]]
        names = task_names_of(tasks) or merged_tasks
        unknown = [t for t in names if t not in merged_tasks]
        if unknown:
            raise ValueError(f"task(s) {unknown} are not in the merged model {merged_dir} (it has {merged_tasks})")
        specs = as_task_specs(tasks) if tasks else [TaskSpec.from_dict(t, origin=f"{merged_dir}/{CARD}") for t in card["tasks"]]
        module_args = dict(
            backbone=str(Path(merged_dir) / BACKBONE), family=card["family"], head_dropout=0.0,
            backbone_kwargs=backbone_kwargs,
        )
        super().__init__(tasks=specs, **module_args)
        fill_module_hparams(self, **module_args)
        self.merged_dir = str(merged_dir)
        self.card = card
        self.report_dir = report_dir
        fingerprint = fingerprint_state_dict(self.backbone_state_dict())
        if fingerprint != card["merged_fingerprint"]:
            raise ValueError(
                f"{merged_dir}/{BACKBONE}: weights fingerprint {fingerprint} differs from the merge card's "
                f"{card['merged_fingerprint']} (modified or partially copied?)"
            )
        root = Path(merged_dir)
        for task in self.task_names:
            if task in card["heads"]:
                ref = head_ref(root, root, card["heads"][task], f"{root / CARD}", f"heads.{task}")
                self.heads[task] = load_head(ref, task, f"merged model {merged_dir}")
        self.eval()

    def report_name(self) -> str:
        return self.card.get("name", "merged")

    def report_model_info(self) -> dict[str, Any]:
        return {"kind": "merged", "merged_dir": self.merged_dir, "method": self.card.get("method"),
                "base_model": self.card.get("base_model"), "base_model_ref": self.card.get("base_model_ref"),
                "experts": self.card.get("experts")}

    def reference_metrics(self, stage: str) -> Reference:
        """The experts' numbers the merge command recorded in this directory's report (same data);
        else what the experts' manifest recorded, when it is still there."""
        report_path = Path(self.merged_dir) / "report.json"
        if stage == "test" and report_path.is_file():
            report = json.loads(report_path.read_text())
            found = {t: e["expert"] for t, e in report["tasks"].items() if e.get("expert")}
            if found:
                return found, {t: report["tasks"][t].get("expert_source") or "report" for t in found}
        source = self.card.get("experts_source")
        if source:
            from neuroflow.experts.expert_set import ExpertSet

            try:
                recorded = ExpertSet(source, self.task_names).recorded_metrics(stage)
                return recorded, {t: "manifest" for t in recorded}
            except (OSError, ValueError) as err:
                rank_zero_warn(f"cannot read the experts at {source} for reference metrics: {err}")
        return {}, {}


def load_merged(merged_dir: str | Path, tasks: list[TaskSpec] | None = None) -> MergedModel:
    """Load a merged directory as a `MergedModel` (Python shortcut for `MergedModel(merged_dir)`).

    Args:
        merged_dir: the merged directory.
        tasks: the tasks to evaluate; None = every merged task (specs from the merge card).
    """
    return MergedModel(str(merged_dir), tasks=tasks)
