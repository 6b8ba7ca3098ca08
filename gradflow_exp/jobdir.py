"""A job's .hydra/ record, kept from being overwritten by a job that is refused.

Hydra writes a job's config, overrides and hydra.yaml into its output directory before the
job runs. Into a directory that already holds a run (``resume=RUN`` with another device, a
sweep run again with another setting), that would replace the record of the run with the
refused command's, and ``resume=RUN`` would then rebuild the refused command. So Hydra
writes them to PENDING (``hydra.output_subdir`` in conf/train.yaml), and they become
``.hydra/`` only when the job is accepted (`accept`), or when the directory held no run.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PENDING = ".hydra_pending"
RECORD = ".hydra"


def holds_run(run_dir: Path) -> bool:
    """A run (or a replica batch's runs) already lives here."""
    return (run_dir / "summary.json").exists() or any(run_dir.glob("*/summary.json"))


def accept(run_dir: Path) -> None:
    """This job is the directory's run now: its config becomes the record."""
    pending = run_dir / PENDING
    if pending.is_dir():
        shutil.rmtree(run_dir / RECORD, ignore_errors=True)
        pending.rename(run_dir / RECORD)


def settle(run_dir: Path, held_run: bool) -> None:
    """At the end of a job: a directory that held a run before it keeps that run's record
    unless the job was accepted; a fresh one keeps the job's (a failed run says what failed)."""
    if held_run:
        shutil.rmtree(run_dir / PENDING, ignore_errors=True)
    else:
        accept(run_dir)


def changed_keys(run_dir: Path, cfg: DictConfig, ignore=(), limit: int = 6) -> list[str]:
    """'key: recorded → now' for the config keys where ``cfg`` differs from the run recorded
    in ``run_dir`` (empty when there is no readable record)."""
    from gradflow_exp.report.load import flatten   # here: pandas only on this refusal path

    try:
        old = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / RECORD / "config.yaml")))
    except Exception:  # noqa: BLE001 - no record, or not ours
        return []
    new = flatten(OmegaConf.to_container(cfg))
    keys = [k for k in sorted(old.keys() | new.keys())
            if old.get(k, "<unset>") != new.get(k, "<unset>") and not k.startswith(tuple(ignore))]
    out = [f"{k}: {old.get(k, '<unset>')} → {new.get(k, '<unset>')}" for k in keys[:limit]]
    return out + [f"… {len(keys) - limit} more"] if len(keys) > limit else out

