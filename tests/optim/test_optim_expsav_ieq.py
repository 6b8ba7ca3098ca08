"""ExpSAV on large losses; IEQ against its closed form on linear least squares."""
import math

import torch
from torch import nn

from gradflow_exp.optim import IEQ, SPM, ExpSAV, IEQAdaptive, RelExpSAV
from optim_testlib import batches, closure_for, flat, regression_data, small_net


def test_expsav_finite_on_losses_of_1e3():
    x, y = regression_data(64, 3, scale=1.0)
    y = y * 40 + 20                                  # I(θ⁰) ≈ 1e3: exp(I/C) would overflow
    for cls, kw in ((ExpSAV, {}), (RelExpSAV, {"rhat_batch": "same"})):
        model = small_net(3)
        cl = closure_for(model, x, y)
        l0 = float(cl(backward=False))
        assert l0 > 700                               # e^{l0} is not representable in float64
        opt = cls(model.parameters(), lr=1e-3, C=1.0, **kw)
        logs = []
        for _, _, xb, yb in batches(x, y, 16, 5):
            opt.step(closure_for(model, xb, yb))
            logs.append(opt.state[opt.param_groups[0]["params"][0]]["log_r"].item())
            assert all(math.isfinite(float(v)) for v in opt.diagnostics().values())
        assert all(math.isfinite(s) for s in logs)
        assert all(b <= a for a, b in zip(logs, logs[1:]))      # r^{n+1} ≤ rⁿ
        assert torch.isfinite(flat(model)).all()
        assert float(cl(backward=False)) < l0


def test_expsav_stale_r_gives_bounded_step():
    """r ≫ r̂ (log r far above I/C) — the step factor stays ≤ 1/a, never inf/NaN."""
    x, y = regression_data(32, 3)
    model = small_net(3)
    opt = ExpSAV(model.parameters(), lr=0.1, C=1.0)
    cl = closure_for(model, x, y)
    opt.step(cl)
    opt.state[opt.param_groups[0]["params"][0]]["log_r"] = torch.tensor(5000.0, dtype=torch.float64)
    opt.step(cl)
    assert torch.isfinite(flat(model)).all()
    assert opt.state[opt.param_groups[0]["params"][0]]["log_r"].item() < 5000.0


def _linear_ls(n=10, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = torch.randn(n, 1, generator=g)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g))
    return model, X, y


def test_ieq_equals_closed_form_on_linear_least_squares():
    model, X, y = _linear_ls()
    dt, K, N = 0.7, 1.5, X.shape[0]
    th0 = model.weight.detach().reshape(-1, 1).clone()
    opt = IEQ(model.parameters(), lr=dt, time_scale=K)
    opt.step(closure_for(model, X, y))
    # f = Xθ: J = X;  θ¹ = θ⁰ − ΔtK(2/N) Xᵀ (I + ΔtK(2/N) X Xᵀ)⁻¹ (Xθ⁰ − y)
    c = dt * K * 2 / N
    q1 = torch.linalg.solve(torch.eye(N) + c * X @ X.T, X @ th0 - y)
    expected = th0 - c * X.T @ q1
    assert torch.allclose(model.weight.detach().reshape(-1, 1), expected, rtol=1e-12, atol=1e-14)
    assert math.isclose(float(opt.diagnostics()["energy"]), float(q1.pow(2).mean()), rel_tol=1e-12)


def test_ieq_two_groups_and_bias_match_closed_form():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(8, 2, generator=g)
    y = torch.randn(8, 1, generator=g)
    model = nn.Linear(2, 1)
    opt = IEQ([{"params": [model.weight], "lr": 0.3},
               {"params": [model.bias], "lr": 0.9}], lr=0.5)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt.step(closure_for(model, X, y))
    N = 8
    Jw, Jb = X, torch.ones(N, 1)
    A = torch.eye(N) + 0.3 * 2 / N * Jw @ Jw.T + 0.9 * 2 / N * Jb @ Jb.T
    q1 = torch.linalg.solve(A, X @ w0.T + b0 - y)
    assert torch.allclose(model.weight.detach(), w0 - (0.3 * 2 / N * Jw.T @ q1).T, rtol=1e-12)
    assert torch.allclose(model.bias.detach(), b0 - 0.9 * 2 / N * (Jb.T @ q1).reshape(-1), rtol=1e-12)


def test_ieq_small_dt_follows_gradient_flow():
    """Small Δt: IEQ, IEQAdaptive and plain Euler take the same step to O(Δt²)."""
    x, y = regression_data(16, 3)
    dt, K = 1e-6, 2.0
    steps = {}
    for name in ("ieq", "ieq_adaptive", "sgd"):
        model = small_net(3)
        th0 = flat(model).clone()
        if name == "ieq":
            opt = IEQ(model.parameters(), lr=dt, time_scale=K)
        elif name == "ieq_adaptive":
            opt = IEQAdaptive(model.parameters(), lr=dt, time_scale=K)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=dt * K)
        opt.step(closure_for(model, x, y))
        steps[name] = flat(model) - th0
    for name in ("ieq", "ieq_adaptive"):
        err = (steps[name] - steps["sgd"]).norm() / steps["sgd"].norm()
        assert err < 1e-4, (name, float(err))


def test_ieq_under_spm_uses_stacked_residuals():
    model, X, y = _linear_ls()
    opt = SPM(IEQ(model.parameters(), lr=0.4), J=4, h=0.1, seed=0)
    th0 = model.weight.detach().reshape(-1, 1).clone()
    opt.step(closure_for(model, X, y))
    xi = opt.last_xi["weight"].reshape(4, -1, 1).double()    # [J, d, 1]
    # residuals stacked over j: X(θ + hξ_j) − y; J = X repeated; N = 4·10
    q0 = torch.cat([X @ (th0 + 0.1 * xi[j]) - y for j in range(4)])
    Jst = torch.cat([X] * 4)
    c = 0.4 * 2 / q0.numel()
    q1 = torch.linalg.solve(torch.eye(q0.numel()) + c * Jst @ Jst.T, q0)
    assert torch.allclose(model.weight.detach().reshape(-1, 1), th0 - c * Jst.T @ q1, rtol=1e-11)
