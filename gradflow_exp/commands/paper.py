"""``gradflow-paper [--out paper] [--budget S] [--figures fig1,...] [--seeds 0,1,2] [--epochs N]``

Runs the whole paper — every figure's method set and references, over seeds, at full
length — as `gradflow-reproduce` runs one figure, on the batched launcher (replicas that
differ in seed or step train as one batch, on a GPU where there is one: ``device=auto``).
It works in chunks: it stops itself before ``--budget`` seconds (SIGTERM to the figure's
sweep, which checkpoints every run), and the same command resumes where it stopped, a
finished figure skipped. After every figure it writes ``<out>/status.md``: each figure's
runs, the epochs they reached against the figure's length, and ours against the paper at
its checkpoints (gradflow_exp/report/paper.yaml). Exit 0: every figure done; 3: more to
run (run it again); 2: bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gradflow_exp.commands.cli import CONF_DIR
from gradflow_exp.commands.reproduce import parse_seeds
from gradflow_exp.config import experiment_names

# The paper in its order (REPRODUCTION.md): Figs 1–10, MNIST (Fig 11), Burgers (Fig 12).
FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9", "fig10", "mnist", "burgers")
# Every job of a figure: the batched launcher, no W&B, no progress bars in a log.
JOB_OVERRIDES = ("hydra/launcher=batched", "logger=none", "trainer.progress=false")
# Seconds kept back at the end of a chunk for the runs to checkpoint after SIGTERM, and the
# least time worth starting a figure with (its start-up alone takes several seconds).
GRACE_S = 45.0
MIN_CHUNK_S = 30.0
MORE_TO_RUN = 3
PROGRESS = "progress.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gradflow-paper", description=__doc__.split("\n\n")[1])
    p.add_argument("--out", type=Path, default=Path("paper"), help="where every figure's sweep goes (default paper/)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds this call may run before it checkpoints and stops (default: no limit)")
    p.add_argument("--figures", default=",".join(FIGURES), help=f"comma-separated (default: {','.join(FIGURES)})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=None, help="shorten every figure to this many epochs")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job (e.g. dtype=float32)")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    valid = experiment_names()
    bad = [f for f in figures if f not in valid]
    error = (f"unknown figure(s) {', '.join(bad)}; valid: {', '.join(valid)}" if bad else
             "--figures names no figure" if not figures else
             "--epochs must be positive" if args.epochs is not None and args.epochs <= 0 else
             f"--budget must leave a chunk: at least {GRACE_S + MIN_CHUNK_S:.0f} s (it keeps {GRACE_S:.0f} s "
             f"to checkpoint)" if args.budget is not None and not args.budget >= GRACE_S + MIN_CHUNK_S else
             None)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        error = error or str(e)
    if error:
        print(f"gradflow-paper: error: {error}", file=sys.stderr)
        return 2
    deadline = math.inf if args.budget is None else time.monotonic() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    done = read_progress(args.out)
    key = run_key(seeds, args.epochs, args.overrides)
    for fig in figures:
        if done.get(fig) == key:
            continue
        left = deadline - time.monotonic() - GRACE_S
        if left < MIN_CHUNK_S:
            break
        print(f"gradflow-paper: {fig} ({'no limit' if math.isinf(left) else f'{left:.0f} s left'})", flush=True)
        if run_figure(fig, args.out / fig, seeds, args.epochs, args.overrides, left):
            done[fig] = key
            write_progress(args.out, done)
        write_status(args.out, figures, args.epochs)
        if time.monotonic() + GRACE_S + MIN_CHUNK_S > deadline:
            break
    write_status(args.out, figures, args.epochs)
    todo = [f for f in figures if done.get(f) != key]
    if todo:
        print(f"gradflow-paper: stopped with {', '.join(todo)} to run; the same command goes on "
              f"(status: {args.out / 'status.md'})")
        return MORE_TO_RUN
    print(f"gradflow-paper: every figure done; status: {args.out / 'status.md'}")
    return 0


def run_key(seeds: list[int], epochs: int | None, overrides: list[str]) -> str:
    """What a finished figure was run with: another seed list, length or override runs it again
    (into the same directories, where the runner trains each run on or refuses what differs)."""
    return json.dumps({"seeds": seeds, "epochs": epochs, "overrides": list(overrides)}, sort_keys=True)


def read_progress(out: Path) -> dict:
    try:
        return json.loads((out / PROGRESS).read_text())
    except (OSError, ValueError):
        return {}


def write_progress(out: Path, done: dict) -> None:
    tmp = out / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(done, indent=1))
    os.replace(tmp, out / PROGRESS)


def run_figure(fig: str, out: Path, seeds: list[int], epochs: int | None, overrides: list[str],
               seconds: float) -> bool:
    """One figure by gradflow-reproduce, in its own process group so that one SIGTERM reaches
    every process of the sweep; True when it ended by itself, every run finished."""
    cmd = [sys.executable, "-m", "gradflow_exp.commands.reproduce", fig, "--seeds", ",".join(map(str, seeds)),
           "--out", str(out), *(["--epochs", str(epochs)] if epochs else []), *JOB_OVERRIDES, *overrides]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=None if math.isinf(seconds) else seconds)
    except subprocess.TimeoutExpired:
        print(f"gradflow-paper: {fig}: chunk over, checkpointing its runs", flush=True)
        stop_group(proc)
        return False
    except BaseException:
        stop_group(proc)
        raise
    if code != 0:
        # A diverged or failed run is a result (the status says so); a sweep that stopped early
        # is not done: the next call trains its runs on.
        print(f"gradflow-paper: {fig}: gradflow-reproduce exited {code}", file=sys.stderr)
    return code == 0 and all_finished(out)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the sweep's process group, then wait until every process in it has gone (the
    training processes outlive gradflow-reproduce while they write their checkpoints)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    proc.wait()
    end = time.monotonic() + GRACE_S
    while time.monotonic() < end:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def all_finished(out: Path) -> bool:
    """Every run below ``out`` ended (completed, diverged, failed) rather than stopped."""
    summaries = list(out.rglob("summary.json"))
    for s in summaries:
        try:
            if json.loads(s.read_text()).get("status") in ("interrupted", "running"):
                return False
        except (OSError, ValueError):
            return False
    return bool(summaries)


def write_status(out: Path, figures: list[str], epochs: int | None) -> None:
    """``<out>/status.md``: a row per figure — runs and seeds found, the epochs they reached
    against the figure's length, how they ended, ours against the paper at its checkpoints."""
    lines = ["# The paper, figure by figure (gradflow-paper)", "",
             "| figure | runs | seeds | epochs reached (min–max) / length | ended | ours vs paper: checkpoints within 2× |",
             "|---|---|---|---|---|---|"]
    for fig in figures:
        lines.append(status_row(fig, out / fig, epochs))
    lines += ["", "Each figure's own tables and figure: `<out>/<figure>/report/`; "
              "`gradflow-report <out>/<figure>` redraws them."]
    (out / "status.md").write_text("\n".join(lines) + "\n")


def status_row(fig: str, sweep: Path, epochs: int | None) -> str:
    from gradflow_exp.report import paper
    from gradflow_exp.report.load import ReportError, load_runs

    length = epochs or figure_length(fig)
    if not sweep.is_dir():
        return f"| {fig} | 0 | | 0 / {length} | not started | |"
    try:
        df = load_runs([sweep])
    except ReportError:
        return f"| {fig} | 0 | | 0 / {length} | not started | |"
    last = df.groupby("run_dir").tail(1)
    reached = last["epochs_completed"].fillna(0).astype(int)
    ended = ", ".join(f"{n} {s}" for s, n in last["status"].value_counts().items())
    seeds = ",".join(str(int(s)) for s in sorted(last["seed"].dropna().unique()))
    checks = ""
    if fig in paper.points():
        t = paper.table(df[df["experiment"] == fig])
        if not t.empty:
            hit = t["ratio"].dropna()
            ok = int(((hit >= 1 / paper.WITHIN) & (hit <= paper.WITHIN)).sum())
            checks = f"{ok} of {len(hit)} within 2× ({len(t) - len(hit)} of the paper's {len(t)} not reached yet)"
    return (f"| {fig} | {len(last)} | {seeds} | {reached.min()}–{reached.max()} / {length} | {ended} | "
            f"{checks or 'no checkpoint values in report/paper.yaml'} |")


def figure_length(fig: str) -> int | None:
    """The figure's trainer.epochs as its experiment file sets it."""
    import yaml

    try:
        node = yaml.safe_load((CONF_DIR / "experiment" / f"{fig}.yaml").read_text()) or {}
        return int(node["trainer"]["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


if __name__ == "__main__":
    sys.exit(main())
