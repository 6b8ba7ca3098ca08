#!/usr/bin/env bash
# Set up (if needed) and run the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_SILENT=true WANDB_MODE=offline
exec .venv/bin/python -m pytest -q --durations=15 "$@"
