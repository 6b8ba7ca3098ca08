"""Run directories → one tidy DataFrame (one row per run × logged epoch).

Everything the report draws or tabulates comes from this frame, so figures and tables can
never disagree about which runs exist, what they are called, or how they ended.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from gradflow_exp.training.flags import COLLAPSE_Q, run_flags
from gradflow_exp.run.rundir import EPOCHS, MAY_DIFFER, covered, flatten

RUN_MARKERS = ("summary.json", "metrics.csv")
# Directories that hold a run's internals, never another run.
SKIP_DIRS = {".hydra", ".hydra_pending", "wandb", "__pycache__"}
# Config keys whose differences do not make another method: those a run may be resumed with
# (rundir.MAY_DIFFER: how it is logged and checkpointed), the seed (the replicate axis), and
# where or how long it ran and what it logs besides (diagnostics only add columns; a
# replica's own values are in its optimizer.* and seed keys).
NOT_METHOD = (*MAY_DIFFER, "seed", "dataset.seed", "optimizer.spm.seed", "device", "trainer.eval_chunk", "trainer.log_every", EPOCHS,
              "diagnostics", "replicas", "hydra", "resume", "name", "optimizer._target_")
RUN_COLUMNS = ["run_dir", "experiment", "method", "optimizer", "seed", "status",
               "epochs_completed", "run_wall_time", "error", "flags", "collapse_q"]


class ReportError(Exception):
    """A problem with the user's input, reported as one line (exit code 2), no traceback."""


class UnreadableRun(Exception):
    """A run directory whose files cannot be read: named in a warning and left out."""


@dataclass
class Run:
    """What one run directory says about itself, before labels are assigned across runs."""
    run_dir: Path
    experiment: str
    optimizer: str
    seed: int | None
    status: str
    summary: dict
    config: dict = field(default_factory=dict)     # flattened, unresolved (interpolations kept)
    metrics: pd.DataFrame | None = None


def _natural_key(path: Path):
    """Sort job dirs 0, 1, 2, …, 10 (not 0, 1, 10, 2): keeps the sweep's method order."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(paths) -> list[Path]:
    """Every directory under ``paths`` holding summary.json or metrics.csv (a run), sorted.

    A run directory is not searched further: runs are not nested, and its subfolders are
    W&B and Hydra internals. Raises ReportError for a missing path or one with no runs, so
    a typo is one clear line instead of an empty report.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"{p}: no such file or directory")
        if not p.is_dir():
            raise ReportError(f"{p}: not a directory (give a run or multirun directory)")
        here = sorted(_walk(p), key=_natural_key)
        if not here:
            raise ReportError(f"{p}: no runs found (no summary.json or metrics.csv below it)")
        found += [d for d in here if d not in found]
    return found


def _walk(d: Path):
    if any((d / f).is_file() for f in RUN_MARKERS):
        yield d
        return
    for sub in d.iterdir():
        if sub.is_dir() and not sub.is_symlink() and sub.name not in SKIP_DIRS:
            yield from _walk(sub)


def _read_yaml(path: Path):
    """Plain YAML (interpolations stay as strings): a half-written file must not stop a report."""
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())    # Python's json reads NaN/Infinity as floats
    except (OSError, ValueError):
        return {"status": "failed", "error": "summary.json unreadable"}


def read_metrics(run_dir: Path) -> pd.DataFrame | None:
    """metrics.csv with numeric columns, sorted by epoch; None when absent or empty
    (a run killed before its first row, or one that failed on bad input); UnreadableRun
    when it is there but cannot be read as one."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    try:
        m = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    except Exception as e:  # noqa: BLE001 - a directory, binary garbage, a bad row
        raise UnreadableRun(f"{path}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    if m.empty:
        return None
    if "epoch" not in m.columns:
        raise UnreadableRun(f"{path}: no epoch column")
    m = m.apply(pd.to_numeric, errors="coerce")
    return m.sort_values("epoch", kind="stable").reset_index(drop=True)


def parse_overrides(items) -> dict:
    """Hydra's overrides.yaml list (``key=value``, maybe ``+key``/``++key``) → dict."""
    out = {}
    for item in items or []:
        if not isinstance(item, str) or "=" not in item:
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+~")] = value
    return out


def _optimizer_choice(hydra_cfg, overrides: dict, config: dict) -> str:
    """The optimizer config-group choice: what the user typed (``optimizer=sav``), as Hydra
    recorded it; else the optimizer class, with ``spm_`` when the SPM node is present."""
    choices = ((hydra_cfg or {}).get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    if choices.get("optimizer"):
        return str(choices["optimizer"])
    if overrides.get("optimizer"):
        return str(overrides["optimizer"])
    target = config.get("optimizer._target_")
    if not target:
        return "unknown"
    name = str(target).rsplit(".", 1)[-1].lower()
    spm = any(k == "optimizer.spm" or k.startswith("optimizer.spm.") for k in config)
    return f"spm_{name}" if spm and not name.startswith("spm") else name


def _seed(config: dict, overrides: dict):
    for v in (config.get("seed"), overrides.get("seed")):
        try:
            return int(v)
        except (TypeError, ValueError):
            continue
    return None


def _experiment(run_dir: Path, config: dict, overrides: dict, summary: dict) -> str:
    """Config ``name``; else what the overrides or the W&B run name say; else, for a job
    with no config at all, the sweep's multirun.yaml one level up (same experiment)."""
    if config.get("name"):
        return str(config["name"])
    if overrides.get("experiment"):
        return str(overrides["experiment"])
    m = re.search(r"(?:^|,)experiment=([^,]+)", str(summary.get("name") or ""))
    if m:
        return m.group(1)
    sweep = _read_yaml(run_dir.parent / "multirun.yaml")
    if isinstance(sweep, dict) and sweep.get("name"):
        return str(sweep["name"])
    return "unknown"


def read_run(run_dir: Path) -> Run:
    """One run directory → Run. Missing pieces degrade (status 'incomplete' without a
    summary, 'unknown' experiment without a config) instead of dropping the run."""
    run_dir = Path(run_dir)
    summary = _read_summary(run_dir)
    config = flatten(_read_yaml(run_dir / ".hydra" / "config.yaml") or {})
    overrides = parse_overrides(_read_yaml(run_dir / ".hydra" / "overrides.yaml"))
    hydra_cfg = _read_yaml(run_dir / ".hydra" / "hydra.yaml")
    return Run(run_dir=run_dir,
               experiment=_experiment(run_dir, config, overrides, summary),
               optimizer=_optimizer_choice(hydra_cfg, overrides, config),
               seed=_seed(config, overrides),
               status=str(summary.get("status") or "incomplete"),
               summary=summary, config=config, metrics=read_metrics(run_dir))


def _fmt_value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _short_key(key: str) -> str:
    """optimizer.lr → lr (the paper's names); other keys keep their group: trainer.batch_size."""
    return key.split(".", 1)[1] if key.startswith("optimizer.") else key


def _is_method_key(key: str) -> bool:
    return not covered(key, NOT_METHOD)


def method_labels(runs: list[Run]) -> list[str]:
    """Label = optimizer choice + every config value that differs between runs of that choice
    in the same experiment, seed excluded: ``sav lr=0.1 lam=4``. Keys that are equal across
    the group (the method's own defaults) are left out so labels stay short."""
    labels = [r.optimizer for r in runs]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault((r.experiment, r.optimizer), []).append(i)
    for idx in groups.values():
        with_cfg = [i for i in idx if runs[i].config]
        # Only keys every run of the group has: runs written by an older version lack newer
        # keys, which says nothing about the method.
        keys = [k for k in (runs[with_cfg[0]].config if with_cfg else {})
                if _is_method_key(k) and all(k in runs[i].config for i in with_cfg)]
        varying = [k for k in keys
                   if len({repr(runs[i].config.get(k, "<unset>")) for i in with_cfg}) > 1]
        for i in with_cfg:
            parts = [f"{_short_key(k)}={_fmt_value(runs[i].config.get(k, '<unset>'))}" for k in varying]
            labels[i] = " ".join([runs[i].optimizer, *parts])
    return labels


def _flags(run: Run) -> list[str]:
    """The summary's flags, and those `run_flags` finds in metrics.csv that it lacks: a run
    finished before a flag existed (``blown_up``, ``stalled``) gets it here."""
    flags = [str(f) for f in run.summary.get("flags") or []]
    if run.metrics is None or not run.summary.get("status"):
        return flags             # no curve, or not ended: nothing to judge at its end
    kinds = {f.split(":", 1)[0] for f in flags}
    return flags + [f for f in run_flags(_records(run.metrics), _collapse_q(run)) if f.split(":", 1)[0] not in kinds]


def _records(metrics: pd.DataFrame) -> list[dict]:
    """Logged rows as `run_flags` reads them: a key absent where it was not measured."""
    return [{k: v for k, v in r.items() if not pd.isna(v)} for r in metrics.to_dict("records")]


def _collapse_q(run: Run) -> float:
    """The q below which the run's auxiliary variable counts as collapsed (its config's)."""
    return float(run.config.get("trainer.collapse_q", COLLAPSE_Q))


def _run_rows(run: Run, label: str) -> pd.DataFrame:
    s = run.summary
    wall = s.get("wall_time")
    info = {"run_dir": str(run.run_dir), "experiment": run.experiment, "method": label,
            "optimizer": run.optimizer, "seed": run.seed, "status": run.status,
            "epochs_completed": s.get("epochs_completed"),
            "run_wall_time": wall if isinstance(wall, (int, float)) else math.nan,
            "error": s.get("error") or "", "flags": "; ".join(_flags(run)), "collapse_q": _collapse_q(run)}
    if run.metrics is None:
        # No curve (failed on bad input, or killed before logging): one row keeps the run
        # visible in every table; its epoch and metrics are NaN.
        return pd.DataFrame([{**info, "epoch": math.nan}])
    rows = run.metrics.copy()
    for k, v in reversed(list(info.items())):
        rows.insert(0, k, [v] * len(rows))
    return rows


def load_runs(paths) -> pd.DataFrame:
    """Every run below ``paths`` → one tidy frame: run-level columns (RUN_COLUMNS) then the
    union of metrics.csv columns, one row per run × logged epoch (one NaN row for a run with
    no metrics). Row order follows the sweep, so methods appear in the order they were run."""
    runs, skipped = [], []
    for d in find_run_dirs(paths):
        try:
            runs.append(read_run(d))
        except UnreadableRun as e:
            skipped.append(str(e))
    if not runs:
        raise ReportError(f"no readable runs ({'; '.join(skipped)})")
    labels = method_labels(runs)
    df = pd.concat([_run_rows(r, lab) for r, lab in zip(runs, labels)], ignore_index=True, sort=False)
    df["seed"] = df["seed"].astype("Int64")
    df["epochs_completed"] = pd.to_numeric(df["epochs_completed"], errors="coerce").astype("Int64")
    df.attrs["skipped"] = skipped       # unreadable runs, for the caller's warning
    return df


def cut_at(df: pd.DataFrame, until: int) -> pd.DataFrame:
    """The frame as if every run had stopped at epoch ``until`` (``--until``): later rows
    dropped; a run that went on past it is ``completed`` there, with the flags its rows up
    to ``until`` raise (`run_flags`) in place of those of its real end. Runs that ended at
    ``until`` or earlier keep their status and flags."""
    if until < 0:
        raise ReportError(f"--until {until}: an epoch must be >= 0")
    runs = df.groupby("run_dir")
    # a run still going (or killed) has no epochs_completed: its curve alone says how far it got
    cut = (runs["epoch"].transform("max") > until) | (runs["epochs_completed"].transform("max") > until).fillna(False)
    keep = ~(df["epoch"] > until)                    # keeps the NaN-epoch row of a run with no curve
    df, cut = df[keep].copy(), cut[keep].astype(bool)
    df.loc[cut, "status"] = "completed"
    df.loc[cut, "epochs_completed"] = until
    df.loc[cut, "run_wall_time"] = math.nan           # the whole run's; per-epoch time comes from the curve
    metrics = [c for c in df.columns if c not in RUN_COLUMNS]
    flags = {run_dir: "; ".join(run_flags(_records(rows[metrics]), float(rows["collapse_q"].iloc[0])))
             for run_dir, rows in df[cut].groupby("run_dir")}
    df.loc[cut, "flags"] = df.loc[cut, "run_dir"].map(flags)
    return df
