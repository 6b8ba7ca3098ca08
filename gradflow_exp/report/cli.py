"""``gradflow-report DIR... [--out DIR] [--target 1e-3] [--metric test_rel_error] [--until EPOCH]``

Reads every run below the given run/multirun directories and writes the figures, the
per-method tables and the paired tests into one folder; on a sweep, each method's best
setting (selected on validation), the stability frontier in Δt, and how the result moves
with every swept key come first. Input mistakes, and an output folder that cannot be
written, are one line on stderr and exit code 2 (no traceback): this is a tool people run
by hand on paths.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DESCRIPTION = " ".join(__doc__.split("\n\n")[1].split(". Input")[0].split()) + "."
# The terminal gets the answer first; long tables and lists of runs stay in their files
# past this many rows.
MAX_PRINTED_ROWS = 20
MAX_PRINTED_RUNS = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gradflow-report", description=DESCRIPTION)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun directories (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: FIRST_DIR/report)")
    p.add_argument("--target", type=float, default=1e-3,
                   help="target value of --metric for time-to-target (default 1e-3)")
    p.add_argument("--metric", default="test_rel_error",
                   help="metric for the target, the median column, the paired tests and the sensitivity figures "
                        "(default test_rel_error); best settings are selected on its val_ form")
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


def _capped(md: str, what: str, file: str, max_rows: int = MAX_PRINTED_ROWS) -> str:
    """A Markdown table cut to ``max_rows`` rows for the terminal, saying where the rest is."""
    lines = md.splitlines()
    rows = [i for i, ln in enumerate(lines) if ln.startswith("|")]
    if len(rows) <= max_rows + 2:
        return md
    keep = set(rows[:max_rows + 2])
    cut = [ln for i, ln in enumerate(lines) if i not in rows or i in keep]
    return "\n".join(cut) + f"\n\n({len(rows) - 2 - max_rows} more {what} in {file})"


def _counts(runs, column: str, what: str) -> str:
    """'36 runs: aux_collapsed 36' — a long list of runs said in one line."""
    from .load import flag_kinds

    counts = runs[column].fillna("").astype(str).map(lambda f: flag_kinds(f) or [f]).explode().value_counts()
    return f"{len(runs)} {what}: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def _paper_printed(against, df, head: str) -> str:
    """The paper comparison for the terminal: checkpoints past the runs' end are counted,
    not listed, when they are all there is or the table is long."""
    from . import paper

    missed = against["ours"].isna()
    if missed.all():
        end = df["epoch"].max()
        return (f"{head} none of its {len(against)} checkpoint values (epochs {against['epoch'].min()}–"
                f"{against['epoch'].max()}) is within these runs (they end by epoch {end:g}); paper.csv lists them.")
    if len(against) > MAX_PRINTED_ROWS and missed.any():
        return (head + "\n\n" + _capped(paper.markdown(against[~missed]), "checkpoints", "paper.csv")
                + f"\n\n({int(missed.sum())} checkpoints past the runs' end: in paper.csv)")
    return head + "\n\n" + _capped(paper.markdown(against), "checkpoints", "paper.csv")


def build_tables(df, metric: str, target: float, include_unfinished: bool = False) -> tuple[dict, list[str]]:
    """Everything the report writes as text, computed before anything is written: {file
    name: writer}, and the sections printed to stdout, the answer (best settings, frontier)
    first."""
    from . import paper, sensitivity, stats
    from .load import run_table

    counted = None if include_unfinished else stats.COUNTED
    runs = stats.per_run(df, metric, target)
    sens = sensitivity.analyse(run_table(df), metric)
    table = stats.method_table(runs, metric, target, counted)
    many = len(sens.shown) < runs["method"].nunique()
    # More settings than a reader can compare: the paired tests between each method's best.
    sig = stats.significance(runs[runs["method"].isin(sens.shown)] if many else runs, metric, counted)
    note = stats.target_note(table)
    summary_md = stats.method_markdown(table) + (f"\n\n{note}" if note else "")
    shown_md = (stats.method_markdown(table[table["method"].isin(sens.shown)]) + (f"\n\n{note}" if note else "")
                if many else summary_md)
    problems = stats.problem_runs_markdown(runs)
    flagged = stats.flagged_runs_markdown(runs)
    against = paper.table(df)
    paper_md = paper.markdown(against) if not against.empty else ""
    notes = {"problems": "Runs that did not complete:", "flagged": "Completed runs with flags (their numbers are in the table above):",
             "paper": "Against the paper's curves at its checkpoints (gradflow_exp/report/paper.yaml):"}
    for key, md in (("problems", problems), ("flagged", flagged), ("paper", paper_md)):
        if md:
            summary_md += f"\n\n{notes[key]}\n\n{md}"
    sig_md = stats.significance_markdown(sig)
    best_md, front_md, answer = sens.markdown(MAX_PRINTED_ROWS)

    printed = [answer] if answer else []
    head = ("Per method and setting (summary.md):" if not many else
            f"Per method, the best {len(sens.shown)} of {runs['method'].nunique()} settings "
            "(every setting in summary.md):")
    printed.append(head + "\n\n" + shown_md)
    bad = runs[runs["status"] != "completed"]
    if problems:
        printed.append(notes["problems"] + "\n\n" + problems if len(bad) <= MAX_PRINTED_RUNS
                       else _counts(bad.assign(s=bad["status"]), "s", "runs did not complete (listed in summary.md)"))
    hit = runs[(runs["status"] == "completed") & (runs["flags"].fillna("") != "")]
    if flagged:
        printed.append(notes["flagged"] + "\n\n" + flagged if len(hit) <= MAX_PRINTED_RUNS
                       else _counts(hit, "flags", "completed runs flagged (listed in summary.md)"))
    if paper_md:
        printed.append(_paper_printed(against[against["method"].isin(sens.shown)] if many else against, df,
                                      notes["paper"]))
    test_note = ("Paired tests on final " + metric + " over shared seeds "
                 "(Wilcoxon signed-rank for n ≥ 6 pairs, else paired t; errors on log10)"
                 + (", between the settings above:" if many else ":"))
    printed.append(test_note + "\n\n" + _capped(sig_md, "pairs", "significance.md"))

    files: dict[str, Callable[[Path], object]] = {
        "best.csv": lambda p: sens.best.to_csv(p, index=False),
        "best.md": lambda p: p.write_text(best_md + "\n"),
        "data.csv": lambda p: df.to_csv(p, index=False),
        "runs.csv": lambda p: runs.to_csv(p, index=False),
        "settings.csv": lambda p: sens.settings.to_csv(p, index=False),
        "summary.csv": lambda p: table.to_csv(p, index=False),
        "summary.md": lambda p: p.write_text(summary_md + "\n"),
        "significance.csv": lambda p: sig.to_csv(p, index=False),
        "significance.md": lambda p: p.write_text(test_note + "\n\n" + sig_md + "\n")}
    if not sens.frontier.empty:
        files["frontier.csv"] = lambda p: sens.frontier.to_csv(p, index=False)
        files["frontier.md"] = lambda p: p.write_text(front_md + "\n")
    if not against.empty:
        files["paper.csv"] = lambda p: against.to_csv(p, index=False)
    return {"files": files, "sens": sens, "many": many}, printed


class Staged:
    """Files written into a hidden folder inside ``out`` and moved into place only when all
    of them are whole: a full disk or a dead process never leaves a truncated data.csv.
    Any OSError (read-only, no space, ``out`` under a file) is a ReportError naming ``out``;
    on any failure what this report wrote is removed, and ``out`` too if it made it."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.made: list[Path] = []
        self.tmp: Path | None = None

    def __enter__(self) -> Staged:
        from .load import ReportError

        if self.out.exists() and not self.out.is_dir():
            raise ReportError(f"--out {self.out}: exists and is not a directory")
        try:
            for p in [self.out, *self.out.parents]:
                if p.is_dir():
                    break
                self.made.append(p)            # innermost first: the order to remove them in
            self.out.mkdir(parents=True, exist_ok=True)
            for old in self.out.glob(".gradflow-report-*"):      # a killed report's, an hour on
                if time.time() - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=".gradflow-report-", dir=self.out))
        except OSError as e:
            self._clean([])
            raise ReportError(f"--out {self.out}: cannot write there ({e.strerror or e})") from None
        return self

    def path(self, name: str) -> Path:
        return self.tmp / name

    def commit(self, names: list[str]) -> list[Path]:
        """Move the staged files into ``out`` (a rename each: atomic, no space needed)."""
        from .load import ReportError

        moved = []
        try:
            for name in names:
                os.replace(self.tmp / name, self.out / name)
                moved.append(self.out / name)
        except OSError as e:
            self._clean(moved)
            raise ReportError(f"--out {self.out}: cannot write there ({e.strerror or e})") from None
        shutil.rmtree(self.tmp, ignore_errors=True)
        return moved

    def _clean(self, moved: list[Path]) -> None:
        for p in moved:
            p.unlink(missing_ok=True)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for d in self.made:                  # the folders this report made, innermost first
            try:
                d.rmdir()
            except FileNotFoundError:
                continue                      # never made: the mkdir failed before it
            except OSError:
                break                         # holds something else: leave it and those above

    def __exit__(self, kind, exc, tb) -> bool:
        from .load import ReportError

        if kind is None:
            return False
        self._clean([])
        if issubclass(kind, OSError):
            raise ReportError(f"--out {self.out}: cannot write there ({exc.strerror or exc})") from None
        return False


class _Done:
    """A result already at hand, as a future would give it."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def wait(self) -> None:
        pass


def _start(fn, *args):
    """``fn(*args)`` in a forked process where there is a second core (the curves figure
    takes as long as all the sensitivity figures together, which this process draws
    meanwhile); else here, now. Its exceptions (an OSError of a full disk) come back with
    ``result()``; ``wait()`` waits for it without them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if cores < 2 or "fork" not in multiprocessing.get_all_start_methods() or sys.platform != "linux":
        return _Done(fn(*args))
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    return _Elsewhere(pool, pool.submit(fn, *args))


class _Elsewhere:
    """A call running in a one-process pool; ``result()`` waits for it and ends the pool."""

    def __init__(self, pool, future):
        self.pool, self.future = pool, future

    def result(self):
        try:
            return self.future.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def wait(self) -> None:
        """Until it has ended, whatever its outcome (the caller is failing already)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def report(dirs, out=None, metric="test_rel_error", target=1e-3, band="minmax",
           until=None, include_unfinished=False, wandb_mode=None) -> tuple[list[Path], str]:
    """The whole report; returns (paths written, Markdown for stdout). Raises ReportError on
    bad input or an output folder that cannot be written (then nothing of it is left there)."""
    from . import sensitivity, study
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
    built, printed = build_tables(df, metric, target, include_unfinished)
    sens = built["sens"]
    with Staged(out) as stage:
        names = []
        for name, write in built["files"].items():
            write(stage.path(name))
            names.append(name)
        curves = df[df["method"].isin(sens.shown)] if built["many"] else df
        pending = _start(plot_all, curves, stage.tmp, band) if sens.keys else None
        try:
            names += [p.name for p in sensitivity.draw(sens, metric, stage.tmp, band)]
            for db in study.find_studies([Path(d) for d in dirs]):
                try:
                    drawn_study = study.draw(db, lambda name, fig: fig.savefig(
                        stage.path(name), dpi=sensitivity.DPI, bbox_inches="tight"))
                except study.StudyUnreadable as e:
                    print(f"gradflow-report: warning: {e}", file=sys.stderr)
                    continue
                names += drawn_study
                if drawn_study:
                    printed.insert(0, f"Optuna study in {db}: {', '.join(drawn_study)}")
        except BaseException:
            if pending is not None:
                pending.wait()           # done writing before the staging folder goes
            raise
        drawn = pending.result() if pending is not None else plot_all(curves, stage.tmp, band)
        names += [p.name for p in drawn]
        paths = stage.commit(names)
    if wandb_mode is not None:
        log_to_wandb(df, out, paths, wandb_mode, dirs)
    if built["many"]:
        printed.insert(len(printed) - 1, f"The curves figure draws these {len(sens.shown)} settings.")
    return paths, "\n\n".join(printed)


def log_to_wandb(df, out: Path, paths: list[Path], mode: str, dirs) -> None:
    """One W&B run (job_type report) per report, in the experiment's group: every figure as
    an image, the per-method, per-run, best-setting and significance tables as W&B tables."""
    import pandas as pd
    import wandb

    experiments = [str(e) for e in dict.fromkeys(df["experiment"])]
    run = wandb.init(mode=mode, project="gradflow_exp", group=experiments[0] if len(experiments) == 1 else None,
                     job_type="report", name=f"report {' '.join(map(str, dirs))}", dir=str(out),
                     tags=["report", *experiments], config={"dirs": [str(d) for d in dirs], "experiments": experiments,
                                                            "swept": list(df.attrs.get("swept", []))},
                     reinit="create_new", settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    try:
        logged = {}
        for path in paths:
            if path.suffix == ".png":
                logged[f"figure/{path.stem}"] = wandb.Image(str(path))
            elif path.name in ("summary.csv", "runs.csv", "significance.csv", "paper.csv", "best.csv", "frontier.csv"):
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
