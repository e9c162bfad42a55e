"""The analysis in words: `analysis_section` (markdown for merge reports) and `render_markdown`.

The findings name what a user needs to see why a merge lost a task: the task that conflicts most
with the others and the layers its conflicts sit in, the task that loses most mass to the sign
election, tasks whose update NeuroMerging Lite drops (parallel to the neurons), a task whose update
is much smaller than the others' (drowned in a sum), and the most and least similar pairs.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from neuroflow.analysis.layers import short_layer_name

# A parallel share (after the trim) from which Lite's dropping it is worth a mention.
_PARALLEL_NOTABLE = 0.05
# A task vector this many times smaller than the largest is flagged as likely to be drowned.
_NORM_RATIO_NOTABLE = 2.0


def pct(value: float | None, digits: int = 1) -> str:
    """`0.412` -> `41.2%`; None -> `n/a`."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _argmax(values: dict[str, float | None]) -> str | None:
    known = {k: v for k, v in values.items() if v is not None}
    return max(known, key=known.__getitem__) if known else None


def _others(values: dict[str, float | None], task: str) -> str:
    return ", ".join(f"`{t}` {pct(v)}" for t, v in values.items() if t != task)


def _mean_offdiagonal(matrix: list[list[float | None]], i: int) -> float | None:
    values = [v for j, v in enumerate(matrix[i]) if j != i and v is not None]
    return sum(values) / len(values) if values else None


def _conflict_finding(analysis: dict[str, Any]) -> str | None:
    per_task = analysis["model"]["conflict_rate_per_task"]
    worst = _argmax(per_task)
    if worst is None:
        return None
    layers = [entry for entry in analysis["layers"] if entry.get("conflict_share", {}).get(worst)]
    top = sorted(layers, key=lambda e: e["conflict_share"][worst], reverse=True)[:3]
    where = ", ".join(f"{short_layer_name(e['layer'])} ({pct(e['conflict_share'][worst], 0)} of them, rate "
                      f"{pct(e['conflict_rate_per_task'][worst])})" for e in top)
    if len(per_task) == 2:
        # With two tasks the rate is symmetric: the pair conflicts, not one task.
        first, second = analysis["tasks"]
        line = (f"- **Sign conflicts `{first}`/`{second}`:** {pct(per_task[worst])} of the entries both keep have "
                "opposite signs.")
    else:
        line = (f"- **Most conflicted task: `{worst}`.** {pct(per_task[worst])} of its kept entries that another "
                f"task also keeps have the opposite sign there (others: {_others(per_task, worst)}).")
    if where:
        line += f" {'They' if len(per_task) == 2 else 'Its conflicts'} sit in {where}."
    rated = [e for e in analysis["layers"] if e["conflict_rate_per_task"].get(worst) is not None]
    if rated:
        peak = max(rated, key=lambda e: e["conflict_rate_per_task"][worst])
        if peak not in top:
            line += f" Its rate peaks in {short_layer_name(peak['layer'])} ({pct(peak['conflict_rate_per_task'][worst])})."
    return line


def findings(analysis: dict[str, Any]) -> list[str]:
    """The summary's bullet points, most telling first.

    Args:
        analysis: an analysis dict (`analyze_task_vectors` / `analysis.json`).
    """
    model, tasks = analysis["model"], analysis["tasks"]
    out = []
    if len(tasks) > 1:
        conflict = _conflict_finding(analysis)
        if conflict:
            out.append(conflict)
        loss = model["election_loss"]
        loser = _argmax(loss)
        if loser is not None:
            out.append(f"- **Sign election:** `{loser}` loses {pct(loss[loser])} of its trimmed L1 mass to the "
                       f"TIES-style election of signs (others: {_others(loss, loser)}).")
    norms = {t: v for t, v in model["norm"].items() if v}
    if len(norms) > 1:
        small, large = min(norms, key=norms.__getitem__), max(norms, key=norms.__getitem__)
        if norms[large] / norms[small] >= _NORM_RATIO_NOTABLE:
            out.append(f"- **Update size:** `{small}`'s task vector is {norms[large] / norms[small]:.1f}x smaller than "
                       f"`{large}`'s (norm {norms[small]:.3g} vs {norms[large]:.3g}): in a sum or average its update is "
                       "easily drowned.")
    parallel = model["parallel_fraction_trimmed"]
    top = _argmax(parallel)
    if top is not None:
        chance = model.get("parallel_chance")
        line = (f"- **Parallel energy:** at most {pct(parallel[top], 2)} of a task's trimmed update is parallel to the "
                f"pre-trained neurons (`{top}`; raw {pct(model['parallel_fraction'][top], 2)}"
                + (f"; a random update: {pct(chance, 2)}" if chance is not None else "") + ").")
        if parallel[top] >= _PARALLEL_NOTABLE:
            line += (" NeuroMerging Lite (`lambda_1 = 0`) drops that part: if this task loses most, try Full "
                     "mode (`lambda_1 > 0`, e.g. a validation search).")
        else:
            line += " Updates are almost all orthogonal, so Lite's dropping the parallel part costs little."
        out.append(line)
    pairs = [(i, j) for i, j in combinations(range(len(tasks)), 2) if model["cosine"][i][j] is not None]
    if pairs:
        hi = max(pairs, key=lambda p: model["cosine"][p[0]][p[1]])
        lo = min(pairs, key=lambda p: model["cosine"][p[0]][p[1]])
        jac = [(p, model["jaccard"][p[0]][p[1]]) for p in pairs if model["jaccard"][p[0]][p[1]] is not None]
        if len(pairs) == 1:
            line = f"- **Similarity:** task-vector cosine {model['cosine'][hi[0]][hi[1]]:.3f}."
        else:
            line = (f"- **Similarity:** most similar `{tasks[hi[0]]}`/`{tasks[hi[1]]}` (cosine "
                    f"{model['cosine'][hi[0]][hi[1]]:.3f}), least `{tasks[lo[0]]}`/`{tasks[lo[1]]}` "
                    f"({model['cosine'][lo[0]][lo[1]]:.3f}).")
        if jac:
            (a, b), value = max(jac, key=lambda item: item[1])
            line += (f" Mask overlap (Jaccard) {value:.3f}." if len(pairs) == 1 else
                     f" Largest mask overlap: `{tasks[a]}`/`{tasks[b]}` (Jaccard {value:.3f}).")
        out.append(line)
    return out


def _task_table(analysis: dict[str, Any]) -> list[str]:
    model, tasks = analysis["model"], analysis["tasks"]
    lines = ["| task | norm | kept | parallel (raw / trimmed) | conflict vs others | lost to election | "
             "mean Jaccard | mean cosine |", "|---|---|---|---|---|---|---|---|"]
    for i, task in enumerate(tasks):
        jac, cos = _mean_offdiagonal(model["jaccard"], i), _mean_offdiagonal(model["cosine"], i)
        norm = model["norm"][task]
        lines.append(
            f"| {task} | {'n/a' if norm is None else f'{norm:.3g}'} | {pct(model['density'][task])} | "
            f"{pct(model['parallel_fraction'][task], 2)} / {pct(model['parallel_fraction_trimmed'][task], 2)} | "
            f"{pct(model['conflict_rate_per_task'][task])} | {pct(model['election_loss'][task])} | "
            f"{'n/a' if jac is None else f'{jac:.3f}'} | {'n/a' if cos is None else f'{cos:.3f}'} |")
    return lines


# Beyond this many tasks the per-layer table shows only the tasks the findings name.
_TABLE_TASKS = 6


def _layer_table(analysis: dict[str, Any]) -> list[str]:
    tasks = analysis["tasks"]
    if len(tasks) > _TABLE_TASKS:
        named = [_argmax(analysis["model"]["conflict_rate_per_task"]), _argmax(analysis["model"]["election_loss"])]
        tasks = list(dict.fromkeys(t for t in named if t is not None))
    lines = ["| layer | params | conflict rate | " + " | ".join(f"conflict `{t}`" for t in tasks) + " | parallel (max) |",
             "|---|---|---|" + "---|" * len(tasks) + "---|"]
    for entry in analysis["layers"]:
        par = [v for v in entry["parallel_fraction"].values() if v is not None]
        lines.append(f"| {entry['layer']} | {entry['numel']:,} | {pct(entry['conflict_rate'])} | "
                     + " | ".join(pct(entry["conflict_rate_per_task"][t]) for t in tasks)
                     + f" | {pct(max(par), 2) if par else 'n/a'} |")
    return lines


def analysis_section(analysis: dict[str, Any]) -> str:
    """The analysis as a markdown section (a `##` heading, findings, a per-task and a per-layer
    table), for `analysis.md` and for merge reports.

    Args:
        analysis: an analysis dict (`analyze_task_vectors` / `analysis.json`).
    """
    model, trim = analysis["model"], analysis["trim"]
    lines = [
        "## Neuron-subspace analysis",
        "",
        f"Tasks: {', '.join(f'`{t}`' for t in analysis['tasks'])}. {model['numel']:,} merged scalars per task in "
        f"{model['tensors']} tensors ({model['neuron_tensors']} neuron weights), {len(analysis['layers'])} layer groups; "
        f"trim at mask_rate {analysis['mask_rate']} (the global per-task threshold of TIES/NeuroMerging; sigma "
        + ", ".join(f"{s:.3f}" for s in trim["sigma_per_task"]) + ").",
        "",
        f"Sign conflicts: {pct(model['conflict_rate'])} of the entries that two or more tasks keep disagree in sign.",
        "",
        *findings(analysis),
        "",
        *_task_table(analysis),
        "",
        *_layer_table(analysis),
        "",
        "Definitions: *parallel* = share of `sum ||s_t w0||^2` in a task's update energy over neuron weights "
        "(`s_t = <tau, w0> / <w0, w0>` per neuron); *conflict vs others* = among entries a task keeps that another "
        "task keeps too, the share where another task has the opposite sign; *lost to election* = share of a task's "
        "trimmed L1 mass whose sign loses the per-tensor sign election; *kept* = entries the trim keeps.",
    ]
    return "\n".join(lines) + "\n"


def render_markdown(analysis: dict[str, Any], image: str | None = "analysis.png") -> str:
    """`analysis.md`: a title, the section, and the heatmaps.

    Args:
        analysis: an analysis dict.
        image: the PNG to embed (relative path), or None.
    """
    base = analysis.get("source", {}).get("base_model")
    title = "# Expert analysis" + (f": experts of `{base}`" if base else "")
    body = analysis_section(analysis)
    return f"{title}\n\n{body}" + (f"\n![analysis]({image})\n" if image else "")
