"""gradflow_exp: energy-stable gradient-flow optimizers and a Hydra runner for them."""

__version__ = "0.1.0"
