"""A tuned benchmark's answer (gradflow-compare): per problem, each method at its tuned
setting over seeds, how easy it was to tune, where it stops training, and what it costs.

The protocol (BENCHMARK.md): every method gets the same budget of random-search trials on
one seed, selected on the validation split; its best setting is rerun over other seeds and
only those reruns are compared on test. The measures follow DeepOBS (Schneider et al.
2019: final and best test error, speed), Sivaprasad et al. (ICML 2020: tuneability, the
expected best validation error after n random trials) and AlgoPerf (Dahl et al. 2023: epochs
and seconds to a validation target).

- **Tuneability**: the k trials' final validation errors, capped at the untrained model's
  (relative error 1: a trial that diverged, failed or ended above it did not train). The expected best of n trials drawn without replacement
  from the k is exact: with v₍₁₎ ≤ … ≤ v₍ₖ₎, E[min] = Σᵢ v₍ᵢ₎ C(k−i, n−1) / C(k, n). The band is
  the 5–95 % range of that curve over bootstrap resamples of the k trials.
- **Stability**: the fraction of trials that train (completed, finite, final training
  error below its start) per decade of Δt.
- **Target**: ``target`` or, by default, 2 × the best median final validation error among
  the methods: reached by the best, a bar for the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd

from gradflow_exp.report.stats import fmt_num, mean_ci, paired_test, to_markdown

BASELINES = ("sgd", "momentum", "adam")
UNTRAINED = 1.0            # the relative error of a model that learnt nothing
VAL, TEST, TRAIN = "val_rel_error", "test_rel_error", "train_rel_error"


def expected_best(values, n: int) -> float:
    """E[min of n of ``values`` drawn without replacement] (lower is better), exactly."""
    v = np.sort(np.asarray(values, dtype=float))
    k = len(v)
    if not 1 <= n <= k:
        raise ValueError(f"n={n} must be within 1..{k}")
    weights = np.array([comb(k - i, n - 1) for i in range(1, k + 1)], dtype=float) / comb(k, n)
    return float(np.dot(weights, v))


def tuneability(values, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Expected best validation error after n = 1..k trials, with a bootstrap 5–95 % band."""
    v = np.asarray(values, dtype=float)
    k = len(v)
    rng = np.random.default_rng(seed)
    boots = np.array([[expected_best(s, n) for n in range(1, k + 1)]
                      for s in (rng.choice(v, size=k, replace=True) for _ in range(n_boot))])
    return pd.DataFrame({"n": np.arange(1, k + 1), "expected_best": [expected_best(v, n) for n in range(1, k + 1)],
                         "lo": np.percentile(boots, 5, axis=0), "hi": np.percentile(boots, 95, axis=0)})


def trial_scores(trials: pd.DataFrame) -> np.ndarray:
    """Each trial's final validation error, capped at the untrained model's (relative error
    1): a trial that diverged, failed or ended worse than predicting zero did not train, and
    how far it blew up says nothing about how easy the method is to tune."""
    v = pd.to_numeric(trials.get(f"final_{VAL}"), errors="coerce").to_numpy(dtype=float)
    ok = (trials["status"] == "completed").to_numpy() & np.isfinite(v)
    return np.where(ok, np.minimum(v, UNTRAINED), UNTRAINED)


def trains(runs: pd.DataFrame) -> pd.Series:
    """Completed, finite, and its final training error below its start."""
    final = pd.to_numeric(runs.get(f"final_{TRAIN}"), errors="coerce")
    start = pd.to_numeric(runs.get(f"initial_{TRAIN}"), errors="coerce")
    return (runs["status"] == "completed") & np.isfinite(final) & (final < start)


def stability(trials: pd.DataFrame, step: str = "optimizer.lr") -> pd.DataFrame:
    """Fraction of trials that train per decade of Δt."""
    dt = pd.to_numeric(trials[step], errors="coerce")
    decade = np.floor(np.log10(dt)).astype(int)
    ok = trains(trials)
    rows = [{"decade": int(d), "dt_lo": 10.0 ** d, "trials": int((decade == d).sum()),
             "train": int(ok[decade == d].sum())} for d in sorted(decade.unique())]
    out = pd.DataFrame(rows)
    out["fraction"] = out["train"] / out["trials"]
    return out


def time_to(curve: pd.DataFrame, target: float) -> tuple[float, float]:
    """(epoch, seconds) of the first logged row with validation error ≤ target (NaN: never)."""
    hit = curve[pd.to_numeric(curve[VAL], errors="coerce") <= target]
    if hit.empty:
        return math.nan, math.nan
    return float(hit["epoch"].iloc[0]), float(hit["wall_time"].iloc[0])


@dataclass
class MethodResult:
    method: str
    best: dict                       # the tuned setting (key → value), empty if no trial trained
    trials: pd.DataFrame             # run_table of the tuning trials
    runs: pd.DataFrame               # run_table of the reruns over seeds
    curves: pd.DataFrame             # load_runs of the reruns (run × epoch)


def method_row(r: MethodResult, target: float, k: int) -> dict:
    """One line of a problem's table."""
    runs = r.runs
    done = runs[runs["status"] == "completed"] if not runs.empty else runs
    trained = int(trains(r.trials).sum()) if not r.trials.empty else 0
    # Optuna names a best trial even when every trial diverged: no setting was found then
    setting = ", ".join(f"{k.split('.')[-1]}={v:.3g}" for k, v in r.best.items()) if trained else "none (no trial trained)"
    row = {"method": r.method, "setting": setting, "seeds": len(runs), "completed": len(done)}
    for which in ("final", "best"):
        vals = pd.to_numeric(done.get(f"{which}_{TEST}", pd.Series(dtype=float)), errors="coerce")
        mean, half, n = mean_ci(np.log10(vals[vals > 0]))        # errors span decades: CI on log10
        row[f"{which}_test"] = 10 ** mean if n else math.nan
        row[f"{which}_test_lo"] = 10 ** (mean - half) if n > 1 else math.nan
        row[f"{which}_test_hi"] = 10 ** (mean + half) if n > 1 else math.nan
    row["final_val"] = float(pd.to_numeric(done.get(f"final_{VAL}", pd.Series(dtype=float))).median()) \
        if len(done) else math.nan
    hits = [time_to(c, target) for _, c in r.curves.groupby("run_dir")] if not r.curves.empty else []
    reached = [h for h in hits if np.isfinite(h[0])]
    row["reached"] = f"{len(reached)}/{len(hits)}"
    row["epochs_to_target"] = float(np.median([h[0] for h in reached])) if len(reached) * 2 > len(hits) else math.nan
    row["seconds_to_target"] = float(np.median([h[1] for h in reached])) if len(reached) * 2 > len(hits) else math.nan
    wall = pd.to_numeric(done.get("run_wall_time", pd.Series(dtype=float)), errors="coerce")
    epochs = pd.to_numeric(done.get("epochs_completed", pd.Series(dtype=float)), errors="coerce")
    row["s_per_epoch"] = float((wall / epochs).median()) if len(done) else math.nan
    scores = trial_scores(r.trials) if not r.trials.empty else np.array([])
    row["trials"] = len(scores)
    row["trials_train"] = trained
    for n in sorted({1, max(1, k // 2), k}):
        row[f"expected_best_val_{n}"] = expected_best(scores, n) if len(scores) >= n else math.nan
    return row


def problem_table(results: list[MethodResult], target: float, k: int) -> pd.DataFrame:
    """A problem's table, ranked by the reruns' median final validation error, with paired
    tests on final test error against the best baseline over shared seeds."""
    table = pd.DataFrame([method_row(r, target, k) for r in results])
    table = table.sort_values("final_val", na_position="last").reset_index(drop=True)
    base = [r for r in results if r.method in BASELINES and not r.runs.empty]
    best_base = min(base, key=lambda r: float(pd.to_numeric(r.runs.get(f"final_{VAL}"), errors="coerce").median()),
                    default=None)
    table["vs"] = best_base.method if best_base is not None else ""
    p = []
    for m in table["method"]:
        r = next(x for x in results if x.method == m)
        if best_base is None or r is best_base or r.runs.empty:
            p.append(math.nan)
            continue
        a = r.runs.set_index("seed")[f"final_{TEST}"]
        b = best_base.runs.set_index("seed")[f"final_{TEST}"]
        shared = a.index.intersection(b.index)
        p.append(paired_test(a[shared], b[shared], TEST)["p_value"])
    table["p_vs_best_baseline"] = p
    return table


def default_target(results: list[MethodResult]) -> float:
    meds = [float(pd.to_numeric(r.runs.get(f"final_{VAL}"), errors="coerce").median())
            for r in results if not r.runs.empty]
    meds = [m for m in meds if np.isfinite(m)]
    return 2 * min(meds) if meds else math.nan


def markdown(problem: str, table: pd.DataFrame, target: float, k: int) -> str:
    """The table as BENCHMARK.md prints it."""
    t = pd.DataFrame({"method": table["method"], "tuned setting (on validation)": table["setting"]})
    t["final test rel. error (95 % CI)"] = [
        f"{fmt_num(m)} ({fmt_num(lo)}–{fmt_num(hi)})" if np.isfinite(lo) else fmt_num(m)
        for m, lo, hi in zip(table["final_test"], table["final_test_lo"], table["final_test_hi"])]
    t["best test"] = [fmt_num(v) for v in table["best_test"]]
    t[f"p vs {table['vs'].iloc[0] or 'baseline'}"] = [f"{v:.3g}" if np.isfinite(v) else "" for v in table["p_vs_best_baseline"]]
    t["epochs to target"] = [f"{v:g}" if np.isfinite(v) else f"— ({r})" for v, r in zip(table["epochs_to_target"], table["reached"])]
    t["s to target"] = [f"{v:.3g}" if np.isfinite(v) else "—" for v in table["seconds_to_target"]]
    t["s / epoch"] = [f"{v:.3g}" if np.isfinite(v) else "—" for v in table["s_per_epoch"]]
    for n in sorted({1, max(1, k // 2), k}):
        t[f"E[best val] after {n}"] = [fmt_num(v) for v in table[f"expected_best_val_{n}"]]
    t["trials that train"] = [f"{a}/{b}" for a, b in zip(table["trials_train"], table["trials"])]
    head = (f"**{problem}**: target = validation relative error ≤ {fmt_num(target)}; each method tuned with {k} "
            f"random trials (seed 0), its best setting rerun over {int(table['seeds'].max())} seeds; "
            "test error: geometric mean with its 95 % CI; p: paired test on log10 final test error over shared seeds.")
    return head + "\n\n" + to_markdown(t)


def draw(problem: str, results: list[MethodResult], table: pd.DataFrame, out: Path) -> list[Path]:
    """Tuneability curves, stability against Δt and the final test error with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    palette = plt.get_cmap("tab20" if len(results) > 10 else "tab10")
    colors = [palette(i) for i in range(palette.N)]
    ax = axes[0]
    for i, r in enumerate(results):
        if r.trials.empty:
            continue
        tu = tuneability(trial_scores(r.trials))
        c = colors[i % len(colors)]
        ax.plot(tu["n"], tu["expected_best"], color=c, label=r.method, marker="o", ms=3)
        ax.fill_between(tu["n"], tu["lo"], tu["hi"], color=c, alpha=0.15)
    ax.set(yscale="log", xlabel="random-search trials n", ylabel="expected best validation rel. error",
           title="tuneability (band: bootstrap 5–95 %)")
    ax = axes[1]
    for i, r in enumerate(results):
        if r.trials.empty or "optimizer.lr" not in r.trials:
            continue
        st = stability(r.trials)
        ax.plot(st["dt_lo"], st["fraction"], color=colors[i % len(colors)], marker="o", label=r.method)
    ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="Δt (decade)", ylabel="fraction of trials that train",
           title="stability")
    ax = axes[2]
    y = np.arange(len(table))
    lo = (table["final_test"] - table["final_test_lo"]).clip(lower=0).fillna(0)
    hi = (table["final_test_hi"] - table["final_test"]).clip(lower=0).fillna(0)
    ax.errorbar(table["final_test"], y, xerr=[lo, hi], fmt="o", color="k", capsize=3)
    ax.set_yticks(y, table["method"])
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="final test rel. error (95 % CI)", title="tuned, over seeds")
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(problem)
    fig.tight_layout()
    path = Path(out) / f"{problem}_compare.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def load_result(out: Path, problem: str, method: str) -> MethodResult:
    """A method's tuning trials and reruns under ``out/<problem>/<method>/{tune,seeds}``."""
    import yaml

    from gradflow_exp.report.load import ReportError, load_runs, run_table

    def read(d: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        try:
            df = load_runs([d])
        except ReportError:
            return pd.DataFrame(), pd.DataFrame()
        return run_table(df), df

    base = Path(out) / problem / method
    trials, _ = read(base / "tune") if (base / "tune").is_dir() else (pd.DataFrame(), None)
    runs, curves = read(base / "seeds") if (base / "seeds").is_dir() else (pd.DataFrame(), pd.DataFrame())
    results = base / "tune" / "optimization_results.yaml"
    best = dict((yaml.safe_load(results.read_text()) or {}).get("best_params") or {}) if results.is_file() else {}
    return MethodResult(method, best, trials, runs, curves)


def write(out: Path, problems: list[str], methods: list[str], k: int, target: float | None = None) -> str:
    """Every problem's table (CSV, Markdown) and figure into ``out/report``; the Markdown."""
    report = Path(out) / "report"
    report.mkdir(parents=True, exist_ok=True)
    parts = []
    for problem in problems:
        results = [load_result(out, problem, m) for m in methods]
        tgt = target if target is not None else default_target(results)
        table = problem_table(results, tgt, k)
        table.to_csv(report / f"{problem}.csv", index=False)
        md = markdown(problem, table, tgt, k)
        draw(problem, results, table, report)
        tu = pd.concat([tuneability(trial_scores(r.trials)).assign(method=r.method)
                        for r in results if not r.trials.empty] or [pd.DataFrame()])
        tu.to_csv(report / f"{problem}_tuneability.csv", index=False)
        parts.append(md + f"\n\n![{problem}]({problem}_compare.png)")
    text = "\n\n".join(parts)
    (report / "compare.md").write_text(text + "\n")
    return text
