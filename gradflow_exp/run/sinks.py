"""Where a run's results go: metrics.csv, summary.json, checkpoints, W&B.

Files are flushed row by row (a killed run keeps what it logged); summary.json and
checkpoints are written atomically by gradflow_exp/run/rundir.py, so a run directory never
holds half a file.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradflow_exp.training.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER

log = logging.getLogger(__name__)

def _merged(columns: list[str], keys: list[str]) -> list[str]:
    """``columns`` with the keys it lacks inserted after their predecessor in ``keys``
    (val_* after train_*, as a new run writes them)."""
    out = list(columns)
    for i, k in enumerate(keys):
        if k not in out:
            after = next((keys[j] for j in range(i - 1, -1, -1) if keys[j] in out), None)
            out.insert(out.index(after) + 1 if after is not None else 0, k)
    return out


def device_name(device: torch.device) -> str:
    """Where a run computed, for summary.json (device=auto resolves here): "cpu" or
    "cuda (<GPU name>)"."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


class CSVSink:
    """metrics.csv: one row per logged epoch. A key that first appears in a later row (a
    run made before a metric existed, resumed: its replayed rows lack it) widens the header:
    the file is rewritten with the new column, empty in the rows before."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None
        self._writer = None
        self.columns: list[str] = []
        self._rows: list[dict] = []

    def log(self, row: dict) -> None:
        formatted = {k: _fmt(v) for k, v in row.items()}
        self._rows.append(formatted)
        if self._writer is None or set(row) - set(self.columns):
            self.columns = _merged(self.columns, list(row))
            self._rewrite()
            return
        self._writer.writerow(formatted)
        self._file.flush()

    def _rewrite(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore", restval="")
        self._writer.writeheader()
        self._writer.writerows(self._rows)
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


# W&B's run state is "failed" for any non-zero exit code: a run that ends on its own
# (completed, diverged) exits 0 and says how it ended in its tags and summary.
EXIT_CODES = {"completed": 0, "diverged": 0, "interrupted": 143, "failed": 1}


@dataclass
class WandbRun:
    """What W&B is told about a run: its directory and resolved config (which fix its W&B id),
    its command-line overrides (its name, without keys that do not change the result), the
    method (the optimizer choice), the experiment, its size and its kind."""
    run_dir: Path
    resolved: dict
    overrides: list[str] = field(default_factory=list)
    method: str = "unknown"
    experiment: str = "unknown"
    n_params: int = 0
    job_type: str | None = None       # None: the logger config's (train; reference from gradflow-reproduce)

    @property
    def name(self) -> str:
        from gradflow_exp.run.rundir import MAY_DIFFER, covered

        keep = [o for o in self.overrides
                if not covered(o.split("=", 1)[0].lstrip("+~"), (*MAY_DIFFER, "hydra", "resume"))]
        return ",".join(sorted(keep)) or "default"

    @property
    def id(self) -> str:
        """The run's identity as a W&B id: a rerun, a resume or an extension of the run in
        this directory continues the same W&B run, never an orphan beside it."""
        from gradflow_exp.run.rundir import EPOCHS, MAY_DIFFER, covered, flatten

        identity = {k: v for k, v in flatten(self.resolved).items() if not covered(k, (*MAY_DIFFER, EPOCHS))}
        text = json.dumps([str(Path(self.run_dir).resolve()), identity], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Command-line values that sweep (Hydra's override grammar): a top-level comma, or a sweep
# or search function (the basic sweeper's range/choice/glob, Optuna's interval and tag).
_SWEEP_FUNCTIONS = re.compile(r"^\s*(range|choice|glob|interval|tag)\(")


def is_sweep(value) -> bool:
    """``1,10,100`` or ``tag(log, interval(1e-3, 1))``: several values; ``[1,2]`` is one (a list)."""
    text = str(value)
    if _SWEEP_FUNCTIONS.match(text):
        return True
    depth, quote = 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def _sweep_spec(run_dir: Path) -> dict | None:
    """What the sweep this job belongs to asked for, key → value as typed (its command line
    over its experiment's hydra.sweeper.params), from the multirun.yaml Hydra writes in the
    sweep directory (the job's parent; a replica's grandparent); None outside a sweep."""
    import yaml

    for d in (Path(run_dir).parent, Path(run_dir).parent.parent):
        try:
            record = yaml.safe_load((d / "multirun.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        hydra = record.get("hydra") or {}
        spec = {str(k): v for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()}
        for item in (hydra.get("overrides") or {}).get("task") or []:
            if isinstance(item, str) and "=" in item:
                key, value = item.split("=", 1)
                spec[key.lstrip("+~")] = value
        for key, value in list(spec.items()):
            # replicas.lr=[0.1,0.2] varies optimizer.lr inside each job (a replica batch)
            if key.startswith("replicas.") and key != "replicas.seeds":
                try:
                    values = yaml.safe_load(str(value))
                except yaml.YAMLError:
                    continue
                if isinstance(values, list) and len(values) > 1:
                    spec[f"optimizer.{key.split('.', 1)[1]}"] = ",".join(map(str, values))
        return spec
    return None


def swept_config(resolved: dict, overrides: list[str], run_dir: Path | None = None) -> dict:
    """Top-level config entries for grouping a sweep's runs in W&B (group by, parallel
    coordinates): every key the job set on the command line under its dotted name with its
    resolved value (``"optimizer.C": 10``, as W&B's own sweeps name nested keys; the nested
    config stays as it is), and ``swept``: those of them the sweep varied (several values or
    a search space in its multirun.yaml; outside a sweep, every key set), ``method`` where
    the optimizer choice was swept. Seeds (the replicates), keys that do not change a result
    (rundir.MAY_DIFFER) and other config-group choices (their keys differ instead) are left out."""
    from gradflow_exp.run.rundir import MAY_DIFFER, covered, flatten

    flat = flatten(resolved)
    spec = _sweep_spec(run_dir) if run_dir is not None else None
    out, swept = {}, []
    for item in overrides:
        if "=" not in item or item.startswith("~"):
            continue
        key = item.split("=", 1)[0].lstrip("+")
        if covered(key, (*MAY_DIFFER, "hydra", "resume", "seed", "dataset.seed", "replicas")):
            continue
        varied = spec is None or is_sweep(spec.get(key, ""))
        if key in flat:
            out[key] = flat[key]
        elif key == "optimizer":              # the choice is the config's ``method``
            key = "method"
        else:
            continue                          # another group's choice, or a key the config lacks
        if varied and key not in swept:
            swept.append(key)
    return {**out, "swept": swept}


def method_of(hydra_node, resolved: dict) -> tuple[str, str]:
    """(method, experiment): the optimizer and experiment choices as typed (``optimizer=spm_sgd``),
    from Hydra's record; outside Hydra, the optimizer class (``spm_`` with an SPM node)."""
    choices = {}
    if hydra_node is not None:
        from omegaconf import OmegaConf

        choices = OmegaConf.to_container(hydra_node.runtime.choices, resolve=False) or {}
    method = choices.get("optimizer")
    if not method:
        opt = resolved.get("optimizer") or {}
        method = str(opt.get("_target_", "unknown")).rsplit(".", 1)[-1].lower()
        method = f"spm_{method}" if opt.get("spm") else method
    return str(method), str(choices.get("experiment") or resolved.get("name") or "unknown")


class WandbSink:
    """One W&B run per run directory, live (rows are written to the offline file within
    a second: ``x_transaction_log_flush_interval``), with an id that follows from the run's
    identity (`WandbRun.id`). A resumed run first re-logs the rows of its metrics.csv that
    its earlier W&B segments lack (a SIGKILL can cut those short), so the synced run has
    every row. A logging failure never costs the run: it degrades to offline, then to no
    W&B at all, with a warning."""

    def __init__(self, cfg, info: WandbRun, rows: list[dict] | None = None):
        self.run = None
        self.info = info
        self._logged: set = set()
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a dependency
            log.warning("wandb is not installed; W&B logging disabled")
            return
        from gradflow_exp.run.provenance import ROOT, code_version

        run_dir = Path(info.run_dir)
        self._logged = logged_epochs(run_dir / "wandb", info.id)
        commit = code_version().get("commit")
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                  x_transaction_log_flush_interval=1.0, git_root=str(ROOT),
                                  git_commit=commit if commit and not commit.startswith("unknown") else None)
        kwargs = dict(project=cfg.get("project", "gradflow_exp"), entity=cfg.get("entity"),
                      group=cfg.get("group"), name=info.name, id=info.id, resume="allow",
                      tags=[*(cfg.get("tags") or []), info.method, info.experiment],
                      config={**info.resolved, "method": info.method, "experiment": info.experiment,
                              "overrides": list(info.overrides), "n_params": info.n_params,
                              **swept_config(info.resolved, info.overrides, run_dir)},
                      dir=str(run_dir), job_type=info.job_type or cfg.get("job_type", "train"),
                      reinit="create_new", settings=settings)
        mode = cfg.get("mode", "offline")
        try:
            self.run = _init(wandb, mode, kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to start must not lose the run
            if mode == "offline":
                log.warning("W&B failed to start (%s); continuing without W&B", e)
                return
            log.warning("W&B failed to start in %s mode (%s); falling back to offline", mode, e)
            try:
                self.run = _init(wandb, "offline", kwargs)
            except Exception as e2:  # noqa: BLE001
                log.warning("W&B offline also failed (%s); continuing without W&B", e2)
        if self.run is not None:
            # Per-epoch curves on the epoch axis; errors keep their minimum, accuracies their
            # maximum as the run's summary, live.
            self.run.define_metric("epoch")
            for key in LOWER_IS_BETTER:
                self.run.define_metric(key, step_metric="epoch", summary="min")
            for key in HIGHER_IS_BETTER:
                self.run.define_metric(key, step_metric="epoch", summary="max")
            self.run.define_metric("*", step_metric="epoch")
            for row in rows or []:                 # a resumed run: what its W&B run lacks
                self.log(row)

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None) if self.run is not None else None

    def log(self, row: dict) -> None:
        if self.run is None or row.get("epoch") in self._logged:
            return
        clean = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "q" in clean:
            clean["one_minus_q"] = 1.0 - clean["q"]      # the paper's Fig 6 plots 1 − r/r̂
        try:
            self.run.log(clean)
            self._logged.add(row.get("epoch"))
        except Exception as e:  # noqa: BLE001
            log.warning("W&B log failed (%s); disabling W&B for this run", e)
            self._finish(1)

    def finish(self, summary: dict, files: list[Path] = ()) -> None:
        """The run's outcome (status, flags, final and best values) into its summary and
        tags, ``files`` (metrics.csv, the config) as an artifact; then the run ends."""
        if self.run is None:
            return
        status = str(summary.get("status"))
        flags = [str(f) for f in summary.get("flags") or []]
        try:
            values = {k: v for k, v in _flatten(summary).items()
                      if isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v))}
            values.update(status=status, flags="; ".join(flags), error=summary.get("error") or "")
            self.run.summary.update(values)
            self.run.tags = tuple(dict.fromkeys([*self.run.tags, status, *(f.split(":", 1)[0] for f in flags)]))
            present = [Path(f) for f in files if Path(f).is_file()]
            if present:
                import wandb

                art = wandb.Artifact(f"run-{self.info.id}", type="run-files",
                                     description=f"metrics.csv and config of {self.info.run_dir}")
                for f in present:
                    art.add_file(str(f))
                self.run.log_artifact(art)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B summary failed (%s)", e)
        self._finish(EXIT_CODES.get(status, 1))

    def _finish(self, exit_code: int) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001
                log.warning("W&B finish failed (%s)", e)


def _init(wandb, mode: str, kwargs: dict, wait_s: float = 20.0):
    """``wandb.init``; while the run's id is still held by the W&B process of a run killed a
    moment ago (it notices its parent is gone within seconds), wait for it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return wandb.init(mode=mode, **kwargs)
        except Exception as e:  # noqa: BLE001
            if "in use" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def offline_runs(root: Path, run_id: str | None = None) -> list[Path]:
    """The offline W&B runs below ``root`` (of one run id, if given), oldest first."""
    pattern = f"offline-run-*-{run_id}" if run_id else "offline-run-*"
    return sorted(p for p in Path(root).rglob(pattern) if p.is_dir())


def read_offline(run: Path) -> list[dict]:
    """The records of an offline run's .wandb file (``wandb leet inspect --json``), as dicts;
    a file cut short by a kill gives the records before the cut."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run)],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return []
    records = []
    for line in out.stdout.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def logged_epochs(wandb_dir: Path, run_id: str) -> set:
    """Epochs the earlier offline segments of W&B run ``run_id`` already hold."""
    epochs = set()
    for run in offline_runs(wandb_dir, run_id) if Path(wandb_dir).is_dir() else []:
        for rec in read_offline(run):
            item = (rec.get("history") or {}).get("item") or {}
            if rec.get("type") == "history" and "epoch" in item:
                epochs.add(item["epoch"])
    return epochs


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
