#!/usr/bin/env bash
# Set up (if needed) and run the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the dev extra: pytest, ruff, and the clients the optimizer tests drive (Lightning, accelerate)
.venv/bin/python -m pip install -q -e ".[dev,hparams]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import pytest, lightning, accelerate, torch; assert torch.__version__.startswith('2.13.0')"
export WANDB_SILENT=true WANDB_MODE=offline
exec .venv/bin/python -m pytest -q --durations=15 "$@"
