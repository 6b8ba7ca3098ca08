"""``gradflow-reproduce FIG [--epochs N] [--seeds 0,1,2] [--out DIR] [OVERRIDE ...]``

Runs an experiment's whole method set over seeds (one Hydra multirun of
``experiment=FIG``, whose ``hydra.sweeper.params`` name the paper's methods), then draws
its figure and tables with gradflow-report. ``--epochs`` shortens it for a quick look;
extra ``key=value`` arguments go to every job (e.g. ``logger=none threads=1``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from gradflow_exp.cli import CONF_DIR


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
    cmd = [sys.executable, "-m", "gradflow_exp.train", "-m", f"experiment={args.experiment}",
           "seed=" + ",".join(map(str, seeds)), f"hydra.sweep.dir={out}", *args.overrides]
    if args.epochs is not None:
        cmd.append(f"trainer.epochs={args.epochs}")
    print("running:", " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        print(f"gradflow-reproduce: the sweep exited with code {rc}; reporting what it wrote", file=sys.stderr)
    if not out.exists():
        return rc or 1
    from gradflow_exp.report.cli import main as report_main

    return report_main([str(out)]) or rc


if __name__ == "__main__":
    sys.exit(main())
