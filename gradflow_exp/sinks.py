"""Where a run's results go: metrics.csv, summary.json, checkpoints, W&B.

Files are flushed row by row (a killed run keeps what it logged); summary.json and
checkpoints are written atomically by gradflow_exp/rundir.py, so a run directory never
holds half a file.
"""
from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BASE_COLUMNS = ["epoch", "step", "train_loss", "train_mse", "test_mse",
                "train_rel_error", "test_rel_error"]


def device_name(device: torch.device) -> str:
    """Where a run computed, for summary.json (device=auto resolves here): "cpu" or
    "cuda (<GPU name>)"."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


class CSVSink:
    """metrics.csv: one row per logged epoch; columns fixed by the first row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None
        self._writer = None
        self.columns: list[str] = []
        self._warned: set[str] = set()

    def log(self, row: dict) -> None:
        if self._writer is None:
            self.columns = list(row)
            self._file = open(self.path, "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
            self._writer.writeheader()
        new = set(row) - set(self.columns) - self._warned
        if new:
            warnings.warn(f"metrics.csv: keys {sorted(new)} appeared after the header; not written")
            self._warned |= new
        self._writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


class WandbSink:
    """One W&B run per job. A logging failure never costs the run: it degrades to offline,
    then to no W&B at all, with a warning."""

    def __init__(self, cfg, run_dir: Path, run_name: str, config: dict, run_id: str | None = None):
        self.run = None
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a dependency
            log.warning("wandb is not installed; W&B logging disabled")
            return
        self._wandb = wandb
        kwargs = dict(project=cfg.get("project", "gradflow_exp"), entity=cfg.get("entity"),
                      group=cfg.get("group"), name=run_name, tags=list(cfg.get("tags") or []),
                      config=config, dir=str(run_dir), job_type=cfg.get("job_type", "train"),
                      settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        if run_id is not None:
            # A resumed run continues its W&B run (online); offline, a second offline-run-*
            # directory with the same run id holds the epochs after the checkpoint.
            kwargs.update(id=run_id, resume="allow")
        mode = cfg.get("mode", "offline")
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to start must not lose the run
            if mode == "offline":
                log.warning("W&B failed to start (%s); continuing without W&B", e)
                return
            log.warning("W&B failed to start in %s mode (%s); falling back to offline", mode, e)
            try:
                self.run = wandb.init(mode="offline", **kwargs)
            except Exception as e2:  # noqa: BLE001
                log.warning("W&B offline also failed (%s); continuing without W&B", e2)
        if self.run is not None:
            # Per-epoch curves use the epoch as x axis in the dashboard.
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None) if self.run is not None else None

    @property
    def run_path(self) -> str | None:
        return getattr(self.run, "dir", None) if self.run is not None else None

    def log(self, row: dict) -> None:
        if self.run is None:
            return
        clean = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # Paper name for the dashboard: rel_error is the test relative error.
        clean["rel_error"] = clean.get("test_rel_error")
        try:
            self.run.log(clean)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B log failed (%s); disabling W&B for this run", e)
            self._finish(1)

    def summary(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update({
                k: v for k, v in _flatten(summary).items()
                if isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v))})
        except Exception as e:  # noqa: BLE001
            log.warning("W&B summary failed (%s)", e)

    def finish(self, exit_code: int = 0) -> None:
        self._finish(exit_code)

    def _finish(self, exit_code: int) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001
                log.warning("W&B finish failed (%s)", e)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
