"""Runs → tidy DataFrame → figures, tables, statistics (``gradflow-report``).

load.py         find run directories, read config/overrides/summary/metrics, label methods,
                swept keys; `load_runs` (run × epoch) and `run_table` (one row per run)
stats.py        per-run numbers, per-method mean ± t-CI over seeds, paired tests, Markdown
sensitivity.py  a sweep's answer: best setting per method (on validation), stability frontier,
                the result against every swept key and pair of keys
figures.py      the paper's layout: log-y error curves vs epoch, median over seeds with a band
cli.py          the command line
"""
from .load import ReportError, find_run_dirs, load_runs, run_table

__all__ = ["ReportError", "find_run_dirs", "load_runs", "run_table"]
