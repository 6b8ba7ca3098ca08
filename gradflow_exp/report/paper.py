"""The paper's side of every comparison (paper.yaml beside this file): its curves' values at
checkpoints (markers on the figure, and a table of ours / paper per checkpoint, median over
seeds) and its names for the methods (legends and tables)."""
from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

FILE = Path(__file__).with_name("paper.yaml")
METRICS = ("train_rel_error", "test_rel_error")
# within this factor of the paper's value counts as agreeing: its curves are read off log plots
WITHIN = 2.0


@cache
def _data() -> dict:
    return yaml.safe_load(FILE.read_text()) or {}


def points() -> dict:
    """The paper's curves at checkpoints, keyed by experiment."""
    return _data().get("curves") or {}


def curves_for(experiment: str, optimizer: str) -> list[dict]:
    """The paper's curves that are its value for this method of this experiment."""
    return [c for c in points().get(str(experiment), []) if optimizer in c.get("methods", [])]


def paper_name(experiment: str, optimizer: str) -> str:
    """What the paper calls ``optimizer=...`` in ``experiment``'s figure (paper.yaml `names`):
    the figure's own entry, else the default, else "SPM-" + the base's name for spm_X, else
    the choice as typed."""
    names = _data().get("names") or {}
    for table in (names.get(str(experiment)) or {}, names.get("default") or {}):
        if optimizer in table:
            return str(table[optimizer])
    if optimizer.startswith("spm_"):
        return "SPM-" + paper_name("default", optimizer[len("spm_"):])
    return optimizer


# config keys as the paper writes them, for the part of a method label after the optimizer
SYMBOLS = {"lr": "Δt", "lam": "λ", "C": "C", "eta": "η"}


def display_name(experiment: str, optimizer: str, method: str, drop: tuple[str, ...] = ()) -> str:
    """A method label (``spm_sav lam=4``: the optimizer choice and the keys that differ
    between its runs, gradflow_exp.report.load.method_labels) in the paper's words:
    ``SPM-SAV λ=4``. Keys in ``drop`` are left out (a panel row already says Δt)."""
    rest = method[len(optimizer):] if method.startswith(optimizer) else ""
    parts = [f"{SYMBOLS.get(k, k)}={v}" for k, v in re.findall(r"(\S+?)=(\S+)", rest) if k not in drop]
    return " ".join([paper_name(experiment, optimizer), *parts])


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, method, metric, checkpoint) the paper has a value for: the
    paper's, our median over seeds at that epoch (NaN when no run logged it), their ratio."""
    rows = []
    for (exp, method), g in df.groupby(["experiment", "method"], sort=False):
        optimizer = str(g["optimizer"].iloc[0])
        for curve in curves_for(exp, optimizer):
            for metric in METRICS:
                for epoch, paper in (curve.get(metric) or {}).items():
                    at = g[g["epoch"] == int(epoch)]
                    vals = at[metric].astype(float) if metric in at.columns else pd.Series(dtype=float)
                    vals = vals[vals.notna()]
                    ours = float(vals.median()) if len(vals) else math.nan
                    rows.append({"experiment": exp, "method": method, "paper_curve": curve.get("label", ""),
                                 "metric": metric, "epoch": int(epoch), "paper": float(paper), "ours": ours,
                                 "seeds": int(len(vals)), "ratio": ours / float(paper) if len(vals) else math.nan})
    return pd.DataFrame(rows)


def _verdict(ratio: float) -> str:
    return "" if math.isnan(ratio) else ("✓" if 1 / WITHIN <= ratio <= WITHIN else "✗")


def markdown(t: pd.DataFrame) -> str:
    """Ours against the paper's checkpoints; ✓ within ±2×."""
    if t.empty:
        return ""
    lines = ["| experiment | method | metric | epoch | paper | ours (median) | ours / paper | within 2× |",
             "|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        ours = "not reached" if math.isnan(r.ours) else f"{r.ours:.3g}"
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}"
        lines.append(f"| {r.experiment} | {r.method} | {r.metric} | {r.epoch} | {r.paper:.3g} | {ours} | {ratio} "
                     f"| {_verdict(r.ratio)} |")
    return "\n".join(lines)


def compact(t: pd.DataFrame, df: pd.DataFrame) -> str:
    """The same comparison as a short text table for a terminal (gradflow-reproduce's last
    word): the paper's method names, split, epoch, paper, ours, ratio; one row per checkpoint
    the paper has, those our runs did not reach said so with the epoch they ended at."""
    if t.empty:
        return ""
    optimizers = df.groupby("method", sort=False)["optimizer"].first()
    last = df.groupby("method", sort=False)["epoch"].max()
    rows = [("method", "split", "epoch", "paper", "ours", "ours/paper", "")]
    for r in t.itertuples():
        name = display_name(r.experiment, str(optimizers.get(r.method, r.method)), r.method)
        if math.isnan(r.ours):
            end = last.get(r.method, math.nan)
            ours = "not reached" + ("" if pd.isna(end) else f" (ran to {int(end)})")
        else:
            ours = f"{r.ours:.3g}"
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}"
        rows.append((name, r.metric.split("_", 1)[0], str(r.epoch), f"{r.paper:.3g}", ours, ratio, _verdict(r.ratio)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 1, 4) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)
