"""Run directories → one tidy DataFrame (one row per run × logged epoch).

Everything the report draws or tabulates comes from this frame, so figures and tables can
never disagree about which runs exist, what they are called, or how they ended.

The programmatic way in (no W&B records are read: a 500-job sweep loads in about a second)::

    from gradflow_exp.report import load_runs, run_table

    df = load_runs(["outputs/fig7/multiruns/2026-01-01_12-00-00"])    # run × epoch
    df.attrs["swept"]                                  # ['optimizer.C', 'optimizer.lam', 'optimizer.lr']
    df.groupby(["optimizer.lr", "epoch"])["test_rel_error"].median()
    runs = run_table(df)                               # one row per run: final_*, best_*, initial_*
    runs.groupby(["optimizer", "optimizer.C"])["final_val_rel_error"].median()
"""
from __future__ import annotations

import functools
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gradflow_exp.training.flags import COLLAPSE_Q, run_flags
from gradflow_exp.training.metrics import METRICS, higher_is_better
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
# Overrides that pick a config group (``optimizer=sav``) name a method or an experiment, not a
# setting: the keys below them are what differs. Only these are told apart without a config.
GROUP_CHOICES = ("optimizer", "experiment", "dataset", "model", "loss", "scheduler", "logger", "trainer",
                 "method", "hparams_search")
# Flags that say a run stopped training while finite (training/flags.py): an auxiliary
# variable that collapsed or froze. Drawn and counted apart from runs that train.
FROZEN_FLAGS = ("aux_collapsed", "stalled")
# The C parser is ~30× faster than PyYAML's pure-Python one; hydra.yaml alone is 4 kB a job.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
    overrides: dict = field(default_factory=dict)  # the job's command-line key=value (strings)


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
        with open(path, "rb") as f:
            return yaml.load(f, Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
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
    return _numeric(m).sort_values("epoch", kind="stable").reset_index(drop=True)


def _numeric(m: pd.DataFrame) -> pd.DataFrame:
    """Text cells (a hand-edited or garbled value) become NaN; numeric columns stay as parsed."""
    for c in m.columns:
        if m[c].dtype == object:
            m[c] = pd.to_numeric(m[c], errors="coerce")
    return m


def read_metrics_many(run_dirs: list[Path]) -> tuple[pd.DataFrame, dict[int, str]]:
    """Every run's metrics.csv as one frame with an integer ``_run`` column (the run's index
    in ``run_dirs``), sorted by (_run, epoch); and {index: why} for files that cannot be read.

    Files with the same header are parsed by one ``pd.read_csv`` call: per-file pandas
    overhead, not I/O, is what makes hundreds of runs slow. A file that does not parse
    cleanly with its group (a bad row, binary garbage, a directory) is read alone by
    `read_metrics`, which names what is wrong with it."""
    groups: dict[str, list[tuple[int, list[str]]]] = {}
    alone: list[int] = []
    for i, d in enumerate(map(Path, run_dirs)):
        try:
            text = (d / "metrics.csv").read_bytes().decode("utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError):
            alone.append(i)
            continue
        header, _, body = text.partition("\n")
        header = header.rstrip("\r")
        lines = [ln for ln in body.splitlines() if ln.strip()]
        if "\0" in text or '"' in text or "epoch" not in header.split(",") or not lines:
            alone.append(i)             # quoting, garbage, no epoch, no rows: the careful path
            continue
        groups.setdefault(header, []).append((i, lines))
    parts, bad = [], {}
    for header, members in groups.items():
        n = [len(lines) for _, lines in members]
        try:
            frame = pd.read_csv(io.StringIO("\n".join([header, *(ln for _, lines in members for ln in lines)])),
                                low_memory=False)
            ok = len(frame) == sum(n) and list(frame.columns) == header.split(",")
        except Exception:  # noqa: BLE001 - some member is malformed: find which, alone
            ok = False
        if not ok:
            alone += [i for i, _ in members]
            continue
        frame.insert(0, "_run", np.repeat([i for i, _ in members], n))
        parts.append(_numeric(frame))
    for i in sorted(alone):
        try:
            m = read_metrics(Path(run_dirs[i]))
        except UnreadableRun as e:
            bad[i] = str(e)
            continue
        if m is not None:
            m.insert(0, "_run", i)
            parts.append(m)
    if not parts:
        return pd.DataFrame({"_run": pd.Series(dtype=int), "epoch": pd.Series(dtype=float)}), bad
    frame = pd.concat(parts, ignore_index=True, sort=False) if len(parts) > 1 else parts[0]
    return frame.sort_values(["_run", "epoch"], kind="stable").reset_index(drop=True), bad


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


def read_run(run_dir: Path, metrics: bool = True) -> Run:
    """One run directory → Run. Missing pieces degrade (status 'incomplete' without a
    summary, 'unknown' experiment without a config) instead of dropping the run.
    ``metrics=False`` leaves metrics.csv to the caller (`read_metrics_many` reads many at once)."""
    run_dir = Path(run_dir)
    summary = _read_summary(run_dir)
    config = flatten(_read_yaml(run_dir / ".hydra" / "config.yaml") or {})
    overrides = parse_overrides(_read_yaml(run_dir / ".hydra" / "overrides.yaml"))
    # hydra.yaml (4 kB) is most of a job's parse time and only says which optimizer was
    # chosen: an ``optimizer=`` override says the same (the choice is what was typed).
    hydra_cfg = None if overrides.get("optimizer") else _read_yaml(run_dir / ".hydra" / "hydra.yaml")
    return Run(run_dir=run_dir,
               experiment=_experiment(run_dir, config, overrides, summary),
               optimizer=_optimizer_choice(hydra_cfg, overrides, config),
               seed=_seed(config, overrides),
               status=str(summary.get("status") or "incomplete"),
               summary=summary, config=config, metrics=read_metrics(run_dir) if metrics else None,
               overrides=overrides)


def _fmt_value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _short_key(key: str) -> str:
    """optimizer.lr → lr (the paper's names); other keys keep their group: trainer.batch_size."""
    return key.split(".", 1)[1] if key.startswith("optimizer.") else key


@functools.lru_cache(maxsize=None)
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


def _scalar(v, override: bool = False):
    """A config or override value as the value it sets: ``"0.01"`` → 0.01 (YAML 1.1 leaves
    ``1e-3`` a string); an override's ``null``, ``true``, ``false`` as Hydra reads them."""
    if not isinstance(v, str):
        return v
    t = v.strip()
    if override and t.lower() in ("null", "true", "false"):
        return None if t.lower() == "null" else t.lower() == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return v


def _setting(run: Run) -> dict:
    """The run's method keys → values: its config's, and its overrides' where the config lacks
    them (a run that failed before writing one; a key added with ``+``). An override that
    picks a config group is the method or the experiment, not a setting."""
    values = {k: _scalar(v) for k, v in run.config.items() if _is_method_key(k)}
    for k, v in run.overrides.items():
        if k in values or k in GROUP_CHOICES or not _is_method_key(k):
            continue
        if not any(c.startswith(k + ".") for c in values):
            values[k] = _scalar(v, override=True)
    return values


_UNSET = object()


def swept_keys(runs: list[Run], settings: list[dict] | None = None) -> list[str]:
    """The keys a sweep varied: those whose values differ between runs of one optimizer in
    one experiment (seed, where and how a run is logged, and its length excluded: NOT_METHOD),
    in the order the overrides name them (``optimizer.C=… optimizer.lam=…``), then the
    config's. A key only some runs have counts if an override set it. (``settings``: the
    runs' `_setting`, when the caller has them.)"""
    settings = settings if settings is not None else [_setting(r) for r in runs]
    order = list(dict.fromkeys(k for r in runs for k in r.overrides))
    order += [k for s in settings for k in s if k not in order]
    order = list(dict.fromkeys(order))
    overridden = {k for r in runs for k in r.overrides}
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault((r.experiment, r.optimizer), []).append(i)
    swept: set[str] = set()
    for idx in groups.values():
        if len(idx) < 2:
            continue
        for k in order:
            if k in swept:
                continue
            have = [settings[i].get(k, _UNSET) for i in idx]
            if any(v is _UNSET for v in have) and k not in overridden:
                continue          # an older run's config lacks a newer key: says nothing
            if len({repr(v) for v in have}) > 1:
                swept.add(k)
    return [k for k in order if k in swept]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def swept_values(settings: list[dict], keys: list[str]) -> dict[str, list]:
    """{key: one value per run} from the runs' `_setting`: floats where every value set is a
    number (NaN where a run lacks the key: sgd has no C), else text."""
    out = {}
    for k in keys:
        vals = [s.get(k) for s in settings]
        if all(v is None or _is_number(v) for v in vals):
            out[k] = [math.nan if v is None else float(v) for v in vals]
        else:
            out[k] = [None if v is None else _fmt_value(v) for v in vals]
    return out


def swept_columns(df: pd.DataFrame) -> list[str]:
    """The swept-key columns of a frame from `load_runs` or `run_table`."""
    return [k for k in df.attrs.get("swept", []) if k in df.columns]


def _flags(run: Run, records: list[dict] | None = None) -> list[str]:
    """The summary's flags, and those `run_flags` finds in metrics.csv that it lacks: a run
    finished before a flag existed (``blown_up``, ``stalled``) gets it here. ``records``:
    the run's rows as `_records` gives them, when the caller has them (else its metrics)."""
    flags = [str(f) for f in run.summary.get("flags") or []]
    if records is None and run.metrics is not None:
        records = _records(run.metrics)
    if not records or not run.summary.get("status"):
        return flags             # no curve, or not ended: nothing to judge at its end
    kinds = {f.split(":", 1)[0] for f in flags}
    return flags + [f for f in run_flags(records, _collapse_q(run)) if f.split(":", 1)[0] not in kinds]


def _records_by_run(curves: pd.DataFrame) -> dict[int, list[dict]]:
    """`_records` of every run in a `read_metrics_many` frame, from one array (a frame per
    run costs more than the rows)."""
    num = curves.drop(columns="_run").select_dtypes("number")
    cols, arr = list(num.columns), num.to_numpy(float).tolist()
    run = curves["_run"].to_numpy()
    out: dict[int, list[dict]] = {}
    for i, row in zip(run.tolist(), arr):
        out.setdefault(i, []).append({c: v for c, v in zip(cols, row) if v == v})     # v == v: not NaN
    return out


def _records(metrics: pd.DataFrame) -> list[dict]:
    """Logged rows as `run_flags` reads them: a key absent where it was not measured."""
    num = metrics.select_dtypes("number")
    cols = list(num.columns)
    return [{c: v for c, v in zip(cols, row) if v == v} for row in num.to_numpy(float).tolist()]   # v == v: not NaN


def _collapse_q(run: Run) -> float:
    """The q below which the run's auxiliary variable counts as collapsed (its config's)."""
    return float(run.config.get("trainer.collapse_q", COLLAPSE_Q))


def _info(run: Run, label: str, records: list[dict] | None = None) -> dict:
    s = run.summary
    wall = s.get("wall_time")
    return {"run_dir": str(run.run_dir), "experiment": run.experiment, "method": label,
            "optimizer": run.optimizer, "seed": run.seed, "status": run.status,
            "epochs_completed": s.get("epochs_completed"),
            "run_wall_time": wall if isinstance(wall, (int, float)) else math.nan,
            "error": s.get("error") or "", "flags": "; ".join(_flags(run, records)), "collapse_q": _collapse_q(run)}


def load_runs(paths) -> pd.DataFrame:
    """Every run below ``paths`` (run or multirun directories) → one tidy frame, one row per
    run × logged epoch (one NaN-epoch row for a run with no metrics): the run-level columns
    (RUN_COLUMNS: run_dir, experiment, method label, optimizer, seed, status, …), one column
    per swept key (``optimizer.lr``, ``optimizer.C``: numbers where the values are, so they
    group and sort), then the union of the metrics.csv columns (``train_*``, ``val_*``,
    ``test_*``, diagnostics). Row order follows the sweep.

    ``df.attrs["swept"]`` lists the swept keys; ``df.attrs["skipped"]`` the runs left out
    because their files could not be read. Example::

        df = load_runs(["outputs/fig7/multiruns/2026-01-01_12-00-00"])
        last = df.groupby("run_dir").tail(1)
        last.groupby(["optimizer", "optimizer.lr"])["test_rel_error"].median()
    """
    runs, skipped = [], []
    for d in find_run_dirs(paths):
        try:
            runs.append(read_run(d, metrics=False))
        except UnreadableRun as e:
            skipped.append(str(e))
    curves, bad = read_metrics_many([r.run_dir for r in runs])
    skipped += list(bad.values())
    keep = [i for i in range(len(runs)) if i not in bad]
    if not keep:
        raise ReportError(f"no readable runs ({'; '.join(skipped)})")
    if bad:
        renum = {old: new for new, old in enumerate(keep)}
        curves = curves[curves["_run"].isin(renum)]
        curves = curves.assign(_run=curves["_run"].map(renum))
        runs = [runs[i] for i in keep]
    records = _records_by_run(curves)
    labels = method_labels(runs)
    settings = [_setting(r) for r in runs]
    keys = swept_keys(runs, settings)
    info = pd.DataFrame([_info(r, lab, records.get(i)) for i, (r, lab) in enumerate(zip(runs, labels))])
    for k, vals in swept_values(settings, keys).items():
        info[k] = vals
    have = set(curves["_run"].unique())
    empty = pd.DataFrame({"_run": [i for i in range(len(runs)) if i not in have], "epoch": math.nan})
    curves = pd.concat([curves, empty], ignore_index=True, sort=False) if len(empty) else curves
    curves = curves.sort_values("_run", kind="stable").reset_index(drop=True)
    rows = info.iloc[curves["_run"].to_numpy()].reset_index(drop=True)
    df = pd.concat([rows, curves.drop(columns="_run")], axis=1)
    df["seed"] = df["seed"].astype("Int64")
    df["epochs_completed"] = pd.to_numeric(df["epochs_completed"], errors="coerce").astype("Int64")
    df.attrs["skipped"] = skipped       # unreadable runs, for the caller's warning
    df.attrs["swept"] = keys
    return df


def flag_kinds(flags: str) -> list[str]:
    """``"aux_collapsed: q = … (…; steps are tiny); blown_up: …"`` → ["aux_collapsed", "blown_up"]
    (a flag's text may itself hold "; ")."""
    return re.findall(r"(?:^|; )([a-z_]+):", flags or "")


def _higher(column: str) -> bool:
    """Accuracy-like (higher is better) by the metric's name, whatever its split (val_ too)."""
    return higher_is_better(column) or any(m.better == "higher" and column.endswith("_" + m.name) for m in METRICS)


SPLIT_PREFIXES = ("train_", "val_", "test_")


def run_table(data) -> pd.DataFrame:
    """One row per run: its identity (RUN_COLUMNS), its swept keys, the last logged epoch,
    and for every ``train_*``/``val_*``/``test_*`` column its ``initial_``, ``final_`` (the
    last logged value: NaN for a run that diverged) and ``best_`` value (over finite values;
    the maximum for accuracies); ``diverged`` (status diverged, or a non-finite final
    training loss), ``frozen`` (flagged aux_collapsed or stalled) and ``blown_up``.

    ``data`` is a frame from `load_runs` or the directories to load. Example::

        runs = run_table(["outputs/fig7/multiruns/2026-01-01_12-00-00"])
        runs[runs.status == "completed"].groupby("optimizer.C")["final_val_rel_error"].median()
    """
    df = data if isinstance(data, pd.DataFrame) else load_runs(data)
    swept = swept_columns(df)
    metrics = [c for c in df.columns if c.startswith(SPLIT_PREFIXES) and pd.api.types.is_numeric_dtype(df[c])]
    ident = df.drop_duplicates("run_dir")[[c for c in RUN_COLUMNS if c in df.columns] + swept].set_index("run_dir")
    curve = df[df["epoch"].notna()]
    by = curve.groupby("run_dir", sort=False)
    vals = curve[metrics].astype(float)
    finite = vals.where(np.isfinite(vals))
    parts = [ident,
             by["epoch"].max().rename("epochs"),
             by.head(1).set_index("run_dir")[metrics].add_prefix("initial_"),
             by.tail(1).set_index("run_dir")[metrics].add_prefix("final_")]
    best = finite.groupby(curve["run_dir"], sort=False)
    parts.append(pd.DataFrame({f"best_{c}": (best[c].max() if _higher(c) else best[c].min()) for c in metrics}))
    out = pd.concat(parts, axis=1).reindex(ident.index)
    kinds = out["flags"].fillna("").map(lambda f: set(flag_kinds(f)))
    train = next((f"final_{c}" for c in ("train_loss", "train_rel_error") if f"final_{c}" in out.columns), None)
    nonfinite = ~np.isfinite(out[train].astype(float)) & out["epochs"].notna() if train else False
    out["diverged"] = (out["status"] == "diverged") | nonfinite
    out["frozen"] = kinds.map(lambda k: bool(k & set(FROZEN_FLAGS)))
    out["blown_up"] = kinds.map(lambda k: "blown_up" in k)
    out = out.reset_index()
    out.attrs["swept"] = swept
    return out


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
