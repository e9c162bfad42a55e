"""Shared fixtures: tiny offline models (built once per test session) and the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from neuroflow.testing import build_tiny_bert, build_tiny_t5, build_tiny_vit  # noqa: E402

# The test models are tiny: on a shared CPU, several intra-op threads cost far more in
# synchronisation than they gain (40x slower measured under load).
torch.set_num_threads(int(os.environ.get("NEUROFLOW_TEST_THREADS", "1")))

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny BERT encoder with its WordPiece tokenizer."""
    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny T5 encoder-decoder with its Unigram tokenizer."""
    return str(build_tiny_t5(tmp_path_factory.mktemp("tiny_t5")))


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny ViT (32 x 32, one channel) with its image processor."""
    return str(build_tiny_vit(tmp_path_factory.mktemp("tiny_vit")))


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    """`../shared/data` (the real datasets); tests that need it skip when it is absent."""
    path = Path(os.environ.get("NEUROFLOW_DATA_DIR", SHARED_DATA)).resolve()
    if not path.is_dir():
        pytest.skip(f"real data directory {path} not found")
    return str(path)


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A per-session cache for tokenized splits (keeps the user's cache untouched)."""
    return str(tmp_path_factory.mktemp("neuroflow_cache"))


@pytest.fixture
def make_datamodule(shared_data_dir: str, data_cache_dir: str):
    """Build a small `MultiTaskDataModule` on the real data: `make_datamodule(tasks, tokenizer, **kw)`."""
    from neuroflow.data import MultiTaskDataModule

    def make(tasks: list, tokenizer: str | None = None, **kwargs):
        settings = dict(data_dir=shared_data_dir, tokenizer=tokenizer, max_length=32, batch_size=16,
                        eval_batch_size=64, max_train_examples=64, max_eval_examples=32,
                        cache_dir=data_cache_dir, seed=0)
        settings.update(kwargs)
        return MultiTaskDataModule(tasks, **settings)

    return make


@pytest.fixture
def make_trainer(tmp_path: Path):
    """A quiet CPU `NeuroTrainer` writing under the test's tmp dir."""
    from neuroflow.commands.trainer import NeuroTrainer

    def make(**kwargs):
        settings = dict(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
        settings.update(kwargs)
        return NeuroTrainer(**settings)

    return make
