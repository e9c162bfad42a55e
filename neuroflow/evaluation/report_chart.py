"""`report.png`: the normalized score (model / individual expert), the headline number of a merge.

A combined report draws two panels: the average normalized score per method (sorted, value and
95% interval on every bar; the individual experts (1.0), the jointly trained model and the
pre-trained backbone as reference lines, not bars), and a method x task heatmap of the normalized
scores with each task's number of examples. A single report draws its tasks' normalized scores.
Missing values are drawn as missing ("n/a"), never as 0; the legend sits outside the bars.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neuroflow.evaluation.report_stats import mean_interval, scaled

# Rows that are references of the scale rather than competitors: drawn as lines.
_REFERENCE_KINDS = {"experts": "individual experts", "pretrained": "pre-trained backbone", "joint": "joint multi-task model"}
_LINE_STYLES = {"experts": ("black", "-"), "pretrained": ("tab:red", "--"), "joint": ("tab:blue", ":")}
_ABOVE = "tab:orange"


def _kind(run: Mapping[str, Any]) -> str:
    model = run.get("model") or {}
    kind = model.get("kind")
    # The jointly trained model is a plain MultiTaskModule scored by ReportCallback.
    if kind not in ("merged", "experts", "pretrained") and model.get("class") == "MultiTaskModule":
        return "joint"
    return kind or "model"


def normalized_table(combined: Mapping[str, Any]) -> dict[str, Any]:
    """Every run's normalized score per task and on average, with 95% intervals (run order).

    Returns:
        {"tasks": [...], "counts": [n or None per task], "rows": [{"name", "kind", "values",
        "bounds", "average", "average_bounds"}]}; a value is None where it is missing.
    """
    tasks = list(combined["tasks"])
    rows = []
    for run in combined["runs"]:
        name = run["name"]
        values, bounds = [], []
        for task in tasks:
            row = combined["tasks"][task]
            entry = row["runs"].get(name)
            value = entry.get("normalized") if entry else None
            values.append(value)
            bounds.append(scaled(entry.get("interval"), row["expert"]) if entry and value is not None else None)
        kept = [(v, b) for v, b in zip(values, bounds) if v is not None]
        rows.append({"name": name, "kind": _kind(run), "values": values, "bounds": bounds,
                     "average": combined["average"]["runs"][name]["normalized"],
                     "average_bounds": mean_interval(kept)})
    counts = []
    for task in tasks:
        found = sorted({e.get("n") for e in combined["tasks"][task]["runs"].values() if e.get("n") is not None})
        counts.append(found[0] if len(found) == 1 else ("/".join(map(str, found)) if found else None))
    return {"tasks": tasks, "counts": counts, "rows": rows}


def _single_as_combined(report: Mapping[str, Any]) -> dict[str, Any]:
    name = report["name"]
    tasks = {t: {"expert": e["expert"].get(e["primary_metric"]),
                 "runs": {name: {"value": e["metrics"][e["primary_metric"]], "normalized": e["normalized"],
                                 "n": e.get("n"), "interval": e.get("interval")}}}
             for t, e in report["tasks"].items()}
    return {"tasks": tasks, "runs": [{"name": name, "model": report.get("model", {})}],
            "average": {"runs": {name: {"normalized": report["average"]["normalized"]}}}}


def _label(value: float | None, bounds: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f"  [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def _bars(ax: Any, labels: list[str], values: list[float | None], bounds: list[Any], colors: list[str]) -> None:
    """Horizontal bars, top to bottom, with 95% error bars and the value written on each bar."""
    import numpy as np

    ys = np.arange(len(labels))[::-1]
    for y, value, bound, color in zip(ys, values, bounds, colors):
        if value is None:
            ax.text(0.01, y, "n/a (missing)", va="center", ha="left", fontsize=8, color="dimgray",
                    transform=ax.get_yaxis_transform())
            continue
        err = [[value - bound[0]], [bound[1] - value]] if bound else None
        ax.barh(y, value, color=color, height=0.6, xerr=err, capsize=3, error_kw={"elinewidth": 1})
        right = bound[1] if bound else value
        # A white box keeps the value readable where a reference line crosses it.
        ax.text(right + 0.01, y, _label(value, bound), va="center", ha="left", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85})
    ax.set_yticks(ys, labels)
    ax.set_xlabel("normalized score (model / individual expert)")


def _upper(values: list[float | None], bounds: list[Any]) -> float:
    tops = [b[1] if b else v for v, b in zip(values, bounds) if v is not None]
    return max([1.0, *tops])


def _draw_single(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    table = normalized_table(_single_as_combined(report))
    row = table["rows"][0]
    labels = [f"{t}  (n={n if n is not None else '?'})" for t, n in zip(table["tasks"], table["counts"])]
    labels.append("average")
    values, bounds = row["values"] + [row["average"]], row["bounds"] + [row["average_bounds"]]
    colors = [_ABOVE if v is not None and v > 1 else "tab:green" for v in row["values"]] + ["darkgreen"]
    fig, ax = plt.subplots(figsize=(10.0, 1.2 + 0.45 * len(labels)))
    _bars(ax, labels, values, bounds, colors)
    from matplotlib.patches import Patch

    handles = [ax.axvline(1.0, color="black", lw=1, label="expert = 1")]
    if any(c == _ABOVE for c in colors):
        handles.append(Patch(color=_ABOVE, label="above its expert (see warnings)"))
    ax.set_xlim(0, 1.45 * _upper(values, bounds))
    ax.set_title(f"{report['name']} ({report['split']}): normalized score per task, 95% interval", fontsize=10)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _heatmap(ax: Any, fig: Any, table: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> None:
    import numpy as np

    columns = [*table["tasks"], "average"]
    grid = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, value in enumerate([*row["values"], row["average"]]):
            if value is not None:
                grid[i, j] = value
    finite = grid[np.isfinite(grid)]
    low = float(min(finite.min(), 0.9)) if finite.size else 0.0
    high = float(max(finite.max(), 1.0)) if finite.size else 1.0
    ax.set_facecolor("lightgray")  # missing cells
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=low, vmax=high, aspect="auto")
    for i, row in enumerate(rows):
        for j, (value, bound) in enumerate(zip([*row["values"], row["average"]], [*row["bounds"], row["average_bounds"]])):
            if value is None:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="dimgray")
                continue
            half = f"\n±{(bound[1] - bound[0]) / 2:.3f}" if bound else ""
            dark = (value - low) / max(high - low, 1e-9) < 0.6
            ax.text(j, i, f"{value:.3f}{half}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    counts = [*table["counts"], None]
    ax.set_xticks(range(len(columns)), [f"{c}\nn={n}" if n is not None else c for c, n in zip(columns, counts)],
                  fontsize=8)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    methods = sum(r["kind"] not in _REFERENCE_KINDS for r in rows)
    if 0 < methods < len(rows):  # the reference rows below a white rule
        ax.axhline(methods - 0.5, color="white", lw=3)
    ax.set_title("normalized score per task (±: half-width of the 95% interval; grey: missing)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)


def _draw_combined(combined: Mapping[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    table = normalized_table(combined)
    methods = [r for r in table["rows"] if r["kind"] not in _REFERENCE_KINDS]
    references = [r for r in table["rows"] if r["kind"] in _REFERENCE_KINDS]
    # Best first; methods without a score last (shown as missing, not as 0).
    methods.sort(key=lambda r: (r["average"] is None, -(r["average"] or 0.0)))
    heat_rows = methods + references
    n_bars, n_heat = max(len(methods), 1), max(len(heat_rows), 1)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(9.0, 1.1 * len(table["tasks"]) + 4.0), 2.6 + 0.42 * (n_bars + n_heat)),
        gridspec_kw={"height_ratios": [n_bars + 1.5, n_heat + 1.5]})
    values = [r["average"] for r in methods]
    bounds = [r["average_bounds"] for r in methods]
    total = len(table["tasks"])
    labels = []
    for r in methods:
        scored = sum(v is not None for v in r["values"])
        # An average over fewer tasks is not comparable with the others: say so.
        labels.append(r["name"] if scored == total else f"{r['name']} ({scored} of {total} tasks)")
    _bars(top, labels, values, bounds, ["tab:green"] * len(methods))
    top.axvline(1.0, color="black", lw=1, label="individual experts = 1")
    for ref in references:
        if ref["kind"] == "experts" or ref["average"] is None:
            continue
        color, style = _LINE_STYLES[ref["kind"]]
        top.axvline(ref["average"], color=color, ls=style, lw=1.5,
                    label=f"{_REFERENCE_KINDS[ref['kind']]} ({ref['name']}): {ref['average']:.3f}")
    top.set_xlim(0, 1.45 * _upper(values + [r["average"] for r in references], bounds + [None] * len(references)))
    if not methods:
        top.text(0.5, 0.5, "no merged models in this report", ha="center", transform=top.transAxes)
    top.set_title("average normalized score per method (95% interval; a lead inside the bars' overlap is noise)",
                  fontsize=10)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _heatmap(bottom, fig, table, heat_rows)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def draw_report(report: Mapping[str, Any], path: str | Path, combined: bool) -> None:
    """Write the chart of a report (`build_report`) or combined report (`combine_reports`) as PNG.

    Args:
        report: the report dictionary.
        path: the PNG file to write.
        combined: whether `report` is a combined report.
    """
    import matplotlib

    matplotlib.use("Agg")
    if combined:
        _draw_combined(report, Path(path))
    else:
        _draw_single(report, Path(path))
