"""Shared test helpers (a plain module: tests/optim has its own conftest)."""
import os
import subprocess
import sys

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gradflow_exp.commands.cli import CONF_DIR

# Small versions of every problem: seconds, not minutes.
SMALL = ["trainer.progress=false", "logger=none"]


def compose_cfg(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def cli(*args, cwd, timeout=300):
    """Run `python -m gradflow_exp.train ARGS` in cwd; returns CompletedProcess."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "gradflow_exp.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def hydra_inprocess(*args, monkeypatch):
    """`gradflow-train ARGS` in this process (no second torch import: seconds per call);
    Hydra's global state and logging are put back afterwards."""
    import logging
    import sys

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from gradflow_exp.train import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "argv", ["gradflow-train", *args])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for h in root.handlers:
            if h not in handlers:
                h.close()       # Hydra's train.log handlers
        root.handlers[:] = handlers
        root.setLevel(level)
