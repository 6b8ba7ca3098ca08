#!/usr/bin/env python
"""Thin wrapper: ``python scripts/report.py DIR...`` is ``gradflow-report DIR...``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradflow_exp.report.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
