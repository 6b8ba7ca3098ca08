"""How long gradflow-report takes on a large fabricated sweep (C × λ × Δt × 4 seeds, 20 rows a
job, the runner's file format: tests/test_report_sensitivity.py's `fabricate_sweep`).

    .venv/bin/python scripts/bench_report.py [--jobs 500] [--repeats 2]

Prints the time to load the runs and to write the whole report (tables and figures), each
the median over repeats; run it on the tree before a change and after it, in one session.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from test_report_sensitivity import fabricate_sweep

    from gradflow_exp.report.cli import main as report
    from gradflow_exp.report.load import load_runs

    with tempfile.TemporaryDirectory() as tmp:
        root = fabricate_sweep(Path(tmp) / "sweep", n_jobs=args.jobs)
        loads, reports = [], []
        for i in range(args.repeats):
            t = time.perf_counter()
            load_runs([root])
            loads.append(time.perf_counter() - t)
            t = time.perf_counter()
            report([str(root), "--out", str(Path(tmp) / f"report{i}")])
            reports.append(time.perf_counter() - t)
    print(f"{args.jobs} jobs: load {statistics.median(loads):.2f} s, whole report {statistics.median(reports):.1f} s "
          f"(median of {args.repeats})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
