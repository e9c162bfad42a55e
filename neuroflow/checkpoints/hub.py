"""Hub ids as checkpoints: small files and safetensors headers first, the weights only after the
checks passed, so a mismatch is reported before any large download.

`org/name` (optionally `org/name@revision`) that is not a local path is a hub id. Phase one
downloads `config.json`, indexes, tokenizer and adapter files (`snapshot_download` with
`allow_patterns`) and reads every shard's header remotely (`get_safetensors_metadata`, HTTP range
requests); phase two downloads the weights into the same snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.checkpoints.folder import read_json
from neuroflow.checkpoints.safetensors_io import DTYPES

SMALL_FILES = [
    "config.json", "generation_config.json", "*.index.json", "adapter_config.json", "tokenizer*", "vocab*",
    "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.model", "chat_template*", "README.md",
]
MODEL_WEIGHTS = ["*.safetensors"]
ADAPTER_WEIGHTS = ["adapter_model.safetensors", "adapter_model.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_hub_id(ref: str) -> bool:
    """Whether `ref` names a hub repository rather than a local folder."""
    return not Path(ref).exists() and bool(_HUB_ID.match(ref))


def split_ref(ref: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`)."""
    repo, _, revision = ref.partition("@")
    return repo, revision or None


def _hub_error(ref: str, err: Exception) -> CheckpointError:
    return CheckpointError(f"hub id {ref!r}: cannot be resolved ({type(err).__name__}: {err}); "
                           "check the name, your token, or HF_HUB_OFFLINE")


def fetch(ref: str, patterns: list[str]) -> Path:
    """The local snapshot folder of hub id `ref` holding the files matching `patterns`.

    Args:
        ref: `org/name[@revision]`.
        patterns: `allow_patterns` of `snapshot_download`.
    """
    from huggingface_hub import snapshot_download

    repo, revision = split_ref(ref)
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except Exception as err:  # network, auth, offline, missing repo: all mean "cannot resolve"
        raise _hub_error(ref, err) from None


class RemoteHeaders:
    """A hub model's names, shapes and dtypes from its safetensors headers, before its download.

    Args:
        ref: `org/name[@revision]`.
        small: the snapshot folder holding its small files (`fetch(ref, SMALL_FILES)`).

    Attributes:
        path: the snapshot folder.
        config: its `config.json`.
        revision: the commit the snapshot resolved to (its folder name).
    """

    def __init__(self, ref: str, small: Path) -> None:
        from huggingface_hub import get_safetensors_metadata

        repo, revision = split_ref(ref)
        self.ref, self.path = ref, small
        self.revision = small.name
        self.config: dict[str, Any] = read_json(small / "config.json") if (small / "config.json").is_file() else {}
        try:
            found = get_safetensors_metadata(repo, revision=revision)
        except Exception as err:
            raise _hub_error(ref, err) from None
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._file: dict[str, str] = {}
        for file, header in found.files_metadata.items():
            for name, info in header.tensors.items():
                if info.dtype not in DTYPES:
                    raise CheckpointError(f"{ref}/{file}: tensor {name!r} has unsupported dtype {info.dtype}")
                self._meta[name] = (tuple(info.shape), DTYPES[info.dtype])
                self._file[name] = file

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __contains__(self, name: object) -> bool:
        return name in self._meta

    def __len__(self) -> int:
        return len(self._meta)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._meta[name]

    def file_of(self, name: str) -> str:
        return f"{self.ref}/{self._file[name]}"
