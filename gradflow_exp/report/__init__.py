"""Runs → tidy DataFrame → figures, tables, statistics (``gradflow-report``).

load.py   find run directories, read config/overrides/summary/metrics, label methods
stats.py  per-run numbers, per-method mean ± t-CI over seeds, paired tests, Markdown
figures.py  the paper's layout: log-y error curves vs epoch, median over seeds with a band
cli.py    the command line
"""
from .load import ReportError, find_run_dirs, load_runs

__all__ = ["ReportError", "find_run_dirs", "load_runs"]
