"""A sweep's answer: each method's best setting, and how sensitive it is to every swept key.

A *method* here is the optimizer choice plus whatever non-numeric keys were swept
(``sav restart=none``); a *setting* is one value of each numeric swept key (C, λ, Δt). From
`load.run_table` (one row per run):

- the best setting of each method, selected on validation (median over seeds of the final
  ``val_<metric>``; a seed that diverged or failed counts as the worst value, so a setting
  that diverges half the time cannot win), never on test, which is reported beside it. Runs
  without a validation split are ranked by the final training loss, and the table says so;
- the stability frontier: the largest Δt (``optimizer.lr``) at which most seeds still train
  (completed, finite, final training error below its start, and not frozen: a collapsed or
  stalled r counts only where it came before the error fell tenfold);
- figures: the final and best metric against each swept numeric key (median over seeds with
  a band, through the best setting; every other run as a grey dot; diverged runs × on the top
  edge, frozen ones ○, blown-up ones ▲: marked, never dropped), a map per pair of keys, and
  the frontier.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gradflow_exp.report.load import SPLIT_PREFIXES, _higher, _short_key, swept_columns
from gradflow_exp.report.stats import fmt_num, to_markdown

STEP_KEY = "optimizer.lr"            # Δt: the frontier's axis
MAX_SHOWN = 8                         # more settings than this in an experiment: curves and tests of the best few
MAX_GRID = 12                         # more distinct values than this on a map axis: a scatter (an Optuna search)
COUNTED = ("completed", "diverged", "failed")   # runs that ended; those still running say nothing yet
OUTCOMES = ("trains", "frozen", "no progress", "diverged")
FROZEN_PROGRESS = 0.1                 # a flagged run whose training error fell below this × its start trained


def base_metric(metric: str) -> str:
    """``test_rel_error`` → ``rel_error``: the metric whatever its split."""
    for p in SPLIT_PREFIXES:
        if metric.startswith(p):
            return metric[len(p):]
    return metric


@dataclass
class Selection:
    """What an experiment's best settings are selected on."""
    column: str                       # val_rel_error, or train_loss where the runs have no validation split
    higher: bool
    note: str = ""                    # said under the table when it is not validation


def selection_for(runs: pd.DataFrame, metric: str) -> Selection:
    """Validation (``val_<metric>``) if every run with a curve logged it; else the training
    loss (runs made before the split, or a mix of old and new runs). Never test."""
    base = base_metric(metric)
    val = f"val_{base}"
    if not any(c.endswith(val) for c in runs.columns):      # --metric train_loss: no val_loss is logged
        val = "val_rel_error"
    has_curve = runs["epochs"].notna()
    logged = pd.Series(False, index=runs.index)
    for kind in ("initial", "best", "final"):
        if f"{kind}_{val}" in runs.columns:
            logged |= runs[f"{kind}_{val}"].notna()
    if has_curve.any() and logged[has_curve].all():
        return Selection(val, _higher(val))
    fallback = "train_loss" if "final_train_loss" in runs.columns else f"train_{base}"
    missing = int((~logged[has_curve]).sum())
    why = ("no validation split in these runs" if missing == int(has_curve.sum())
           else f"{missing} of {int(has_curve.sum())} runs have no validation split")
    return Selection(fallback, _higher(fallback), f"{why}: ranked by {fallback}")


def numeric_keys(runs: pd.DataFrame) -> list[str]:
    return [k for k in swept_columns(runs) if pd.api.types.is_numeric_dtype(runs[k])]


def with_family(runs: pd.DataFrame) -> pd.DataFrame:
    """``family``: the optimizer plus the non-numeric swept keys (``sav restart=none``)."""
    cat = [k for k in swept_columns(runs) if k not in numeric_keys(runs)]
    fam = runs["optimizer"].astype(str)
    for k in cat:
        fam = fam + runs[k].map(lambda v, k=k: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                else f" {_short_key(k)}={v}")
    return runs.assign(family=fam)


def varying(g: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys that take more than one value among these runs."""
    return [k for k in keys if g[k].nunique(dropna=True) > 1]


def _outcome(runs: pd.DataFrame, train_col: str) -> pd.Series:
    """Each run's outcome for the frontier: diverged (or failed), frozen (its auxiliary
    variable collapsed or stalled before the training error fell tenfold), no progress
    (final training error not below its start), trains."""
    final = runs.get(f"final_{train_col}", pd.Series(np.nan, index=runs.index)).astype(float)
    start = runs.get(f"initial_{train_col}", pd.Series(np.nan, index=runs.index)).astype(float)
    bad = runs["diverged"] | (runs["status"] != "completed") | ~np.isfinite(final)
    out = pd.Series("trains", index=runs.index)
    out[~(final < start)] = "no progress"
    # a flag alone is no verdict: SAV's r often collapses after the error has fallen a
    # hundredfold (fig7), and such a run trained; frozen is a collapse that came first
    out[runs["frozen"] & ~(final < FROZEN_PROGRESS * start)] = "frozen"
    out[bad] = "diverged"
    return out


def _score(runs: pd.DataFrame, sel: Selection) -> pd.Series:
    """The selection value of each run: its final value, the worst possible where it did not
    end finite (diverged, failed), NaN where it has not ended."""
    v = runs.get(f"final_{sel.column}", pd.Series(np.nan, index=runs.index)).astype(float)
    worst = -math.inf if sel.higher else math.inf
    ended = runs["status"].isin(COUNTED)
    v = v.where((runs["status"] == "completed") & np.isfinite(v), worst)
    return v.where(ended)


def settings_table(runs: pd.DataFrame, metric: str, selections: dict[str, Selection]) -> pd.DataFrame:
    """One row per (experiment, method, setting): its key values, seeds, the selection value
    (median over seeds, failures as worst; min–max of the finite ones), the test value, and
    ``metric``'s final and best medians (what the figures draw). Column-wise: a sweep can
    have hundreds of settings."""
    base = base_metric(metric)
    keys = numeric_keys(runs)
    if runs.empty:
        return pd.DataFrame()
    score = pd.concat([_score(g, selections[exp]) for exp, g in runs.groupby("experiment", sort=False)])
    completed = runs["status"] == "completed"

    def ok(col: str) -> pd.Series:
        """Values of completed runs, finite ones only."""
        v = runs[col].astype(float) if col in runs.columns else pd.Series(np.nan, index=runs.index)
        return v.where(completed & np.isfinite(v))

    r = runs.assign(_score=score.reindex(runs.index), _test=ok(f"final_test_{base}"),
                    _final=ok(f"final_{metric}"), _best=ok(f"best_{metric}"),
                    _bad=runs["diverged"] | (runs["status"] == "failed"), _frozen=runs["frozen"],
                    _unfinished=~runs["status"].isin(COUNTED))
    r["_fin"] = r["_score"].where(np.isfinite(r["_score"]))
    g = r.groupby(["experiment", "family", "method"], sort=False)
    out = g[keys].first() if keys else g.size().to_frame().iloc[:, :0]
    out["seeds"] = g["_score"].count()
    out["seeds_finite"] = g["_fin"].count()
    for col, name in (("_bad", "diverged"), ("_frozen", "frozen"), ("_unfinished", "unfinished")):
        out[name] = g[col].sum().astype(int)
    out = out.reset_index().rename(columns={"method": "label"})
    out["selected_on"] = [f"final {selections[e].column}" for e in out["experiment"]]
    out["select_median"] = g["_score"].median().to_numpy()
    out["select_min"], out["select_max"] = g["_fin"].min().to_numpy(), g["_fin"].max().to_numpy()
    out["test_metric"] = f"final test_{base}"
    out["test_median"] = g["_test"].median().to_numpy()
    out["test_min"], out["test_max"] = g["_test"].min().to_numpy(), g["_test"].max().to_numpy()
    out["final_median"], out["best_median"] = g["_final"].median().to_numpy(), g["_best"].median().to_numpy()
    return out


def _rank_order(values: pd.Series, higher: bool) -> pd.Series:
    """Sort keys: best first, NaN (nothing ended) last."""
    v = values.astype(float)
    return (-v if higher else v).fillna(math.inf)


def best_table(settings: pd.DataFrame, selections: dict[str, Selection]) -> pd.DataFrame:
    """Each method's best setting (first in sweep order on a tie), ranked within its experiment."""
    out = []
    for exp, g in settings.groupby("experiment", sort=False):
        higher = selections[exp].higher
        best = []
        for fam, h in g.groupby("family", sort=False):
            order = _rank_order(h["select_median"], higher)
            row = h.loc[order.idxmin()].copy()
            row["settings_tried"] = len(h)
            best.append(row)
        b = pd.DataFrame(best)
        b = b.iloc[np.argsort(_rank_order(b["select_median"], higher).to_numpy(), kind="stable")]
        b.insert(1, "rank", range(1, len(b) + 1))
        out.append(b)
    cols = ["experiment", "rank", "family", "label"]
    t = pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)
    t = t.rename(columns={"family": "method"})
    rest = [c for c in t.columns if c not in ("experiment", "rank", "method", "label", "final_median", "best_median")]
    return t[["experiment", "rank", "method", "label", *rest]]


def frontier_table(runs: pd.DataFrame, step: str = STEP_KEY) -> pd.DataFrame:
    """Per (experiment, method, setting of the other numeric keys) where ``step`` was swept:
    the largest value at which most seeds train (``largest_trains``; NaN: at none), the
    smallest larger value at which they do not (``fails_at``) and why, whether the largest
    tried still trains (the frontier is then only a lower bound), and smaller values that
    failed. A search (more than MAX_GRID values of a key) gets one row per method."""
    keys = numeric_keys(runs)
    if step not in keys:
        return pd.DataFrame()
    train = next((c for c in ("train_rel_error", "train_loss") if f"final_{c}" in runs.columns), None)
    if train is None:
        return pd.DataFrame()
    runs = runs[runs["status"].isin(COUNTED)].assign(outcome=lambda r: _outcome(r, train))
    rows = []
    for (exp, fam), g in runs.groupby(["experiment", "family"], sort=False):
        if step not in varying(g, keys):
            continue
        others = [k for k in varying(g, keys) if k != step]
        if any(g[k].nunique() > MAX_GRID for k in (step, *others)):
            # a search (a new point per trial), not a grid: one frontier over all its trials,
            # the other keys not held fixed, instead of one row per trial
            others = []
        for vals, h in (g.groupby(others, sort=True, dropna=False) if others else [((), g)]):
            vals = vals if isinstance(vals, tuple) else (vals,)
            verdict = {}
            for dt, at in h.groupby(step, sort=True):
                counts = at["outcome"].value_counts()
                verdict[float(dt)] = (counts.get("trains", 0) * 2 > len(at), counts)
            ok = [dt for dt, (good, _) in verdict.items() if good]
            largest = max(ok) if ok else math.nan
            above = [dt for dt, (good, _) in verdict.items() if not good and (not ok or dt > largest)]
            fails = min(above) if above else math.nan
            below = [dt for dt, (good, _) in verdict.items() if not good and ok and dt < largest]
            why = ""
            if above:
                counts = verdict[fails][1]
                why = ", ".join(f"{counts[o]}/{int(counts.sum())} {o}" for o in OUTCOMES[::-1] if counts.get(o, 0))
            rows.append({"experiment": exp, "method": fam, **dict(zip(others, vals)), "step_key": step,
                         "largest_trains": largest, "fails_at": fails, "why": why,
                         "bound": "lower bound: the largest tried trains" if ok and largest == max(verdict) else "",
                         "also_fails_at": ", ".join(f"{d:g}" for d in below),
                         "tried": ", ".join(f"{d:g}" for d in verdict)})
    return pd.DataFrame(rows)


def shown_labels(settings: pd.DataFrame, selections: dict[str, Selection]) -> set[str]:
    """The settings the curves figure and the paired tests cover: all of an experiment's when
    there are at most MAX_SHOWN, else each method's best few (MAX_SHOWN in all): 18 curves
    of one method on one axis, or 153 pairwise tests, answer nothing."""
    shown = set()
    for exp, g in settings.groupby("experiment", sort=False):
        if len(g) <= MAX_SHOWN:
            shown |= set(g["label"])
            continue
        k = max(1, MAX_SHOWN // g["family"].nunique())
        for _, h in g.groupby("family", sort=False):
            order = _rank_order(h["select_median"], selections[exp].higher)
            shown |= set(h.loc[order.sort_values(kind="stable").index[:k], "label"])
    return shown


# --- Markdown -------------------------------------------------------------------------

def _range(lo: float, hi: float, metric: str) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return fmt_num(lo, metric) if lo == hi else f"{fmt_num(lo, metric)}–{fmt_num(hi, metric)}"


def _value(v: float, metric: str) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "diverged"          # the median seed did not end finite
    return fmt_num(v, metric) if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def best_markdown(best: pd.DataFrame, selections: dict[str, Selection], keys: list[str]) -> str:
    parts = []
    for exp, b in best.groupby("experiment", sort=False):
        sel = selections[exp]
        test = b["test_metric"].iloc[0].split(" ", 1)[1]
        shown = [k for k in keys if k in b.columns and b[k].notna().any()]
        t = pd.DataFrame({"rank": b["rank"], "method": b["method"]})
        for k in shown:
            t[_short_key(k)] = [f"{v:g}" if isinstance(v, float) and math.isfinite(v) else "" for v in b[k]]
        t[f"{sel.column} (median)"] = [_value(v, sel.column) for v in b["select_median"]]
        t["seeds: min–max"] = [_range(lo, hi, sel.column) for lo, hi in zip(b["select_min"], b["select_max"])]
        t["seeds"] = [f"{f}/{n}" if f < n else f"{n}" for f, n in zip(b["seeds_finite"], b["seeds"])]
        t[f"{test} (median, min–max)"] = [
            f"{_value(m, test)} ({_range(lo, hi, test)})" if math.isfinite(m) else "—"
            for m, lo, hi in zip(b["test_median"], b["test_min"], b["test_max"])]
        t["settings tried"] = b["settings_tried"]
        head = (f"Best setting per method ({exp}), selected on the median over seeds of the final "
                f"{sel.column} (a seed that diverged counts as the worst); {test} is reported, never selected on:")
        parts.append(head + "\n\n" + to_markdown(t) + (f"\n\n{sel.note}" if sel.note else ""))
    return "\n\n".join(parts)


def frontier_markdown(front: pd.DataFrame, max_rows: int | None = None) -> str:
    if front.empty:
        return ""
    parts = []
    for exp, f in front.groupby("experiment", sort=False):
        step = f["step_key"].iloc[0]
        others = [c for c in f.columns if c not in ("experiment", "method", "step_key", "largest_trains", "fails_at",
                                                    "why", "bound", "also_fails_at", "tried")]
        t = pd.DataFrame({"method": f["method"]})
        for k in others:
            t[_short_key(k)] = [f"{v:g}" if isinstance(v, float) and math.isfinite(v) else "" for v in f[k]]
        t[f"largest {_short_key(step)} that trains"] = [
            ("none" if not math.isfinite(v) else f"≥ {v:g}" if b else f"{v:g}")
            for v, b in zip(f["largest_trains"], f["bound"])]
        t["fails at"] = [f"{v:g}" if math.isfinite(v) else "" for v in f["fails_at"]]
        t["why (seeds)"] = f["why"]
        t["also fails at"] = f["also_fails_at"]
        t["tried"] = f["tried"]
        more = ""
        if max_rows is not None and len(t) > max_rows:
            more = f"\n\n({len(t) - max_rows} more rows in frontier.md)"
            t = t.head(max_rows)
        head = (f"Stability frontier ({exp}): the largest {_short_key(step)} (Δt) at which most seeds still "
                "train (completed, finite, final train error below its start, r not frozen before it fell tenfold):")
        parts.append(head + "\n\n" + to_markdown(t) + more)
    return "\n\n".join(parts)


# --- Figures --------------------------------------------------------------------------

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]
DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "key"


def _plain_log(axis) -> None:
    """Log ticks labelled 0.001, not 10⁻³ or 1e-03: mathtext labels are most of a figure's
    drawing time, and a sweep's report draws many. Minor ticks are labelled, thinned as
    matplotlib does, where the axis spans under a decade or two."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    axis.set_major_formatter(Plain())
    axis.set_minor_formatter(Plain(minor_thresholds=(1, 0.4)))


def _x_scale(ax, values) -> None:
    """Log x where the values are positive and span a decade or more."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size and (v > 0).all() and v.max() >= 10 * v.min():
        ax.set_xscale("log")
        _plain_log(ax.xaxis)


def _y_scale(ax, values, higher: bool) -> None:
    """Log y for errors (positive, over a factor 3 or more): they span decades."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not higher and v.size and (v > 0).all() and v.max() > 3 * v.min():
        ax.set_yscale("log")
        _plain_log(ax.yaxis)


@dataclass
class Figures:
    """Where the figures of one report go, and what is said in their file names."""
    out: Path
    prefix: str = ""                 # "<experiment>_" when a report holds several
    paths: list[Path] = field(default_factory=list)

    def save(self, fig, name: str) -> None:
        # constrained layout, no bbox_inches="tight": one draw per figure instead of three,
        # which is most of a report's time on a large sweep
        path = self.out / f"{self.prefix}{name}.png"
        fig.savefig(path, dpi=DPI)
        self.paths.append(path)


def _grid(plt, nrow: int, ncol: int, *, width: float, row: float, top: float, bottom: float, left: float,
          right: float = 0.2, hgap: float = 0.8, wgap: float = 0.9):
    """A figure of nrow × ncol axes with margins in inches (``row``: inches per row, its
    title and x label included; ``hgap``: between rows). A layout engine would find the
    same margins by drawing the figure once more: half of a sweep report's figure time."""
    height = top + bottom + nrow * row
    fig = plt.figure(figsize=(width, height))
    axes = fig.subplots(nrow, ncol, squeeze=False, gridspec_kw=dict(
        left=left / width, right=1 - right / width, top=1 - (top + 0.5) / height, bottom=(bottom + 0.4) / height,
        hspace=hgap / max(row - hgap, 0.5), wspace=wgap / max((width - left - right) / ncol - wgap, 0.5)))
    return fig, axes


def _slice(g: pd.DataFrame, best: pd.Series, fixed: list[str]) -> pd.DataFrame:
    """The runs at the best setting's values of ``fixed`` keys."""
    keep = pd.Series(True, index=g.index)
    for k in fixed:
        keep &= np.isclose(g[k].astype(float), float(best[k]), rtol=1e-12, atol=0) | (g[k].isna() & pd.isna(best[k]))
    return g[keep]


def _mark_runs(ax, g: pd.DataFrame, key: str, col: str, color) -> None:
    """Runs that did not train normally, at their place: × on the top edge (diverged or
    failed: no value), hollow ○ at the value (frozen), ▲ at the value (blown up)."""
    div = g[g["diverged"] | (g["status"] == "failed")]
    if len(div):
        ax.plot(div[key], np.ones(len(div)), ls="none", marker="x", ms=7, mew=1.8, color=color,
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=6)
    ok = g[~(g["diverged"] | (g["status"] == "failed"))]
    y = ok[col].astype(float)
    for flag, marker, kw in (("frozen", "o", {"mfc": "none"}), ("blown_up", "^", {})):
        hit = ok[flag] & np.isfinite(y)
        if hit.any():
            ax.plot(ok.loc[hit, key], y[hit], ls="none", marker=marker, ms=8, mew=1.4, color=color, zorder=6, **kw)


def plot_sensitivity(runs: pd.DataFrame, best: pd.DataFrame, metric: str, figs: Figures, band: str = "minmax") -> None:
    """sensitivity_<key>.png for each numeric swept key: per method (rows) the final and the
    best ``metric`` (columns) against the key, through the method's best setting."""
    plt = _plt()
    from matplotlib.lines import Line2D

    higher = _higher(metric)
    keys = numeric_keys(runs)
    q = (0.0, 100.0) if band == "minmax" else (25.0, 75.0)
    for key in keys:
        fams = [f for f, g in runs.groupby("family", sort=False) if key in varying(g, keys)]
        if not fams:
            continue
        fig, axes = _grid(plt, len(fams), 2, width=9.5, row=3.1, top=0.15, bottom=0.5, left=0.85, hgap=0.9)
        for row, fam in enumerate(fams):
            g = runs[runs["family"] == fam]
            b = best[best["method"] == fam].iloc[0]
            fixed = [k for k in varying(g, keys) if k != key]
            sl = _slice(g, b, fixed)
            color = COLORS[row % len(COLORS)]
            for ax, kind in zip(axes[row], ("final", "best")):
                col = f"{kind}_{metric}"
                if col not in g.columns:
                    ax.set_visible(False)
                    continue
                ok = g[(g["status"] == "completed") & np.isfinite(g[col].astype(float))]
                ax.plot(ok[key], ok[col], ls="none", marker=".", ms=4, color="0.6", zorder=2)
                if fixed:       # the envelope: each value's best median over the other keys' settings
                    med = ok.groupby(fixed + [key], dropna=False)[col].median().groupby(level=key)
                    env = med.max() if higher else med.min()
                    ax.plot(env.index, env.to_numpy(), color=color, lw=1.0, ls="--", zorder=3)
                s_ok = sl[(sl["status"] == "completed") & np.isfinite(sl[col].astype(float))]
                if len(s_ok):
                    by = s_ok.groupby(key)[col]
                    x = by.median().index.to_numpy(float)
                    ax.plot(x, by.median().to_numpy(), color=color, lw=1.8, marker="o", ms=4, zorder=4)
                    if by.size().max() > 1:
                        ax.fill_between(x, by.quantile(q[0] / 100).to_numpy(), by.quantile(q[1] / 100).to_numpy(),
                                        color=color, alpha=0.2, lw=0, zorder=3)
                _mark_runs(ax, g[~g.index.isin(sl.index)], key, col, "0.55")
                _mark_runs(ax, sl, key, col, color)
                if np.isfinite(float(b[key])):
                    ax.axvline(float(b[key]), color=color, lw=0.8, ls=":", zorder=1)
                _x_scale(ax, g[key].astype(float))
                _y_scale(ax, ok[col].astype(float), higher)
                ax.set_xlabel(_short_key(key))
                at = ", ".join(f"{_short_key(k)}={float(b[k]):g}" for k in fixed)
                ax.set_title(f"{fam}: {kind} {metric}" + (f"\n(through {at})" if at else ""), fontsize=9)
                ax.grid(True, which="major", alpha=0.3)
        handles = [Line2D([], [], color="k", lw=1.8, marker="o", ms=4,
                          label=f"median over seeds, band {'min–max' if band == 'minmax' else 'IQR'}"),
                   Line2D([], [], color="k", lw=1.0, ls="--", label="best over the other keys"),
                   Line2D([], [], color="0.6", marker=".", ls="none", label="every run"),
                   Line2D([], [], color="k", ls=":", label="selected setting"),
                   Line2D([], [], color="k", marker="x", mew=1.8, ls="none", label="diverged / failed (top edge)"),
                   Line2D([], [], color="k", marker="o", mfc="none", ls="none", label="frozen (collapsed or stalled r)"),
                   Line2D([], [], color="k", marker="^", ls="none", label="blown up")]
        fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, fontsize=8)
        figs.save(fig, f"sensitivity_{_safe(_short_key(key))}")
        plt.close(fig)


def plot_maps(runs: pd.DataFrame, best: pd.DataFrame, metric: str, figs: Figures) -> None:
    """map_<k1>_<k2>.png for each pair of numeric swept keys: per method the median final
    ``metric`` over seeds at each (k1, k2), the other keys at the best setting; a cell where
    most seeds diverged is hatched and marked ×, one where most froze marked ○."""
    plt = _plt()
    from matplotlib.colors import LogNorm, Normalize

    higher = _higher(metric)
    keys = numeric_keys(runs)
    col = f"final_{metric}"
    if col not in runs.columns:
        return
    for i, k1 in enumerate(keys):
        for k2 in keys[i + 1:]:
            fams = [f for f, g in runs.groupby("family", sort=False) if {k1, k2} <= set(varying(g, keys))]
            if not fams:
                continue
            cells = {}
            for fam in fams:
                g = runs[runs["family"] == fam]
                b = best[best["method"] == fam].iloc[0]
                sl = _slice(g, b, [k for k in varying(g, keys) if k not in (k1, k2)])
                cells[fam] = (sl, b)
            # the colour scale spans what is drawn: the cells' medians (each trial, in a scatter)
            vals = pd.Series([v for sl, _ in cells.values() for v in _map_cells(sl, k1, k2, col)[2].ravel()]
                             if all(_is_grid(sl, k1, k2) for sl, _ in cells.values()) else
                             pd.concat([sl.loc[(sl["status"] == "completed"), col] for sl, _ in cells.values()]),
                             dtype=float)
            vals = vals[np.isfinite(vals)]
            log = bool(not higher and len(vals) and (vals > 0).all() and vals.max() > vals.min())
            norm = (LogNorm(vals.min(), vals.max()) if log else
                    Normalize(vals.min(), vals.max()) if len(vals) else Normalize(0, 1))
            ncol = min(len(fams), 3)
            nrow = -(-len(fams) // ncol)
            fig, axes = _grid(plt, nrow, ncol, width=4.6 * ncol + 1.2, row=3.9, top=0.1, bottom=0.1, left=0.7,
                              right=1.5, hgap=1.1)
            for ax in axes.ravel()[len(fams):]:
                ax.set_visible(False)
            mappable = None
            for ax, fam in zip(axes.ravel(), fams):
                sl, b = cells[fam]
                mappable = _draw_map(ax, sl, b, k1, k2, col, norm) or mappable
                at = ", ".join(f"{_short_key(k)}={float(b[k]):g}" for k in varying(runs[runs["family"] == fam], keys)
                               if k not in (k1, k2))
                ax.set_title(f"{fam}: median final {metric}" + (f"\n(at {at})" if at else ""), fontsize=9)
            if mappable is not None:
                # the bar spans what is drawn, however narrow: its label says how narrow
                span = f" (max/min {norm.vmax / norm.vmin:.4g})" if log else ""
                bar = fig.colorbar(mappable, cax=fig.add_axes((1 - 1.2 / fig.get_figwidth(), 0.15, 0.015, 0.7)),
                                   label=f"final {metric}{span}")
                if log and norm.vmax < 100 * norm.vmin:
                    # under two decades a log bar has one labelled tick or none: five, labelled
                    ticks = np.geomspace(norm.vmin, norm.vmax, 5)
                    bar.set_ticks(ticks, labels=_distinct(ticks))
                    bar.ax.minorticks_off()
            figs.save(fig, f"map_{_safe(_short_key(k1))}_{_safe(_short_key(k2))}")
            plt.close(fig)


def _distinct(values, most: int = 7) -> list[str]:
    """As few significant digits (at least 2, at most ``most``) as tell the values apart."""
    labels: list[str] = []
    for digits in range(2, most + 1):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            break
    return labels


def _is_grid(sl: pd.DataFrame, k1: str, k2: str) -> bool:
    """A grid sweep (few values of each key), not a search (an Optuna trial per setting)."""
    return sl[k1].nunique() <= MAX_GRID and sl[k2].nunique() <= MAX_GRID


def _map_cells(sl: pd.DataFrame, k1: str, k2: str, col: str):
    """(k1 values, k2 values, grid of median finite ``col`` over the cell's completed seeds,
    cells where most seeds diverged or failed, cells where most froze)."""
    xs = sorted(sl[k1].dropna().unique())
    ys = sorted(sl[k2].dropna().unique())
    grid = np.full((len(ys), len(xs)), np.nan)
    bad, frozen = set(), set()
    failed = sl["diverged"] | (sl["status"] == "failed")
    for (x, y), cell in sl.groupby([k1, k2]):
        ix, iy = xs.index(x), ys.index(y)
        done = cell[cell["status"].isin(COUNTED)]
        nbad = int(failed[done.index].sum())
        if nbad and nbad * 2 >= len(done):
            bad.add((ix, iy))
            continue
        fin = done[~failed[done.index]][col].astype(float)
        fin = fin[np.isfinite(fin)]
        if len(fin):
            grid[iy, ix] = float(fin.median())
            if int(done["frozen"].sum()) * 2 > len(done):
                frozen.add((ix, iy))
    return xs, ys, grid, bad, frozen


def _draw_map(ax, sl: pd.DataFrame, b: pd.Series, k1: str, k2: str, col: str, norm):
    ax.set_xlabel(_short_key(k1))
    ax.set_ylabel(_short_key(k2))
    if not _is_grid(sl, k1, k2):
        bad = sl["diverged"] | (sl["status"] == "failed")
        ok = sl[~bad & np.isfinite(sl[col].astype(float))]
        m = ax.scatter(ok[k1], ok[k2], c=ok[col].astype(float), norm=norm, cmap="viridis", s=30)
        ax.scatter(sl.loc[bad, k1], sl.loc[bad, k2], marker="x", color="r", s=30)
        _x_scale(ax, sl[k1].astype(float))
        v2 = sl[k2].astype(float)
        if (v2 > 0).all() and v2.max() >= 10 * v2.min():
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
        return m
    xs, ys, grid, bad, frozen = _map_cells(sl, k1, k2, col)
    for ix, iy in bad:
        ax.add_patch(_hatch(ix, iy))
        ax.text(ix, iy, "×", ha="center", va="center", fontsize=13, color="r")
    m = ax.imshow(grid, origin="lower", cmap="viridis", norm=norm, aspect="auto",
                  extent=(-0.5, len(xs) - 0.5, -0.5, len(ys) - 0.5))
    values = np.unique(grid[np.isfinite(grid)])
    labels = dict(zip(values.tolist(), _distinct(values, most=4)))
    for iy in range(len(ys)):
        for ix in range(len(xs)):
            if not np.isfinite(grid[iy, ix]):
                continue
            ink = "k" if float(norm(grid[iy, ix])) > 0.6 else "w"         # viridis is bright at its top
            if len(xs) * len(ys) <= 64:
                ax.text(ix, iy, labels[float(grid[iy, ix])], ha="center", va="center", fontsize=7, color=ink)
            if (ix, iy) in frozen:
                ax.text(ix, iy + 0.28, "○", ha="center", va="center", fontsize=9, color=ink)
    if np.isfinite(float(b[k1])) and np.isfinite(float(b[k2])) and float(b[k1]) in xs and float(b[k2]) in ys:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((xs.index(float(b[k1])) - 0.5, ys.index(float(b[k2])) - 0.5), 1, 1,
                               fill=False, ec="r", lw=2))
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_ylim(-0.5, len(ys) - 0.5)
    return m


def _hatch(ix: int, iy: int):
    from matplotlib.patches import Rectangle

    return Rectangle((ix - 0.5, iy - 0.5), 1, 1, fill=False, hatch="xx", ec="0.5", lw=0)


OUTCOME_STYLE = {"trains": {"marker": "o"}, "frozen": {"marker": "o", "mfc": "none"},
                 "no progress": {"marker": "v", "mfc": "none"}, "diverged": {"marker": "x", "mew": 2}}


def plot_frontier(runs: pd.DataFrame, front: pd.DataFrame, figs: Figures, step: str = STEP_KEY) -> None:
    """frontier.png: one row per method (and setting of the other keys), Δt on the x axis;
    each tried Δt marked by what most of its seeds did, the frontier as a bar."""
    if front.empty:
        return
    plt = _plt()
    from matplotlib.lines import Line2D

    train = next((c for c in ("train_rel_error", "train_loss") if f"final_{c}" in runs.columns), None)
    runs = runs[runs["status"].isin(COUNTED)].assign(outcome=lambda r: _outcome(r, train))
    others = [c for c in front.columns if c not in ("experiment", "method", "step_key", "largest_trains", "fails_at",
                                                    "why", "bound", "also_fails_at", "tried")]
    fams = list(dict.fromkeys(front["method"]))
    fig, axes = _grid(plt, 1, 1, width=8.5, row=max(1.6, 0.9 + 0.32 * len(front)), top=0.05, bottom=0.3, left=2.4, right=1.9,
                      hgap=0.8)
    ax = axes[0, 0]
    labels = []
    points: dict[tuple, list] = {}          # (colour, outcome) → [(Δt, row)]: one artist each
    for row, (_, f) in enumerate(front.iloc[::-1].iterrows()):
        g = runs[runs["family"] == f["method"]]
        for k in others:
            if pd.notna(f[k]):
                g = g[np.isclose(g[k].astype(float), float(f[k]))]
        color = COLORS[fams.index(f["method"]) % len(COLORS)]
        for dt, at in g.groupby(step):
            top = at["outcome"].value_counts().reindex(OUTCOMES, fill_value=0)
            # as the table judges it: trains only where most seeds do, else what most others did
            out = "trains" if top["trains"] * 2 > len(at) else top.drop("trains").idxmax()
            points.setdefault((color, out), []).append((dt, row))
        if np.isfinite(f["largest_trains"]):
            points.setdefault((color, "frontier"), []).append((f["largest_trains"], row))
        labels.append(" ".join([f["method"], *(f"{_short_key(k)}={float(f[k]):g}" for k in others if pd.notna(f[k]))]))
    for (color, out), xy in points.items():
        x, y = zip(*xy)
        style = {"marker": "|", "ms": 18, "mew": 2.5} if out == "frontier" else {"ms": 7, **OUTCOME_STYLE[out]}
        ax.plot(x, y, ls="none", color=color, **style)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    _x_scale(ax, runs[step].astype(float))
    ax.set_xlabel(f"{_short_key(step)} (Δt)")
    ax.grid(True, axis="x", alpha=0.3)
    handles = [Line2D([], [], color="k", ls="none", ms=7, label=o, **OUTCOME_STYLE[o]) for o in OUTCOMES]
    handles.append(Line2D([], [], color="k", ls="none", marker="|", ms=14, mew=2.5, label="largest Δt that trains"))
    fig.legend(handles=handles, loc="upper right", frameon=False, fontsize=8,
               title="most seeds", title_fontsize=8)
    ax.set_title("Stability frontier", fontsize=10)
    figs.save(fig, "frontier")
    plt.close(fig)


# --- Everything -----------------------------------------------------------------------

@dataclass
class Sensitivity:
    """The tables of one report (figures are drawn by `draw`)."""
    runs: pd.DataFrame                # run_table + family
    settings: pd.DataFrame
    best: pd.DataFrame
    frontier: pd.DataFrame
    selections: dict[str, Selection]
    shown: set[str]                   # labels the curves and the paired tests cover
    keys: list[str]                   # numeric swept keys

    def markdown(self, max_rows: int | None = None) -> tuple[str, str, str]:
        """(best.md, frontier.md, the part for stdout)."""
        best_md = best_markdown(self.best, self.selections, self.keys)
        front_md = frontier_markdown(self.frontier)
        short = frontier_markdown(self.frontier, max_rows) if max_rows else front_md
        return best_md, front_md, "\n\n".join(p for p in (best_md, short) if p)


def analyse(runs: pd.DataFrame, metric: str) -> Sensitivity:
    """``runs`` from `load.run_table`."""
    runs = with_family(runs)
    selections = {exp: selection_for(g, metric) for exp, g in runs.groupby("experiment", sort=False)}
    settings = settings_table(runs, metric, selections)
    best = best_table(settings, selections)
    return Sensitivity(runs=runs, settings=settings, best=best, frontier=frontier_table(runs),
                       selections=selections, shown=shown_labels(settings, selections), keys=numeric_keys(runs))


def draw(sens: Sensitivity, metric: str, out: Path, band: str = "minmax") -> list[Path]:
    """Every sensitivity figure of every experiment into ``out``; the paths written."""
    exps = list(dict.fromkeys(sens.runs["experiment"]))
    paths = []
    for exp in exps:
        figs = Figures(Path(out), prefix=f"{_safe(exp)}_" if len(exps) > 1 else "")
        runs = sens.runs[sens.runs["experiment"] == exp]
        runs.attrs = sens.runs.attrs
        best = sens.best[sens.best["experiment"] == exp]
        # what the best setting was selected on (validation), so the figures and the table agree
        sel = sens.selections.get(exp)
        shown = sel.column if sel is not None and sel.column.startswith("val_") else metric
        if shown in {c[len("final_"):] for c in runs.columns if c.startswith("final_")}:
            plot_sensitivity(runs, best, shown, figs, band)
            plot_maps(runs, best, shown, figs)
        if not sens.frontier.empty:
            plot_frontier(runs, sens.frontier[sens.frontier["experiment"] == exp], figs)
        paths += figs.paths
    return paths
