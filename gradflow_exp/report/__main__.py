"""``python -m gradflow_exp.report DIR...`` is ``gradflow-report DIR...``."""
import sys

from .cli import main

sys.exit(main())
