"""The output folder: a temporary sibling that becomes `OUT` only when complete.

A merge writes into `.OUT.tmp-<pid>-<random>` next to `OUT` and renames it into place at the end
(`neuroflow.atomic.replace_dir`), so a killed merge never leaves a half-written `OUT`. The pid in the
name lets the next run find temporaries whose process is gone and delete them. The folder gets what
`from_pretrained` needs besides the weights: `config.json` (dtype set to the output dtype),
`generation_config.json` and the tokenizer files, copied from the base.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from neuroflow.atomic import replace_dir

COPIED_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "spiece.model", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
)


def finish(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the complete temporary folder to `out` (an existing `out` is replaced).

    Args:
        tmp: from `neuroflow.atomic.make_temp_dir`.
        out: the final folder.
    """
    replace_dir(tmp, out)


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16, as config.json spells dtypes."""
    return str(dtype).removeprefix("torch.")


def write_config(tmp: Path, config: dict[str, Any], dtype: torch.dtype, overrides: dict[str, Any] | None = None) -> None:
    """`config.json` of the output: the base's, with the output dtype (both spellings
    transformers reads: `dtype`, and `torch_dtype` of older versions) and any overrides.

    Args:
        tmp: the output folder.
        config: the base's config.json.
        dtype: the dtype of the written floating-point weights.
        overrides: extra keys (e.g. `vocab_size` under shared_rows).
    """
    config = dict(config)
    config["torch_dtype"] = dtype_name(dtype)
    if "dtype" in config or "transformers_version" not in config or not str(config["transformers_version"]).startswith("4."):
        config["dtype"] = dtype_name(dtype)
    config.update(overrides or {})
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_side_files(source: Path, tmp: Path, names: tuple[str, ...] = COPIED_FILES) -> list[str]:
    """Copy tokenizer and generation files that exist in `source` into `tmp`.

    Args:
        source: the folder to copy from (the base, or the expert that added tokens).
        tmp: the output folder.
        names: the file names to copy.

    Returns:
        the names copied.
    """
    copied = []
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)  # new file: mode from the umask
            copied.append(name)
    return copied
