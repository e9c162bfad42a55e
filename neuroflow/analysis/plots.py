"""`analysis.png`: heatmaps of the analysis, layers down the side.

Panels, packed into rows as wide as the widest one: layers x tasks, the parallel-energy share of
each task's update, each task's sign-conflict rate against the others and the share of its trimmed
mass that loses the sign election; the whole-model cosine matrix (tasks x tasks); layers x task
pairs, the sign-conflict rate per pair (first column: any two tasks) and the Jaccard overlap of
the trimmed masks. Every panel has its own colour scale (from 0 to its largest value, so small but
telling differences stay visible) and, when the grid is small enough to read, the values in its
cells (in %, cosines as numbers); grey cells are undefined (nothing to compare there).
"""

from __future__ import annotations

import math
import textwrap
from itertools import combinations
from pathlib import Path
from typing import Any

from neuroflow.analysis.layers import short_layer_name

_ANNOTATE_CELLS = 600  # beyond this many cells per panel, numbers would be unreadable
_NAME_CHARS = 12


def _short(task: str) -> str:
    return task if len(task) <= _NAME_CHARS else task[: _NAME_CHARS - 1] + "~"


def _labels(tasks: list[str]) -> list[str]:
    """Axis labels: names cut to `_NAME_CHARS`, numbered when cutting makes two of them equal."""
    short = [_short(t) for t in tasks]
    return short if len(set(short)) == len(short) else [f"{i}:{s}" for i, s in enumerate(short)]


def _grid(analysis: dict[str, Any], key: str, columns: list[Any]) -> list[list[float]]:
    """Layers x columns of `entry[key][column]` (NaN for None)."""
    return [[math.nan if entry[key][c] is None else entry[key][c] for c in columns] for entry in analysis["layers"]]


def _pair_grid(analysis: dict[str, Any], key: str, pairs: list[tuple[int, int]]) -> list[list[float]]:
    return [[math.nan if entry[key][i][j] is None else entry[key][i][j] for i, j in pairs] for entry in analysis["layers"]]


def _heatmap(ax: Any, values: list[list[float]], rows: list[str], cols: list[str], title: str, cmap: str,
             percent: bool = True, symmetric: bool = False) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array(values, dtype=float).reshape(len(rows), len(cols))
    finite = data[np.isfinite(data)]
    peak = float(np.abs(finite).max()) if finite.size else 1.0
    peak = peak if peak > 0 else 1.0
    low, high = (-peak, peak) if symmetric else (0.0, peak)
    colormap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=colormap, vmin=low, vmax=high, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=45 if max(map(len, cols), default=0) > 3 else 0,
                  ha="right" if max(map(len, cols), default=0) > 3 else "center", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    if percent:
        bar.ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.3g}%")
    if data.size > _ANNOTATE_CELLS:
        return
    for (r, c), value in np.ndenumerate(data):
        if not math.isfinite(value):
            continue
        text = (f"{100 * value:.0f}" if abs(value) >= 0.1 else f"{100 * value:.1f}") if percent else f"{value:.2f}"
        # Text colour from the cell's own luminance: dark colormaps end bright (viridis), others dark.
        red, green, blue, _ = colormap(image.norm(value))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        ax.text(c, r, text, ha="center", va="center", fontsize=7, color="black" if light else "white")


_CELL_W, _CELL_H = 0.45, 0.26  # inches per heatmap cell
_MIN_WIDTH = 14.0  # inches: panels are packed into rows this wide (or as wide as the widest one)
_MAX_PIXELS = 4000  # the longer side; the resolution drops for very large figures


def _panel_width(columns: int) -> float:
    return max(3.2, _CELL_W * columns + 1.8)


def plot_analysis(analysis: dict[str, Any], path: str | Path) -> None:
    """Draw the analysis heatmaps into a PNG at `path`.

    Args:
        analysis: an analysis dict (`analyze_task_vectors` / `analysis.json`).
        path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = analysis["tasks"]
    rows = [short_layer_name(entry["layer"]) for entry in analysis["layers"]]
    pairs = list(combinations(range(len(tasks)), 2))
    short_tasks = _labels(tasks)
    pair_names = [f"{short_tasks[i]}/{short_tasks[j]}" for i, j in pairs]
    all_rates = [[math.nan if e["conflict_rate"] is None else e["conflict_rate"]] for e in analysis["layers"]]
    chance = analysis["model"].get("parallel_chance")
    cosine = [[math.nan if i == j or v is None else v for j, v in enumerate(row)]
              for i, row in enumerate(analysis["model"]["cosine"])]
    # (columns, heatmap arguments) per panel, in reading order.
    panels: list[tuple[int, tuple, dict]] = [
        (len(tasks), (_grid(analysis, "parallel_fraction", tasks), rows, short_tasks,
                      "update energy parallel to the pre-trained neurons (layers x tasks"
                      + (f"; random update: {100 * chance:.3g})" if chance else ")"), "viridis"), {}),
        (len(tasks), (_grid(analysis, "conflict_rate_per_task", tasks), rows, short_tasks,
                      "sign-conflict rate of each task against the others (layers x tasks)", "Reds"), {}),
        (len(tasks), (_grid(analysis, "election_loss", tasks), rows, short_tasks,
                      "trimmed mass losing the sign election (layers x tasks)", "Oranges"), {}),
        (len(tasks), (cosine, short_tasks, short_tasks, "task-vector cosine (whole model)", "RdBu_r"),
         {"percent": False, "symmetric": True}),
    ]
    if pairs:
        conflict_pairs = [a + b for a, b in zip(all_rates, _pair_grid(analysis, "pairwise_conflict", pairs))]
        panels += [
            (len(pairs) + 1, (conflict_pairs, rows, ["all", *pair_names],
                              "sign-conflict rate per task pair (entries both keep; 'all' = any two tasks)", "Reds"), {}),
            (len(pairs), (_pair_grid(analysis, "jaccard", pairs), rows, pair_names,
                          "overlap of the trimmed masks (Jaccard, layers x task pairs)", "Blues"), {}),
        ]
    # Greedy rows: panels side by side while they fit in the figure's width.
    width = max(_MIN_WIDTH, *(_panel_width(n) for n, _, _ in panels))
    packed: list[list[tuple[int, tuple, dict]]] = [[]]
    for panel in panels:
        if packed[-1] and sum(_panel_width(n) for n, _, _ in packed[-1]) + _panel_width(panel[0]) > width:
            packed.append([])
        packed[-1].append(panel)
    row_height = max(2.8, _CELL_H * max(len(rows), len(tasks)) + 2.0)
    height = row_height * len(packed) + 0.5
    fig = plt.figure(figsize=(width, height), layout="constrained")
    fig.suptitle(f"Expert analysis: {len(tasks)} tasks, trim at mask_rate {analysis['mask_rate']} "
                 "(values in %, cosines as numbers; grey = undefined)", fontsize=11)
    for subfig, row in zip(fig.subfigures(len(packed), 1, squeeze=False)[:, 0], packed):
        widths = [_panel_width(n) for n, _, _ in row]
        spare = width - sum(widths)
        axes = subfig.subplots(1, len(row) + (spare > 0.5), width_ratios=widths + ([spare] if spare > 0.5 else []),
                               squeeze=False)[0]
        for ax, (columns, args, kwargs) in zip(axes, row):
            # Titles wrapped to their panel (about 8 characters per inch at this font size).
            title = textwrap.fill(args[3], max(24, int(8 * _panel_width(columns))))
            _heatmap(ax, *args[:3], title, *args[4:], **kwargs)
        if spare > 0.5:
            axes[-1].set_axis_off()
    fig.savefig(path, format="png", dpi=min(110, _MAX_PIXELS / max(width, height)))
    plt.close(fig)
