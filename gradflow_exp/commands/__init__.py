"""The command line around Hydra (cli.py: errors as one line, resume=, a sweep's lock) and the
console scripts besides gradflow-train (gradflow_exp/train.py): gradflow-reproduce, gradflow-bench,
gradflow-sync."""
