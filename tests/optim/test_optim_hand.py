"""Each update against a hand computation on a tiny problem.

Problem: f(x) = w·x with x = 1, y = 0 (one weight, no bias), so I(w) = w², ∇I = 2w.
"""
import math

import pytest
import torch
from torch import nn

from gradflow_exp.optim import AEGD, ASAV, SAV, ExpSAV, IEQAdaptive, RelExpSAV, RelSAV, ResSAV
from optim_testlib import closure_for


def scalar_problem(w0=1.0):
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w0)
    return model, closure_for(model, torch.ones(1, 1), torch.zeros(1, 1))


def w(model):
    return model.weight.item()


def r_of(opt):
    return opt.state[opt.param_groups[0]["params"][0]]["r"].item()


def test_sav_two_steps_by_hand():
    # Δt = 0.5, C = 1, λ = 1, K = 2;  w⁰ = 1: I = 1, E = 2, g = 2, (I+Δtℒ)⁻¹ = 2/3
    model, cl = scalar_problem(1.0)
    opt = SAV(model.parameters(), lr=0.5, C=1.0, lam=1.0, time_scale=2.0)
    opt.step(cl)
    # r¹ = √2 / (1 + ΔtK·g·(2/3)·g/(2E)) = √2/(1 + (8/3)/4) = (3/5)√2
    assert r_of(opt) == pytest.approx(0.6 * math.sqrt(2), rel=1e-14)
    # θ¹ = 1 − ΔtK (r¹/√E)(2/3) g = 1 − (3/5)(2/3)·2 = 1/5
    assert w(model) == pytest.approx(0.2, rel=1e-14)
    d = opt.diagnostics()
    assert float(d["eff_step"]) == pytest.approx(1.0 * 0.6 * (2 / 3), rel=1e-14)
    assert float(d["q"]) == 1.0 and float(d["r_hat"]) == pytest.approx(math.sqrt(2))
    # step 2: I = 1/25, E = 26/25, g = 2/5, ⟨g,(I+Δtℒ)⁻¹g⟩ = 8/75; r² = r¹/(1 + (8/75)/(52/25)) = r¹·39/41
    opt.step(cl)
    r2 = 0.6 * math.sqrt(2) * 39 / 41
    assert r_of(opt) == pytest.approx(r2, rel=1e-14)
    E1 = 26 / 25
    assert w(model) == pytest.approx(0.2 - (r2 / math.sqrt(E1)) * (2 / 3) * 0.4, rel=1e-13)
    assert float(opt.diagnostics()["q"]) == pytest.approx(0.6 * math.sqrt(2) / math.sqrt(E1))


def test_ressav_resets_r_each_step():
    model, cl = scalar_problem(1.0)
    opt = ResSAV(model.parameters(), lr=0.5, C=1.0, lam=1.0, time_scale=2.0)
    opt.step(cl)
    assert w(model) == pytest.approx(0.2, rel=1e-14)      # first step = SAV
    opt.step(cl)
    E1 = 26 / 25
    r2 = math.sqrt(E1) * 39 / 41                             # r¹ replaced by √(I(θ¹)+C)
    assert r_of(opt) == pytest.approx(r2, rel=1e-14)
    assert w(model) == pytest.approx(0.2 - (39 / 41) * (2 / 3) * 0.4, rel=1e-13)


def test_relsav_step_by_hand_and_paper_quadratic():
    # as SAV: r̃ = (3/5)√2, θ¹ = 1/5; r̂¹ = √(1/25 + 1) = √26/5; D = ‖Δθ‖²/(KΔt) = 16/25
    model, cl = scalar_problem(1.0)
    eta = 0.25
    opt = RelSAV(model.parameters(), lr=0.5, C=1.0, lam=1.0, eta=eta, time_scale=2.0, rhat_batch="same")
    opt.step(cl)
    assert w(model) == pytest.approx(0.2, rel=1e-14)
    rt, rh, D = 0.6 * math.sqrt(2), math.sqrt(26) / 5, 16 / 25
    # paper Alg. 4: a, b, c and the smaller root
    a, b, c = (rt - rh) ** 2, 2 * rh * (rt - rh), rh**2 - rt**2 - eta * D
    xi = max(0.0, (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a))
    xi = min(xi, 1.0)
    assert 0 < xi < 1
    r1 = xi * rt + (1 - xi) * rh
    assert r1 == pytest.approx(math.sqrt(22) / 5, rel=1e-13)  # = √(r̃² + ηD) here
    assert r_of(opt) == pytest.approx(r1, rel=1e-13)
    assert float(opt.diagnostics()["xi"]) == pytest.approx(xi, rel=1e-12)


def test_relsav_xi_zero_when_inequality_slack():
    model, cl = scalar_problem(1.0)
    opt = RelSAV(model.parameters(), lr=0.5, C=1.0, lam=1.0, eta=0.99, time_scale=2.0, rhat_batch="same")
    opt.step(cl)
    # √(r̃² + ηD) = √(18/25 + 0.99·16/25) > r̂ = √26/5  →  ξ = 0, r¹ = r̂¹
    assert r_of(opt) == pytest.approx(math.sqrt(26) / 5, rel=1e-14)
    assert float(opt.diagnostics()["xi"]) == 0.0


def test_asav_two_steps_by_hand():
    # Δt = 0.5, λ = 1, K = 1, ε = 0, β = (0.9, 0.999); w⁰ = 1, g = 2
    model, cl = scalar_problem(1.0)
    opt = ASAV(model.parameters(), lr=0.5, C=1.0, lam=1.0, eps=0.0)
    opt.step(cl)
    # m̂ = g = 2, √v̂ = |g| = 2;  d = Δt m̂/(√v̂ + λΔt) = 1/2.5 = 0.4;  ⟨m̂,d⟩ = 0.8
    r1 = math.sqrt(2) / (1 + 0.8 / 4)
    assert r_of(opt) == pytest.approx(r1, rel=1e-14)
    assert w(model) == pytest.approx(1 - (r1 / math.sqrt(2)) * 0.4, rel=1e-14)   # = 2/3
    assert w(model) == pytest.approx(2 / 3, rel=1e-14)
    opt.step(cl)
    g = 4 / 3
    m = 0.9 * 0.1 * 2 + 0.1 * g
    v = 0.999 * 0.001 * 4 + 0.001 * g * g
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    d = 0.5 * m_hat / (math.sqrt(v_hat) + 0.5)
    E1 = (2 / 3) ** 2 + 1
    r2 = r1 / (1 + m_hat * d / (2 * E1))
    assert r_of(opt) == pytest.approx(r2, rel=1e-13)
    assert w(model) == pytest.approx(2 / 3 - (r2 / math.sqrt(E1)) * d, rel=1e-13)


def test_asav_scalar_second_moment_by_hand():
    # two weights, x = I₂, y = 0: I = (w₁² + w₂²)/2, g = w; v from ‖g‖²/n
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    cl = closure_for(model, torch.eye(2), torch.zeros(2, 1))
    opt = ASAV(model.parameters(), lr=0.1, C=1.0, eps=0.0, second_moment="scalar")
    opt.step(cl)
    g = torch.tensor([1.0, 2.0])
    denom = math.sqrt(5 / 2)                     # √v̂ = √(‖g‖²/2)
    d = 0.1 * g / denom
    E = 2.5 + 1
    r1 = math.sqrt(E) / (1 + float(g @ d) / (2 * E))
    expected = g - (r1 / math.sqrt(E)) * d
    assert torch.allclose(model.weight.detach().reshape(-1), expected, rtol=1e-14, atol=0)


def test_expsav_two_steps_by_hand():
    # r = exp(I/C); C = 2, Δt = 0.5, λ = 1, K = 2; w⁰ = 1: I = 1, g = 2, S = 8/3, a = ΔtKS/C = 4/3
    model, cl = scalar_problem(1.0)
    opt = ExpSAV(model.parameters(), lr=0.5, C=2.0, lam=1.0, time_scale=2.0)
    opt.step(cl)
    s1 = 0.5 + math.log(3 / 7)                  # r¹ = r⁰/(1 + 4/3), r⁰ = e^{1/2}
    st = opt.state[model.weight]
    assert st["log_r"].item() == pytest.approx(s1, rel=1e-14)
    assert w(model) == pytest.approx(3 / 7, rel=1e-14)  # 1 − ΔtK(r¹/r̂⁰)(2/3)g = 1 − 4/7
    opt.step(cl)
    I1, g1 = 9 / 49, 6 / 7
    rho = math.exp(s1 - I1 / 2)
    a = 1.0 * g1 * g1 * (2 / 3) / 2
    s2 = s1 - math.log1p(a * rho)
    assert st["log_r"].item() == pytest.approx(s2, rel=1e-13)
    assert w(model) == pytest.approx(3 / 7 - math.exp(s2 - I1 / 2) * (2 / 3) * g1, rel=1e-13)
    assert float(opt.diagnostics()["energy"]) == pytest.approx(2 * s2)
    assert float(opt.diagnostics()["q"]) == pytest.approx(rho)


def test_relexpsav_step_by_hand():
    model, cl = scalar_problem(1.0)
    eta = 0.5
    opt = RelExpSAV(model.parameters(), lr=0.5, C=2.0, lam=1.0, eta=eta, time_scale=2.0, rhat_batch="same")
    opt.step(cl)
    s0, s_tilde, s_hat = 0.5, 0.5 + math.log(3 / 7), (3 / 7) ** 2 / 2
    s1 = min(s_hat, s_tilde + eta * (s0 - s_tilde))
    assert opt.state[model.weight]["log_r"].item() == pytest.approx(s1, rel=1e-14)
    xi = (math.exp(s1) - math.exp(s_hat)) / (math.exp(s_tilde) - math.exp(s_hat))
    assert float(opt.diagnostics()["xi"]) == pytest.approx(xi, rel=1e-12)


def test_ieq_adaptive_by_hand():
    # α = 1/(1 + ΔtK‖∇I‖²/(2I + ε)) = 1/(1 + 1·4/2) = 1/3;  θ¹ = 1 − ΔtKα g = 1/3
    model, cl = scalar_problem(1.0)
    opt = IEQAdaptive(model.parameters(), lr=0.5, eps=0.0, time_scale=2.0)
    opt.step(cl)
    assert w(model) == pytest.approx(1 / 3, rel=1e-14)
    d = opt.diagnostics()
    assert float(d["q"]) == pytest.approx(1 / 3) and float(d["energy"]) == pytest.approx(1 / 9)


def test_aegd_by_hand():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    cl = closure_for(model, torch.eye(2), torch.zeros(2, 1))
    opt = AEGD(model.parameters(), lr=0.1, C=1.0, time_scale=2.0)
    opt.step(cl)
    # I = 2.5, g = (1, 2), v = g/(2√3.5), r = √3.5/(1 + 2ηK v²), θ = w − 2ηK r v
    g = torch.tensor([1.0, 2.0])
    v = g / (2 * math.sqrt(3.5))
    r = math.sqrt(3.5) / (1 + 0.4 * v * v)
    assert torch.allclose(opt.state[model.weight]["r"].reshape(-1), r, rtol=1e-14, atol=0)
    assert torch.allclose(model.weight.detach().reshape(-1), g - 0.4 * r * v, rtol=1e-14, atol=0)


def test_diagnostics_nan_before_first_step_and_fixed_keys():
    from optim_testlib import METHODS, regression_data, small_net
    x, y = regression_data(16)
    for name, (cls, kw) in METHODS.items():
        model = small_net()
        opt = cls(model.parameters(), **kw)
        before = opt.diagnostics()
        assert before and all(math.isnan(float(v)) for v in before.values()), name
        opt.step(closure_for(model, x, y))
        after = opt.diagnostics()
        assert set(after) == set(before), name
        assert all(math.isfinite(float(v)) for v in after.values()), (name, after)
