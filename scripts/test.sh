#!/usr/bin/env bash
# Set up (if needed) and run the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the dev extra: pytest, ruff, and the clients the optimizer tests drive (Lightning, accelerate)
.venv/bin/python -m pip install -q -e ".[dev,hparams]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import pytest, xdist, lightning, accelerate, torch; assert torch.__version__.startswith('2.13.0')"
export WANDB_SILENT=true WANDB_MODE=offline
# three workers (pytest-xdist), a test file each at a time: the Slurm tests (collected first)
# wait on the scheduler in one while the other two keep both cores busy; PYTEST_WORKERS=0: serially
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-3}" --dist loadfile --durations=15 "$@"
