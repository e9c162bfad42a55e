"""lm-evaluation-harness tasks scored on the in-memory model of `python -m neuroflow test|merge`.

Optional extra (`pip install -e ".[lm-eval]"`). `LmEvalCallback` among a test or merge config's
trainer callbacks (or a recipe's `evaluation.trainer`) wraps the tested model in lm-eval's `HFLM`
after the Trainer-scored tasks (no copy, no reload); each lm-eval task becomes a row of the same
report (`acc`, `acc_norm`, `exact_match`, `pass@1`, ...). Under DDP each process scores a shard
and lm-eval gathers the per-document results on rank 0 (the numbers of one process); FSDP-sharded
weights cannot be scored this way. Configuration: docs/llm.md.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from inspect import signature
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from neuroflow.evaluation.report import build_report, load_report
from neuroflow.hub import resolve_model_path

Scores = dict[str, tuple[dict[str, float], str]]  # row -> (metric -> value, primary metric)


def require_lm_eval() -> Any:
    """Import `lm_eval`, or say how to install it."""
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError('lm-evaluation-harness is not installed: pip install -e ".[lm-eval]"') from err
    return lm_eval


@dataclass
class LmEvalTask:
    """One lm-eval task of the config.

    Args:
        name: the lm-eval task or group name (`gsm8k`, `cmmlu`, a custom YAML's `task:`).
        metric: the report's primary metric; default the first metric lm-eval reports.
        filter: the lm-eval filter reported under the plain metric names (e.g. `flexible-extract`);
            the other filters' values get a `_<filter>` suffix. Default the first filter.
        row: the report row name; default `name` (must not clash with a Trainer-scored task).
        expert: the neuroflow task whose expert scores this task when the experts themselves are
            tested (`ExpertsModule`, the individual row); ignored for other models.
        num_fewshot: this task's few-shot count, overriding the callback's.
    """

    name: str
    metric: str | None = None
    filter: str | None = None
    row: str | None = None
    expert: str | None = None
    num_fewshot: int | None = None

    @property
    def row_name(self) -> str:
        return self.row or self.name


def as_lm_eval_tasks(tasks: list[str | dict[str, Any] | LmEvalTask]) -> list[LmEvalTask]:
    """Task names, mappings of `LmEvalTask` fields or tasks -> checked `LmEvalTask`s (unique rows)."""
    known = {f.name for f in fields(LmEvalTask)}
    out = []
    for i, item in enumerate(tasks or []):
        entry = asdict(item) if isinstance(item, LmEvalTask) else {"name": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"lm_eval tasks[{i}]: give a task name or a mapping with `name`, got {item!r}")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"lm_eval tasks[{i}] ({entry['name']}): unknown key(s) {unknown}; known: {sorted(known)}")
        out.append(LmEvalTask(**entry))
    rows = [t.row_name for t in out]
    if not out or len(set(rows)) != len(rows):
        raise ValueError(f"lm_eval tasks: give at least one task, each row once (rows {rows})")
    return out


def metrics_of(results: dict[str, Any], task: LmEvalTask) -> tuple[dict[str, float], str]:
    """(metric -> value, primary metric) of one task in `lm_eval.simple_evaluate`'s output, whose
    keys are `<metric>,<filter>` (`acc,none`, `exact_match,strict-match`); groups (`cmmlu`) report
    their aggregate under `groups`."""
    entry = (results.get("groups") or {}).get(task.name) or results["results"].get(task.name)
    if not entry:
        raise KeyError(f"lm-eval returned no results for task {task.name!r} (got {sorted(results['results'])})")
    by_filter: dict[str, dict[str, float]] = {}
    for key, value in entry.items():
        metric, _, flt = key.partition(",")
        if flt and not metric.endswith("_stderr") and isinstance(value, (int, float)) and not isinstance(value, bool):
            by_filter.setdefault(flt, {})[metric] = float(value)
    chosen = task.filter or next(iter(by_filter), None)
    if chosen not in by_filter:
        raise KeyError(f"lm-eval task {task.name!r}: filter {chosen!r} not among {sorted(by_filter)} ({sorted(entry)})")
    out = dict(by_filter[chosen])
    for flt, values in by_filter.items():
        if flt != chosen:
            out.update({f"{m}_{flt.replace('-', '_')}": v for m, v in values.items()})
    primary = task.metric or next(iter(by_filter[chosen]))
    if primary not in out:
        raise KeyError(f"lm-eval task {task.name!r}: metric {primary!r} not among {sorted(out)}")
    return out, primary


def make_task_manager(tasks: list[LmEvalTask], include_path: str | list[str] | None = None,
                      include_defaults: bool = True) -> Any:
    """lm-eval's task index (its own tasks unless `include_defaults` is False, plus `include_path`),
    checked to know every task of `tasks`; an unknown name is a ValueError naming close ones."""
    require_lm_eval()
    from difflib import get_close_matches
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    for task in tasks:
        if task.name not in manager.all_tasks:
            close = get_close_matches(task.name, manager.all_tasks, n=5)
            raise ValueError(f"lm_eval task {task.name!r} is unknown to lm-eval (include_path={include_path!r}, "
                             f"include_defaults={include_defaults}); close: {close}")
    return manager


def _make_lm(model: torch.nn.Module, tokenizer: Any, batch_size: int, model_args: dict[str, Any]) -> Any:
    """lm-eval's `HFLM` around the live model; data-parallel over a running torch.distributed group."""
    import torch.distributed as dist
    from lm_eval.models.huggingface import HFLM

    class _HFLM(HFLM):
        # HFLM shards work only when accelerate launched it; inside a Lightning DDP run the group
        # already exists, so rank, gathers and barriers come from torch.distributed directly.
        def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
            if self.world_size <= 1:
                return tensor
            parts = [torch.empty_like(tensor.reshape(-1)) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.reshape(-1))
            return torch.cat(parts)

        def barrier(self) -> None:
            if self.world_size > 1:
                dist.barrier()

    lm = _HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **model_args)
    if dist.is_available() and dist.is_initialized():
        lm._rank, lm._world_size = dist.get_rank(), dist.get_world_size()
    return lm


def run_lm_eval(model: torch.nn.Module, tokenizer: Any, tasks: list[str | dict[str, Any] | LmEvalTask],
                num_fewshot: int | None = None, limit: int | float | None = None, batch_size: int = 8,
                include_path: str | list[str] | None = None, include_defaults: bool = True,
                allow_code_execution: bool = False, model_args: dict[str, Any] | None = None,
                evaluate_kwargs: dict[str, Any] | None = None, task_manager: Any = None) -> Scores:
    """Score an in-memory Hugging Face causal LM on lm-eval tasks; row -> (metrics, primary metric)
    on rank 0, `{}` on the other ranks.

    Args:
        model: a `transformers.PreTrainedModel`, scored where it is (its device, its weights).
        tokenizer: its tokenizer (lm-eval gives it a pad token if it has none).
        tasks: task names, `LmEvalTask`s or mappings of their fields.
        num_fewshot: few-shot examples per prompt (None = each task's default).
        limit: examples per task (an int, or a fraction < 1); None = all.
        batch_size: requests per forward pass (and process).
        include_path: folder(s) of custom task YAMLs; include_defaults: also index lm-eval's own
            tasks (~20 s; False when every task is custom).
        allow_code_execution: let tasks that run generated code (HumanEval, MBPP) run it.
        model_args: more `HFLM` arguments; evaluate_kwargs: more `simple_evaluate` arguments.
        task_manager: a `make_task_manager` index to reuse; default a new one.
    """
    lm_eval = require_lm_eval()
    specs = as_lm_eval_tasks(tasks)
    if allow_code_execution:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # HF `evaluate`'s code_eval metric refuses otherwise
    manager = task_manager or make_task_manager(specs, include_path, include_defaults)
    lm = _make_lm(model, tokenizer, batch_size, dict(model_args or {}))
    scores: Scores = {}
    shot_of = {t.row_name: t.num_fewshot if t.num_fewshot is not None else num_fewshot for t in specs}
    for shot in dict.fromkeys(shot_of.values()):  # lm-eval takes one few-shot count per call
        group = [t for t in specs if shot_of[t.row_name] == shot]
        # Global RNG seeds stay untouched (None): scoring must not change a later merge or fit.
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[t.name for t in group], num_fewshot=shot, limit=limit, task_manager=manager,
            log_samples=False, bootstrap_iters=0, confirm_run_unsafe_code=allow_code_execution,
            random_seed=None, numpy_random_seed=None, torch_random_seed=None, **(evaluate_kwargs or {}))
        if results is not None:  # None on ranks other than 0
            scores.update({t.row_name: metrics_of(results, t) for t in group})
    return scores


def extend_report(report: dict[str, Any], scores: Scores, expert: dict[str, dict[str, float]],
                  source: dict[str, str], record: dict[str, Any], confusions: Any = None) -> dict[str, Any]:
    """`report` with the lm-eval rows added, rebuilt by `build_report` so averages cover every row.

    Args:
        report: a single-run report; scores: row -> (metrics, primary metric) from `run_lm_eval`.
        expert: row -> the experts' metrics on it (the normalizer); source: where they come from.
        record: stored as the report's `lm_eval` entry (settings, version, rows).
        confusions: the Trainer-scored tasks' confusion counts, passed on where `build_report` takes them.
    """
    old = report["tasks"]
    clash = sorted(set(scores) & set(old))
    if clash:
        raise ValueError(f"lm-eval rows {clash} clash with Trainer-scored tasks; set `row:` on those lm_eval tasks")
    metrics = {t: e["metrics"] for t, e in old.items()} | {r: m for r, (m, _) in scores.items()}
    primary = {t: e["primary_metric"] for t, e in old.items()} | {r: p for r, (_, p) in scores.items()}
    experts = {t: e["expert"] for t, e in old.items() if e.get("expert")} | expert
    sources = {t: e["expert_source"] for t, e in old.items() if e.get("expert_source")} | source
    kwargs = {"confusions": confusions} if confusions and "confusions" in signature(build_report).parameters else {}
    new = build_report(report["name"], metrics, primary, experts, sources, split=report["split"],
                       model=report["model"], **kwargs)
    for task, entry in old.items():  # fields only the original inputs could give (counts, intervals)
        new["tasks"][task].update({k: v for k, v in entry.items() if new["tasks"][task].get(k) is None})
    # What build_report derives is recomputed above; the rest (run, search, timings) carries over.
    new.update({k: v for k, v in report.items() if k not in new and k != "lm_eval"})
    new["lm_eval"] = record
    return new


class LmEvalCallback(Callback):
    """After `trainer.test`, score the tested model on lm-eval tasks; the rows join its report.

    The rows go into the report of the evaluation module (`MergeModule` under `merge`,
    `MergedModel`, `ExpertsModule`, `PretrainedModule`); other modules only log them. Task names
    are checked when the test starts, before anything is scored.

    Args:
        tasks, num_fewshot, limit, batch_size, include_path, include_defaults, allow_code_execution,
            model_args, evaluate_kwargs: as for `run_lm_eval`.
        reference: an experts report (the individual row's folder) whose rows of the same names
            normalize these scores; the experts' own row is normalized by itself.
        tokenizer: tokenizer path; default the tested model's backbone.
    """

    def __init__(self, tasks: list[str | dict[str, Any]], num_fewshot: int | None = None,
                 limit: int | float | None = None, batch_size: int = 8, include_path: str | list[str] | None = None,
                 include_defaults: bool = True, reference: str | None = None, tokenizer: str | None = None,
                 allow_code_execution: bool = False, model_args: dict[str, Any] | None = None,
                 evaluate_kwargs: dict[str, Any] | None = None) -> None:
        require_lm_eval()
        self.tasks = as_lm_eval_tasks(tasks)
        for path in [include_path] if isinstance(include_path, str) else include_path or []:
            if not Path(path).exists():
                raise FileNotFoundError(f"lm_eval include_path {path} does not exist")
        self.settings = dict(num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                             allow_code_execution=allow_code_execution, model_args=model_args or {},
                             evaluate_kwargs=evaluate_kwargs or {})
        self.include = (include_path, include_defaults)
        self.reference, self.tokenizer = reference, tokenizer
        self.scores: Scores = {}
        self._manager: Any = None
        self._scored: int | None = None  # id() of the scored module (a merge may also test the experts)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "test" or getattr(pl_module, "_lm_eval_callback", None) is self:
            return
        if self._manager is None:
            self._manager = make_task_manager(self.tasks, *self.include)
        build = getattr(pl_module, "build_stage_report", None)
        if callable(build):
            # The module builds its report itself (in on_test_end, or the merge command after
            # trainer.test): wrapping this one instance adds the rows wherever it is built.
            def with_lm_eval(stage: str = "test", *args: Any, **kwargs: Any) -> dict[str, Any]:
                report = build(stage, *args, **kwargs)
                return self.add_rows(report, pl_module) if stage == "test" and self.scores else report

            pl_module.build_stage_report = with_lm_eval  # type: ignore[method-assign]
        else:
            rank_zero_warn(f"lm-eval: {type(pl_module).__name__} writes no report; its lm-eval scores are only logged")
        pl_module._lm_eval_callback = self

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._scored not in (None, id(pl_module)):
            rank_zero_info(f"lm-eval: {type(pl_module).__name__} not scored (only the first tested model is)")
            return
        self._scored = id(pl_module)
        from transformers import AutoTokenizer

        hparams = getattr(pl_module, "hparams", {})
        path = self.tokenizer or hparams.get("text2text_tokenizer") or hparams.get("backbone")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(path)))
        swap = getattr(pl_module, "activate", None)  # the experts' row: one expert per task
        by_expert: dict[str | None, list[LmEvalTask]] = {}
        for task in self.tasks:
            by_expert.setdefault(task.expert if swap else None, []).append(task)
        self.scores = {}
        for expert, tasks in by_expert.items():
            if swap is not None:
                if expert not in pl_module.task_names:
                    raise ValueError(f"lm_eval tasks {[t.name for t in tasks]}: the experts' row needs `expert:`, "
                                     f"one of {pl_module.task_names} (got {expert!r})")
                swap(expert)
            model = getattr(pl_module, "hf_model", pl_module).eval()
            self.scores.update(run_lm_eval(model, tokenizer, tasks, task_manager=self._manager, **self.settings))
        for row, (metrics, primary) in self.scores.items():
            rank_zero_info(f"lm-eval {row}: {primary} = {metrics[primary]:.4f} {metrics}")

    def add_rows(self, report: dict[str, Any], pl_module: LightningModule | None = None) -> dict[str, Any]:
        """`report` with this callback's rows, normalized by `reference` (the experts: by themselves)."""
        expert: dict[str, dict[str, float]] = {}
        how, ref = "", Path(self.reference) if self.reference else None
        if getattr(pl_module, "activate", None) is not None:
            expert, how = {r: m for r, (m, _) in self.scores.items()}, "evaluated"
        elif ref is not None and (ref.is_file() or (ref / "report.json").is_file()):
            rows = load_report(ref)["tasks"]
            expert, how = {r: rows[r]["metrics"] for r in self.scores if r in rows}, f"report:{ref}"
        elif ref is not None:
            rank_zero_warn(f"lm-eval: no experts report at {ref} yet; the lm-eval rows are not normalized")
        record = {"version": require_lm_eval().__version__, "rows": list(self.scores),
                  "tasks": [asdict(t) for t in self.tasks], "include_path": self.include[0], **self.settings}
        confusions = (getattr(pl_module, "last_confusions", None) or {}).get("test")
        return extend_report(report, self.scores, expert, dict.fromkeys(expert, how), record, confusions)
