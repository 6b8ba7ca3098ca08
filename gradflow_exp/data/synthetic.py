"""The paper's regression problems, generated from the seed (float64, CPU).

The target is computed on raw x; z-scoring happens after the split (see dataset.py).
Coefficients (p, q for sincos; c for quadratic) are drawn once from the seed with the
distribution ``coef`` ('uniform' U(0,1) or 'normal' N(0,1)); the paper does not say which.
The validation set is a further draw of x from the same distribution, through the same
target function, from its own generator: the training and test sets are exactly those of
a run without it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from gradflow_exp.config.schema import SYNTHETIC_PROBLEMS as PROBLEMS
from gradflow_exp.data.dataset import Dataset, split, val_generator, zscore

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def dataset(name: str, D: int, M: int, train_fraction: float, coef: str, seed: int,
            x_std: float = 0.2, val_size: int | None = None) -> Dataset:
    """Examples 1–3 (conf/dataset/sincos.yaml, quadratic.yaml, gaussian.yaml): M samples from
    the seed, a train_fraction split, a validation draw of ``val_size`` rows (None: as many
    as the test set), inputs z-scored with the training statistics."""
    x, y, (x_val, y_val) = generate(name, D=D, M=M, seed=seed, coef=coef, x_std=x_std,
                                    n_val=M - int(round(train_fraction * M)) if val_size is None else val_size)
    x_tr, y_tr, x_te, y_te = split(x, y, train_fraction, seed)
    x_tr, x_te, x_val = zscore(x_tr, x_te, x_val)
    return Dataset(x_tr, y_tr.unsqueeze(-1), x_te, y_te.unsqueeze(-1), "regression", 1,
                   x_val, y_val.unsqueeze(-1))


def generate(name: str, D: int, M: int, seed: int, coef: str = "uniform", x_std: float = 0.2,
             n_val: int = 0) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """M samples (x, y) from the seed, and ``n_val`` more of the same problem (x_val, y_val)."""
    g = torch.Generator().manual_seed(seed)
    sample, target = problem(name, D, g, coef, x_std)
    x = sample(M, g)
    x_val = sample(n_val, val_generator(seed))
    return x, target(x), (x_val, target(x_val))


def problem(name: str, D: int, g: torch.Generator, coef: str = "uniform",
            x_std: float = 0.2) -> tuple[Sampler, Callable[[torch.Tensor], torch.Tensor]]:
    """(draw n inputs from a generator, the target function), the coefficients drawn from g."""
    f64 = torch.float64

    def draw(n):
        return torch.rand(n, generator=g, dtype=f64) if coef == "uniform" else torch.randn(n, generator=g, dtype=f64)

    if name == "sincos":        # Ex1: sin(Σ p_i x_i) + cos(Σ q_i x_i), x ~ U(0,1)^D
        p, q = draw(D), draw(D)
        return (lambda n, gen: torch.rand(n, D, generator=gen, dtype=f64),
                lambda x: torch.sin(x @ p) + torch.cos(x @ q))
    if name == "quadratic":     # Ex2: Σ c_i x_i², x ~ U(0,5)^D
        c = draw(D)
        return (lambda n, gen: 5 * torch.rand(n, D, generator=gen, dtype=f64),
                lambda x: (x.pow(2) * c).sum(1))
    if name == "gaussian":      # Ex3: exp(−10‖x‖²), x ~ N(0, x_std² I)
        return (lambda n, gen: x_std * torch.randn(n, D, generator=gen, dtype=f64),
                lambda x: torch.exp(-10 * x.pow(2).sum(1)))
    raise ValueError(f"dataset.name={name!r}; valid: {', '.join(PROBLEMS)}, mnist")
