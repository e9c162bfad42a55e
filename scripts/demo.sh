#!/usr/bin/env bash
# The demo on a fresh machine: installs neuroflow into .venv (scripts/setup.sh), then runs
# `python -m neuroflow run recipes/demo.yaml`: fine-tunes four all-MiniLM-L6-v2 experts (SST-2, TREC,
# AG News, Banking77) on small caps, merges them with NeuroMerging, TIES, task arithmetic and weight
# averaging, scores everything on the test splits and prints the table (runs/demo/report.md).
# Extra arguments go to `neuroflow run`, e.g. `bash scripts/demo.sh --force` to retrain the experts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Everything the demo needs is local (the MiniLM weights package and ../shared/data).
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
python -m neuroflow run recipes/demo.yaml "$@"
echo "demo finished in $(( $(date +%s) - start )) s"
