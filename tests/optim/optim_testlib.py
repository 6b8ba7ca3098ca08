"""Shared helpers for the optimizer tests (tiny problems, builders); imported by test_optim_*."""
from __future__ import annotations

import torch
from torch import nn

from gradflow_exp.losses import MSELoss
from gradflow_exp.optim import (
    AEGD, ARelSAV, AResSAV, ASAV, IEQ, SAV, BatchClosure, ExpSAV, IEQAdaptive, RelExpSAV,
    RelSAV, ResSAV,
)

# every method of ours, with small-problem hyperparameters
METHODS = {
    "sav": (SAV, dict(lr=0.2, C=1.0)),
    "ressav": (ResSAV, dict(lr=0.2, C=1.0)),
    "relsav": (RelSAV, dict(lr=0.2, C=1.0)),
    "relsav_next": (RelSAV, dict(lr=0.2, C=1.0, rhat_batch="next")),
    "asav": (ASAV, dict(lr=0.01, C=1.0)),
    "aressav": (AResSAV, dict(lr=0.01, C=1.0)),
    "arelsav": (ARelSAV, dict(lr=0.01, C=1.0)),
    "asav_scalar": (ASAV, dict(lr=0.01, C=1.0, second_moment="scalar")),
    "expsav": (ExpSAV, dict(lr=0.2, C=1.0)),
    "relexpsav": (RelExpSAV, dict(lr=0.2, C=1.0)),
    "ieq": (IEQ, dict(lr=0.2)),
    "ieq_adaptive": (IEQAdaptive, dict(lr=0.2)),
    "aegd": (AEGD, dict(lr=0.1, C=1.0)),
}


def regression_data(n=64, d=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = scale * torch.sin(x @ torch.ones(d, 1) * 0.7) + 0.1 * x[:, :1]
    return x, y


def small_net(d=3, width=8, seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 1))


def closure_for(model, x, y):
    return BatchClosure(model, MSELoss(), x, y)


def batches(x, y, size, epochs, seed=0):
    """Deterministic mini-batches: yields (epoch, first_in_epoch, xb, yb)."""
    g = torch.Generator().manual_seed(seed)
    for e in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], size):
            idx = perm[i:i + size]
            yield e, i == 0, x[idx], y[idx]


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
