import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gradflow_exp.cli import CONF_DIR

REPO = Path(__file__).resolve().parent.parent

# Small versions of every problem: seconds, not minutes.
SMALL = ["trainer.progress=false", "logger=none"]


def compose_cfg(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def run_inprocess(tmp_path):
    """Compose with overrides and train into a fresh directory; returns (summary, run_dir)."""
    from gradflow_exp.train import run

    counter = iter(range(1000))

    def _run(*overrides):
        cfg = compose_cfg(SMALL + list(overrides))
        run_dir = tmp_path / f"run{next(counter)}"
        return run(cfg, run_dir), run_dir

    return _run


def cli(*args, cwd, timeout=300):
    """Run `python -m gradflow_exp.train ARGS` in cwd; returns CompletedProcess."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "gradflow_exp.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)
