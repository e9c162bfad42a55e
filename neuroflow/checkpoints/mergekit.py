"""Read the common MergeKit YAML subset into a neuroflow merge, or say which keys cannot be honoured.

MergeKit 0.1.5 defines (`mergekit/merge_methods/generalized_task_arithmetic.py`, `sparsify.py`,
`linear.py`), with `delta_t = theta_t - theta_base` and per-model `weight` w_t, `density` d_t:

| merge_method | MergeKit | neuroflow |
|---|---|---|
| `task_arithmetic` | `base + lambda * sum_t w_t delta_t` (`/ sum_t w_t` if `normalize`) | `TaskArithmetic(scaling = lambda * w)` (`lambda / T` if normalize) |
| `ties` | per-tensor top-k magnitude (k = d * numel), sign of `sum_t w_t delta_t`, mean of agreeing (normalize default true) | `TIES(mask_rate = 1 - d, scope = "tensor", scaling = lambda)` |
| `dare_ties` | Bernoulli(d) keep, L1-norm rescale, sign election, sum (normalize default false) | `DARE(drop_rate = 1 - d, then = "ties", scaling = lambda)` only with `normalize: true` |
| `dare_linear` | Bernoulli(d) keep, L1-norm rescale, `sum_t w_t` | `DARE(drop_rate = 1 - d, then = "task_arithmetic", scaling = lambda * w)` |
| `linear` | `sum_t w_t theta_t / sum_t w_t` over the listed models | `WeightAveraging()`; `TaskArithmetic(scaling = 1 / n)` when the base is one of the n models |

The weights must be equal across experts (neuroflow methods weigh experts equally; with
`normalize` a common weight cancels). Known small differences, documented in docs/checkpoints.md:
MergeKit keeps exactly `int(d * numel)` entries (ties broken arbitrarily) where neuroflow keeps every
entry >= the k-th smallest magnitude; MergeKit elects `+` on a zero sum where neuroflow uses the
tensor-level fallback; DARE masks are random in both (MergeKit unseeded) and MergeKit rescales by
the L1-norm ratio instead of `1 / density` (equal in expectation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.merging import DARE, TIES, MergeMethod, TaskArithmetic, WeightAveraging

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear")
_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source", "name"}
_PARAMS = {"weight", "density", "normalize", "lambda", "rescale", "int8_mask"}
_DTYPES = ("bfloat16", "float16", "float32")
_DEFAULT_NORMALIZE = {"linear": True, "task_arithmetic": False, "ties": True, "dare_ties": False, "dare_linear": False}


@dataclass
class MergekitPlan:
    """A MergeKit config as neuroflow inputs.

    Attributes:
        base: the base model (folder or hub id).
        experts: the expert models, in the config's order (the base left out).
        method: the equivalent neuroflow method.
        dtype: the output dtype, or None.
        notes: how each MergeKit parameter was mapped (for the model card).
        config: the MergeKit config as read.
    """

    base: str
    experts: list[str]
    method: MergeMethod
    dtype: str | None
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def _load(config: str | os.PathLike | dict) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    import yaml

    path = Path(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: cannot read MergeKit config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a MergeKit config is a YAML mapping")
    return data


def _model_name(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("model"), str):
        return entry["model"]
    return None


def from_mergekit(config: str | os.PathLike | dict) -> MergekitPlan:
    """The neuroflow merge equivalent to a MergeKit YAML config.

    Args:
        config: the YAML file, or its parsed mapping.

    Raises:
        CheckpointError: naming every key (path) that cannot be honoured, and why.
    """
    data = _load(config)
    problems: list[str] = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{key} (not supported)")
    method_name = data.get("merge_method")
    if method_name not in METHODS:
        problems.append(f"merge_method: {method_name!r} (supported: {', '.join(METHODS)})")
    base = data.get("base_model")
    if not isinstance(base, str):
        problems.append("base_model (required: neuroflow merges experts into a base model)")
    if data.get("tokenizer_source") not in (None, "base"):
        problems.append(f"tokenizer_source: {data['tokenizer_source']!r} (only the base's tokenizer is written)")
    top = data.get("parameters") or {}
    if not isinstance(top, dict):
        problems.append("parameters (must be a mapping)")
        top = {}
    for key, value in top.items():
        if key not in _PARAMS:
            problems.append(f"parameters.{key} (not supported)")
        elif isinstance(value, (list, dict)):
            problems.append(f"parameters.{key} (per-layer or filtered values are not supported; use one number)")

    models, per_model, base_listed = [], [], False
    for index, entry in enumerate(data.get("models") or []):
        name = _model_name(entry)
        if name is None:
            problems.append(f"models[{index}].model (required, a string)")
            continue
        if "+" in name:
            problems.append(f"models[{index}].model: {name!r} (MergeKit's model+lora syntax; give the adapter folder as its own expert)")
        extra_keys = set(entry) - {"model", "parameters"} if isinstance(entry, dict) else set()
        problems += [f"models[{index}].{k} (not supported)" for k in sorted(extra_keys)]
        params = (entry.get("parameters") or {}) if isinstance(entry, dict) else {}
        for key, value in params.items():
            if key not in _PARAMS:
                problems.append(f"models[{index}].parameters.{key} (not supported)")
            elif isinstance(value, (list, dict)):
                problems.append(f"models[{index}].parameters.{key} (per-layer or filtered values are not supported)")
        if name == base:
            base_listed = True
            continue
        models.append(name)
        per_model.append((index, {**top, **params}))
    if not models:
        problems.append("models (no expert besides base_model)")

    def common(key: str, default: Any, required: bool = False) -> Any:
        values = {}
        for index, params in per_model:
            if key in params:
                values[index] = params[key]
            elif required:
                problems.append(f"models[{index}].parameters.{key} (required by MergeKit's {method_name})")
        distinct = set(v for v in values.values() if not isinstance(v, (list, dict)))
        if len(distinct) > 1:
            listed = ", ".join(f"models[{i}]: {v}" for i, v in values.items())
            problems.append(f"models[*].parameters.{key} (per-model values that differ: {listed}; neuroflow weighs experts equally)")
        return next(iter(distinct)) if distinct else default

    dtype = data.get("out_dtype", data.get("dtype"))
    if dtype is not None and dtype not in _DTYPES:
        problems.append(f"{'out_dtype' if 'out_dtype' in data else 'dtype'}: {dtype!r} (supported: {', '.join(_DTYPES)})")
    method, notes = None, []
    if method_name in METHODS and models:
        method, notes = _method(method_name, common, top, len(models), base_listed, problems)
    if problems:
        raise CheckpointError("cannot honour these MergeKit keys: " + "; ".join(problems))
    return MergekitPlan(base, models, method, dtype, notes, data)


def _method(name: str, common, top: dict, num: int, base_listed: bool, problems: list[str]) -> tuple[MergeMethod | None, list[str]]:
    normalize = bool(top.get("normalize", _DEFAULT_NORMALIZE[name]))
    lam = float(top.get("lambda", 1.0))
    weight = common("weight", None, required=name in ("task_arithmetic", "dare_linear"))
    density = common("density", 1.0) if name != "linear" and name != "task_arithmetic" else None
    if name in ("task_arithmetic", "linear") and "density" in top:
        problems.append(f"parameters.density (MergeKit's {name} does not sparsify)")
    if name.startswith("dare") and not top.get("rescale", True):
        problems.append("parameters.rescale: false (neuroflow's DARE always rescales the kept entries)")
    if name == "linear":
        if not normalize:
            problems.append("parameters.normalize: false (a weighted sum of models is not an average)")
            return None, []
        if base_listed:
            return TaskArithmetic(scaling=1.0 / (num + 1)), [f"linear over base + {num} models -> TaskArithmetic(scaling=1/{num + 1})"]
        return WeightAveraging(), ["linear with equal weights -> WeightAveraging"]
    w = 1.0 if weight is None else float(weight)
    if name == "task_arithmetic":
        scaling = lam / num if normalize else lam * w
        return TaskArithmetic(scaling=scaling), [f"task_arithmetic weight {w}, lambda {lam}, normalize {normalize} -> scaling {scaling}"]
    if density is None or not 0.0 < float(density) <= 1.0:
        problems.append(f"parameters.density: {density!r} (must be in (0, 1])")
        return None, []
    drop = 1.0 - float(density)
    if name == "ties":
        if not normalize:
            problems.append("parameters.normalize: false (MergeKit then sums the agreeing entries; neuroflow's TIES averages them)")
            return None, []
        return TIES(mask_rate=drop, scope="tensor", scaling=lam), [f"ties density {density} -> TIES(mask_rate={drop}, scope='tensor', scaling={lam}) (weights cancel under normalize)"]
    if name == "dare_ties":
        if not normalize:
            problems.append("parameters.normalize (MergeKit's dare_ties default false sums the agreeing entries; neuroflow's "
                            "DARE(then='ties') averages them: set normalize: true)")
            return None, []
        return DARE(drop_rate=drop, then="ties", scaling=lam), [f"dare_ties density {density} -> DARE(drop_rate={drop}, then='ties', scaling={lam})"]
    scaling = lam / num if normalize else lam * w
    return DARE(drop_rate=drop, then="task_arithmetic", scaling=scaling), [f"dare_linear density {density} -> DARE(drop_rate={drop}, scaling={scaling})"]
