"""Example 5 (optional, Fig 12): the Burgers PINN — exact solution, the hand-carried
derivatives, the row layout, and a short run through the runner."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradflow_exp.data.burgers import NU, exact, generate
from gradflow_exp.models import BurgersPINN

SMALL_GRID = ["dataset.n_x=40", "dataset.n_t=12", "dataset.test_x=41", "dataset.test_t=11"]


def test_exact_solution_matches_basdevant():
    """Basdevant et al. (1986): the steepest slope at x = 0, reached at t = 1.6037/π, is
    −152.00516; and the initial and boundary conditions hold."""
    h, t = 1e-7, 1.6037 / math.pi
    slope = (exact(h, t) - exact(-h, t)) / (2 * h)
    assert slope == pytest.approx(-152.00516, rel=2e-6)
    x = np.linspace(-1, 1, 9)
    np.testing.assert_allclose(exact(x, 0.0), -np.sin(np.pi * x), atol=1e-15)
    np.testing.assert_allclose(exact(np.array([-1.0, 1.0]), np.array([0.5, 1.0])), 0.0, atol=1e-12)
    # odd in x, and the quadrature has converged: more points change nothing
    xs, ts = np.meshgrid(np.linspace(-1, 1, 21), np.linspace(0, 1, 11))
    np.testing.assert_allclose(exact(-xs, ts), -exact(xs, ts), atol=1e-12)
    np.testing.assert_allclose(exact(xs, ts, points=3201), exact(xs, ts), atol=1e-12)


def test_pinn_residual_is_the_pde_by_autograd():
    torch.manual_seed(0)
    model = BurgersPINN(4, 1).double()
    xt = torch.rand(64, 2, dtype=torch.float64) * torch.tensor([2.0, 1.0], dtype=torch.float64) - torch.tensor(
        [1.0, 0.0], dtype=torch.float64)
    ones = torch.ones(64, 1, dtype=torch.float64)
    x, t = xt[:, :1].clone().requires_grad_(), xt[:, 1:].clone().requires_grad_()
    u = model(torch.cat([x, t, 0 * ones, ones], 1))
    u_x, u_t = torch.autograd.grad(u.sum(), (x, t), create_graph=True)
    u_xx, = torch.autograd.grad(u_x.sum(), x)
    residual = model(torch.cat([xt, ones, 3 * ones], 1))        # w does not touch residual rows
    torch.testing.assert_close(residual, (u_t + u * u_x - NU * u_xx).detach(), rtol=0, atol=1e-13)
    torch.testing.assert_close(model(torch.cat([xt, 0 * ones, 3 * ones], 1)), 3 * u.detach())
    with pytest.raises(ValueError, match="dataset=burgers"):
        BurgersPINN(40, 1)


def test_rows_weight_data_as_the_residual_points():
    x_tr, y_tr, x_te, y_te = generate(n_x=20, n_t=6, test_x=11, test_t=5)
    res, data = x_tr[x_tr[:, 2] == 1], x_tr[x_tr[:, 2] == 0]
    assert len(res) == 20 * 6 and len(data) == 20 + 2 * 6
    assert (y_tr[x_tr[:, 2] == 1] == 0).all()
    assert ((res[:, 0].abs() < 1) & (res[:, 1] > 0)).all()                 # interior, t in (0, 1]
    w = math.sqrt(len(res) / len(data))
    # mean over all rows ∝ MSE_f + MSE_u: Σ w²(u − u*)² over data rows = N_f · MSE_u
    assert torch.allclose(data[:, 3], torch.tensor(w, dtype=torch.float64))
    torch.testing.assert_close(y_tr[x_tr[:, 2] == 0, 0], w * torch.as_tensor(exact(data[:, 0], data[:, 1])))
    assert len(x_te) == 11 * 5 and (x_te[:, 2] == 0).all() and (x_te[:, 3] == 1).all()
    torch.testing.assert_close(y_te[:, 0], torch.as_tensor(exact(x_te[:, 0], x_te[:, 1])))


def test_burgers_experiment_learns(run_inprocess):
    """A short run (small grids, mini-batches) cuts the test error of u by a third."""
    summary, run_dir = run_inprocess("experiment=burgers", *SMALL_GRID, "optimizer.lr=0.01",
                                     "trainer.batch_size=64", "trainer.epochs=30", "trainer.log_every=10")
    assert summary["status"] == "completed"
    m = pd.read_csv(run_dir / "metrics.csv")
    assert m.test_rel_error.iloc[-1] < (2 / 3) * m.test_rel_error.iloc[0]


def test_burgers_and_pinn_go_together(run_inprocess):
    from gradflow_exp.run.job import ConfigError

    with pytest.raises(ConfigError, match="dataset=burgers and model=pinn go together"):
        run_inprocess("dataset=burgers", "model=two_layer", *SMALL_GRID, "trainer.epochs=1")
    with pytest.raises(ConfigError, match="dataset=burgers and model=pinn go together"):
        run_inprocess("dataset=quadratic", "model=pinn", "dataset.M=100", "trainer.epochs=1")


@pytest.mark.parametrize("optimizer", ["spm_arelsav", "ieq"])
def test_pinn_under_vmap_and_per_sample_jacobians(run_inprocess, optimizer):
    """SPM (vmap over perturbed parameters) and full-Jacobian IEQ (per-sample gradients)
    go through the PINN's forward."""
    summary, _ = run_inprocess("experiment=burgers", "dataset.n_x=10", "dataset.n_t=4", "dataset.test_x=11",
                               "dataset.test_t=3", f"optimizer={optimizer}", "optimizer.lr=0.01",
                               "trainer.batch_size=16", "trainer.epochs=2")
    assert summary["status"] == "completed" and math.isfinite(summary["final"]["test_rel_error"])
