"""The paper's checkpoint values (paper.yaml beside this file) against ours: markers on the
figure, and a table of ours / paper per checkpoint (median over seeds)."""
from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

FILE = Path(__file__).with_name("paper.yaml")
METRICS = ("train_rel_error", "test_rel_error")


@cache
def points() -> dict:
    return yaml.safe_load(FILE.read_text()) or {}


def curves_for(experiment: str, optimizer: str) -> list[dict]:
    """The paper's curves that are its value for this method of this experiment."""
    return [c for c in points().get(str(experiment), []) if optimizer in c.get("methods", [])]


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


def markdown(t: pd.DataFrame) -> str:
    """Ours against the paper's checkpoints; ✓ within ±2×."""
    if t.empty:
        return ""
    lines = ["| experiment | method | metric | epoch | paper | ours (median) | ours / paper | within 2× |",
             "|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        ok = "" if math.isnan(r.ratio) else ("✓" if 0.5 <= r.ratio <= 2 else "✗")
        ours = "not reached" if math.isnan(r.ours) else f"{r.ours:.3g}"
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}"
        lines.append(f"| {r.experiment} | {r.method} | {r.metric} | {r.epoch} | {r.paper:.3g} | {ours} | {ratio} | {ok} |")
    return "\n".join(lines)
