"""Are a recipe's experts trained to their plateau? Each next to the same expert trained longer.

```
python benchmarks/plateau_check.py recipes/text8_lpft.yaml [--factor 2] [--tasks cola,banking77] \
    [--output-dir runs/text8_lpft_2x] [--tolerance 0.01] [--skip-fit] [--no-test] [--force]
```
Fits every expert of the recipe again with `max_epochs` and the early-stopping patience multiplied
by `--factor`, a task's own `task_training` budget too (same data, seed and everything else;
`python -m neuroflow run RECIPE --only fit` into its own output folder and experts collection), evaluates them on the test splits (`--only
baselines`), and prints per task the best validation score each fit selected and the test score,
at the recipe's budget and at the longer one, and whether they agree within `--tolerance`
(0.01 = 1 point). The recipe's own experts (and their `individual` report) must exist: run the
recipe first. Validation splits of a few hundred examples move by 0.5 point per example, so a
difference near the tolerance is within the noise of a rerun.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from neuroflow.pipeline.plateau import (
    longer_budget,
    manifest_scores,
    plateau_rows,
    render_plateau_table,
    report_scores,
)
from neuroflow.pipeline.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--factor", type=float, default=2.0, help="budget multiplier (epochs and patience)")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the recipe's tasks")
    parser.add_argument("--output-dir", default=None, help="where the longer fits go (default: <output_dir>_<factor>x)")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--skip-fit", action="store_true", help="compare fits already in --output-dir (no new fits)")
    parser.add_argument("--no-test", action="store_true", help="compare validation scores only (no test evaluation)")
    parser.add_argument("--force", action="store_true", help="refit experts already in --output-dir's collection")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    training = recipe.training
    if training.early_stopping is None:
        sys.exit(f"{args.recipe}: training.early_stopping is not set: its experts are not trained to a plateau")
    longer = longer_budget(recipe, args.factor)
    out = Path(args.output_dir or f"{recipe.output_dir}_{args.factor:g}x")
    experts = Path(recipe.experts_dir) if recipe.experts_dir else Path(recipe.output_dir) / "experts"
    command = [
        sys.executable, "-m", "neuroflow", "run", args.recipe, "--output-dir", str(out),
        "--set", f"experts_dir={out / 'experts'}",
    ]
    for override in longer:
        command += ["--set", override]
    if args.tasks:
        command += ["--tasks", args.tasks]
    if not args.skip_fit:
        subprocess.run([*command, "--only", "fit", *(["--force"] if args.force else [])], check=True, env=os.environ)
    if not args.no_test:
        # The longer experts on the test splits (the runner skips this when they are up to date).
        subprocess.run([*command, "--only", "baselines", "--set", "baselines.pretrained=false",
                        "--set", "multitask.enabled=false"], check=True, env=os.environ)

    reference_test = {} if args.no_test else report_scores(Path(recipe.output_dir) / "eval" / "individual" / "report.json")
    longer_test = {} if args.no_test else report_scores(out / "eval" / "individual" / "report.json")
    rows = plateau_rows(manifest_scores(experts), manifest_scores(out / "experts"), reference_test, longer_test, args.tolerance)
    if args.tasks:
        keep = set(args.tasks.split(","))
        rows = [row for row in rows if row.task in keep]
    print(f"\n{args.recipe}: the recipe's budget vs {' '.join(longer)}\n")
    print(render_plateau_table(rows, args.factor))


if __name__ == "__main__":
    main()
