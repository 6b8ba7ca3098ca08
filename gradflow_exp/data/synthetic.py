"""The paper's regression problems, generated from the seed (float64, CPU).

The target is computed on raw x; z-scoring happens after the split (see dataset.py).
Coefficients (p, q for sincos; c for quadratic) are drawn once from the seed with the
distribution ``coef`` ('uniform' U(0,1) or 'normal' N(0,1)); the paper does not say which.
"""
from __future__ import annotations

import torch

from gradflow_exp.config.schema import SYNTHETIC_PROBLEMS as PROBLEMS
from gradflow_exp.data.dataset import Dataset, split, zscore


def dataset(name: str, D: int, M: int, train_fraction: float, coef: str, seed: int,
            x_std: float = 0.2) -> Dataset:
    """Examples 1–3 (conf/dataset/sincos.yaml, quadratic.yaml, gaussian.yaml): M samples from
    the seed, a train_fraction split, inputs z-scored with the training statistics."""
    x, y = generate(name, D=D, M=M, seed=seed, coef=coef, x_std=x_std)
    x_tr, y_tr, x_te, y_te = split(x, y, train_fraction, seed)
    x_tr, x_te = zscore(x_tr, x_te)
    return Dataset(x_tr, y_tr.unsqueeze(-1), x_te, y_te.unsqueeze(-1), "regression", 1)


def generate(name: str, D: int, M: int, seed: int, coef: str = "uniform",
             x_std: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def draw(n):
        return torch.rand(n, generator=g, dtype=f64) if coef == "uniform" else torch.randn(n, generator=g, dtype=f64)

    if name == "sincos":        # Ex1: sin(Σ p_i x_i) + cos(Σ q_i x_i), x ~ U(0,1)^D
        p, q = draw(D), draw(D)
        x = torch.rand(M, D, generator=g, dtype=f64)
        y = torch.sin(x @ p) + torch.cos(x @ q)
    elif name == "quadratic":   # Ex2: Σ c_i x_i², x ~ U(0,5)^D
        c = draw(D)
        x = 5 * torch.rand(M, D, generator=g, dtype=f64)
        y = (x.pow(2) * c).sum(1)
    elif name == "gaussian":    # Ex3: exp(−10‖x‖²), x ~ N(0, x_std² I)
        x = x_std * torch.randn(M, D, generator=g, dtype=f64)
        y = torch.exp(-10 * x.pow(2).sum(1))
    else:
        raise ValueError(f"dataset.name={name!r}; valid: {', '.join(PROBLEMS)}, mnist")
    return x, y
