"""`python -m neuroflow merge`: (search ->) merge -> save -> test -> report, into one output directory.

The steps are the experts' `Merger` (a `MergedWeights` per method), `MergeModule` (evaluation),
`neuroflow.merging.search` (the grid) and `neuroflow.evaluation.report` (the one report writer).

Everything is written into a temporary sibling directory (`neuroflow.atomic.make_temp_dir`, named
after the process, so that the next run deletes what a killed merge left) that is swapped into
place when the merged model is complete, so a failure never leaves a partial output directory (and
a previous result at the same place survives until the new one is complete). The merged model is
the product: when only its evaluation fails, it is still put in place, with the failure recorded
in `merge_card.json` (`evaluation`) and `evaluation_error.txt`, and the command fails with
`MergeEvaluationError`. Under DDP every process runs the same sequence (merging is
deterministic), only rank 0 writes.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

import neuroflow
from neuroflow.atomic import atomic_write_json, atomic_write_text, make_temp_dir, replace_dir
from neuroflow.evaluation.reference import REFERENCE_HELP, expert_reference
from neuroflow.evaluation.merge_module import MergeModule
from neuroflow.evaluation.merged_model import save_merged
from neuroflow.experts.merger import MergedWeights
from neuroflow.hub import model_reference
from neuroflow.evaluation.report import (
    metrics_from_logged,
    render_markdown,
    write_report,
)
from neuroflow.merging import basis as basis_merge
from neuroflow.merging.search import expand_grid, grid_search, with_params

EVALUATION_ERROR = "evaluation_error.txt"


class MergeEvaluationError(RuntimeError):
    """The merged model was saved, but scoring it failed (see `evaluation_error.txt` next to it)."""


def default_output_dir(model: MergeModule) -> Path:
    """`runs/merged/<method>` (`<method>_search` with a validation search)."""
    return Path("runs") / "merged" / model.report_name()


def _primary(model: MergeModule, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {t: metrics[t][model.task_specs[t].primary_metric] for t in model.task_names}


def run_search(trainer: Trainer, model: MergeModule, datamodule: LightningDataModule, reference: str) -> dict[str, Any]:
    """Score every candidate of `model.search` on validation data; leaves the best as `model.method`.

    Candidates are scored grouped by their non-linear hyperparameters, so that with
    `model.fast_search` each group's basis merges are made once (see `basis_merge`); the record
    and the tie-break follow the grid order.
    """
    base_method = model.method
    candidates = expand_grid(model.search or {})
    ref_metrics, ref_source = expert_reference(trainer, model, datamodule, "val", reference)
    fast = model.fast_search and basis_merge.supports(base_method, model.search or {})
    basis = basis_merge.BasisMerges(model.merger.merge_fn, model.base_state()) if fast else None
    methods = [with_params(base_method, params) for params in candidates]
    order = sorted(range(len(candidates)), key=lambda i: repr(basis_merge.BasisMerges.group_key(methods[i])))
    scores: dict[int, dict[str, float]] = {}
    for n, i in enumerate(order):
        if basis is not None:
            model.use(MergedWeights(basis.weights(methods[i]), methods[i], {"search_candidate": candidates[i]}))
        else:
            model.merge(methods[i])
        trainer.validate(model, datamodule=datamodule, verbose=False)
        scores[i] = _primary(model, metrics_from_logged(model.last_metrics["val"], "val", model.task_names))
        rank_zero_info(f"search {n + 1}/{len(candidates)} {candidates[i]}: val {scores[i]}")
    del basis

    def score(params: dict[str, Any]) -> dict[str, float]:
        return scores[candidates.index(params)]

    result = grid_search(candidates, score, _primary(model, ref_metrics))
    model.method = with_params(base_method, result.best["params"])
    rank_zero_info(f"search: best {result.best['params']} (avg normalized val {result.best['score']:.4f})")
    return {**result.as_dict(), "grid": model.search, "fast": fast, "reference": ref_metrics,
            "reference_source": ref_source}


# LightningCLI saves the run's config.yaml into trainer.default_root_dir, which configs point at
# the output directory: it may already be there (alone) and is kept with the result.
_CLI_CONFIG = "config.yaml"


def _replaceable(path: Path) -> bool:
    """An earlier merge result, or what a CLI run left before its merge finished."""
    if not path.is_dir():
        return False
    return (path / "merge_card.json").is_file() or all(p.name == _CLI_CONFIG for p in path.iterdir())


def _swap_into_place(tmp: Path, final: Path) -> None:
    # The CLI writes its config.yaml into the final folder before the merge finishes; keep it.
    if (final / _CLI_CONFIG).is_file() and not (tmp / _CLI_CONFIG).exists():
        os.replace(final / _CLI_CONFIG, tmp / _CLI_CONFIG)
    replace_dir(tmp, final)


def _progress_bar(model: MergeModule, enabled: bool) -> Any:
    from neuroflow.progress import progress

    return progress(total=len(model.base_state()), desc=f"merging ({model.method.name})", unit="tensor",
                    enabled=enabled)


def run_merge(
    trainer: Trainer,
    model: LightningModule,
    datamodule: LightningDataModule | None = None,
    evaluate: bool = True,
    output_dir: str | None = None,
    reference: str = "manifest",
    analyze: bool = True,
) -> dict[str, Any]:
    """The `merge` command; see `NeuroTrainer.merge` for the arguments. Returns the merge card
    (with the report under `report` when evaluated)."""
    if not isinstance(model, MergeModule):
        raise TypeError(
            f"`merge` needs a neuroflow.evaluation.MergeModule as the model, got {type(model).__name__} "
            "(set `model: {class_path: neuroflow.evaluation.MergeModule, init_args: {experts: ..., method: ...}}`)"
        )
    if (evaluate or model.search) and datamodule is None:
        raise ValueError("`merge` needs `data` to evaluate or to run a validation search (or pass --evaluate false)")
    if reference not in ("manifest", "evaluate") and not Path(reference).exists():
        raise FileNotFoundError(f"--reference {reference}: no such report (expected {REFERENCE_HELP})")
    final = Path(output_dir) if output_dir else default_output_dir(model)
    if final.exists() and not _replaceable(final):
        # Only an earlier merge result is replaced; anything else at that path is the user's.
        raise FileExistsError(f"--output_dir {final} exists and is not a merged model directory; choose another path")
    # Before any merge work: the evaluation data must be tokenized by the experts' own tokenizer.
    if datamodule is not None:
        model.check_data_tokenizer(datamodule)
    is_zero = trainer.is_global_zero
    tmp = make_temp_dir(final) if is_zero else None
    timings: dict[str, float] = {}
    try:
        search_record = None
        if model.search:
            start = time.perf_counter()
            search_record = run_search(trainer, model, datamodule, reference)
            timings["search_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        bar = _progress_bar(model, is_zero and trainer.progress_bar_callback is not None)
        info = model.merge(progress=bar)
        bar.close()
        timings["merge_s"] = round(time.perf_counter() - start, 3)
        base = model.expert_set.base_model
        card = {
            "name": model.report_name(),
            "method": {"class_path": info["class_path"], "init_args": model.method.hparams()},
            "merge_info": info,
            "search": search_record,
            "base_model": base,
            "base_fingerprint": model.base_fingerprint,
            # `pkg://...` or a relative path means nothing elsewhere: where it resolved, and what.
            "base_model_ref": model_reference(base, model.base_fingerprint),
            "experts_source": model.expert_set.source,
            "experts": model.expert_set.describe(),
            "exclude": model.exclude,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "neuroflow_version": neuroflow.__version__,
            "timings": timings,
        }
        if is_zero:
            start = time.perf_counter()
            card = save_merged(model, tmp, card)
            timings["save_s"] = round(time.perf_counter() - start, 3)
        analysis_md = _analyze(model, tmp, timings) if analyze and is_zero else None
    except BaseException:
        if is_zero:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    report, failure = None, None
    if evaluate:
        try:
            start = time.perf_counter()
            trainer.test(model, datamodule=datamodule, verbose=False)
            timings["test_s"] = round(time.perf_counter() - start, 3)
            ref = expert_reference(trainer, model, datamodule, "test", reference)
            extra = {"search": search_record} if search_record else None
            report = model.build_stage_report("test", reference=ref, extra=extra)
            report["timings"] = timings
            if analysis_md:
                report["analysis_md"] = analysis_md
        except BaseException as err:  # noqa: BLE001 (recorded, then raised again below)
            failure = err
    card["evaluation"] = _evaluation_record(evaluate, failure)
    if is_zero:
        # A failure to write the output itself (e.g. a full disk) is not an evaluation failure:
        # then nothing is put in place, and an earlier result stays.
        try:
            if report is not None:
                write_report(report, tmp)
            if failure is not None:
                atomic_write_text(tmp / EVALUATION_ERROR, "".join(traceback.format_exception(failure)))
            atomic_write_json(tmp / "merge_card.json", {**card, "timings": timings})
            _swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        rank_zero_info(f"merged model written to {final}")
        if report is not None:
            print(render_markdown(report), end="")
    if failure is not None:
        if not isinstance(failure, Exception):  # KeyboardInterrupt, SystemExit: as they are
            raise failure
        raise MergeEvaluationError(
            f"the merged model was saved to {final}, but its evaluation failed: {type(failure).__name__}: "
            f"{failure} (traceback in {final / EVALUATION_ERROR}; score it again with "
            f"`python -m neuroflow test` and model neuroflow.evaluation.MergedModel, merged_dir {final})"
        ) from failure
    return {**card, "timings": timings, "output_dir": str(final), "report": report}


def _analyze(model: MergeModule, out: Path, timings: dict[str, float]) -> str:
    """The neuron-subspace analysis of the merged experts (`analysis.{json,md,png}` in `out`),
    with the trim the method used; returns its markdown section for the report."""
    from neuroflow.analysis.analyze import analyze_task_vectors
    from neuroflow.analysis.command import write_analysis
    from neuroflow.analysis.summary import analysis_section

    start = time.perf_counter()
    merger = model.merger
    analysis = analyze_task_vectors(merger.base, merger.source, tasks=list(merger.experts.tasks),
                                    mask_rate=float(getattr(model.method, "mask_rate", 0.8)),
                                    routing=merger.routing, exclude=merger.exclude)
    write_analysis(analysis, out)
    timings["analysis_s"] = round(time.perf_counter() - start, 3)
    return analysis_section(analysis)


def _evaluation_record(evaluate: bool, failure: BaseException | None) -> dict[str, Any]:
    """The merge card's `evaluation`: `ok`, `skipped` (`--evaluate false`) or `failed` (with why)."""
    if not evaluate:
        return {"status": "skipped"}
    if failure is None:
        return {"status": "ok"}
    return {"status": "failed", "error": f"{type(failure).__name__}: {failure}", "details": EVALUATION_ERROR}
