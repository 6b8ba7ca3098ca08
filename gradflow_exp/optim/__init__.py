"""Energy-stable gradient-flow optimizers as torch.optim.Optimizer subclasses."""
from gradflow_exp.optim.closure import BatchClosure
from gradflow_exp.optim.registry import build_optimizer, resolve_time_scale

__all__ = ["BatchClosure", "build_optimizer", "resolve_time_scale"]
