"""Hyperparameter validation, the closure requirement, time scaling, registry and configs."""
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gradflow_exp.optim import (
    AEGD, ARelSAV, AResSAV, ASAV, IEQ, SAV, SPM, ExpSAV, IEQAdaptive, RelExpSAV, RelSAV,
    ResSAV, build_optimizer,
)
from optim_testlib import METHODS, batches, closure_for, flat, regression_data, small_net

CONF = Path(__file__).resolve().parents[2] / "conf" / "optimizer"
ALL = [SAV, ResSAV, RelSAV, ASAV, AResSAV, ARelSAV, ExpSAV, RelExpSAV, IEQ, IEQAdaptive, AEGD]
WITH_C = [SAV, ResSAV, RelSAV, ASAV, AResSAV, ARelSAV, ExpSAV, RelExpSAV, AEGD]
WITH_LAM = [SAV, ResSAV, RelSAV, ASAV, AResSAV, ARelSAV, ExpSAV, RelExpSAV]
WITH_ETA = [RelSAV, ARelSAV, RelExpSAV]
ADAPTIVE = [ASAV, AResSAV, ARelSAV]
WITH_RESTART = [SAV, RelSAV, ASAV, ARelSAV, ExpSAV, RelExpSAV, AEGD]


def params():
    return small_net(2, 3).parameters()


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("lr", [-1e-3, -1.0, float("nan")])
def test_bad_lr(cls, lr):
    with pytest.raises(ValueError, match="lr"):
        cls(params(), lr=lr)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("k", [0.0, -2.0])
def test_bad_time_scale(cls, k):
    with pytest.raises(ValueError, match="time_scale"):
        cls(params(), time_scale=k)


@pytest.mark.parametrize("cls", WITH_C)
@pytest.mark.parametrize("C", [0.0, -1.0])
def test_bad_C(cls, C):
    with pytest.raises(ValueError, match="C"):
        cls(params(), C=C)


@pytest.mark.parametrize("cls", WITH_LAM)
def test_bad_lam(cls):
    with pytest.raises(ValueError, match="lam"):
        cls(params(), lam=-0.1)
    cls(params(), lam=0.0)


@pytest.mark.parametrize("cls", WITH_ETA)
@pytest.mark.parametrize("eta", [-0.01, 1.01])
def test_bad_eta(cls, eta):
    with pytest.raises(ValueError, match="eta"):
        cls(params(), eta=eta)


@pytest.mark.parametrize("cls", ADAPTIVE)
@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, -0.1), (0.9,), "x"])
def test_bad_betas(cls, betas):
    with pytest.raises(ValueError, match="betas"):
        cls(params(), betas=betas)


@pytest.mark.parametrize("cls", ADAPTIVE + [IEQAdaptive])
def test_bad_eps(cls):
    with pytest.raises(ValueError, match="eps"):
        cls(params(), eps=-1e-8)


@pytest.mark.parametrize("cls", WITH_RESTART)
def test_bad_restart(cls):
    with pytest.raises(ValueError, match="restart"):
        cls(params(), restart="batch")


def test_bad_second_moment():
    with pytest.raises(ValueError, match="second_moment"):
        ASAV(params(), second_moment="diag")


def test_bad_spm():
    base = SAV(params())
    for kw in ({"J": 0}, {"J": 2.5}, {"h": 0.0}, {"h": -1e-4}):
        with pytest.raises(ValueError):
            SPM(base, **kw)


@pytest.mark.parametrize("cls", ALL)
def test_step_with_nothing_to_go_on_says_what_to_pass(cls):
    if cls is IEQ:
        with pytest.raises(TypeError, match="BatchClosure"):
            cls(params()).step()
    else:
        with pytest.raises(ValueError, match=r"opt.step\(loss=loss\)"):
            cls(params()).step()
    with pytest.raises(TypeError, match="BatchClosure"):
        SPM(cls(params())).step()


def test_ieq_and_spm_need_functional_closure():
    model = small_net(2, 3)
    x, y = regression_data(8, 2)

    def plain():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(TypeError, match="functional_residuals"):
        IEQ(model.parameters()).step(plain)
    with pytest.raises(TypeError, match="functional_loss"):
        SPM(SAV(model.parameters())).step(plain)
    SAV(model.parameters()).step(plain)         # a plain closure is enough for SAV


# ------------------------------------------------------------------------- time scaling
@pytest.mark.parametrize("name", sorted(METHODS))
def test_time_scale_equals_scaled_lr_when_lam_is_zero(name):
    """θ' = −K∇I: with λ = 0 every method with (Δt, K) equals the method with (KΔt, 1)."""
    cls, kw = METHODS[name]
    x, y = regression_data(48, 3)
    K = 3.0
    runs = []
    for lr, k in ((kw["lr"], K), (kw["lr"] * K, 1.0)):
        model = small_net(3)
        opt = cls(model.parameters(), **{**kw, "lr": lr, "time_scale": k})
        for _, first, xb, yb in batches(x, y, 16, 2):
            opt.step(closure_for(model, xb, yb))
        runs.append(flat(model))
    assert torch.allclose(runs[0], runs[1], rtol=1e-9, atol=1e-12), name


def test_sav_small_dt_follows_k_gradient_flow():
    """Small Δt: SAV with time_scale K ≈ SGD with lr KΔt (relative error O(Δt))."""
    x, y = regression_data(32, 3)
    K, dt = 5.0, 1e-5
    out = []
    for make in (lambda m: SAV(m.parameters(), lr=dt, lam=4.0, time_scale=K),
                 lambda m: torch.optim.SGD(m.parameters(), lr=K * dt)):
        model = small_net(3)
        th0 = flat(model).clone()
        opt = make(model)
        for _ in range(5):
            opt.step(closure_for(model, x, y))
        out.append(flat(model) - th0)
    assert float((out[0] - out[1]).norm() / out[1].norm()) < 1e-3


def test_registry_passes_time_scale_or_scales_lr():
    model = small_net(3)
    sav = build_optimizer(OmegaConf.load(CONF / "sav.yaml"), model, time_scale=4.0)
    assert isinstance(sav, SAV) and sav.param_groups[0]["time_scale"] == 4.0
    assert sav.param_groups[0]["lr"] == 0.2
    sgd = build_optimizer(OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1}), model,
                          time_scale=4.0)
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.4)


def test_adam_under_a_time_scale_is_asav_without_its_energy():
    """The per-particle Δt applies to every method: with K = 500, Adam at lr Δt (A-Euler,
    from the registry) steps as A-SAV at Δt does when C → ∞ and λ = 0 (r/√E = 1)."""
    x, y = regression_data(48, 3)
    runs = []
    for target, extra in (("torch.optim.Adam", {}), ("gradflow_exp.optim.ASAV", {"C": 1e30})):
        model = small_net(3)
        opt = build_optimizer(OmegaConf.create({"_target_": target, "lr": 1e-3, **extra}), model,
                              time_scale=500.0)
        for _, first, xb, yb in batches(x, y, 16, 2):
            opt.step(closure_for(model, xb, yb))
        runs.append(flat(model))
    assert torch.allclose(runs[0], runs[1], rtol=1e-10, atol=1e-13)


def test_registry_wraps_in_spm():
    model = small_net(3)
    cfg = OmegaConf.load(CONF / "relsav.yaml")
    off = build_optimizer(cfg, model)
    assert isinstance(off, RelSAV)
    cfg.spm = {"J": 7, "h": 1e-6, "seed": 0}
    on = build_optimizer(cfg, model)
    assert isinstance(on, SPM) and isinstance(on.base, RelSAV)
    assert (on.J, on.h) == (7, 1e-6)
    assert on.param_groups[0]["lr"] == 0.2 and on.param_groups is on.base.param_groups


OURS = ["sav", "ressav", "relsav", "asav", "aressav", "arelsav", "expsav", "relexpsav", "ieq",
        "ieq_adaptive", "aegd"]


@pytest.mark.parametrize("name", OURS)
def test_config_instantiates_and_steps(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg._target_.startswith("gradflow_exp.optim.")
    model = small_net(3)
    opt = build_optimizer(cfg, model, time_scale=2.0)
    x, y = regression_data(16, 3)
    opt.step(closure_for(model, x, y))
    assert all(math.isfinite(float(v)) for v in opt.diagnostics().values())
    assert "lr" in cfg
    # the shared keys mean the same thing everywhere
    for key in ("C", "lam", "eta"):
        if cfg.get(key) is not None:
            assert opt.param_groups[0][key] == cfg[key]
        else:       # null: a shared key this method does not have
            assert key not in opt.param_groups[0]


def test_param_group_hyperparameters_are_validated():
    model = small_net(3)
    with pytest.raises(ValueError, match="lr"):
        SAV([{"params": [model[0].weight], "lr": -1.0}, {"params": [model[0].bias]}])
    opt = RelSAV([model[0].weight], lr=0.1)
    with pytest.raises(ValueError, match="eta"):
        opt.add_param_group({"params": [model[0].bias], "eta": 2.0})


def test_expsav_zero_gradient_with_stale_r_is_finite():
    model = small_net(3)
    x, y = regression_data(8, 3)
    opt = ExpSAV(model.parameters(), lr=0.1)

    def zero_grad_closure(backward=True):
        loss = torch.nn.functional.mse_loss(model(x), y)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        return loss.detach()
    opt.state[opt.param_groups[0]["params"][0]]["log_r"] = torch.tensor(1e4)
    th0 = flat(model).clone()
    opt.step(zero_grad_closure)
    assert torch.equal(flat(model), th0)


def test_shared_keys_sweep_across_methods(caplog):
    """optimizer=sgd,sav optimizer.C=1,100 composes for both: SGD ignores C with a warning."""
    model = small_net(3)
    cfg = OmegaConf.load(CONF / "sgd.yaml")
    cfg.C, cfg.lam = 100.0, 4.0
    with caplog.at_level("WARNING"):
        opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD) and "C" not in opt.param_groups[0]
    # one line for all of them (an experiment that sets C and λ for its SAV methods)
    assert [r.getMessage() for r in caplog.records] == ["SGD has no hyperparameter C=100.0, lam=4.0: ignored"]


@pytest.mark.parametrize("name", ["relsav", "arelsav", "relexpsav"])
def test_relaxed_methods_call_a_standard_closure_once_and_keep_the_full_batch_trajectory(name):
    """A torch user's closure (zero grads, forward, backward, return the loss) is called once
    a step: the relaxation takes I(θ^{n+1}) from the next step's loss (rhat_batch='next', the
    default). On a full batch that is the number the paper's form evaluates after the step
    (rhat_batch='same', one forward by BatchClosure(backward=False)), so θ follows the same
    trajectory and ξ is the same, one step later."""
    cls, kw = METHODS[name]
    kw = {**kw, "lr": 5.0}          # a step large enough that the relaxation acts (ξ > 0)
    x, y = regression_data()
    runs = []
    for standard in (False, True):
        model = small_net()
        opt = cls(model.parameters(), **kw, **({} if standard else {"rhat_batch": "same"}))
        calls, thetas, xis = [0], [], []
        for _ in range(6):
            if standard:
                def closure():
                    calls[0] += 1
                    opt.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    return loss
            else:
                closure = closure_for(model, x, y)
            opt.step(closure)
            thetas.append(flat(model).clone())
            xis.append(float(opt.diagnostics()["xi"]))
        runs.append((thetas, xis))
        if standard:
            assert calls[0] == 6
    (same_th, same_xi), (next_th, next_xi) = runs
    for a, b in zip(same_th, next_th):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert next_xi[0] == 0.0 and max(same_xi) > 0
    assert next_xi[1:] == pytest.approx(same_xi[:-1], rel=1e-9, abs=1e-12)


def test_the_readmes_own_loop_example_runs_as_printed():
    """README.md's own-loop example (RelSAV with the closure a torch user writes), executed
    as it stands: the loss falls and the energy it reports is finite and below where it began."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## The optimizers, in your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    setup, loop = code.split("for step in range", 1)
    ns: dict = {}
    torch.manual_seed(0)
    exec(setup, ns)
    def loss():
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(ns["model"](ns["x"]), ns["y"]))

    start = loss()
    exec("for step in range" + loop.replace("print(", "diag = ("), ns)
    end = loss()
    assert type(ns["opt"]).__name__ == "RelSAV" and end < 0.9 * start
    energy = float(ns["diag"]["energy"])
    assert math.isfinite(energy) and energy <= start + 1.0      # r² ≤ r₀² = I(θ⁰) + C, C = 1


def test_the_backward_keyword_is_read_from_each_closures_own_signature():
    """RelSAV asks once per function body or closure class whether a closure takes
    ``backward=``; wrappers that share one body (functools.wraps, partial) are asked each time."""
    import functools

    from gradflow_exp.optim.base import _signature_takes_backward as _takes_backward

    def wrap(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)
        return wrapper

    def with_kw(backward=True):
        return backward

    def without():
        return 0

    for _ in range(2):                                   # the second round reads the caches
        assert _takes_backward(with_kw) and not _takes_backward(without)
        assert _takes_backward(wrap(with_kw)) and not _takes_backward(wrap(without))
        assert _takes_backward(functools.partial(lambda backward=True: backward))
        assert not _takes_backward(functools.partial(lambda x: x, 1))
        assert _takes_backward(lambda **kw: 0) and not _takes_backward(lambda: 0)

    class Plain:
        def __call__(self):
            return 0

    class Keyword:
        def __call__(self, backward=True):
            return 0

    assert not _takes_backward(Plain()) and _takes_backward(Keyword()) and not _takes_backward(Plain())
    assert _takes_backward(Keyword().__call__) and not _takes_backward(print)
