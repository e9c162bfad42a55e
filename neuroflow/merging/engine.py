"""The merge engine: validate, gather statistics, then merge tensor by tensor.

```python
merged = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.8), routing=None, exclude=None)
stream = merge_stream(base, experts, TIES(), threads=2)   # validated, statistics gathered
for name, tensor in stream: ...                           # merged tensors in base order
for piece in stream.pieces(): ...                         # or whole tensors and row blocks (stream.py)
```
The engine never holds more than one unit's task vectors at a time per thread, plus the next unit's
while it is prefetched (see `threads.py` for how threads are used), so experts can be streamed from disk. A unit is a tensor or, for tensors larger than
`task_vectors.ROW_BLOCK_BYTES` whose method is `separable` for their route, a block of rows read
alone: O(T x max(block, largest whole-tensor unit)) extra memory, whatever the vocabulary size. The
result has the keys, shapes and dtypes of `base` (and its tensors' devices; the arithmetic runs on
the CPU); tensors that are not merged (integer/bool, excluded) are copies of the base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.buffers import StreamTaskVectors as _StreamTaskVectors
from neuroflow.merging.recycler import Recycler as _Recycler
from neuroflow.merging.routing import Route, resolve_routing
from neuroflow.merging.sources import DictExperts, ExpertSource
from neuroflow.merging.stream import MergeStream, Piece, Progress  # noqa: F401 (Piece: re-exported)
from neuroflow.merging.threads import intra_op_threads, workers_for
from neuroflow.merging.validation import validate_inputs

# Free buffers kept for the statistics passes: a few blocks and their base copies.
STATS_POOL_BYTES = 32 << 20


@dataclass
class MergeResult:
    """What a merge produced.

    Attributes:
        state_dict: the merged weights (`theta`), same keys, shapes and dtypes as the base.
        info: method name, hyper-parameters, statistics (e.g. `sigma_per_task`, `lambda_2`) and
            routing counts, JSON-friendly, for merge cards.
    """

    state_dict: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def merge_stream(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
    prefetch: bool = True,
    recycle: bool = True,
) -> MergeStream:
    """Validate the inputs and gather the method's statistics; the returned stream then yields the
    merged tensors one at a time (`(name, tensor)` in base order), so they can be written as they
    come without ever holding the merged model.

    Args:
        base: the pre-trained weights `theta_0` (a dict, or a lazy mapping such as `SafetensorsFile`).
        experts: the fine-tuned weights of each expert (mappings), or an `ExpertSource`.
        method: the merge method (e.g. `NeuroMerging(mask_rate=0.8)`).
        routing: name -> route; see `resolve_routing`.
        exclude: exact names or glob patterns of tensors copied from the base instead of merged.
        progress: called once per tensor of the base after it is yielded: a callable taking the
            name, or an object with `update(n)` such as `tqdm(total=len(base))`.
        threads: torch intra-op threads for the maths (None: torch's current setting).
        prefetch: read the next tensor's task vectors in a background thread while the current
            one is merged (only when they fit in `PREFETCH_BYTES`, and only when `threads` leaves a
            core free for it).
        recycle: reuse the buffers of task-vector stacks and base copies for later tensors that
            fit in them (at most (4T + 6) x the largest unit is kept free, and 32 MiB for the
            statistics passes); a buffer the method still references is never reused.

    Raises:
        MergeInputError: inputs that cannot be merged (names, shapes, dtypes, routes: before any
            statistics); NaN/Inf input values, where they are first read (the statistics pass, or
            the merge of that tensor, before it is yielded); a merged tensor with NaN/Inf values.
    """
    if not isinstance(method, MergeMethod):
        raise TypeError(f"method must be a MergeMethod, got {type(method).__name__}")
    # Counted before `intra_op_threads`, which may hold torch to one thread (threads=None would
    # then count 1): both passes use the same number of workers.
    workers = workers_for(threads, prefetch)
    with torch.no_grad(), intra_op_threads(threads):
        source = experts if isinstance(experts, ExpertSource) else DictExperts(list(experts))
        routes = resolve_routing(base, routing, exclude)
        validate_inputs(base, source, routes, exclude)
        task_vectors = _StreamTaskVectors(base, source, routes)
        task_vectors.workers = workers
        if recycle:
            # Statistics passes go block by block (`TaskVectors.chunks`: T x 2^18 values): a small
            # pool keeps their buffers from being faulted in afresh for every block.
            task_vectors.recycler = _Recycler(STATS_POOL_BYTES)
        stats = method.prepare(task_vectors)
    return MergeStream(base, source, method, routes, task_vectors, stats, progress, threads, prefetch, recycle)


def merge(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> MergeResult:
    """Merge experts into the base with `method`; returns the weights and a JSON-friendly info.

    Args:
        base: the pre-trained weights `theta_0` (a dict, or a lazy mapping such as `SafetensorsFile`).
        experts: the fine-tuned weights of each expert (mappings), or an `ExpertSource`.
        method: the merge method (e.g. `NeuroMerging(mask_rate=0.8)`).
        routing: name -> route; see `resolve_routing`.
        exclude: exact names or glob patterns of tensors copied from the base instead of merged.
        progress: called once per tensor of the base after it is done: a callable taking the name,
            or an object with `update(n)` such as `tqdm(total=len(base))`.
        threads: torch intra-op threads for the maths (None: torch's current setting).
    """
    stream = merge_stream(base, experts, method, routing, exclude, progress, threads, prefetch=False)
    return MergeResult(dict(stream), stream.info)


def merge_state_dicts(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, Tensor]:
    """The merged weights `theta` (same keys, shapes and dtypes as `base`); see `merge` for the info.

    Args:
        base: the pre-trained weights `theta_0`.
        experts: the fine-tuned weights of each expert, or an `ExpertSource`.
        method: the merge method.
        routing: name -> route; missing names follow the shape rule.
        exclude: exact names or glob patterns of tensors copied from the base.
        progress: per-tensor hook (callable taking the name, or tqdm-like `update`).
        threads: torch intra-op threads for the maths (None: torch's current setting).
    """
    return merge(base, experts, method, routing, exclude, progress, threads).state_dict
