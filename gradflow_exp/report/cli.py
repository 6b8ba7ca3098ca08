"""``gradflow-report DIR... [--out DIR] [--target 1e-3] [--metric test_rel_error] [--until EPOCH]``

Reads every run below the given run/multirun directories and writes the figure, the
per-method table and the paired tests into one folder. Input mistakes are one line on
stderr and exit code 2 (no traceback): this is a tool people run by hand on paths.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = __doc__.split("\n\n")[1].split(". Input")[0] + "."


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gradflow-report", description=DESCRIPTION)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun directories (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: FIRST_DIR/report)")
    p.add_argument("--target", type=float, default=1e-3,
                   help="target value of --metric for time-to-target (default 1e-3)")
    p.add_argument("--metric", default="test_rel_error",
                   help="metric for the target, the median column and the paired tests (default test_rel_error)")
    p.add_argument("--band", choices=["minmax", "iqr"], default="minmax",
                   help="band drawn around the median over seeds (default minmax)")
    p.add_argument("--include-unfinished", action="store_true",
                   help="let runs that did not complete (still running, interrupted, diverged, failed) into the "
                        "means, medians and paired tests (default: they are counted by status only)")
    p.add_argument("--wandb", nargs="?", const="offline", choices=["offline", "online"], default=None,
                   help="also log the figures and tables as a W&B run (job_type report) in the experiment's "
                        "group (default offline, under OUT/wandb; sync it with gradflow-sync OUT)")
    p.add_argument("--until", type=int, default=None, metavar="EPOCH",
                   help="compare runs of different lengths at one epoch: drop every row after "
                        "EPOCH; a run that went on past it counts as completed there, flagged on its rows up to it")
    return p.parse_args(argv)


def write_tables(df, out: Path, metric: str, target: float, include_unfinished: bool = False
                 ) -> tuple[list[Path], str]:
    """CSV and Markdown of the per-run, per-method and significance tables; returns the
    paths and the Markdown that goes to stdout."""
    from . import stats

    counted = None if include_unfinished else stats.COUNTED
    runs = stats.per_run(df, metric, target)
    table = stats.method_table(runs, metric, target, counted)
    sig = stats.significance(runs, metric, counted)
    summary_md = stats.method_markdown(table)
    problems = stats.problem_runs_markdown(runs)
    if problems:
        summary_md += "\n\nRuns that did not complete:\n\n" + problems
    flagged = stats.flagged_runs_markdown(runs)
    if flagged:
        summary_md += "\n\nCompleted runs with flags (their numbers are in the table above):\n\n" + flagged
    sig_md = stats.significance_markdown(sig)
    from . import paper

    against = paper.table(df)
    if not against.empty:
        summary_md += "\n\nAgainst the paper's curves at its checkpoints (gradflow_exp/report/paper.yaml):\n\n" + \
            paper.markdown(against)
    files = {"data.csv": lambda p: df.to_csv(p, index=False),
             "runs.csv": lambda p: runs.to_csv(p, index=False),
             "summary.csv": lambda p: table.to_csv(p, index=False),
             "summary.md": lambda p: p.write_text(summary_md + "\n"),
             "significance.csv": lambda p: sig.to_csv(p, index=False),
             "significance.md": lambda p: p.write_text(sig_md + "\n")}
    if not against.empty:
        files["paper.csv"] = lambda p: against.to_csv(p, index=False)
    paths = []
    for name, write in files.items():
        write(out / name)
        paths.append(out / name)
    test_note = ("Paired tests on final " + metric + " over shared seeds "
                 "(Wilcoxon signed-rank for n ≥ 6 pairs, else paired t; errors on log10):")
    return paths, summary_md + "\n\n" + test_note + "\n\n" + sig_md


def report(dirs, out=None, metric="test_rel_error", target=1e-3, band="minmax",
           until=None, include_unfinished=False, wandb_mode=None) -> tuple[list[Path], str]:
    """The whole report; returns (paths written, Markdown). Raises ReportError on bad input."""
    from .figures import plot_all
    from .load import RUN_COLUMNS, ReportError, cut_at, load_runs

    df = load_runs(dirs)
    for why in df.attrs.get("skipped", []):
        print(f"gradflow-report: warning: left out an unreadable run: {why}", file=sys.stderr)
    if until is not None:
        df = cut_at(df, until)
    if metric not in df.columns or metric in RUN_COLUMNS:
        numeric = [c for c in df.columns if c not in RUN_COLUMNS and c.endswith(("error", "mse", "accuracy", "loss"))]
        raise ReportError(f"--metric {metric!r} is not in any metrics.csv (have: {', '.join(numeric)})")
    out = Path(out) if out is not None else Path(dirs[0]) / "report"
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths, md = write_tables(df, out, metric, target, include_unfinished)
    paths += plot_all(df, out, band)
    if wandb_mode is not None:
        log_to_wandb(df, out, paths, wandb_mode, dirs)
    return paths, md


def log_to_wandb(df, out: Path, paths: list[Path], mode: str, dirs) -> None:
    """One W&B run (job_type report) per report, in the experiment's group: every figure as
    an image, the per-method, per-run and significance tables as W&B tables."""
    import pandas as pd
    import wandb

    experiments = [str(e) for e in dict.fromkeys(df["experiment"])]
    run = wandb.init(mode=mode, project="gradflow_exp", group=experiments[0] if len(experiments) == 1 else None,
                     job_type="report", name=f"report {' '.join(map(str, dirs))}", dir=str(out),
                     tags=["report", *experiments], config={"dirs": [str(d) for d in dirs], "experiments": experiments},
                     reinit="create_new", settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    try:
        logged = {}
        for path in paths:
            if path.suffix == ".png":
                logged[f"figure/{path.stem}"] = wandb.Image(str(path))
            elif path.name in ("summary.csv", "runs.csv", "significance.csv", "paper.csv"):
                logged[f"table/{path.stem}"] = wandb.Table(dataframe=pd.read_csv(path).astype(str))
        run.log(logged)
    finally:
        run.finish()


def main(argv=None) -> int:
    args = parse_args(argv)
    from .load import ReportError

    try:
        paths, md = report(args.dirs, args.out, args.metric, args.target, args.band, args.until,
                           args.include_unfinished, args.wandb)
    except ReportError as e:
        print(f"gradflow-report: error: {e}", file=sys.stderr)
        return 2
    print(md)
    print()
    print("wrote:")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
