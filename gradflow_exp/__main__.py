"""``python -m gradflow_exp ARGS`` is ``gradflow-train ARGS``."""
from gradflow_exp.train import main

main()
