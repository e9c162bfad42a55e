"""The statistics files: `<expert folder>/statistics/<kind>.safetensors`, written and checked.

One file per expert and kind (`regmean`: the Gram matrix `X^T X` of every linear layer's inputs,
keyed by the layer's weight name; `fisher`: the diagonal Fisher of every backbone parameter, same
names and shapes). The safetensors header carries what the statistics were computed from (base
fingerprint, tasks, examples, rows, batches, neuroflow version), so a reader can refuse statistics
of another base or another task set before any merge work, and read the tensors lazily.

The files live inside the expert's own folder, so re-fitting an expert (which replaces its folder)
removes statistics that no longer describe it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuroflow.atomic import atomic_write
from neuroflow.merging.expert_statistics import STATS_COMMAND
from neuroflow.merging.sources import SafetensorsFile
from neuroflow.merging.validation import MergeInputError

if TYPE_CHECKING:
    from torch import Tensor

    from neuroflow.experts.expert import Expert

FORMAT = "neuroflow-statistics"
FORMAT_VERSION = "1"
KINDS = ("regmean", "fisher")
FOLDER = "statistics"


class StatisticsMismatchError(MergeInputError):
    """Statistics that do not describe the expert they sit next to (another base, another task
    set, an earlier version of the expert, another kind, or not a statistics file)."""


def statistics_path(expert: Expert, kind: str) -> Path:
    """Where expert `expert`'s statistics of `kind` live.

    Args:
        expert: the expert.
        kind: `regmean` or `fisher`.
    """
    check_kind(kind)
    return expert.folder / FOLDER / f"{kind}.safetensors"


def check_kind(kind: str) -> str:
    """`kind` itself, or ValueError naming the known kinds."""
    if kind not in KINDS:
        raise ValueError(f"unknown statistics kind {kind!r}; known kinds: {list(KINDS)}")
    return kind


def recompute_hint(expert: Expert, kind: str) -> str:
    """The command that (re)computes `kind` statistics of the experts directory of `expert`."""
    return f"`{STATS_COMMAND} --experts {expert.root} --data <data config> --kinds {kind}`"


def expert_metadata(expert: Expert, kind: str) -> dict[str, str]:
    """The header fields that tie a statistics file to its expert (checked when read)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "expert": expert.name,
        "tasks": json.dumps(list(expert.tasks)),
        "base_model": expert.base_model,
        "base_fingerprint": expert.base_fingerprint,
        "expert_created_at": expert.created_at or "",
    }


def write_statistics(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> int:
    """Write `tensors` with `metadata` (values JSON-encoded unless strings) atomically; returns the
    file size in bytes.

    Args:
        path: the `.safetensors` file (its folder is created).
        tensors: name -> tensor (moved to the CPU, made contiguous).
        metadata: header fields; safetensors headers hold strings only.
    """
    from safetensors.torch import save_file

    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=header))
    return Path(path).stat().st_size


class StatisticsFile(SafetensorsFile):
    """A statistics file read lazily (tensor by tensor), with its parsed header.

    Args:
        path: the `.safetensors` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.metadata: dict[str, str] = dict(self._file.metadata() or {})

    def field(self, key: str, default: Any = None) -> Any:
        """Header field `key`, JSON-decoded where it parses."""
        raw = self.metadata.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def rows(self, name: str) -> int | None:
        """`regmean`: how many input rows the Gram of `name` sums over (None for other kinds)."""
        rows = self.field("rows") or {}
        return rows.get(name) if isinstance(rows, dict) else None


def open_statistics(expert: Expert, kind: str) -> StatisticsFile | None:
    """Expert `expert`'s statistics of `kind`, checked against it; None when it has none.

    Args:
        expert: the expert (its folder, base fingerprint, tasks and creation time are compared).
        kind: `regmean` or `fisher`.

    Raises:
        StatisticsMismatchError: the file is not a neuroflow statistics file, holds another kind,
            or was computed for another base, another task set or an earlier version of the expert
            (the message names the file, both values and the command that recomputes them).
    """
    path = statistics_path(expert, kind)
    if not path.is_file():
        return None
    try:
        found = StatisticsFile(path)
    except Exception as err:  # safetensors raises its own error types on a damaged header
        raise StatisticsMismatchError(f"{path}: cannot read the statistics file of expert {expert.name!r}: {err}; "
                                      f"recompute it with {recompute_hint(expert, kind)}") from err
    hint = recompute_hint(expert, kind)
    if found.metadata.get("format") != FORMAT:
        raise StatisticsMismatchError(f"{path}: not a neuroflow statistics file (no format={FORMAT!r} in its "
                                      f"header); recompute it with {hint}")
    checks = [
        ("kind", found.metadata.get("kind"), kind, "holds statistics of another kind"),
        ("base_fingerprint", found.metadata.get("base_fingerprint"), expert.base_fingerprint,
         f"was computed on another base model ({found.metadata.get('base_model')!r})"),
        ("tasks", found.field("tasks"), list(expert.tasks), "was computed for another task set"),
    ]
    created = found.metadata.get("expert_created_at")
    if created and expert.created_at:
        checks.append(("expert_created_at", created, expert.created_at,
                       "was computed for an earlier version of this expert (it was fitted again since)"))
    for key, got, want, what in checks:
        if got != want:
            raise StatisticsMismatchError(
                f"{path} {what}: {key} {got!r}, but expert {expert.name!r} has {want!r}; refusing to use "
                f"these '{kind}' statistics; recompute them with {hint}"
            )
    return found
