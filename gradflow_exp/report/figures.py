"""Tidy frame → the paper's figure layout: train and test error side by side (then the
diagnostics), one panel row per Δt where the runs sweep it, epoch on a linear x axis, errors
on a log y axis labelled at every decade, one curve per method (median over seeds with a
band) under the paper's name for it (report/paper.yaml), and the paper's own values at its
checkpoints as ◇ where it has them.

Methods often coincide (fig7: PM-SGD, PM-SAV, SPM-SGD and SPM-SAV lie on each other), so
each gets its own colour, dash pattern and marker: earlier curves are drawn thick and solid,
later ones thinner and dashed on top, with markers at staggered sparse epochs, so that every
curve stays visible where they overlap.

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
from functools import cache
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator, Formatter, LogFormatterSciNotation, MaxNLocator, NullFormatter, NullLocator,
    SymmetricalLogLocator,
)

from gradflow_exp.config import CONF_DIR  # noqa: E402
from gradflow_exp.report.paper import curves_for, display_name  # noqa: E402

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


def status_notes(statuses: pd.Series) -> list[str]:
    """'diverged 2/3', 'failed 1/3': every status but completed, counted over the runs."""
    n = len(statuses)
    return [f"{st} {int((statuses == st).sum())}/{n}" for st in statuses.unique() if st != "completed"]


def legend_label(method: str, statuses: pd.Series) -> str:
    """'sgd lr=50 (diverged 2/3, failed 1/3)': every status but completed is named."""
    notes = status_notes(statuses)
    return f"{method} ({', '.join(notes)})" if notes else method


# One look per method, in the order the methods are drawn: a colour, a dash pattern, a line
# width and a marker. Coinciding curves (fig7's four methods lie on the same pixels) stay
# apart: the first is thick and solid, each later one thinner and dashed on top of it, so
# the earlier ones show through the gaps; the markers sit at staggered epochs (see
# `marks`). Colour i and pattern (i + i // len(COLORS)) never repeat as a pair before
# len(COLORS) × len(DASHES) methods. Markers avoid ×, ▲, ▼ and ◇, which mean stopped, off the
# axis and the paper.
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]
DASHES = [("solid", "-"), ("dashed", (0, (5.0, 2.0))), ("dashdot", (0, (7.0, 2.0, 1.5, 2.0))),
          ("dotted", (0, (1.2, 1.6))), ("longdash", (0, (10.0, 3.0))), ("dashdotdot", (0, (6.0, 2.0, 1.5, 2.0, 1.5, 2.0)))]
MARKERS = ["o", "s", "P", "p", "*", "h", "8", "H", "1", "2"]
WIDTHS = [3.2, 2.4, 2.0, 1.7, 1.5]
MARKS = 6                     # markers per curve


def method_styles(keys: list[str]) -> dict[str, dict]:
    """Line2D keywords per method (see COLORS): distinct (colour, dash pattern) for every
    method, widths falling in drawing order, later curves above earlier ones."""
    styles = {}
    for i, key in enumerate(keys):
        name, dash = DASHES[(i + i // len(COLORS)) % len(DASHES)]
        styles[key] = {"color": COLORS[i % len(COLORS)], "linestyle": dash, "dash_name": name,
                       "lw": WIDTHS[min(i, len(WIDTHS) - 1)], "marker": MARKERS[i % len(MARKERS)],
                       "zorder": 2 + 0.01 * i, "index": i}
    return styles


def marks(n: int, index: int, count: int) -> tuple[int, int]:
    """``markevery`` for curve ``index`` of ``count`` with n points: about MARKS markers,
    each curve's shifted by a share of the spacing, so coinciding curves' markers alternate."""
    step = max(1, round(n / MARKS))
    return (index * step // max(count, 1)) % step, step


def _line_kw(style: dict) -> dict:
    return {k: style[k] for k in ("color", "linestyle", "lw", "zorder")}


def _marker_kw(style: dict) -> dict:
    # a star reads smaller than a disc of the same size
    return {"marker": style["marker"], "ms": 8.5 if style["marker"] == "*" else 6.5, "mfc": style["color"],
            "mec": "white", "mew": 0.7}


@cache
def method_set(experiment: str) -> tuple[str, ...]:
    """The optimizer choices of an experiment's own method set (its config's
    hydra.sweeper.params.optimizer); empty for an experiment with no config here."""
    path = CONF_DIR / "experiment" / f"{experiment}.yaml"
    try:
        cfg = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return ()
    params = ((((cfg or {}).get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    return tuple(s.strip() for s in str(params.get("optimizer") or "").split(",") if s.strip())


MAX_DT_ROWS = 4     # more Δt than this: one row (a sweep's figure, not the paper's layout)


def run_dts(g: pd.DataFrame) -> pd.Series:
    """Each run's Δt: its ``lr`` column at its first logged row (NaN without one)."""
    if "lr" not in g.columns:
        return pd.Series(np.nan, index=pd.Index(g["run_dir"].unique(), name="run_dir"))
    v = g[["run_dir", "epoch", "lr"]].sort_values("epoch", kind="stable")
    return v.groupby("run_dir", sort=False)["lr"].apply(
        lambda x: float(x.dropna().iloc[0]) if x.notna().any() else np.nan)


def references_of(g: pd.DataFrame, experiment: str) -> set[str]:
    """Methods (labels) outside the experiment's method set: its reference curves
    (Euler(0.01), Adam(1e-3)), drawn in every Δt row."""
    own = method_set(experiment)
    if not own:
        return set()
    return set(g.loc[~g["optimizer"].astype(str).isin(own), "method"])


def dt_rows(g: pd.DataFrame, experiment: str) -> tuple[list[float | None], pd.Series]:
    """The panel rows: one per Δt of the figure's own methods where they run at several
    (fig3, fig4, fig8, fig9: as in the paper), else one row [None]; and each run's Δt."""
    dts = run_dts(g)
    refs = references_of(g, experiment)
    own_runs = g.loc[~g["method"].isin(refs), "run_dir"].unique()
    values = sorted({float(v) for v in dts.reindex(own_runs).dropna()})
    if 2 <= len(values) <= MAX_DT_ROWS:
        return values, dts
    return [None], dts


SYMLOG_TICKS = 7
MAX_DECADE_LABELS = 10      # a log axis over more decades than this labels every k-th decade


def _set_scale(ax, scale: str, values: np.ndarray) -> None:
    """symlog for 1 − q, which changes sign (RelSAV's r can exceed r̂); linthresh from data.
    A log axis over a decade or more starts at the decade at or below its smallest value
    and labels every decade (10⁻³, 10⁻², …), minor ticks between; under a decade, plain
    numbers on every tick."""
    if scale == "symlog":
        v = np.abs(values[np.isfinite(values) & (values != 0)])
        finite = values[np.isfinite(values)]
        if v.size and (finite > 0).all():
            _log_axis(ax, finite)
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
        _log_axis(ax, values)


def _log_axis(ax, values: np.ndarray) -> None:
    ax.set_yscale("log")
    pos = values[np.isfinite(values) & (values > 0)]
    if not pos.size:
        return
    if pos.max() < 10 * pos.min():
        # Under one decade matplotlib labels minor ticks as 9.975×10⁻¹; plain numbers read better.
        ax.yaxis.set_major_formatter(PlainDistinct())
        ax.yaxis.set_minor_formatter(PlainDistinct())
        return
    # Matplotlib's default leaves the decade under the data's minimum off the axis (fig7 at
    # 50 epochs: 1e0 … 1.5e-3 labelled 10⁰, 10⁻¹, 10⁻² only): start at that decade, and
    # put a label on every one (every k-th over many decades: fig2's 1e0 … 1e-31).
    low = math.floor(math.log10(pos.min()))
    high = math.ceil(math.log10(pos.max()))
    stride = max(1, math.ceil((high - low) / MAX_DECADE_LABELS))
    ax.yaxis.set_major_locator(FixedLocator([10.0 ** k for k in range(low, high + 1, stride)]))
    ax.yaxis.set_major_formatter(LogFormatterSciNotation(base=10))
    if stride == 1 and high - low <= 8:
        minor = [m * 10.0 ** k for k in range(low, high) for m in range(2, 10)]
    else:
        minor = [10.0 ** k for k in range(low, high + 1) if (k - low) % stride]
    ax.yaxis.set_minor_locator(FixedLocator(minor))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(bottom=min(10.0 ** low, pos.min() * 10.0 ** -0.1))   # a minimum on a decade keeps a margin


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


def _layout(n_panels: int, n_rows: int) -> tuple[int, int]:
    """(columns, grid rows per Δt row). Train and test always side by side; one Δt: the
    diagnostics wrap under them (2 × 2 for fig7's four), several Δt: a row each, ≤ 4 wide."""
    ncols = 2 if n_rows == 1 and n_panels == 4 else min(n_panels, 4)
    return ncols, -(-n_panels // ncols)


def _title(title: str, dt: float | None) -> str:
    return title if dt is None else f"{title}, Δt = {dt:g}"


def plot_experiment(df: pd.DataFrame, experiment: str, out_dir: Path, band: str = "minmax") -> list[Path]:
    """One figure (PNG and PDF) for one experiment; returns the paths written."""
    g_exp = add_derived(df[df["experiment"] == experiment])
    panels = panels_for(g_exp) or PANELS[:2]
    rows, dts = dt_rows(g_exp, experiment)
    refs = references_of(g_exp, experiment)
    by_row = rows != [None]
    # the legend's name per method label: the paper's, without Δt where a row says it; a
    # reference curve with its own step, as the paper writes it: Euler(0.01), Adam(0.001)
    optimizers = g_exp.groupby("method", sort=False)["optimizer"].first().astype(str)
    names = {}
    for method, optimizer in optimizers.items():
        name = display_name(experiment, optimizer, method, drop=("lr",) if by_row or method in refs else ())
        run_dt = dts.reindex(g_exp.loc[g_exp["method"] == method, "run_dir"].unique()).dropna()
        if method in refs and len(set(run_dt)) == 1:
            name += f"({float(run_dt.iloc[0]):g})"
        names[method] = name
    keys = list(dict.fromkeys(names.values()))
    styles = method_styles(keys)

    ncols, block = _layout(len(panels), len(rows))
    nrows = block * len(rows)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), squeeze=False)
    axes_of = {}                       # (row, column name) → axis
    for r, dt in enumerate(rows):
        cells = grid[r * block:(r + 1) * block].ravel()
        for ax in cells[len(panels):]:
            ax.set_visible(False)
        for ax, (col, _, _) in zip(cells, panels):
            axes_of[(r, col)] = ax
    stopped = set()                    # statuses of runs that stopped early (marked ×)
    caps = {col: blowup_cap(g_exp, col) for col, _, _ in panels}
    floors = {col: collapse_floor(g_exp, col) for col, _, _ in panels}
    seeds = g_exp.groupby("method", sort=False)["run_dir"].nunique()
    notes: dict[str, list[str]] = {k: [] for k in keys}
    paper_here: dict[int, dict[str, dict]] = {r: {} for r in range(len(rows))}   # row → the paper's curves there
    for method in optimizers.index:
        key = names[method]
        style = styles[key]
        g_all = g_exp[g_exp["method"] == method]
        for r, dt in enumerate(rows):
            g = g_all
            if by_row and method not in refs:
                run_dt = g_all["run_dir"].map(dts)      # a run with no lr column: every row
                g = g_all[run_dt.eq(dt) | run_dt.isna()]
            if g.empty:
                continue
            statuses = g.groupby("run_dir", sort=False)["status"].first()
            if by_row and method not in refs:
                notes[key] += [f"Δt={dt:g}: {n}" for n in status_notes(statuses)]
            elif r == 0:
                notes[key] += status_notes(statuses)
            for curve in curves_for(experiment, str(optimizers[method])):
                paper_here[r][curve.get("label", "")] = curve
            for col, _, scale in panels:
                ax = axes_of[(r, col)]
                if col not in g.columns:
                    continue
                mat = seed_matrix(g, col, scale)
                if mat.empty or not np.isfinite(mat.to_numpy(float)).any():
                    continue
                x, med, lo, hi = median_band(mat, band)
                ok = np.isfinite(med)       # NaN rows: not measured there, or after a run stopped
                # gid: which method a line is (the figure's own legend is built from handles)
                ax.plot(x[ok], med[ok], **_line_kw(style), **_marker_kw(style), gid=f"method:{key}",
                        markevery=marks(int(ok.sum()), style["index"], len(keys)) if col not in SPARSE else None)
                if mat.shape[1] > 1:
                    ax.fill_between(x[ok], lo[ok], hi[ok], color=style["color"], alpha=0.15, lw=0)
                if COMPANION.get(col) in g.columns:
                    cx, cmed, _, _ = median_band(seed_matrix(g, COMPANION[col], scale), band)
                    keep = np.isfinite(cmed)
                    ax.plot(cx[keep], cmed[keep], color=style["color"], lw=1.0, ls="--")
                cap = caps[col]
                for run_dir, st in statuses.items():
                    end = last_finite(mat, run_dir) if st != "completed" else None
                    if end is not None:
                        y = min(end[1], cap) if cap else end[1]
                        ax.plot(end[0], y, marker="x", ms=8, mew=2, color=style["color"], ls="none", zorder=5,
                                clip_on=False)
                        stopped.add(st)
                    for edge, below, marker in ((cap, False, "^"), (floors[col], True, "v")):
                        out = first_crossing(mat, run_dir, edge, below) if edge else None
                        if out is not None:
                            ax.plot(out, edge, marker=marker, ms=8, color=style["color"], ls="none", zorder=5,
                                    clip_on=False)
    # the paper's checkpoints (gradflow_exp/report/paper.yaml), once per curve of the row,
    # those within the epochs run (the table has the rest); in the legend only if drawn
    last = float(g_exp["epoch"].max()) if g_exp["epoch"].notna().any() else 0.0
    drawn_labels: list[str] = []
    paper_vals: dict[str, list[float]] = {col: [] for col, _, _ in panels}
    for r, curves in paper_here.items():
        for label, curve in curves.items():
            for col, _, _ in panels:
                pts = {int(e): float(v) for e, v in (curve.get(col) or {}).items() if int(e) <= last}
                if pts:
                    axes_of[(r, col)].plot(list(pts), list(pts.values()), marker="D", ms=7, mfc="none", mec="k",
                                           mew=1.4, ls=":", lw=0.8, color="k", zorder=6, clip_on=False)
                    paper_vals[col] += list(pts.values())
                    drawn_labels += [label] if label not in drawn_labels else []
    for r, dt in enumerate(rows):
        for col, title, scale in panels:
            ax = axes_of[(r, col)]
            run_dt = g_exp["run_dir"].map(dts)
            rows_here = g_exp if not by_row else g_exp[g_exp["method"].isin(refs) | run_dt.eq(dt) | run_dt.isna()]
            vals = rows_here[col].astype(float).to_numpy() if col in rows_here.columns else np.array([])
            vals = np.concatenate([vals, paper_vals[col]])
            if COMPANION.get(col) in rows_here.columns:
                vals = np.concatenate([vals, rows_here[COMPANION[col]].astype(float).to_numpy()])
            # the edges are on the axis in every row: its decades are labelled from them too
            if caps[col]:
                vals = np.append(np.minimum(vals, caps[col]), caps[col])
            if floors[col]:
                vals = np.append(np.maximum(vals, floors[col]), [floors[col], 2.0 * floors[col] * 10.0 ** FLOOR_DECADES])
            _set_scale(ax, scale, vals)
            if caps[col]:
                ax.set_ylim(top=caps[col])
            if floors[col]:
                # both ends set: autoscale would read the bands' zeros as decades too
                ax.set_ylim(floors[col], 2.0 * floors[col] * 10.0 ** FLOOR_DECADES)
            ax.set_title(_title(title, dt))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
            ax.grid(True, which="major", alpha=0.3)
            ax.grid(True, which="minor", alpha=0.08)
    handles = []
    for key in keys:
        style = styles[key]
        label = f"{key} ({', '.join(notes[key])})" if notes[key] else key
        handles.append(Line2D([], [], **_line_kw(style), **_marker_kw(style), label=label))
    if drawn_labels:
        handles.append(Line2D([], [], marker="D", mfc="none", mec="k", mew=1.4, color="k", ls=":",
                              label="paper: " + "; ".join(drawn_labels) + " (read off its plots, ±2×)"))
    if any(caps.values()):
        handles.append(Line2D([], [], color="k", marker="^", ls="none",
                              label=f"above {BLOWUP:g}× the start: off the axis from here"))
    if any(floors.values()):
        handles.append(Line2D([], [], color="k", marker="v", ls="none",
                              label=f"energy below {FLOOR_DECADES} decades under its top: off the axis from here"))
    if stopped:
        handles.append(Line2D([], [], color="k", marker="x", ls="none", mew=2,
                              label="run stopped (" + "/".join(sorted(stopped)) + ")"))
    n_max = int(seeds.max()) if len(seeds) else 0
    sub = f" — median over seeds (n ≤ {n_max}), band {BANDS[band][0]}" if n_max > 1 else ""
    fig.suptitle(f"{experiment}{sub}")
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, handlelength=3.5)
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
