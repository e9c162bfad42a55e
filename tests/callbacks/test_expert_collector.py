"""`ExpertCollector` in real fits: best checkpoint, save formats, resuming, multi-task fits."""

import json
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from neuroflow.callbacks import ExpertCollector
from neuroflow.data import resolve_task
from neuroflow.experts import fingerprint_state_dict, load_expert_head, load_manifest, load_task_vector
from neuroflow.models import AdamW, MultiTaskModule


def make_module(path: str, dm, **kwargs) -> MultiTaskModule:
    return MultiTaskModule(path, tasks=dm.task_specs, optimizer=partial(AdamW, lr=3e-3), lr_scheduler=None, **kwargs)


def backbone_from_checkpoint(path: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.parametrize("save_format", ["task_vector", "weights"])
def test_best_checkpoint_is_collected(save_format, tiny_bert, make_datamodule, make_trainer, tmp_path):
    seed_everything(0)
    dm = make_datamodule(["trec"], tokenizer=tiny_bert)
    module = make_module(tiny_bert, dm)
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/avg/score", mode="max", save_last=True)
    collector = ExpertCollector(str(tmp_path / "experts"), save_format=save_format)
    make_trainer(max_epochs=3, callbacks=[collector, checkpoint]).fit(module, dm)

    [entry] = load_manifest(tmp_path / "experts")
    assert entry["checkpoint"] == str((tmp_path / "ckpt").resolve() / checkpoint.best_model_path.split("/")[-1])
    assert entry["metrics"]["val/avg/score"] == pytest.approx(float(checkpoint.best_model_score))
    assert entry["metrics"]["val/trec/accuracy"] == entry["metrics"]["val/avg/score"]
    assert entry["base_fingerprint"] == fingerprint_state_dict(base)
    assert entry["backbone"]["format"] == save_format and entry["monitor"] == "val/avg/score"
    assert entry["task_spec"]["name"] == "trec" and entry["config"]["model"]["backbone"] == tiny_bert

    best = backbone_from_checkpoint(checkpoint.best_model_path)
    tv = load_task_vector(tmp_path / "experts", entry, base)
    for key, delta in tv.items():
        torch.testing.assert_close(base[key] + delta, best[key], rtol=1e-5, atol=1e-6)
    # The module holds the collected (best) weights afterwards.
    assert all(torch.equal(module.backbone_state_dict()[k], v) for k, v in best.items())
    manifest = json.loads((tmp_path / "experts" / "manifest.json").read_text())
    assert [e["name"] for e in manifest["experts"]] == ["trec"]
    # Checkpoints carry the task specs as plain data: the module rebuilds from one alone.
    reloaded = MultiTaskModule.load_from_checkpoint(checkpoint.best_model_path, weights_only=True)
    assert reloaded.task_names == ["trec"] and reloaded.task_specs["trec"].label_names == dm.task_specs[0].label_names
    assert all(torch.equal(reloaded.backbone_state_dict()[k], v) for k, v in best.items())


def test_wrong_base_is_refused(tiny_bert, make_datamodule, make_trainer, tmp_path):
    dm = make_datamodule(["trec"], tokenizer=tiny_bert)
    module = make_module(tiny_bert, dm)
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    make_trainer(max_epochs=1, callbacks=[ExpertCollector(str(tmp_path / "experts"), monitor=None)]).fit(module, dm)
    [entry] = load_manifest(tmp_path / "experts")
    other = {k: v + 1e-3 for k, v in base.items()}
    with pytest.raises(ValueError, match="expert 'trec' was fine-tuned from base .* fingerprint"):
        load_task_vector(tmp_path / "experts", entry, other)


class Crash(Callback):
    """Simulates a killed job: fails at the start of the given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class EpochRecorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


def resumable_callbacks(tmp_path, experts, *extra):
    """The fit configs' callbacks: collector, best checkpoint, latest checkpoint as last.ckpt."""
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best-{epoch}", monitor="val/avg/score", mode="max")
    latest = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", enable_version_counter=False)
    return [ExpertCollector(str(experts)), best, latest, *extra]


def test_interrupted_fit_resumes_from_last(tiny_bert, make_datamodule, make_trainer, tmp_path):
    seed_everything(0)
    dm = make_datamodule(["trec"], tokenizer=tiny_bert)
    experts = tmp_path / "experts"
    first = make_module(tiny_bert, dm)
    base = {k: v.clone() for k, v in first.backbone_state_dict().items()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_trainer(max_epochs=4, callbacks=resumable_callbacks(tmp_path, experts, Crash(epoch=2))).fit(first, dm)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # the latest finished epoch, even if it was not the best one
    assert not (experts / "trec").exists()  # a crashed fit writes no expert
    steps_per_epoch = last["global_step"] // 2

    resumed = make_module(tiny_bert, dm)
    recorder = EpochRecorder()
    trainer = make_trainer(max_epochs=4, callbacks=resumable_callbacks(tmp_path, experts, recorder))
    trainer.fit(resumed, dm, ckpt_path="last")
    assert recorder.epochs == [2, 3]  # continued, not restarted
    assert trainer.global_step == 4 * steps_per_epoch
    [entry] = load_manifest(experts)
    # The task vector is relative to the pre-trained weights, not to the resumed checkpoint, and
    # the best epoch may be one from before the crash (the collector's state is checkpointed too).
    assert entry["base_fingerprint"] == fingerprint_state_dict(base)
    best = backbone_from_checkpoint(entry["checkpoint"])
    tv = load_task_vector(experts, entry, base)
    for key, delta in tv.items():
        torch.testing.assert_close(base[key] + delta, best[key], rtol=1e-5, atol=1e-6)
    assert entry["metrics"]["val/avg/score"] == pytest.approx(float(trainer.checkpoint_callbacks[0].best_model_score))


class TaskCounter(Callback):
    def __init__(self) -> None:
        self.order: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.order.append(batch["task"])


@pytest.mark.parametrize("sampling", ["proportional", "round_robin", "temperature"])
def test_two_task_fit(sampling, tiny_bert, make_datamodule, make_trainer, tmp_path):
    import dataclasses

    seed_everything(0)
    trec = dataclasses.replace(resolve_task("trec"), max_examples={"train": 64, "validation": 32, "test": 32})
    sst2 = dataclasses.replace(resolve_task("sst2"), max_examples={"train": 32, "validation": 32, "test": 32})
    dm = make_datamodule([trec, sst2], tokenizer=tiny_bert, sampling=sampling,
                         max_train_examples=None, max_eval_examples=None)
    module = make_module(tiny_bert, dm)
    counter = TaskCounter()
    trainer = make_trainer(max_epochs=1, callbacks=[counter, ExpertCollector(str(tmp_path / "experts"))])
    trainer.fit(module, dm)

    assert set(counter.order) == {"trec", "sst2"}
    if sampling == "proportional":
        assert counter.order.count("trec") == 4 and counter.order.count("sst2") == 2
    if sampling == "round_robin":
        assert counter.order[:4] in (["trec", "sst2"] * 2, ["sst2", "trec"] * 2)
    metrics = trainer.callback_metrics
    expected = (float(metrics["val/trec/accuracy"]) + float(metrics["val/sst2/accuracy"])) / 2
    assert float(metrics["val/avg/score"]) == pytest.approx(expected)
    [entry] = load_manifest(tmp_path / "experts")
    assert entry["name"] == "trec+sst2" and entry["tasks"] == ["trec", "sst2"]
    for task in ("trec", "sst2"):
        head = load_expert_head(tmp_path / "experts", entry, task)
        assert torch.equal(head.linear.weight, module.heads[task].linear.weight)


def test_data_task_without_a_head_fails_before_training(tiny_bert, make_datamodule, make_trainer, tmp_path):
    module = make_module(tiny_bert, make_datamodule(["trec"], tokenizer=tiny_bert))
    dm = make_datamodule(["trec", "sst2"], tokenizer=tiny_bert)
    collector = ExpertCollector(str(tmp_path / "experts"))
    with pytest.raises(ValueError, match=r"task\(s\) \['sst2'\] that the model has no head for"):
        make_trainer(max_epochs=1, callbacks=[collector]).fit(module, dm)
    assert not (tmp_path / "experts" / "trec").exists()
