"""Each merged classification task as a plain Hugging Face model folder.

`AutoModelForSequenceClassification.from_pretrained(OUT/<task>)` then gives exactly neuroflow's
logits for that task. A task folder holds only what differs between tasks: `config.json` (the
backbone's, with the task's `id2label`/`label2id`), the classifier weights (`head.safetensors`)
and a `model.safetensors.index.json` that maps every weight to its file; the merged backbone's
weight files and its tokenizer files are relative symbolic links into `backbone/` (copies where
the file system has no links), so a task costs a few kilobytes.

A task is exported only where a Hugging Face class computes exactly what neuroflow's head does;
elsewhere it is skipped with a warning and the reason is recorded in the merge card
(`hf_models`): neuroflow's heads are `pooling -> dropout -> Linear`, while e.g.
`BertForSequenceClassification` applies BERT's pooler (`tanh(dense(h_cls))`) before its
classifier, which equals neuroflow's head only for `pooling: pooler`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import save_file

# model_type -> the class whose logits are `classifier(dropout(pooler_output))` of the very
# backbone neuroflow's encoder family loads (AutoModel), i.e. neuroflow's `pooling: pooler` head.
# Only classes checked against neuroflow's logits (tests/evaluation/test_hf_export.py) are listed.
POOLER_CLASSIFIERS = {"bert": "BertForSequenceClassification"}
TASK_HEAD = "head.safetensors"
INDEX = "model.safetensors.index.json"
# Files and folders of a merged directory that a task folder must not shadow.
RESERVED = {"backbone", "heads.safetensors", "merge_card.json", "report.json", "report.md", "report.png",
            "config.yaml", "evaluation_error.txt"}


def _link(target: Path, link: Path) -> None:
    """A relative symbolic link `link` -> `target`; a hard link or a copy where links fail."""
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
        return
    except (OSError, NotImplementedError):
        pass
    try:
        os.link(target, link)
    except OSError:
        shutil.copyfile(target, link)


def _weight_files(backbone_dir: Path) -> dict[str, str]:
    """Weight name -> file name (in `backbone_dir`) of a `save_pretrained` folder, sharded or not."""
    index = backbone_dir / INDEX
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    with safe_open(str(backbone_dir / "model.safetensors"), "pt") as handle:
        return {key: "model.safetensors" for key in handle.keys()}


def _why_not(module: Any, task: str) -> str | None:
    """Why `task` has no exactly equivalent Hugging Face class (None: it has one)."""
    spec = module.task_specs[task]
    if spec.kind == "text2text":
        return "text2text task: it uses the shared LM head, which backbone/ already is (AutoModelForSeq2SeqLM)"
    if task in RESERVED or task.startswith("."):
        return f"a task folder named {task!r} would shadow a file of the merged directory"
    if module.family != "encoder":
        return f"model family {module.family!r}: no Hugging Face classification class is checked against neuroflow's head"
    model_type = module.hf_model.config.model_type
    cls = POOLER_CLASSIFIERS.get(model_type)
    if cls is None:
        return f"model type {model_type!r}: no Hugging Face classification class is checked against neuroflow's head"
    pooling = module.heads[task].pooling
    if pooling != "pooler":
        return (f"head pooling {pooling!r}: {cls} classifies tanh(dense(first token)) (the pooler), not the "
                f"{pooling} features; only heads trained with pooling 'pooler' are exactly equivalent")
    return None


def _task_config(module: Any, task: str, cls: str, dropout: float) -> Any:
    config = copy.deepcopy(module.hf_model.config)
    labels = list(module.task_specs[task].label_names)
    config.architectures = [cls]
    config.num_labels = len(labels)
    config.id2label = {i: name for i, name in enumerate(labels)}
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = "single_label_classification"
    config.classifier_dropout = dropout
    return config


def export_task_models(module: Any, out_dir: str | Path, backbone: str = "backbone") -> dict[str, dict[str, Any]]:
    """Write `OUT/<task>/` for every classification task that a Hugging Face class reproduces.

    Args:
        module: the merged `MultiTaskModule` (its heads and backbone config).
        out_dir: the merged directory; `out_dir/backbone` must already hold the saved backbone.
        backbone: the backbone folder's name inside `out_dir`.

    Returns:
        task -> `{"status": "exported", "path": <task>, "class": ...}` or
        `{"status": "skipped", "reason": ...}` (for the merge card).
    """
    out = Path(out_dir)
    backbone_dir = out / backbone
    records: dict[str, dict[str, Any]] = {}
    weights: dict[str, str] | None = None
    for task in module.task_names:
        if task not in module.heads and module.task_specs[task].kind != "text2text":
            continue
        reason = _why_not(module, task)
        if reason is not None:
            records[task] = {"status": "skipped", "reason": reason}
            rank_zero_warn(f"task {task!r} is not exported as a Hugging Face model folder: {reason}")
            continue
        cls = POOLER_CLASSIFIERS[module.hf_model.config.model_type]
        head = module.heads[task]
        if weights is None:
            weights = _weight_files(backbone_dir)
        folder = out / task
        folder.mkdir()
        _task_config(module, task, cls, head.dropout_p).save_pretrained(str(folder))
        linked = {}
        for name in sorted(set(weights.values())):
            linked[name] = f"backbone-{name}"
            _link(backbone_dir / name, folder / linked[name])
        classifier = {"classifier.weight": head.linear.weight, "classifier.bias": head.linear.bias}
        save_file({k: v.detach().cpu().contiguous() for k, v in classifier.items()}, str(folder / TASK_HEAD))
        weight_map = {key: linked[name] for key, name in weights.items()}
        weight_map.update({key: TASK_HEAD for key in classifier})
        (folder / INDEX).write_text(json.dumps({"metadata": {"format": "pt"}, "weight_map": weight_map}, indent=2) + "\n")
        # The tokenizer too, so that AutoTokenizer.from_pretrained(OUT/<task>) works.
        for item in sorted(backbone_dir.iterdir()):
            if item.is_file() and item.name not in ("config.json", INDEX) and item.suffix != ".safetensors":
                _link(item, folder / item.name)
        records[task] = {"status": "exported", "path": task, "class": cls,
                         "loads_with": f"transformers.AutoModelForSequenceClassification.from_pretrained('<dir>/{task}')"}
    return records
