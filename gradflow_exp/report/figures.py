"""Tidy frame → the paper's figure layout: one panel per quantity, epoch on a linear x axis,
errors on a log y axis, one curve per method (median over seeds with a band).

Diverged runs are drawn up to their last finite value and end in an ×, and the legend says
how many seeds diverged or failed: a method that blew up must not look like one that won.
A run that blows up and stays finite leaves the error panels through their top edge
(BLOWUP × the largest starting error), marked ▲, so the others keep their scale.

Diagnostics get panels when their columns exist: the Hessian's λ_max on a log axis with the
stability limit 2/Δt dashed in the same colour (non-positive λ_max is dropped there), λ_min
on a symlog axis (it changes sign: negative at a saddle), and the gradient signal-to-noise
ratio on a log axis. They are measured at fewer epochs than the errors; each is drawn
through its measured epochs, with markers.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from gradflow_exp.report.paper import curves_for  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator, Formatter, MaxNLocator, NullLocator, SymmetricalLogLocator,
)

# (column or derived name, panel title, y scale); a panel appears only when its data exists.
PANELS = [
    ("train_rel_error", "train relative error", "log"),
    ("test_rel_error", "test relative error", "log"),
    ("energy", "energy r²", "log"),
    ("one_minus_q", "1 − r/r̂", "symlog"),
    ("test_accuracy", "test accuracy", "linear"),
    ("hess_lambda_max", "Hessian λ_max (dashed: 2/Δt)", "log"),
    ("hess_lambda_min", "Hessian λ_min", "symlog"),
    ("grad_snr", "gradient SNR ‖ḡ‖²/noise", "log"),
]
# Sparse columns (measured at chosen epochs) and a companion drawn dashed in their panel.
SPARSE = {"hess_lambda_max", "hess_lambda_min", "grad_snr"}
COMPANION = {"hess_lambda_max": "stability_limit"}
BANDS = {"minmax": ("min–max", 0.0, 100.0), "iqr": ("IQR", 25.0, 75.0)}
# Error panels end at BLOWUP × the largest starting value: a run that blew up to 1e10
# (fig10's Adam at lr 5000) would otherwise squeeze every other curve into the bottom
# decade. Where a run leaves the axis it gets a ▲ on the top edge.
CAPPED = {"train_rel_error", "test_rel_error"}
BLOWUP = 10.0
# The energy panel ends FLOOR_DECADES below its largest value: a collapsed r (plain SAV with
# mini-batches underflows to 1e-323, REPRODUCTION.md fig2) would otherwise stretch it over
# 300 decades and flatten every other curve. Where a run leaves the axis it gets a ▼.
FLOORED = {"energy"}
FLOOR_DECADES = 12


def add_derived(df: pd.DataFrame) -> pd.DataFrame:
    """1 − q (q = r/r̂) is what the paper's Fig 6 plots: how far SAV's r drifts from √E."""
    if "q" in df.columns:
        df = df.assign(one_minus_q=1.0 - df["q"].astype(float))
    return df


def panels_for(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    return [p for p in PANELS if p[0] in df.columns and np.isfinite(df[p[0]].astype(float)).any()]


def seed_matrix(g: pd.DataFrame, column: str, scale: str) -> pd.DataFrame:
    """epoch × run matrix of finite values (non-positive ones dropped on a log axis)."""
    v = g[["epoch", "run_dir", column]].dropna(subset=["epoch"]).copy()
    y = v[column].astype(float)
    keep = np.isfinite(y) & ((y > 0) if scale == "log" else True)
    v[column] = y.where(keep)
    v = v.drop_duplicates(["epoch", "run_dir"], keep="last")
    return v.pivot(index="epoch", columns="run_dir", values=column).sort_index()


def median_band(mat: pd.DataFrame, band: str = "minmax"):
    """Median line and band over seeds at each epoch, from the seeds still running there."""
    _, lo_q, hi_q = BANDS[band]
    arr = mat.to_numpy(float)
    has = np.isfinite(arr).any(axis=1)
    med, lo, hi = (np.full(len(arr), np.nan) for _ in range(3))
    if has.any():
        a = arr[has]
        med[has] = np.nanmedian(a, axis=1)
        lo[has] = np.nanpercentile(a, lo_q, axis=1)
        hi[has] = np.nanpercentile(a, hi_q, axis=1)
    return mat.index.to_numpy(float), med, lo, hi


def last_finite(mat: pd.DataFrame, run_dir: str):
    """(epoch, value) where a run's curve stops; None if it never had a finite value."""
    if run_dir not in mat.columns:
        return None
    col = mat[run_dir].dropna()
    return (float(col.index[-1]), float(col.iloc[-1])) if len(col) else None


def blowup_cap(g: pd.DataFrame, column: str) -> float | None:
    """The error panel's top (BLOWUP × the largest of the runs' first values), or None
    when nothing rises above it."""
    if column not in CAPPED or column not in g.columns:
        return None
    v = g[["run_dir", "epoch", column]].dropna().sort_values("epoch", kind="stable")
    v = v[np.isfinite(v[column].astype(float)) & (v[column].astype(float) > 0)]
    if v.empty:
        return None
    cap = BLOWUP * float(v.groupby("run_dir")[column].first().max())
    return cap if float(v[column].max()) > cap else None


def collapse_floor(g: pd.DataFrame, column: str) -> float | None:
    """The energy panel's bottom (FLOOR_DECADES below its largest value), or None when
    nothing falls under it."""
    if column not in FLOORED or column not in g.columns:
        return None
    v = g[column].astype(float)
    v = v[np.isfinite(v)]
    if not (v > 0).any():
        return None
    floor = float(v.max()) * 10.0 ** -FLOOR_DECADES
    return floor if float(v.min()) < floor else None


def first_crossing(mat: pd.DataFrame, run_dir: str, level: float, below: bool = False):
    """Where a run's curve first passes ``level`` (above it, or ``below``) on a log axis: the
    epoch, interpolated between the logged points around it, where its line leaves the axis;
    None if never."""
    if run_dir not in mat.columns:
        return None
    col = mat[run_dir].dropna()
    out = ((col < level) if below else (col > level)).to_numpy()
    if not out.any():
        return None
    i = int(out.argmax())
    if i == 0:
        return float(col.index[0])
    (x0, y0), (x1, y1) = (float(col.index[i - 1]), col.iloc[i - 1]), (float(col.index[i]), col.iloc[i])
    if y1 <= 0:                         # an exact 0 (r² underflowed): it leaves at the next point
        return x1
    return x0 + (x1 - x0) * math.log(level / y0) / math.log(y1 / y0)


def legend_label(method: str, statuses: pd.Series) -> str:
    """'sgd lr=50 (diverged 2/3, failed 1/3)': every status but completed is named."""
    n = len(statuses)
    notes = [f"{st} {int((statuses == st).sum())}/{n}" for st in statuses.unique() if st != "completed"]
    return f"{method} ({', '.join(notes)})" if notes else method


SYMLOG_TICKS = 7


def _set_scale(ax, scale: str, values: np.ndarray) -> None:
    """symlog for 1 − q, which changes sign (RelSAV's r can exceed r̂); linthresh from data."""
    if scale == "symlog":
        v = np.abs(values[np.isfinite(values) & (values != 0)])
        finite = values[np.isfinite(values)]
        if v.size and (finite > 0).all():
            ax.set_yscale("log")
        elif v.size and (finite < 0).all() and v.max() < 10 * v.min():
            pass    # one sign, under a decade: symlog would show no tick; linear reads best
        else:
            linthresh = float(v.min()) if v.size else 1e-12
            ax.set_yscale("symlog", linthresh=linthresh)
            # One tick per decade on each side of 0 overprints when 1 − q spans 10⁻¹⁰…10⁻²
            # of both signs: at most SYMLOG_TICKS, striding over decades.
            locator = SymmetricalLogLocator(linthresh=linthresh, base=10)
            locator.set_params(numticks=SYMLOG_TICKS)
            # ±linthresh sit half a decade from 0 on the axis: their labels overprint 0's
            ticks = [t for t in locator.tick_values(finite.min(), finite.max())
                     if t == 0 or abs(t) > 1.5 * linthresh] if finite.size else []
            ax.yaxis.set_major_locator(FixedLocator(ticks) if len(ticks) >= 2 else locator)
            ax.yaxis.set_minor_locator(NullLocator())
    elif scale == "log":
        ax.set_yscale("log")
        pos = values[np.isfinite(values) & (values > 0)]
        if pos.size and pos.max() < 10 * pos.min():
            # Under one decade matplotlib labels minor ticks as 9.975×10⁻¹; plain numbers read better.
            ax.yaxis.set_major_formatter(PlainDistinct())
            ax.yaxis.set_minor_formatter(PlainDistinct())


class PlainDistinct(Formatter):
    """Plain numbers with as few significant digits (at least 4) as label every tick to
    within 1 % of the tick spacing: fig10's energy r² spans 99.9999…100.0001, which 4
    digits label "100" on every tick."""

    def format_ticks(self, values):
        steps = np.diff(np.unique(values))
        tol = 0.01 * steps.min() if steps.size else math.inf
        for digits in range(4, 18):
            labels = [f"{v:.{digits}g}" for v in values]
            if all(abs(float(lab) - v) <= tol for lab, v in zip(labels, values)):
                break
        return labels

    def __call__(self, x, pos=None):
        return f"{x:.4g}"


def plot_experiment(df: pd.DataFrame, experiment: str, out_dir: Path, band: str = "minmax") -> list[Path]:
    """One figure (PNG and PDF) for one experiment; returns the paths written."""
    g_exp = add_derived(df[df["experiment"] == experiment])
    panels = panels_for(g_exp) or PANELS[:2]
    methods = list(dict.fromkeys(g_exp["method"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ncols = min(len(panels), 4)       # wrap: diagnostics can add up to three panels
    nrows = -(-len(panels) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax in grid.ravel()[len(panels):]:
        ax.set_visible(False)
    axes = grid.ravel()[:len(panels)]
    handles, stopped = [], set()       # statuses of runs that stopped early (marked ×)
    caps = {col: blowup_cap(g_exp, col) for col, _, _ in panels}
    floors = {col: collapse_floor(g_exp, col) for col, _, _ in panels}
    seeds = g_exp.groupby("method", sort=False)["run_dir"].nunique()
    for i, method in enumerate(methods):
        color = colors[i % len(colors)]
        g = g_exp[g_exp["method"] == method]
        statuses = g.groupby("run_dir", sort=False)["status"].first()
        for ax, (col, _, scale) in zip(axes, panels):
            if col not in g.columns:
                continue
            mat = seed_matrix(g, col, scale)
            if mat.empty or not np.isfinite(mat.to_numpy(float)).any():
                continue
            x, med, lo, hi = median_band(mat, band)
            ok = np.isfinite(med)       # NaN rows: not measured there, or after a run stopped
            ax.plot(x[ok], med[ok], color=color, lw=1.4, marker="o" if col in SPARSE else None, ms=3)
            if mat.shape[1] > 1:
                ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18, lw=0)
            if COMPANION.get(col) in g.columns:
                cx, cmed, _, _ = median_band(seed_matrix(g, COMPANION[col], scale), band)
                keep = np.isfinite(cmed)
                ax.plot(cx[keep], cmed[keep], color=color, lw=1.0, ls="--")
            cap = caps[col]
            for run_dir, st in statuses.items():
                end = last_finite(mat, run_dir) if st != "completed" else None
                if end is not None:
                    y = min(end[1], cap) if cap else end[1]
                    ax.plot(end[0], y, marker="x", ms=8, mew=2, color=color, ls="none", zorder=5, clip_on=False)
                    stopped.add(st)
                for edge, below, marker in ((cap, False, "^"), (floors[col], True, "v")):
                    out = first_crossing(mat, run_dir, edge, below) if edge else None
                    if out is not None:
                        ax.plot(out, edge, marker=marker, ms=8, color=color, ls="none", zorder=5, clip_on=False)
        handles.append(Line2D([], [], color=color, lw=1.6, label=legend_label(method, statuses)))
    # the paper's checkpoints (gradflow_exp/report/paper.yaml), once per curve of the figure
    drawn = {}
    for method in methods:
        for curve in curves_for(experiment, str(g_exp[g_exp["method"] == method]["optimizer"].iloc[0])):
            drawn[curve.get("label", "")] = curve
    last = float(g_exp["epoch"].max()) if g_exp["epoch"].notna().any() else 0.0
    for label, curve in drawn.items():
        for ax, (col, _, _) in zip(axes, panels):
            pts = {e: v for e, v in (curve.get(col) or {}).items() if e <= last}   # the table has the rest
            if pts:
                ax.plot(list(pts), list(pts.values()), marker="D", ms=6, mfc="none", mec="k", mew=1.3,
                        ls=":", lw=0.8, color="k", zorder=6)
    if drawn:
        handles.append(Line2D([], [], marker="D", mfc="none", mec="k", color="k", ls=":",
                              label="paper: " + "; ".join(drawn) + " (read off its plots, ±2×)"))
    for ax, (col, title, scale) in zip(axes, panels):
        vals = g_exp[col].astype(float).to_numpy() if col in g_exp.columns else np.array([])
        vals = np.concatenate([vals, [v for c in drawn.values() for e, v in (c.get(col) or {}).items() if e <= last]])
        if COMPANION.get(col) in g_exp.columns:
            vals = np.concatenate([vals, g_exp[COMPANION[col]].astype(float).to_numpy()])
        if caps[col]:
            vals = np.minimum(vals, caps[col])
        if floors[col]:
            vals = np.maximum(vals, floors[col])
        _set_scale(ax, scale, vals)
        if caps[col]:
            ax.set_ylim(top=caps[col])
        if floors[col]:
            # both ends set: autoscale would read the bands' zeros as decades too
            ax.set_ylim(floors[col], 2.0 * floors[col] * 10.0 ** FLOOR_DECADES)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
    if any(caps.values()):
        handles.append(Line2D([], [], color="k", marker="^", ls="none",
                              label=f"above {BLOWUP:g}× the start: off the axis from here"))
    if any(floors.values()):
        handles.append(Line2D([], [], color="k", marker="v", ls="none",
                              label=f"energy below {FLOOR_DECADES} decades under its top: off the axis from here"))
    if stopped:
        handles.append(Line2D([], [], color="k", marker="x", ls="none", mew=2, label="run stopped (" + "/".join(sorted(stopped)) + ")"))
    n_max = int(seeds.max()) if len(seeds) else 0
    sub = f" — median over seeds (n ≤ {n_max}), band {BANDS[band][0]}" if n_max > 1 else ""
    fig.suptitle(f"{experiment}{sub}")
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{_safe(experiment)}_curves"
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "runs"


def plot_all(df: pd.DataFrame, out_dir: Path, band: str = "minmax") -> list[Path]:
    """One figure per experiment found (runs of different problems share no axes)."""
    paths = []
    for exp in dict.fromkeys(df["experiment"]):
        paths += plot_experiment(df, exp, Path(out_dir), band)
    return paths
