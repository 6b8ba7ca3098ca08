"""Example 5 (optional, the paper's Fig 12): Burgers' equation solved by a PINN.

    u_t + u u_x = ν u_xx on (−1, 1) × (0, 1],  u(x, 0) = −sin πx,  u(±1, t) = 0,  ν = 0.01/π.

The runner trains on rows and a loss between model outputs and targets, so the PDE is laid
out as rows ``[x, t, flag, w]`` that `gradflow_exp.models.BurgersPINN` reads:
- a residual row (flag 1) asks for u_t + u u_x − ν u_xx at (x, t), target 0 (the 200 × 60
  grid of residual points);
- a data row (flag 0) asks for w·u(x, t), target w·u*(x, t): the initial line and both
  boundaries in training, the exact solution on a grid in the test set (w = 1 there, so
  test_rel_error is the usual relative L2 error, squared like every rel_error here).
Training data rows carry w = √(N_f / N_u), which makes the mean over all rows proportional
to the PINN loss MSE_f + MSE_u (Raissi et al.) instead of letting 12 000 residual rows drown
320 data rows.
"""
from __future__ import annotations

import math

import numpy as np
import torch

NU = 0.01 / math.pi
GRID_KEYS = ("n_x", "n_t", "test_x", "test_t", "boundary_weight")   # the dataset node's keys


def exact(x, t, nu: float = NU, points: int = 801, chunk: int = 2048) -> np.ndarray:
    """u*(x, t) by the Cole–Hopf transform (Basdevant et al. 1986):

        u = −∫ sin π(x−η) e^{g(η)} dη / ∫ e^{g(η)} dη,  g(η) = −cos π(x−η) / 2πν − η² / 4νt,

    by the trapezoidal rule on |η| ≤ min(2.5, √(600νt)), where the Gaussian factor has fallen
    by e^{−150} and the cosine factor (e^{±1/2πν} = e^{±50}) cannot make up for it; 801
    points agree with 4001 to 1e-15 on the test grid. e^g spans
    e^{±100}: it is taken relative to its largest value, which the ratio does not see.
    (Gauss–Hermite quadrature in η/√(4νt) fails here: from t = 1/π on, e^{−cos/2πν} grows as
    fast as the Hermite weight decays.) At t = 0 it is −sin πx."""
    x, t = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64))
    shape = x.shape
    x, t = x.reshape(-1), t.reshape(-1)
    u = -np.sin(np.pi * x)
    for lo in range(0, x.size, chunk):
        xs, ts = x[lo:lo + chunk, None], t[lo:lo + chunk, None]
        live = ts[:, 0] > 0
        if not live.any():
            continue
        xs, ts = xs[live], ts[live]
        half = np.minimum(2.5, np.sqrt(600 * nu * ts))
        eta = half * np.linspace(-1.0, 1.0, points)
        g = -np.cos(np.pi * (xs - eta)) / (2 * np.pi * nu) - eta * eta / (4 * nu * ts)
        e = np.exp(g - g.max(axis=1, keepdims=True))
        e[:, [0, -1]] *= 0.5                                      # trapezoid ends
        u[lo:lo + chunk][live] = -(np.sin(np.pi * (xs - eta)) * e).sum(1) / e.sum(1)
    return u.reshape(shape)


def _rows(x, t, flag, w) -> torch.Tensor:
    x, t = torch.as_tensor(x, dtype=torch.float64).reshape(-1), torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    return torch.stack([x, t, torch.full_like(x, flag), torch.full_like(x, w)], dim=1)


def dataset(name: str, n_x: int, n_t: int, test_x: int, test_t: int, boundary_weight: float | None,
            seed: int | None = None, val_points: int = 2000):
    """Example 5 (conf/dataset/burgers.yaml): grids in raw (x, t), where the PDE's derivatives
    are; deterministic (``seed`` draws only the network). The validation set is the exact
    solution at ``val_points`` points drawn uniformly in [−1, 1] × [0, 1] by a fixed generator,
    off the test grid."""
    from gradflow_exp.data.dataset import Dataset

    x_tr, y_tr, x_te, y_te = generate(n_x, n_t, test_x, test_t, boundary_weight)
    x_val, y_val = validation(val_points)
    return Dataset(x_tr, y_tr, x_te, y_te, "regression", 1, x_val, y_val)


def validation(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n data rows (w = 1) of the exact solution at uniform random points of the domain."""
    rng = np.random.default_rng(seed)
    x, t = rng.uniform(-1, 1, n), rng.uniform(0, 1, n)
    return _rows(x, t, 0.0, 1.0), torch.as_tensor(exact(x, t)).reshape(-1, 1)


def generate(n_x: int = 200, n_t: int = 60, test_x: int = 256, test_t: int = 101,
             boundary_weight: float | None = None):
    """(x_train, y_train, x_test, y_test) in float64; deterministic (grids, no seed)."""
    x = np.linspace(-1, 1, n_x + 2)[1:-1]             # interior points of (−1, 1)
    t = np.linspace(0, 1, n_t + 1)[1:]                 # (0, 1]
    X, T = np.meshgrid(x, t, indexing="ij")
    residual = _rows(X, T, 1.0, 1.0)
    x0 = np.linspace(-1, 1, n_x)
    data_x = np.concatenate([x0, -np.ones(n_t), np.ones(n_t)])
    data_t = np.concatenate([np.zeros(n_x), t, t])
    w = boundary_weight if boundary_weight is not None else math.sqrt(residual.shape[0] / data_x.size)
    data = _rows(data_x, data_t, 0.0, w)
    x_train = torch.cat([residual, data])
    y_train = torch.cat([torch.zeros(residual.shape[0], dtype=torch.float64),
                         w * torch.as_tensor(exact(data_x, data_t))]).unsqueeze(-1)
    Xs, Ts = np.meshgrid(np.linspace(-1, 1, test_x), np.linspace(0, 1, test_t), indexing="ij")
    x_test = _rows(Xs, Ts, 0.0, 1.0)
    y_test = torch.as_tensor(exact(Xs, Ts).reshape(-1)).unsqueeze(-1)
    return x_train, y_train, x_test, y_test
