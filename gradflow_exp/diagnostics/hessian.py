"""Extreme eigenvalues of the training-loss Hessian, matrix-free (saddle or minimum: docs/sources.md, the notes on stalls).

The Hessian H = ∇²I(θ) is applied as a Hessian-vector product, the vector-Jacobian product
of ∇I (``torch.func.vjp(torch.func.grad(I))``: one linearisation, then one double-backward
per product; H is symmetric, so vᵀH = (Hv)ᵀ). SciPy's ARPACK Lanczos (``eigsh`` on a
float64 ``LinearOperator``, seeded start vector) finds the k largest and the k smallest
algebraic eigenvalues; the n × n matrix is never formed.

Verdict at θ, with g = ∇I(θ):
  DESCENDING (0)  ‖g‖ > grad_tol — not at a critical point yet;
  MINIMUM    (1)  ‖g‖ ≤ grad_tol and λ_min ≥ −tol;
  SADDLE     (2)  ‖g‖ ≤ grad_tol and λ_min < −tol (a direction of negative curvature).
Integer codes, so metrics.csv and W&B keep a numeric column.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.func import grad, vjp

log = logging.getLogger(__name__)

DESCENDING, MINIMUM, SADDLE = 0, 1, 2
VERDICTS = {DESCENDING: "descending", MINIMUM: "minimum", SADDLE: "saddle"}


def hessian_operator(loss: Callable[[dict], torch.Tensor], params: dict[str, torch.Tensor]):
    """(H as a float64 LinearOperator, g = ∇I flat) for ``loss(params)`` at ``params``."""
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(vec: torch.Tensor) -> torch.Tensor:
        parts = torch.split(vec, sizes)
        return loss({n: p.view(s) for n, p, s in zip(names, parts, shapes)})

    g, hvp = vjp(grad(f), flat)

    def matvec(v: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1)).to(flat)
        return hvp(v)[0].detach().to(device="cpu", dtype=torch.float64).numpy()

    n = flat.numel()
    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64), g.detach()


def extreme_eigenvalues(op: LinearOperator, k: int = 1, seed: int = 0, maxiter: int | None = None,
                        tol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(k largest, k smallest) algebraic eigenvalues of the symmetric ``op``, each sorted
    descending / ascending; NaN where Lanczos did not converge within ``maxiter``."""
    n = op.shape[0]
    if n < 2:
        raise ValueError("the Hessian spectrum needs at least 2 parameters")
    k = min(k, n - 1)                      # ARPACK needs k < n
    v0 = np.random.default_rng(seed).standard_normal(n)
    out = []
    for which in ("LA", "SA"):
        try:
            vals = eigsh(op, k=k, which=which, v0=v0, maxiter=maxiter, tol=tol, return_eigenvectors=False)
        except ArpackNoConvergence as e:
            log.warning("Hessian spectrum: Lanczos (%s) did not converge in maxiter=%s; %d of %d found",
                        which, maxiter, len(e.eigenvalues), k)
            vals = np.concatenate([e.eigenvalues.real, np.full(k - len(e.eigenvalues), np.nan)])
        vals = np.sort(vals)
        out.append(vals[::-1] if which == "LA" else vals)
    return out[0], out[1]


def verdict(lam_min: float, grad_norm: float, tol: float, grad_tol: float) -> float:
    """DESCENDING, MINIMUM or SADDLE (see the module docstring); NaN if λ_min is unknown."""
    if not math.isfinite(grad_norm):
        return math.nan
    if grad_norm > grad_tol:
        return DESCENDING
    if not math.isfinite(lam_min):
        return math.nan
    return SADDLE if lam_min < -tol else MINIMUM


def hessian_summary(loss, params, *, k: int, tol: float, grad_tol: float, step: float,
                    seed: int = 0, maxiter: int | None = None, lanczos_tol: float = 0.0) -> dict[str, float]:
    """The logged columns at ``params``; ``step`` = lr·K, the effective Euler step Δt, for
    the stability limit 2/Δt of gradient descent on the local quadratic model."""
    op, g = hessian_operator(loss, params)
    top, bottom = extreme_eigenvalues(op, k=k, seed=seed, maxiter=maxiter, tol=lanczos_tol)
    lam_max, lam_min = float(top[0]), float(bottom[0])
    grad_norm = float(g.norm())
    return {"hess_lambda_max": lam_max, "hess_lambda_min": lam_min,
            "hess_neg_count": float(np.sum(bottom < -tol)) if np.isfinite(bottom).all() else math.nan,
            "hess_grad_norm": grad_norm, "stability_limit": 2.0 / step,
            "sharpness_ratio": lam_max * step / 2.0,
            "hess_verdict": verdict(lam_min, grad_norm, tol, grad_tol)}
