"""``gradflow-sync DIR... [--list]``: every offline W&B run below run or sweep directories
(replicas and batched jobs included, however deep) synced to W&B in one ``wandb sync``.

``wandb sync SWEEP_DIR`` finds nothing there (it looks one level down only); this walks the
whole tree. ``--list`` prints the runs it would sync and exits.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from gradflow_exp.run.sinks import offline_runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gradflow-sync", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or sweep directories")
    p.add_argument("--list", action="store_true", help="print the offline runs and exit")
    args = p.parse_args(argv)
    runs = []
    for d in args.dirs:
        if not d.is_dir():
            print(f"gradflow-sync: error: {d}: not a directory", file=sys.stderr)
            return 2
        runs += offline_runs(d)
    if not runs:
        print(f"gradflow-sync: error: no offline W&B runs below {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(map(str, runs)))
        return 0
    return subprocess.call([sys.executable, "-m", "wandb", "sync", *map(str, runs)])


if __name__ == "__main__":
    sys.exit(main())
