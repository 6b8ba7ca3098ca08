"""Hessian spectrum and gradient noise: numbers against dense / hand computations, and through
the runner (columns, epochs, and the training run left exactly as it was)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradflow_exp.diagnostics.hessian import DESCENDING, MINIMUM, SADDLE, extreme_eigenvalues, hessian_operator, hessian_summary
from gradflow_exp.diagnostics.noise import gradient_noise
from gradflow_exp.losses import MSELoss
from gradflow_exp.optim import BatchClosure

FIG7 = ["experiment=fig7", "dataset.M=300", "trainer.log_every=1", "threads=1"]


def tiny_net(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, 2, dtype=torch.float64)
    return model, x, y


def test_hessian_extremes_match_the_dense_hessian():
    model, x, y = tiny_net()
    closure = BatchClosure(model, MSELoss(), x, y)
    params = closure.params
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def f(v):
        return closure.functional_loss({n: t.view(s) for n, t, s in zip(names, torch.split(v, sizes), shapes)})

    dense = torch.autograd.functional.hessian(f, flat)
    eig = np.linalg.eigvalsh(dense.numpy())          # ascending
    op, g = hessian_operator(closure.functional_loss, params)
    top, bottom = extreme_eigenvalues(op, k=3, seed=1)
    scale = abs(eig).max()
    assert eig[0] < -1e-6 * scale < 1e-6 * scale < eig[-1]     # an indefinite Hessian: both ends matter
    np.testing.assert_allclose(top, eig[::-1][:3], rtol=1e-6, atol=1e-9 * scale)
    np.testing.assert_allclose(bottom, eig[:3], rtol=1e-6, atol=1e-9 * scale)
    v = np.random.default_rng(0).standard_normal(flat.numel())
    np.testing.assert_allclose(op.matvec(v), dense.numpy() @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.numpy(), torch.func.grad(f)(flat).numpy(), rtol=1e-12)


@pytest.mark.parametrize("fn,point,verdict,lmin,lmax", [
    (lambda p: p["z"][0] ** 2 - p["z"][1] ** 2, [0.0, 0.0], SADDLE, -2.0, 2.0),
    (lambda p: p["z"][0] ** 2 + 3 * p["z"][1] ** 2, [0.0, 0.0], MINIMUM, 2.0, 6.0),
    (lambda p: p["z"][0] ** 2 + 3 * p["z"][1] ** 2, [1.0, 1.0], DESCENDING, 2.0, 6.0),
    (lambda p: p["z"][0] ** 2 - p["z"][1] ** 2, [0.5, 0.0], DESCENDING, -2.0, 2.0),
])
def test_verdict_on_known_critical_points(fn, point, verdict, lmin, lmax):
    params = {"z": torch.tensor(point, dtype=torch.float64)}
    out = hessian_summary(fn, params, k=1, tol=1e-6, grad_tol=1e-3, step=0.1)
    assert out["hess_verdict"] == verdict
    assert out["hess_lambda_min"] == pytest.approx(lmin, rel=1e-10)
    assert out["hess_lambda_max"] == pytest.approx(lmax, rel=1e-10)
    assert out["stability_limit"] == pytest.approx(2 / 0.1) and out["sharpness_ratio"] == pytest.approx(lmax * 0.1 / 2)
    assert out["hess_neg_count"] == (1 if lmin < 0 else 0)


def test_gradient_noise_against_hand_computation():
    """Linear least squares: g_b = (2/b) X_bᵀ(X_b w − y_b) in closed form."""
    torch.manual_seed(0)
    n, b = 30, 8                       # 3 batches of 8, 6 samples left out
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.randn(n, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(5)
    out = gradient_noise(lambda idx: BatchClosure(model, MSELoss(), x if idx is None else x[idx],
                                                  y if idx is None else y[idx]),
                         params, n, b, gen)
    X, Y, w = x.numpy(), y.numpy(), model.weight.detach().numpy().ravel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5)).numpy()
    gb = np.stack([2 / b * X[i].T @ (X[i] @ w - Y[i]) for i in (perm[j * b:(j + 1) * b] for j in range(n // b))])
    g_full = 2 / n * X.T @ (X @ w - Y)
    gbar = gb.mean(0)
    noise = ((gb - gbar) ** 2).sum(1).mean()
    assert out["grad_norm_full"] == pytest.approx(np.linalg.norm(g_full), rel=1e-12)
    assert out["grad_norm_batch_mean"] == pytest.approx(np.linalg.norm(gb, axis=1).mean(), rel=1e-12)
    assert out["grad_noise"] == pytest.approx(noise, rel=1e-10)
    assert out["grad_snr"] == pytest.approx((gbar ** 2).sum() / noise, rel=1e-10)


def test_diagnostics_through_the_runner_leave_training_unchanged(run_inprocess):
    base = ["optimizer=sav", "trainer.epochs=5"]
    _, plain_dir = run_inprocess(*FIG7, *base)
    summary, diag_dir = run_inprocess(*FIG7, *base, "diagnostics.hessian.every=2", "diagnostics.hessian.k=2",
                                      "diagnostics.grad_noise.every=1", "time_scale=2")
    _, scaled_dir = run_inprocess(*FIG7, *base, "time_scale=2")
    assert summary["status"] == "completed"
    plain, diag, scaled = (pd.read_csv(d / "metrics.csv") for d in (plain_dir, diag_dir, scaled_dir))
    cols = [c for c in scaled.columns if c != "wall_time"]
    pd.testing.assert_frame_equal(diag[cols], scaled[cols])           # same run, diagnostics aside
    assert len(plain) == len(diag)
    has = diag.set_index("epoch")
    assert has.hess_lambda_max[[0, 2, 4, 5]].notna().all() and has.hess_lambda_max[[1, 3]].isna().all()
    assert has.grad_snr.notna().all() and (has.grad_snr > 0).all()
    done = has.dropna(subset=["hess_lambda_max"])
    assert (done.hess_lambda_max >= done.hess_lambda_min).all()
    np.testing.assert_allclose(done.stability_limit, 2 / (done.lr * 2))        # 2/(Δt·K)
    np.testing.assert_allclose(done.sharpness_ratio, done.hess_lambda_max * done.lr * 2 / 2)
    assert set(done.hess_verdict) <= {DESCENDING, MINIMUM, SADDLE}
    # noise columns: ‖g_full‖ is the Hessian's ‖∇I‖ at the same point
    np.testing.assert_allclose(done.grad_norm_full, done.hess_grad_norm, rtol=1e-9)


def test_hessian_samples(run_inprocess):
    summary, run_dir = run_inprocess(*FIG7, "trainer.epochs=1", "diagnostics.hessian.every=1",
                                     "diagnostics.hessian.samples=50")
    assert summary["status"] == "completed"
    assert math.isfinite(pd.read_csv(run_dir / "metrics.csv").hess_lambda_max.iloc[-1])
