"""``gradflow-reproduce FIG [--epochs N] [--seeds 0,1,2] [--out DIR] [OVERRIDE ...]``

Runs an experiment's whole method set over seeds (one Hydra multirun of
``experiment=FIG``, whose ``hydra.sweeper.params`` name the paper's methods) and the
reference curves its ``references`` name (one more multirun each, into
``<out>/reference_<i>``), then draws its figure and tables with gradflow-report.
``--epochs`` shortens it for a quick look; extra ``key=value`` arguments go to every job
(e.g. ``logger=none threads=1``), references included, where the reference's own keys win.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from gradflow_exp.commands.cli import CONF_DIR


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
    valid = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    if args.experiment not in valid:
        print(f"gradflow-reproduce: error: unknown experiment {args.experiment!r}; valid: {', '.join(valid)}",
              file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"gradflow-reproduce: error: --seeds must be integers like 0,1,2, got {args.seeds!r}", file=sys.stderr)
        return 2
    if args.epochs is not None and args.epochs <= 0:
        print("gradflow-reproduce: error: --epochs must be positive", file=sys.stderr)
        return 2
    out = args.out or Path("outputs") / args.experiment / "reproduce" / time.strftime("%Y-%m-%d_%H-%M-%S")
    sweeps = [([], out)] + [([*ref.split(), "logger.job_type=reference"], out / f"reference_{i}")
                            for i, ref in enumerate(references(args.experiment, args.overrides))]
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
        print("running:", " ".join(cmd[1:]), flush=True)
        code = subprocess.call(cmd)
        if code != 0:
            print(f"gradflow-reproduce: a sweep exited with code {code}; reporting what it wrote", file=sys.stderr)
            rc = rc or code
    if not out.exists():
        return rc or 1
    from gradflow_exp.report.cli import main as report_main

    return report_main([str(out)]) or rc


def references(experiment: str, overrides: list[str]) -> list[str]:
    """The experiment's ``references`` (lines of overrides), read by composing its config;
    sweep syntax among the user's overrides cannot compose, so then the experiment alone."""
    from hydra import compose, initialize_config_dir

    for extra in (overrides, []):
        try:
            with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                cfg = compose("train", overrides=[f"experiment={experiment}", *extra])
            return [str(r) for r in cfg.get("references") or []]
        except Exception:  # noqa: BLE001 - the sweep itself reports bad overrides
            continue
    return []


if __name__ == "__main__":
    sys.exit(main())
