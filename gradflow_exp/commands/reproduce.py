"""``gradflow-reproduce FIG [--epochs N] [--seeds 0,1,2] [--out DIR] [OVERRIDE ...]``

Runs an experiment's whole method set over seeds (one Hydra multirun of
``experiment=FIG``, whose ``hydra.sweeper.params`` name the paper's methods) and the
reference curves its ``references`` name (one more multirun each, into
``<out>/reference_<i>``), then draws its figure and tables with gradflow-report.
``--epochs`` shortens it for a quick look, logged often enough to draw (at least 50
rows a curve, MIN_POINTS); extra ``key=value`` arguments go to every job (e.g. ``logger=none
threads=1``), references included, where the reference's own keys win. It ends with ours
against the paper at the checkpoints where gradflow_exp/report/paper.yaml has the figure.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gradflow_exp.commands.cli import CONF_DIR
from gradflow_exp.config import experiment_names

# A shortened run logs at least this many rows a curve: the configs log every 10 epochs
# (fig10, burgers: 50), which gives 6 points for --epochs 50.
MIN_POINTS = 50


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gradflow-reproduce", description=__doc__.split("\n\n")[1])
    p.add_argument("experiment", help="experiment config name, e.g. fig7")
    p.add_argument("--epochs", type=int, default=None, help="override trainer.epochs (default: the paper's)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep directory (default outputs/FIG/reproduce/<time>)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    valid = experiment_names()
    if args.experiment not in valid:
        print(f"gradflow-reproduce: error: unknown experiment {args.experiment!r}; valid: {', '.join(valid)}",
              file=sys.stderr)
        return 2
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        print(f"gradflow-reproduce: error: {e}", file=sys.stderr)
        return 2
    if args.epochs is not None and args.epochs <= 0:
        print("gradflow-reproduce: error: --epochs must be positive", file=sys.stderr)
        return 2
    out = args.out or Path("outputs") / args.experiment / "reproduce" / time.strftime("%Y-%m-%d_%H-%M-%S")
    cfg = compose_experiment(args.experiment, args.overrides)
    refs = [str(r) for r in (cfg.get("references") or [])] if cfg is not None else []
    sweeps = [([], out)] + [([*ref.split(), "logger.job_type=reference"], out / f"reference_{i}")
                            for i, ref in enumerate(refs)]
    every = log_every(args.epochs, cfg, args.overrides, out)
    rc = 0
    for extra, sweep_dir in sweeps:
        # Command-line overrides win over the experiment's hydra.sweeper.params, so a
        # reference's optimizer=... replaces the swept method set for its own sweep; the last
        # of two overrides wins, so the reference's own keys win over the user's (an
        # optimizer.lr=1 for the methods leaves Euler(0.01) at 0.01).
        cmd = [sys.executable, "-m", "gradflow_exp.train", "-m", f"experiment={args.experiment}",
               "seed=" + ",".join(map(str, seeds)), f"hydra.sweep.dir={sweep_dir}", *args.overrides, *extra]
        if args.epochs is not None:
            cmd.append(f"trainer.epochs={args.epochs}")
        if every is not None:
            cmd.append(f"trainer.log_every={every}")
        print("running:", " ".join(cmd[1:]), flush=True)
        code = subprocess.call(cmd)
        if code != 0:
            print(f"gradflow-reproduce: a sweep exited with code {code}; reporting what it wrote", file=sys.stderr)
            rc = rc or code
    if not out.exists():
        return rc or 1
    from gradflow_exp.report.cli import main as report_main

    code = report_main([str(out)])
    print_against_paper(out, args.experiment)
    return code or rc


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` → [0, 1, 2]; a ValueError that says what was expected otherwise."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be integers like 0,1,2, got {text!r}") from None


def compose_experiment(experiment: str, overrides: list[str]):
    """The experiment's composed config (with the user's overrides where they compose: sweep
    syntax among them cannot, so then the experiment alone); None if neither composes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for extra in (overrides, []):
        try:
            GlobalHydra.instance().clear()
            with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                return compose("train", overrides=[f"experiment={experiment}", *extra])
        except Exception:  # noqa: BLE001 - the sweep itself reports bad overrides
            continue
    return None


def references(experiment: str, overrides: list[str]) -> list[str]:
    """The experiment's ``references`` (lines of overrides), read by composing its config."""
    cfg = compose_experiment(experiment, overrides)
    return [str(r) for r in (cfg.get("references") or [])] if cfg is not None else []


def log_every(epochs: int | None, cfg, overrides: list[str], out: Path) -> int | None:
    """trainer.log_every for a shortened run (``--epochs``), or None to keep the config's.

    The largest divisor of the config's cadence that logs at least MIN_POINTS rows, so that
    the config's rows (and the paper's checkpoints, multiples of 100) stay among the logged
    ones; logging more often changes no logged number (tests/test_report_figures_by_name.py).
    At full length, with the user's own trainer.log_every, or when ``out`` already holds
    runs (trained on by a longer --epochs: a run directory refuses another cadence), the
    config's or the recorded one is kept."""
    if epochs is None or any(o.split("=", 1)[0].lstrip("+") == "trainer.log_every" for o in overrides):
        return None
    recorded = recorded_log_every(out)
    if recorded is not None:
        return recorded
    base = int(cfg.trainer.log_every) if cfg is not None else 1
    if epochs // base >= MIN_POINTS:
        return None
    return max([d for d in range(1, base + 1) if base % d == 0 and epochs // d >= MIN_POINTS], default=1)


def recorded_log_every(out: Path) -> int | None:
    """The cadence the runs already in a sweep directory were started with (their recorded
    config), None when it holds none."""
    if not out.is_dir():
        return None
    for config in sorted(out.glob("*/.hydra/config.yaml")):
        try:
            every = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("log_every")
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(every, int):
            return every
    return None


def print_against_paper(out: Path, experiment: str) -> None:
    """The last word: ours against the paper at its checkpoints (report/paper.yaml), one row
    per checkpoint, or why there is no such table."""
    from gradflow_exp.report import paper
    from gradflow_exp.report.load import ReportError, load_runs

    print()
    if experiment not in paper.points():
        print(f"Against the paper: report/paper.yaml has no checkpoint values for {experiment} "
              f"(it has {', '.join(paper.points())}).")
        return
    try:
        df = load_runs([out])
    except ReportError as e:
        print(f"Against the paper: no runs to compare ({e}).")
        return
    t = paper.table(df[df["experiment"] == experiment])
    if t.empty:
        print(f"Against the paper: none of these methods has a curve of the paper's in report/paper.yaml "
              f"({experiment}: {', '.join(c.get('label', '') for c in paper.points()[experiment])}).")
        return
    n = int(df.groupby("method")["run_dir"].nunique().max())
    print(f"Ours against the paper's {experiment} at its checkpoints (ours: median over {n} seed"
          f"{'s' if n != 1 else ''}; the paper's values are read off its log plots, ±2×; "
          f"✓ within 2×):")
    print()
    print(paper.compact(t, df))
    if t["ours"].isna().all():
        first = int(t["epoch"].min())
        print(f"\nNo checkpoint reached: the paper's first is epoch {first} (--epochs {first} or more).")


if __name__ == "__main__":
    sys.exit(main())
