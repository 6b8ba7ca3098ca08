"""Tidy frame → per-run numbers → per-method table and paired tests between methods.

Seeds are the replicates: a method's number is a mean over seeds with a t-interval (few
seeds, unknown variance), and two methods are compared only on the seeds both ran, because
the seed fixes the data and the initialisation shared by every method.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import special

# scipy.stats is imported where a Wilcoxon test needs it: it is a second to import, most
# of a small report's time; the t quantiles and the paired t come from scipy.special.

from gradflow_exp.training.metrics import columns, higher_is_better

ERROR_METRICS = list(columns("lower", reported=True))        # the table's errors, then accuracies
ACCURACY_METRICS = list(columns("higher", reported=True))


def summary_metrics(df: pd.DataFrame) -> list[str]:
    """The metrics the table reports: relative errors always, accuracies when logged."""
    return ERROR_METRICS + [m for m in ACCURACY_METRICS if m in df.columns and df[m].notna().any()]


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the t confidence interval, n) of the finite values.

    The half-width is NaN for n = 1: one seed says nothing about the spread."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = special.stdtrit(n - 1, 0.5 + confidence / 2) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def _finite(s: pd.Series) -> pd.Series:
    return s[np.isfinite(s.astype(float))]


def time_to_target(curve: pd.DataFrame, metric: str, target: float) -> tuple[float, float]:
    """(epoch, wall time in s) of the first logged epoch whose ``metric`` reaches ``target``
    (≤ for errors, ≥ for accuracies); (NaN, NaN) when it never does. Resolution is the
    logging interval (trainer.log_every)."""
    if metric not in curve.columns:
        return math.nan, math.nan
    v = curve[metric].astype(float)
    hit = v >= target if higher_is_better(metric) else v <= target
    hit &= np.isfinite(v)
    if not hit.any():
        return math.nan, math.nan
    row = curve.loc[hit.idxmax()]
    return float(row["epoch"]), float(row.get("wall_time", math.nan))


def per_run(df: pd.DataFrame, metric: str = "test_rel_error", target: float = 1e-3) -> pd.DataFrame:
    """One row per run: identity, swept keys, status, final and best of every reported metric,
    time to target and wall time per epoch. ``final`` is the last logged value (NaN for a run
    that diverged: its last row is the non-finite one); ``best`` is over finite values only.
    Column-wise over all runs at once (a loop over 500 runs' frames takes seconds)."""
    metrics = list(dict.fromkeys(summary_metrics(df) + [metric]))
    swept = [k for k in df.attrs.get("swept", []) if k in df.columns]
    ident = ["run_dir", "experiment", "method", *swept, "seed", "status", "error", "flags"]
    first = df.drop_duplicates("run_dir").set_index("run_dir", drop=False)
    out = first[ident].copy()
    curve = df[df["epoch"].notna()]
    by = curve.groupby("run_dir", sort=False)
    last = by.tail(1).set_index("run_dir")
    for m in metrics:
        if m not in curve.columns:
            out[f"final_{m}"], out[f"best_{m}"] = math.nan, math.nan
            continue
        vals = curve[m].astype(float)
        fin = vals.where(np.isfinite(vals)).groupby(curve["run_dir"], sort=False)
        out[f"final_{m}"] = last[m].astype(float)
        out[f"best_{m}"] = fin.max() if higher_is_better(m) else fin.min()
    out["epochs"] = by["epoch"].max().astype(float)
    out["target_epoch"], out["target_time"] = math.nan, math.nan
    if metric in curve.columns:
        v = curve[metric].astype(float)
        hit = (v >= target if higher_is_better(metric) else v <= target) & np.isfinite(v)
        at = curve[hit].groupby("run_dir", sort=False).head(1).set_index("run_dir")
        out["target_epoch"] = at["epoch"].astype(float)
        out["target_time"] = at["wall_time"].astype(float) if "wall_time" in at.columns else math.nan
    out["wall_per_epoch"] = _wall_per_epoch(first, last)
    return out.reset_index(drop=True)


def _wall_per_epoch(first: pd.DataFrame, last: pd.DataFrame) -> pd.Series:
    """Run wall time / epochs completed (summary.json), else from the last metrics row."""
    wall = first["run_wall_time"].astype(float)
    epochs = first["epochs_completed"].astype(float)
    from_summary = (wall / epochs).where(wall.notna() & epochs.notna() & (epochs > 0))
    if "wall_time" in last.columns:
        e, w = last["epoch"].astype(float), last["wall_time"].astype(float)
        from_curve = (w / e).where(e > 0).reindex(first.index)
    else:
        from_curve = pd.Series(math.nan, index=first.index)
    return from_summary.fillna(from_curve)


def status_counts(statuses) -> str:
    """'2 completed, 1 diverged' — in a fixed order so tables line up."""
    return status_counts_from(pd.Series(list(statuses)).value_counts().to_dict())


def status_counts_from(counts: dict) -> str:
    """`status_counts` of {status: count} (zero counts left out)."""
    order = ["completed", "diverged", "failed", "incomplete"]
    keys = [k for k in order if counts.get(k)] + sorted(k for k in counts if k not in order and counts[k])
    return ", ".join(f"{counts[k]} {k}" for k in keys)


COUNTED = ("completed",)     # statuses whose runs enter means, medians and tests by default


def method_table(runs: pd.DataFrame, metric: str = "test_rel_error", target: float = 1e-3,
                 counted=COUNTED) -> pd.DataFrame:
    """Per (experiment, method): n seeds, status counts, mean/CI/median/n of final and best
    of each metric over seeds, how many seeds reached the target and the median epoch and
    time at which they did, mean wall time per epoch, the earliest and latest last epoch of
    its runs. Numbers only (the Markdown adds text). Column-wise over all methods at once:
    a sweep has hundreds of settings."""
    metrics = [c[len("final_"):] for c in runs.columns if c.startswith("final_")]
    keys = ["experiment", "method"]
    everything = runs.groupby(keys, sort=False)
    out = everything.size().rename("n").to_frame()
    if out.empty:
        return pd.DataFrame()
    out["seeds"] = everything["seed"].nunique()
    by_status = runs.groupby([*keys, "status"], sort=False).size().unstack(fill_value=0).reindex(out.index)
    out["status"] = [status_counts_from(dict(row)) for _, row in by_status.iterrows()]
    # every run is counted by status; only ``counted`` ones (by default those that
    # completed: a run still training has partial values) enter the numbers
    g = runs[runs["status"].isin(counted)] if counted is not None else runs
    at = [g["experiment"], g["method"]]

    def finite(col: str) -> pd.core.groupby.SeriesGroupBy:
        v = g[col].astype(float)
        return v.where(np.isfinite(v)).groupby(at, sort=False)

    ends = finite("epochs")                       # "final" is at each run's last epoch
    out["epochs_min"], out["epochs_max"] = ends.min(), ends.max()
    for st in ("completed", "diverged", "failed"):
        out[f"n_{st}"] = by_status[st].astype(int) if st in by_status.columns else 0
    for kind in ("final", "best"):
        for m in metrics:
            v = finite(f"{kind}_{m}")
            n = v.count().reindex(out.index).fillna(0).astype(int)
            std = v.std(ddof=1).reindex(out.index)
            t95 = special.stdtrit(np.maximum(n - 1, 1), 0.975)
            out[f"{kind}_{m}_mean"] = v.mean()
            out[f"{kind}_{m}_ci95"] = (t95 * std / np.sqrt(n)).where(n > 1)     # one seed: no spread
            out[f"{kind}_{m}_median"] = v.median()
            out[f"{kind}_{m}_n"] = n
    reached = g[g["target_epoch"].notna()].groupby(["experiment", "method"], sort=False)
    out["target_metric"], out["target"] = metric, target
    out["target_reached"] = reached.size().reindex(out.index).fillna(0).astype(int)
    out["target_epoch_median"] = reached["target_epoch"].median().astype(float)
    out["target_time_median"] = reached["target_time"].median().astype(float)
    out["wall_per_epoch_mean"] = finite("wall_per_epoch").mean()
    return out.reset_index()


def holm(pvalues) -> list[float]:
    """Holm–Bonferroni adjusted p values (NaN stays NaN): many pairs, one family."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full_like(p, np.nan)
    order = ok[np.argsort(p[ok])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_test(a, b, metric: str = "test_rel_error") -> dict:
    """Compare two methods on the same seeds. Errors are compared on log10 (they span
    decades; a ratio is what matters); accuracies as they are. Wilcoxon signed-rank for
    n ≥ 6 pairs (below that its smallest p value cannot reach 0.05), else a paired t-test."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not higher_is_better(metric):
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = np.log10(a), np.log10(b)
    n = len(a)
    out = {"n_pairs": n, "test": "", "statistic": math.nan, "p_value": math.nan,
           "mean_diff": float(np.mean(a - b)) if n else math.nan}
    if n < 2:
        out["test"] = "too few pairs"
        return out
    if n >= 6:
        out["test"] = "wilcoxon"
        if np.all(a == b):
            out["statistic"], out["p_value"] = 0.0, 1.0
            return out
        from scipy import stats

        res = stats.wilcoxon(a, b)
        out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    else:
        out["test"] = "paired t"
        d = a - b
        if np.allclose(d, d[0], rtol=1e-12, atol=1e-300):
            # t = mean/0: undefined, and scipy only warns; say so instead of printing inf.
            out["test"] = "paired t (constant difference)"
            return out
        t = float(d.mean() / (d.std(ddof=1) / math.sqrt(n)))           # scipy.stats.ttest_rel's
        out["statistic"], out["p_value"] = t, float(2 * special.stdtr(n - 1, -abs(t)))
    return out


def significance(runs: pd.DataFrame, metric: str = "test_rel_error", counted=COUNTED) -> pd.DataFrame:
    """Every pair of methods within an experiment, on the seeds both ran to a finite final
    ``metric`` (runs that diverged or failed are counted in ``n_excluded``, not compared).
    ``mean_diff`` is mean(a − b) on the compared scale (log10 for errors: −1 means a is 10×
    lower); ``better`` names the method with the better median; p values are Holm-adjusted
    over the experiment's pairs in ``p_holm``."""
    col = f"final_{metric}"
    out = []
    if counted is not None:
        runs = runs[runs["status"].isin(counted)]
    for exp, g in runs.groupby("experiment", sort=False):
        by_seed = {m: h.dropna(subset=["seed"]).drop_duplicates("seed").set_index("seed")[col]
                   for m, h in g.groupby("method", sort=False)}
        rows = []
        for ma, mb in itertools.combinations(by_seed, 2):
            a, b = by_seed[ma], by_seed[mb]
            shared = a.index.intersection(b.index)
            both = shared[np.isfinite(a[shared].astype(float)) & np.isfinite(b[shared].astype(float))]
            res = paired_test(a[both].to_numpy(float), b[both].to_numpy(float), metric)
            ma_med, mb_med = a[both].median(), b[both].median()
            better = ""
            if len(both) and ma_med != mb_med:
                a_wins = ma_med > mb_med if higher_is_better(metric) else ma_med < mb_med
                better = ma if a_wins else mb
            rows.append({"experiment": exp, "method_a": ma, "method_b": mb, "metric": f"final {metric}",
                         "n_shared_seeds": len(shared), "n_excluded": len(shared) - len(both), **res,
                         "median_a": ma_med, "median_b": mb_med, "better": better})
        for r, p in zip(rows, holm([r["p_value"] for r in rows])):
            r["p_holm"] = p
        out += rows
    cols = ["experiment", "method_a", "method_b", "metric", "n_shared_seeds", "n_excluded", "n_pairs",
            "test", "statistic", "p_value", "p_holm", "mean_diff", "median_a", "median_b", "better"]
    return pd.DataFrame(out, columns=cols)


# --- Markdown -------------------------------------------------------------------------

def fmt_num(x, metric: str = "") -> str:
    """Errors in scientific notation (they span decades), accuracies as fractions."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "" if x is None or math.isnan(x) else str(x)
    return f"{x:.4f}" if higher_is_better(metric) else f"{x:.3e}"


def fmt_ci(mean, half, n, total, metric: str = "") -> str:
    """'1.234e-03 ± 2.1e-04', no ± for one seed, '(k/n)' when only k of n seeds had a
    finite value (the others diverged or failed)."""
    if n == 0:
        return "—"
    s = fmt_num(mean, metric)
    if math.isfinite(half):
        s += f" ± {half:.4f}" if higher_is_better(metric) else f" ± {half:.1e}"
    if n < total:
        s += f" ({n}/{total})"
    return s


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table of strings (no tabulate dependency)."""
    cols = list(df.columns)
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


_SHORT = {"train_rel_error": "train rel err", "val_rel_error": "val rel err", "test_rel_error": "test rel err",
          "train_accuracy": "train acc", "val_accuracy": "val acc", "test_accuracy": "test acc"}


def _span(lo: float, hi: float) -> str:
    """Last epochs of a method's runs: '10000', or '1500–10000' when they differ (the
    "final" columns then mix epochs: `gradflow-report --until` compares at one)."""
    if not math.isfinite(lo):
        return ""
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


def method_markdown(table: pd.DataFrame) -> str:
    """The per-method table for humans: one column per (final|best) × metric as mean ± CI."""
    if table.empty:
        return ""
    metric, target = table["target_metric"].iloc[0], table["target"].iloc[0]
    # a metric no run logged (val_* in runs made before the split) is no column
    metrics = [m for m in ERROR_METRICS + ACCURACY_METRICS
               if f"final_{m}_mean" in table.columns and (table[f"final_{m}_n"] > 0).any()]
    cmp = "≥" if higher_is_better(metric) else "≤"
    out = pd.DataFrame({"experiment": table["experiment"], "method": table["method"],
                        "n": table["n"], "status": table["status"],
                        "epochs": [_span(a, b) for a, b in zip(table["epochs_min"], table["epochs_max"])]})
    for kind in ("final", "best"):
        for m in metrics:
            out[f"{kind} {_SHORT.get(m, m)} (mean ± 95% CI)"] = [
                fmt_ci(r[f"{kind}_{m}_mean"], r[f"{kind}_{m}_ci95"], r[f"{kind}_{m}_n"], r["n"], m)
                for _, r in table.iterrows()]
    out[f"median final {_SHORT.get(metric, metric)}"] = [fmt_num(v, metric) for v in table[f"final_{metric}_median"]]
    reach = []
    for _, r in table.iterrows():
        if r["target_reached"] == 0:
            reach.append(("not reached", "not reached"))
            continue
        part = "" if r["target_reached"] == r["n"] else f" ({r['target_reached']}/{r['n']})"
        reach.append((f"{r['target_epoch_median']:g}{part}", f"{r['target_time_median']:.3g}{part}"))
    reached = bool((table["target_reached"] > 0).any())
    if reached:      # a column of "not reached" on every row says one thing: said once below
        out[f"epochs to {_SHORT.get(metric, metric)} {cmp} {target:g} (median)"] = [a for a, _ in reach]
        out["time to target (s, median)"] = [b for _, b in reach]
    out["s / epoch"] = [f"{v:.3g}" if math.isfinite(v) else "" for v in table["wall_per_epoch_mean"]]
    return to_markdown(out)


def target_note(table: pd.DataFrame) -> str:
    """The line that stands for the time-to-target columns `method_markdown` leaves out when
    no run reached the target; "" when some did."""
    if table.empty or (table["target_reached"] > 0).any():
        return ""
    metric, target = table["target_metric"].iloc[0], table["target"].iloc[0]
    return f"No run reached {metric} {'≥' if higher_is_better(metric) else '≤'} {target:g} (--target)."


def significance_markdown(sig: pd.DataFrame) -> str:
    if sig.empty:
        return "(only one method: no pairs to compare)"
    out = sig[["experiment", "method_a", "method_b", "n_pairs", "n_excluded", "test"]].copy()
    out["statistic"] = [f"{v:.4g}" if math.isfinite(v) else "" for v in sig["statistic"]]
    out["p"] = [f"{v:.3g}" if math.isfinite(v) else "" for v in sig["p_value"]]
    out["p (Holm)"] = [f"{v:.3g}" if math.isfinite(v) else "" for v in sig["p_holm"]]
    out["mean diff (log10 a − b)" if not higher_is_better(sig["metric"].iloc[0]) else "mean diff (a − b)"] = \
        [f"{v:+.3g}" if math.isfinite(v) else "" for v in sig["mean_diff"]]
    out["better (median)"] = sig["better"]
    return to_markdown(out)


def problem_runs_markdown(runs: pd.DataFrame) -> str:
    """Runs that did not complete, with their error: failures must be visible, not averaged."""
    bad = runs[runs["status"] != "completed"]
    if bad.empty:
        return ""
    out = pd.DataFrame({"run_dir": bad["run_dir"], "method": bad["method"],
                        "seed": bad["seed"].astype("string").fillna(""), "status": bad["status"],
                        "last epoch": [f"{v:g}" if math.isfinite(v) else "" for v in bad["epochs"]],
                        "error": bad["error"].fillna("")})
    return to_markdown(out)


def flagged_runs_markdown(runs: pd.DataFrame) -> str:
    """Completed runs the runner flagged (a collapsed or stalled auxiliary variable, a
    blown-up error): their numbers are in the table, and the reason to doubt them must be
    beside it."""
    hit = runs[(runs["status"] == "completed") & (runs["flags"].fillna("") != "")]
    if hit.empty:
        return ""
    out = pd.DataFrame({"run_dir": hit["run_dir"], "method": hit["method"],
                        "seed": hit["seed"].astype("string").fillna(""), "flags": hit["flags"]})
    return to_markdown(out)
