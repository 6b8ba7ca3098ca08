"""Energy-stable gradient-flow optimizers as torch.optim.Optimizer subclasses."""
from gradflow_exp.optim.aegd import AEGD
from gradflow_exp.optim.closure import BatchClosure, ReplicaClosure
from gradflow_exp.optim.expsav import ExpSAV, RelExpSAV
from gradflow_exp.optim.ieq import IEQ, IEQAdaptive
from gradflow_exp.optim.registry import build_optimizer, build_replica_optimizer, resolve_time_scale
from gradflow_exp.optim.sav import SAV, ARelSAV, AResSAV, ASAV, RelSAV, ResSAV
from gradflow_exp.optim.spm import SPM

__all__ = [
    "AEGD", "ARelSAV", "AResSAV", "ASAV", "BatchClosure", "ExpSAV", "IEQ", "IEQAdaptive",
    "RelExpSAV", "RelSAV", "ReplicaClosure", "ResSAV", "SAV", "SPM", "build_optimizer", "build_replica_optimizer", "resolve_time_scale",
]
