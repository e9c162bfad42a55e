"""`MergeMethod`: the interface every merge method implements.

A method is configured by its constructor (the signature is the YAML schema; subclasses are found by
`class_path`, so registering a method is importing it), may run statistics passes over the task
vectors in `prepare`, and then returns the update `delta` of one tensor at a time in
`merge_tensor`. The engine adds `delta` to the base and casts back to the base dtype.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from neuroflow.merging.routing import Route
from neuroflow.merging.steps import TieFallback
from neuroflow.merging.task_vectors import TaskVectors


class MergeMethod(ABC):
    """Base class of the merge methods (subclass it and refer to it by `class_path`).

    Subclasses set `name`, store every constructor argument under an attribute of the same name
    (that is what `hparams()` reports for merge cards), implement `merge_tensor`, and override
    `prepare` when they need statistics over the whole model first.
    """

    name: ClassVar[str] = "merge_method"
    #: Constructor arguments that only scale the update (`delta` is linear in each of them, the
    #: others fixed). A validation search over them reuses `basis()` merges instead of re-merging.
    linear_hparams: ClassVar[tuple[str, ...]] = ()
    #: The method reads statistics of the experts' training data (Gram matrices, Fishers), not only
    #: their weights: reports label its results "uses training data", since that is a different
    #: (stronger) setting than data-free merging.
    uses_data: ClassVar[bool] = False
    #: The kind of per-expert statistics it reads through `ExpertSource.statistics(i, kind)`
    #: ("regmean", "fisher"), or None.
    statistics_kind: ClassVar[str | None] = None

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, as recorded in merge cards."""
        params = inspect.signature(type(self).__init__).parameters
        return {
            key: getattr(self, key)
            for key, p in params.items()
            if key != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and hasattr(self, key)
        }

    def with_params(self, **params: Any) -> MergeMethod:
        """A new instance of this class with some hyperparameters replaced."""
        return type(self)(**{**self.hparams(), **params})

    def basis(self) -> list[MergeMethod]:
        """Methods whose updates `b_k` span this method's updates over `linear_hparams`: the update
        of any setting of them is `sum_k c_k * b_k` with `c = coefficients(...)`.

        The default basis sets one linear hyperparameter to 1 and the others to 0.
        """
        names = self.linear_hparams
        return [self.with_params(**{k: float(k == j) for k in names}) for j in names]

    def coefficients(self, basis_info: list[dict[str, Any]]) -> list[float]:
        """This method's coefficients on `basis()`.

        Args:
            basis_info: the engine's info of each basis merge (statistics such as an automatic
                coefficient the basis was merged with).
        """
        return [float(getattr(self, k)) for k in self.linear_hparams]

    def group_key(self) -> tuple:
        """What candidates must share to share a basis: the class and the non-linear hyperparameters."""
        fixed = sorted((k, repr(v)) for k, v in self.hparams().items() if k not in self.linear_hparams)
        return (type(self).__module__, type(self).__qualname__, *fixed)

    def prepare(self, task_vectors: TaskVectors) -> dict[str, Any]:
        """Statistics gathered in passes over all merged tensors before merging any of them.

        Args:
            task_vectors: streamed access to the task vectors of every merged tensor.

        Returns:
            a dict handed to every `merge_tensor` call and reported (JSON-friendly view) in the info.
        """
        return {}

    @abstractmethod
    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        """The update `delta` of one tensor (`theta = theta_0 + delta`).

        Args:
            name: the tensor's name (e.g. for seeding).
            base: `theta_0[name]` in the compute dtype.
            task_vectors: the stacked task vectors, shape `(T, *base.shape)`, compute dtype.
            route: how the tensor is routed ("neuron" with its axis, or "point").
            stats: what `prepare` returned.
        """

    def separable(self, route: Route) -> bool:
        """Whether the update of a tensor routed `route` can be computed a block of rows (first
        dimension) at a time with `merge_rows`, giving exactly the rows of `merge_tensor`'s
        update. The engine then streams large tensors (embeddings, LM heads) in row blocks, so
        memory stays (T + 2) x one block. False unless a method says so.

        Args:
            route: the tensor's route.
        """
        return False

    def merge_rows(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any], tie: TieFallback) -> Tensor:
        """The update of one row block of a tensor (only called where `separable(route)`).

        Args:
            name: the tensor's name.
            base: rows `start:stop` of `theta_0[name]`, compute dtype.
            task_vectors: the same rows of the stacked task vectors, shape `(T, stop - start, ...)`.
            route: the tensor's route.
            stats: what `prepare` returned.
            tie: the tensor-wide sign-election tie fallback across blocks (see `TieFallback`), for
                methods whose sign election spans the whole tensor. A method that sets
                `tie.positions` must be element-wise given the fallback: the engine merges those
                entries again alone, as a `(k,)` base and `(T, k)` task values.
        """
        return self.merge_tensor(name, base, task_vectors, route, stats)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"
