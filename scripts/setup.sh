#!/usr/bin/env bash
# Set up .venv with the CPU build of torch and gradflow_exp (editable, with the hparams
# extra; scripts/test.sh adds the dev extra).
# Idempotent: a second run only checks what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# Pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
# hparams: the Optuna sweeper (hparams_search=...), an optional extra that the tests use.
.venv/bin/python -m pip install -q -e ".[hparams]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, hydra, wandb, optuna, submitit, gradflow_exp; print('gradflow_exp ready: torch', torch.__version__)"
