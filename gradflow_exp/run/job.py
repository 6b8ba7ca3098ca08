"""One job, after its config has passed the schema: its runs, through the one run path.

A job is one run (``gradflow-train experiment=fig7``) or, with ``replicas``, several trained
as one batch (gradflow_exp/run/replicas.py); either way gradflow_exp/run/batch.py takes the run
directories, builds, trains and writes. `gradflow_exp.train` (the command line) imports
this only once the input is known good: it is where torch comes in.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from gradflow_exp.run import replicas
from gradflow_exp.config import schema
from gradflow_exp.run.batch import Member, train_together
from gradflow_exp.config.schema import ConfigError
from gradflow_exp.training.metrics import SELECT_ON

log = logging.getLogger("gradflow_exp")

__all__ = ["ConfigError", "objective", "run"]


def run(cfg: DictConfig, run_dir: Path, record: dict | None = None) -> dict:
    """Train one job into ``run_dir``; returns its summary. ``record``: Hydra's overrides,
    hydra node and job name for the run's ``.hydra/`` (none outside Hydra).

    What the directory already holds decides what happens (`gradflow_exp.run.rundir`): this run
    finished → skipped; unfinished → resumed from its checkpoint; shorter → trained on;
    another run's → refused (ConfigError). Bad input raises ConfigError before anything trains.
    """
    record = record or {}
    resolved = schema.load(cfg)
    if replicas.requested(resolved):
        return replicas.run(cfg, resolved, Path(run_dir), record)
    member = Member(seed=int(cfg.seed), hparams=None, name=str(run_dir), cfg=cfg, dir=Path(run_dir),
                    overrides=list(record.get("overrides") or []), cfg_name=record.get("name") or "default",
                    hydra=record.get("hydra"), resolved=resolved)
    train_together(cfg, [member], batch_dir=Path(run_dir))
    return member.summary


def objective(summary: dict, which: str = "final") -> float:
    """What a job returns to a sweeper (Optuna minimises it): the final or best relative error
    on the validation split (never the test set's: a search that selects on test reports a
    biased test error); inf for a run that did not complete (diverged, failed, interrupted),
    so a search ranks it last instead of stopping (Optuna records NaN as a failed trial)."""
    if summary.get("status") != "completed":
        return float("inf")
    value = summary.get(which, {}).get(SELECT_ON)
    if value is None:
        log.warning("this run has no validation split (dataset.val_size / val_fraction / val_points = 0): "
                    "it returns inf to the sweeper, which cannot rank it")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("inf")
