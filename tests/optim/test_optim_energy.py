"""Unconditional energy stability on random problems, for tiny to huge Δt."""
import math

import pytest
import torch
from torch import nn

from gradflow_exp.optim import (
    AEGD, ARelSAV, AResSAV, ASAV, IEQ, SAV, ExpSAV, IEQAdaptive, RelExpSAV, RelSAV, ResSAV,
)
from optim_testlib import batches, closure_for, flat, regression_data, small_net

DTS = [1e-3, 1.0, 1e3]


def problems():
    """(name, model factory, x, y): a tanh MLP on a sine target and linear least squares."""
    x, y = regression_data(64, 3, seed=0)
    g = torch.Generator().manual_seed(3)
    xl = torch.randn(64, 5, generator=g) * 3
    yl = torch.randn(64, 1, generator=g)
    return [("mlp", lambda: small_net(3), x, y),
            ("linear", lambda: _linear(5), xl, yl)]


def _linear(d):
    torch.manual_seed(2)
    return nn.Linear(d, 1)


def anchor(opt):
    return opt.state[opt.param_groups[0]["params"][0]]


def run_batches(model, opt, x, y, epochs=2, size=16, hook=None):
    for _, first, xb, yb in batches(x, y, size, epochs):
        if first and hasattr(opt, "epoch_start"):
            opt.epoch_start()
        cl = closure_for(model, xb, yb)
        before = hook.before(opt, cl) if hook else None
        opt.step(cl)
        if hook:
            hook.after(opt, cl, before)


SAME = {"rhat_batch": "same"}      # the relaxed r at the step's end (what these tests read back)
SAV_LIKE = [
    (SAV, {}), (RelSAV, SAME), (ASAV, {}), (ARelSAV, SAME), (ASAV, {"second_moment": "scalar"}),
    (ARelSAV, {"second_moment": "scalar", **SAME}), (SAV, {"lam": 4.0, "time_scale": 3.0}),
    (RelSAV, {"lam": 4.0, "time_scale": 3.0, "eta": 1.0, **SAME}),
    (ARelSAV, {"lam": 4.0, "time_scale": 50.0, **SAME}),
]


@pytest.mark.parametrize("dt", DTS)
@pytest.mark.parametrize("cls,kw", SAV_LIKE, ids=lambda v: getattr(v, "__name__", str(v)))
def test_sav_family_r_never_increases(cls, kw, dt):
    for _, make, x, y in problems():
        model = make()
        opt = cls(model.parameters(), lr=dt, C=1.0, **kw)
        rs = []

        class H:
            def before(self, o, cl):
                return None

            def after(self, o, cl, _):
                rs.append(anchor(o)["r"].item())
        run_batches(model, opt, x, y, hook=H())
        assert all(math.isfinite(r) and r > 0 for r in rs)
        assert all(b <= a * (1 + 1e-14) for a, b in zip(rs, rs[1:])), rs
        assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("dt", DTS)
@pytest.mark.parametrize("cls", [ExpSAV, RelExpSAV])
def test_expsav_r_never_increases(cls, dt):
    for _, make, x, y in problems():
        model = make()
        opt = cls(model.parameters(), lr=dt, C=0.5, lam=1.0, time_scale=2.0,
                  **(SAME if cls is RelExpSAV else {}))
        logs = []

        class H:
            def before(self, o, cl):
                return None

            def after(self, o, cl, _):
                logs.append(anchor(o)["log_r"].item())
        run_batches(model, opt, x, y, hook=H())
        assert all(math.isfinite(s) for s in logs)
        assert all(b <= a for a, b in zip(logs, logs[1:])), logs   # r^{n+1} ≤ rⁿ
        assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("dt", DTS)
def test_aegd_every_r_i_never_increases(dt):
    for _, make, x, y in problems():
        model = make()
        opt = AEGD(model.parameters(), lr=dt, C=1.0)
        prev = None
        for _, _, xb, yb in batches(x, y, 16, 2):
            opt.step(closure_for(model, xb, yb))
            r = torch.cat([opt.state[p]["r"].reshape(-1) for p in model.parameters()])
            if prev is not None:
                assert (r <= prev).all()
            prev = r.clone()
        assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("dt", DTS)
@pytest.mark.parametrize("cls", [ResSAV, AResSAV])
def test_ressav_r_below_its_reset_value(cls, dt):
    """ResSAV's guarantee is per step: r^{n+1} ≤ √(I(θⁿ)+C) on the step's batch."""
    for _, make, x, y in problems():
        model = make()
        opt = cls(model.parameters(), lr=dt, C=1.0)

        class H:
            def before(self, o, cl):
                return math.sqrt(float(cl(backward=False)) + 1.0)

            def after(self, o, cl, r_hat):
                assert anchor(o)["r"].item() <= r_hat * (1 + 1e-14)
        run_batches(model, opt, x, y, hook=H())
        assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("dt", DTS)
@pytest.mark.parametrize("cls,kw", [(RelSAV, {}), (RelSAV, {"lam": 4.0, "time_scale": 3.0, "eta": 0.5}),
                                    (ARelSAV, {}), (ARelSAV, {"lam": 2.0, "time_scale": 2.0})],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_relaxed_xi_and_inequality(cls, kw, dt):
    """ξ ∈ [0,1]; (r^{n+1})² − r̃² ≤ η‖Δθ‖²/(KΔt) (plain; with τ = Δt/(√v̂+ε) for A-RelSAV);
    also (r^{n+1})² − (r̂^{n+1})² ≤ η‖Δθ‖²/Δt (the evaluation's form, docs/sources.md) since r^{n+1} ≤ r̂^{n+1}."""
    eta, K, lam, C = kw.get("eta", 0.99), kw.get("time_scale", 1.0), kw.get("lam", 0.0), 1.0
    adaptive = cls is ARelSAV
    for _, make, x, y in problems():
        model = make()
        opt = cls(model.parameters(), lr=dt, C=C, **kw, **SAME)
        params = list(model.parameters())
        n_checked = 0

        class H:
            def before(self, o, cl):
                st = anchor(o)
                loss = cl()                                  # gradient at θⁿ (same batch)
                E = float(loss) + C
                r_n = st["r"].item() if "r" in st else math.sqrt(E)
                theta = flat(model).clone()
                grads = [p.grad.clone() for p in params]
                return E, r_n, theta, grads, {p: {k: v.clone() for k, v in o.state[p].items()
                                                  if isinstance(v, torch.Tensor) and v.dim() > 0}
                                              for p in params}

            def after(self, o, cl, before):
                nonlocal n_checked
                E, r_n, theta, grads, old = before
                dtheta = flat(model) - theta
                r_new = anchor(o)["r"].item()
                if adaptive:
                    b1, b2 = o.param_groups[0]["betas"]
                    t = anchor(o)["step"].item()
                    taus, s = [], 0.0
                    for p, g in zip(params, grads):
                        m = o.state[p]["exp_avg"]
                        v = o.state[p]["exp_avg_sq"]
                        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
                        tau = dt / (v_hat.sqrt() + o.param_groups[0]["eps"])
                        taus.append(tau.reshape(-1))
                        s += float((m_hat * tau / (1 + lam * tau) * m_hat).sum())
                    tau = torch.cat(taus)
                    r_tilde = r_n / (1 + K * s / (2 * E))
                    D = float((dtheta**2 / (K * tau)).sum())
                else:
                    g2 = sum(float((g * g).sum()) for g in grads)
                    r_tilde = r_n / (1 + dt * K * g2 / ((1 + lam * dt) * 2 * E))
                    D = float((dtheta**2).sum()) / (K * dt)
                r_hat_new = math.sqrt(float(cl(backward=False)) + C)
                xi = float(o.diagnostics()["xi"])
                assert 0.0 <= xi <= 1.0
                tol = 1e-12 * max(1.0, r_tilde**2)
                assert r_new**2 - r_tilde**2 <= eta * D + tol
                assert r_new ** 2 - r_hat_new**2 <= eta * float((dtheta**2).sum()) / dt + tol
                assert r_new <= r_n * (1 + 1e-14)
                assert r_new == pytest.approx(xi * r_tilde + (1 - xi) * r_hat_new, rel=1e-10, abs=1e-14 * r_hat_new)
                n_checked += 1
        run_batches(model, opt, x, y, epochs=1, hook=H())
        assert n_checked == 4


@pytest.mark.parametrize("dt", DTS)
@pytest.mark.parametrize("cls", [IEQ, IEQAdaptive])
def test_ieq_energy_below_batch_loss(cls, dt):
    """IEQ's guarantee is per step: mean((q^{n+1})²) ≤ I(θⁿ) on the batch."""
    for _, make, x, y in problems():
        model = make()
        opt = cls(model.parameters(), lr=dt, time_scale=2.0)
        for _, _, xb, yb in batches(x, y, 16, 1):
            cl = closure_for(model, xb, yb)
            loss = float(cl(backward=False))
            opt.step(cl)
            assert float(opt.diagnostics()["energy"]) <= loss * (1 + 1e-12)
            assert 0.0 <= float(opt.diagnostics()["q"]) <= 1.0 + 1e-12
        assert torch.isfinite(flat(model)).all()


def test_sgd_diverges_where_sav_is_stable():
    """Linear least squares, Δt = 1 (above 2/L): SGD blows up, the SAV family does not."""
    _, make, x, y = problems()[1]
    cl_full = lambda m: closure_for(m, x, y)  # noqa: E731
    model = make()
    l0 = float(cl_full(model)(backward=False))
    L = 2 * torch.linalg.eigvalsh(torch.cat([x, torch.ones(64, 1)], 1).T @ torch.cat([x, torch.ones(64, 1)], 1) / 64).max()
    assert 1.0 > 2 / float(L)                                 # Euler is unstable at Δt = 1
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(30):
        sgd.step(cl_full(model))
    l_sgd = float(cl_full(model)(backward=False))
    assert not math.isfinite(l_sgd) or l_sgd > 1e10 * l0
    for cls in (SAV, RelSAV, ResSAV, ExpSAV, RelExpSAV, IEQ, IEQAdaptive, AEGD, ASAV):
        model = make()
        opt = cls(model.parameters(), lr=1.0)
        for _ in range(30):
            opt.step(cl_full(model))
        l_end = float(cl_full(model)(backward=False))
        assert math.isfinite(l_end) and l_end < 10 * l0, (cls.__name__, l0, l_end)
        if cls is not AEGD:   # AEGD bounds its element-wise energies, not the loss
            assert l_end < l0, (cls.__name__, l0, l_end)


@pytest.mark.parametrize("dt", DTS)
@pytest.mark.parametrize("cls", [RelSAV, ARelSAV], ids=lambda c: c.__name__)
def test_relaxation_on_the_next_batch_keeps_the_energy_and_needs_no_forward(cls, dt):
    """rhat_batch='next': the relaxed r (applied at the next step's start, logged there as
    q·r̂) never increases, stays ≤ r̂ of its batch, and no step evaluates the loss twice."""
    from gradflow_exp.losses import MSELoss
    from gradflow_exp.optim import BatchClosure

    class Counting(BatchClosure):
        forward_only = 0

        def __call__(self, backward=True):
            type(self).forward_only += not backward
            return super().__call__(backward)

    for _, make, x, y in problems():
        model = make()
        opt = cls(model.parameters(), lr=dt, C=1.0, rhat_batch="next")
        relaxed, xis = [], []
        for _, first, xb, yb in batches(x, y, 16, 3):
            opt.step(Counting(model, MSELoss(), xb, yb))
            d = opt.diagnostics()
            relaxed.append(float(d["q"]) * float(d["r_hat"]))   # r carried into the step
            xis.append(float(d["xi"]))
        assert Counting.forward_only == 0
        assert all(b <= a * (1 + 1e-14) for a, b in zip(relaxed, relaxed[1:])), relaxed
        assert all(0.0 <= xi <= 1.0 for xi in xis) and max(xis) > 0   # it did relax
        Counting.forward_only = 0


@pytest.mark.parametrize("dt", DTS)
def test_relexpsav_relaxation_on_the_next_batch_keeps_log_r_non_increasing(dt):
    """RelExpSAV with rhat_batch='next': the log r carried into each step, relaxed there
    toward I(θⁿ)/C on that step's batch, min(ŝ, s̃ + η(s − s̃)), never increases; ξ ∈ [0, 1]."""
    C = 0.5
    for _, make, x, y in problems():
        model = make()
        opt = RelExpSAV(model.parameters(), lr=dt, C=C, lam=1.0, time_scale=2.0)
        carried, xis = [], []
        for _, _, xb, yb in batches(x, y, 16, 3):
            cl = closure_for(model, xb, yb)
            s_hat = float(cl(backward=False)) / C
            st = anchor(opt)
            if "log_r" in st:
                s_tilde, gain = st["log_r"].item(), st["relax_budget"].item()
                carried.append(min(s_hat, s_tilde + gain))
            else:
                carried.append(s_hat)
            opt.step(cl)
            xis.append(float(opt.diagnostics()["xi"]))
            torch.testing.assert_close(float(opt.diagnostics()["q"]), math.exp(carried[-1] - s_hat), rtol=1e-9, atol=0)
        assert all(b <= a + 1e-12 * max(1.0, abs(a)) for a, b in zip(carried, carried[1:])), carried
        assert all(0.0 <= xi <= 1.0 for xi in xis) and max(xis) > 0
        assert torch.isfinite(flat(model)).all()
