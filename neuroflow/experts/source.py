"""`ManifestExperts`: the experts of an `ExpertSet` as the merge engine's `ExpertSource` (tensors in).

Task-vector and full-weight files are read lazily, one tensor at a time (`safe_open`), so a merge
holds O(T x largest tensor) of expert data; a LoRA adapter is turned into a dense task vector
(`B @ A * alpha / r`, by `neuroflow.experts.load_task_vector`) once, on first use, and kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from neuroflow.experts.expert_set import ExpertSet
from neuroflow.merging.sources import ExpertSource, SafetensorsFile, as_task_vector


class ManifestExperts(ExpertSource):
    """The experts of an `ExpertSet` as task vectors, for the merge engine.

    `task_vector` and full-weight files are read lazily, one tensor at a time; a LoRA adapter is
    turned into a dense task vector (`B @ A * alpha / r`) once, on first use, and kept. Tensors a
    LoRA expert did not adapt have a zero task vector.

    Args:
        experts: the checked experts.
        base: the pre-trained backbone weights (plain names), needed for `weights` and `lora`.
    """

    task_vectors = True

    def __init__(self, experts: ExpertSet, base: Mapping[str, Tensor]) -> None:
        self.experts = experts
        self.base = base
        self.tasks = list(experts.tasks)
        self._files: dict[int, SafetensorsFile] = {}
        self._dense: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def _format(self, i: int) -> str:
        return self.experts[self.tasks[i]].weights.format

    def _file(self, i: int) -> SafetensorsFile:
        if i not in self._files:
            self._files[i] = SafetensorsFile(self.experts[self.tasks[i]].weights.path)
        return self._files[i]

    def _lora(self, i: int) -> dict[str, Tensor]:
        if i not in self._dense:
            from neuroflow.experts.artifacts import load_task_vector

            expert = self.experts[self.tasks[i]]
            self._dense[i] = load_task_vector(expert.root, expert, dict(self.base))
        return self._dense[i]

    def keys(self, i: int) -> list[str]:
        if self._format(i) == "lora":
            return list(dict.fromkeys([*self.base, *self._lora(i)]))
        return list(self._file(i).keys())

    def meta(self, i: int, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        # Stored task vectors are float32 whatever the base dtype; `task_vector` converts them
        # straight to the compute dtype, so the engine's dtype check is against the base.
        if self._format(i) == "lora":
            shape, _ = super().meta(i, name)
        else:
            shape, _ = self._file(i).meta(name)
        return shape, self.base[name].dtype if name in self.base else torch.float32

    def get(self, i: int, name: str) -> Tensor:
        """Expert `i`'s task vector of tensor `name`, in the stored dtype."""
        fmt = self._format(i)
        if fmt == "lora":
            dense = self._lora(i)
            if name in dense:
                return dense[name]
            if name in self.base:
                return torch.zeros_like(self.base[name])
            raise KeyError(name)
        stored = self._file(i)[name]
        if fmt == "task_vector":
            return stored
        return stored.to(torch.float64 if stored.dtype == torch.float64 else torch.float32) - self.base[name]

    def task_vector(self, i: int, name: str, base: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
        if self._format(i) == "weights":
            return as_task_vector(self._file(i)[name], base, dtype, stored_is_task_vector=False, out=out)
        return as_task_vector(self.get(i, name), base, dtype, stored_is_task_vector=True, out=out)

    def describe(self, i: int) -> str:
        return self.experts[self.tasks[i]].describe()

    def statistics(self, i: int, kind: str) -> Mapping[str, Tensor] | None:
        """Expert `i`'s `kind` statistics (`<expert folder>/statistics/<kind>.safetensors`, written by
        `python -m neuroflow stats`), read lazily tensor by tensor; None when it has none.

        Args:
            i: expert index.
            kind: `regmean` or `fisher`.

        Raises:
            neuroflow.statistics.StatisticsMismatchError: the file was computed for another base,
                another task set or an earlier version of the expert.
        """
        # Imported here: the statistics package builds on the experts package, not the reverse.
        from neuroflow.statistics.files import KINDS, open_statistics

        if kind not in KINDS:
            return None
        return open_statistics(self.experts[self.tasks[i]], kind)

    def weights(self, i: int) -> dict[str, Tensor]:
        """Expert `i`'s full backbone weights (`theta_0 + tau_i`; stored weights as they are), for
        evaluating the expert itself."""
        fmt = self._format(i)
        names = set(self.keys(i))
        out = {}
        for name, base in self.base.items():
            if name not in names:
                out[name] = base
            elif fmt == "weights":
                out[name] = self._file(i)[name].to(base.dtype)
            else:
                dt = torch.float64 if base.dtype == torch.float64 else torch.float32
                out[name] = (base.to(dt) + self.get(i, name).to(dt)).to(base.dtype)
        return out
