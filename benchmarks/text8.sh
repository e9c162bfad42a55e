#!/usr/bin/env bash
# Runs the text8 benchmark (recipes/text8.yaml) and its 4-task variant (recipes/text4.yaml), then
# copies the tables and JSON into benchmarks/results/. Reruns skip the experts already trained.
# Usage: bash benchmarks/text8.sh [text8|text4 ...]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for name in "${@:-text8 text4}"; do
    for n in $name; do
        python -m neuroflow run "recipes/$n.yaml"
        python benchmarks/collect_results.py "runs/$n" --name "$n"
    done
done
