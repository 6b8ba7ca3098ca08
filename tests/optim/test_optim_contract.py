"""torch.optim's generic optimizer contract, checked for every optimizer of this package.

In the form of PyTorch's own suite (test/test_optim.py over the ``OptimizerInfo`` table of
torch/testing/_internal/common_optimizers.py): one table of optimizer inputs (`INFOS`:
every class, SPM around several bases, several hyperparameter sets) and generic tests
over it. ``torch.optim.SGD`` and ``Adam`` run through the same tests as controls, so a
check that fails for them is the check's fault, not ours.

Where our methods differ from torch's by design, the table says so and the tests follow:
``step`` needs the loss of the step's batch (a closure, or ``loss=`` in the standard loop),
IEQ and SPM need a closure that gives the loss as a function of the parameters
(`BatchClosure`), and a hyperparameter that is one number for the whole model
(``whole_model_keys``: C, η, …) is refused per param group instead of being ignored.
"""
from __future__ import annotations

import copy
import io
import pickle
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.nn import Parameter
from torch.optim.optimizer import register_optimizer_step_pre_hook

from gradflow_exp.optim import torch_forms

from gradflow_exp.losses import MSELoss
from gradflow_exp.optim import (
    AEGD, ARelSAV, AResSAV, ASAV, IEQ, SAV, SPM, BatchClosure, ExpSAV, IEQAdaptive, RelExpSAV, RelSAV, ResSAV,
)
from gradflow_exp.optim.base import EnergyOptimizer


# ------------------------------------------------------------------------------ the table
@dataclass
class Input:
    kwargs: dict
    desc: str = ""
    batch_closure: bool = False      # needs a closure with backward= (rhat_batch='same')


@dataclass
class Info:
    name: str
    make: object                      # (params, **kwargs) -> optimizer
    inputs: list[Input]
    control: bool = False             # torch's own: step() after backward() needs nothing
    functional: bool = False          # needs BatchClosure (IEQ, SPM): the loss as a function of θ
    supports_complex: bool = True
    supports_sparse: bool = False
    extra: dict = field(default_factory=dict)

    def __str__(self):
        return self.name


def spm(base_cls, **base_kw):
    def make(params, **kw):
        return SPM(base_cls(params, **{**base_kw, **kw}), J=3, h=1e-3, seed=0)
    return make


def _sav_inputs(lr):
    return [Input({"lr": lr}), Input({"lr": lr, "C": 10.0, "lam": 4.0, "time_scale": 2.0}, "C, λ, K"),
            Input({"lr": lr, "restart": "epoch"}, "restart")]


INFOS = [
    Info("SGD", torch.optim.SGD, [Input({"lr": 0.01}), Input({"lr": 0.01, "momentum": 0.9}, "momentum")],
         control=True, supports_sparse=True),
    Info("Adam", torch.optim.Adam, [Input({"lr": 0.01}), Input({"lr": 0.01, "amsgrad": True}, "amsgrad")],
         control=True),
    # the forms of torch's SGD and Adam that the runner builds (gradflow_exp/optim/torch_forms.py)
    Info("SGD (runner's form)", torch_forms.SGD, [Input({"lr": 0.01}), Input({"lr": 0.01, "momentum": 0.9}, "momentum")],
         control=True, supports_sparse=True),
    Info("Adam (runner's form)", torch_forms.Adam, [Input({"lr": 0.01})], control=True),
    Info("SAV", SAV, _sav_inputs(0.05)),
    Info("ResSAV", ResSAV, [Input({"lr": 0.05}), Input({"lr": 0.05, "lam": 2.0}, "λ")]),
    Info("RelSAV", RelSAV, [Input({"lr": 0.05}), Input({"lr": 0.05, "eta": 0.5, "lam": 1.0}, "η, λ"),
                            Input({"lr": 0.05, "rhat_batch": "same"}, "same batch", batch_closure=True)]),
    Info("ASAV", ASAV, [Input({"lr": 0.01}), Input({"lr": 0.01, "second_moment": "scalar"}, "scalar v")]),
    Info("AResSAV", AResSAV, [Input({"lr": 0.01})]),
    Info("ARelSAV", ARelSAV, [Input({"lr": 0.01}), Input({"lr": 0.01, "rhat_batch": "same"}, "same batch",
                                                         batch_closure=True)]),
    Info("ExpSAV", ExpSAV, _sav_inputs(0.05)),
    Info("RelExpSAV", RelExpSAV, [Input({"lr": 0.05}), Input({"lr": 0.05, "rhat_batch": "same"}, "same batch",
                                                             batch_closure=True)]),
    Info("IEQ", IEQ, [Input({"lr": 0.05}), Input({"lr": 0.05, "time_scale": 3.0}, "K")], functional=True,
         supports_complex=False),
    Info("IEQAdaptive", IEQAdaptive, [Input({"lr": 0.05}), Input({"lr": 0.05, "eps": 1e-3}, "ε")]),
    Info("AEGD", AEGD, [Input({"lr": 0.05}), Input({"lr": 0.05, "C": 5.0, "restart": "epoch"}, "c, restart")]),
    Info("SPM(SGD)", spm(torch.optim.SGD), [Input({"lr": 0.01})], functional=True, supports_complex=False),
    Info("SPM(SAV)", spm(SAV), [Input({"lr": 0.05})], functional=True, supports_complex=False),
    Info("SPM(RelSAV)", spm(RelSAV), [Input({"lr": 0.05}), Input({"lr": 0.05, "rhat_batch": "same"}, "same batch")],
         functional=True, supports_complex=False),
    Info("SPM(ASAV)", spm(ASAV), [Input({"lr": 0.01})], functional=True, supports_complex=False),
]
OURS = [i for i in INFOS if not i.control]
CASES = [pytest.param(info, inp, id=f"{info.name}-{inp.desc or 'default'}") for info in INFOS for inp in info.inputs]
OUR_CASES = [c for c in CASES if not c.values[0].control]


def classes_of(infos):
    return [pytest.param(i, id=i.name) for i in infos]


# --------------------------------------------------------------------------- a problem
class Affine(nn.Module):
    """f(x) = W x + b around given parameters (torch's tests use W [10, 5], b [10])."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return x @ self.weight.T + self.bias


def problem(dtype=torch.float64, contiguous=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        w, b = torch.randn(10, 5, generator=g, dtype=dtype), torch.randn(10, generator=g, dtype=dtype)
    else:
        w = torch.randn(10, 5, 2, generator=g, dtype=dtype)[..., 0]
        b = torch.randn(10, 2, generator=g, dtype=dtype)[..., 0]
    x = torch.randn(8, 5, generator=g, dtype=dtype)
    y = torch.randn(8, 10, generator=g, dtype=dtype)
    return Affine(Parameter(w), Parameter(b)), x, y


def loss_of(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def value(model, x, y) -> float:
    with torch.no_grad():
        return float(loss_of(model, x, y))


def step(opt, info, inp, model, x, y, how="closure"):
    """One step as a user of ``info`` takes it: a BatchClosure where the method needs one;
    else a standard closure (``how='closure'``) or the standard loop (``how='loss'``:
    backward, then ``step()`` for torch's, ``step(loss=loss)`` for ours)."""
    if info.functional or inp.batch_closure:
        return opt.step(BatchClosure(model, MSELoss(), x, y))
    if how == "closure":
        def closure():
            opt.zero_grad()
            loss = loss_of(model, x, y)
            loss.backward()
            return loss
        return opt.step(closure)
    opt.zero_grad()
    loss = loss_of(model, x, y)
    loss.backward()
    return opt.step() if info.control else opt.step(loss=loss)


def build(info, inp, params, **over):
    return info.make(params, **{**inp.kwargs, **over})


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("info", classes_of(INFOS))
def test_errors(info):
    """torch's generic error inputs (common_optimizers.get_error_inputs_for_all_optims)."""
    p, q = Parameter(torch.randn(1, 1)), Parameter(torch.randn(1, 1))
    kw = info.inputs[0].kwargs
    with pytest.raises(TypeError, match="params argument given to the optimizer should be an iterable"):
        info.make(p, **kw)
    with pytest.warns(UserWarning, match="a parameter group with duplicate parameters"):
        info.make([p, p], **kw)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        info.make([{"params": p}, {"params": p}], **kw)
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        info.make([p], **{**kw, "lr": torch.tensor([0.001, 0.001])})
    with pytest.raises(ValueError, match="all optimizer params should be with/without names"):
        info.make([("weight", p), q], **kw)
    with pytest.raises(ValueError, match="all optimizer param groups should be with/without names"):
        info.make([{"params": [p], "lr": 1e-2}, {"params": [("weight", q)]}], **kw)
    with pytest.raises(TypeError, match="ordered collections"):
        info.make([{"params": {p, q}}], **kw)
    with pytest.raises(ValueError, match="lr|learning rate"):
        info.make([p], **{**kw, "lr": -0.1})


# ------------------------------------------------------------------ training goes downhill
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("how", ["closure", "loss"])
@pytest.mark.parametrize("info,inp", CASES)
def test_goes_right_direction(info, inp, how, contiguous):
    """torch's test_forloop_goes_right_direction, with a closure and in the standard loop."""
    model, x, y = problem(contiguous=contiguous)
    opt = build(info, inp, model.parameters())
    start = value(model, x, y)
    for _ in range(20):
        step(opt, info, inp, model, x, y, how)
    assert value(model, x, y) < start


@pytest.mark.parametrize("info,inp", [c for c in CASES if not c.values[0].functional and not c.values[1].batch_closure])
def test_the_standard_loop_is_the_closures_trajectory(info, inp):
    """``loss.backward(); opt.step(loss=loss)`` takes, bit for bit, the steps that
    ``opt.step(closure)`` takes."""
    runs = []
    for how in ("closure", "loss"):
        model, x, y = problem()
        opt = build(info, inp, model.parameters())
        for _ in range(5):
            step(opt, info, inp, model, x, y, how)
        runs.append(flat(model))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("info", classes_of([i for i in OURS if not i.functional]))
def test_step_with_nothing_says_in_one_line_what_to_pass(info):
    model, x, y = problem()
    opt = build(info, info.inputs[0], model.parameters())
    loss_of(model, x, y).backward()
    before = flat(model)
    with pytest.raises(ValueError, match=r"^[^\n]*opt\.step\(loss=loss\)[^\n]*$"):
        opt.step()
    with pytest.raises(ValueError, match="closure returned None"):
        opt.step(lambda: None)                 # gradients there, but no loss
    assert torch.equal(flat(model), before)
    opt.step(loss_of(model, x, y))             # a tensor in the closure's place is the loss
    assert not torch.equal(flat(model), before)


@pytest.mark.parametrize("info", classes_of([i for i in INFOS if not i.functional]))
def test_a_closure_that_returns_none_without_gradients_skips_the_step(info):
    """Lightning's way to skip a batch: training_step returns None, no backward runs, and
    the optimizer's step does nothing (as torch.optim's do without gradients)."""
    model, x, y = problem()
    opt = build(info, info.inputs[0], model.parameters())
    before = flat(model)
    assert opt.step(lambda: None) is None
    assert torch.equal(flat(model), before)
    step(opt, info, info.inputs[0], model, x, y)          # and then trains as usual
    assert not torch.equal(flat(model), before)


@pytest.mark.parametrize("info,inp", [c for c in CASES if not c.values[0].functional])
def test_a_standard_closure_is_called_once_a_step(info, inp):
    """A closure may log, draw data or count: no method calls it twice (the relaxed ones take
    I(θ^{n+1}) from the next step's loss); and one that cannot avoid it says so instead."""
    model, x, y = problem()
    opt = build(info, inp, model.parameters())
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    if inp.batch_closure:
        with pytest.raises(ValueError, match="rhat_batch='same'"):
            opt.step(closure)
        assert calls[0] == 0
        return
    for _ in range(4):
        opt.step(closure)
    assert calls[0] == 4


# ------------------------------------------------------------------------- param groups
@pytest.mark.parametrize("info,inp", CASES)
def test_param_groups_lr(info, inp):
    """torch's test_param_groups_lr: a group at lr 1e-28 stays put while the others train."""
    model, x, y = problem()
    irrelevant = Parameter(torch.randn(2))
    kept = irrelevant.detach().clone()
    model.extra = irrelevant          # a parameter of the model that does not enter the loss
    opt = info.make([{"params": [model.weight, model.bias], **inp.kwargs},
                     {"params": [irrelevant], **{**inp.kwargs, "lr": 1e-28}}])
    start = value(model, x, y)
    for _ in range(20):
        if info.functional or inp.batch_closure:
            step(opt, info, inp, model, x, y)
            continue
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        opt.step() if info.control else opt.step(loss=loss)
    assert value(model, x, y) < start
    torch.testing.assert_close(irrelevant.detach(), kept)


@pytest.mark.parametrize("info", classes_of(INFOS))
def test_param_groups_given_as_generators_all_train(info):
    """The per-layer form of torch's docs, ``{"params": layer.parameters()}``: every group
    trains (a generator is a list to torch, never consumed before it sees it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    kw = info.inputs[0].kwargs
    opt = info.make([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": kw["lr"] / 2}], **kw)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        step(opt, info, info.inputs[0], model, x, y)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


OTHER_VALUE = {"lr": lambda v: v * 3, "C": lambda v: v * 10, "lam": lambda v: 4.0, "eta": lambda v: 0.5,
               "time_scale": lambda v: 3.0, "betas": lambda v: (0.5, 0.9), "eps": lambda v: 1e-2,
               "restart": lambda v: "epoch", "rhat_batch": lambda v: "same" if v == "next" else "next",
               "second_moment": lambda v: "scalar"}


@pytest.mark.parametrize("info", classes_of([i for i in OURS if not i.name.startswith("SPM")]))
def test_a_hyperparameter_per_param_group_is_honoured_or_refused(info):
    """Every hyperparameter set on the second of two groups either changes that group's steps
    or is refused with one ValueError naming it (one that is one number for the whole model)."""
    inp = info.inputs[0]
    probe = build(info, inp, problem()[0].parameters())
    for key, default in probe.defaults.items():
        if key not in OTHER_VALUE:
            continue
        value = OTHER_VALUE[key](default)
        model, x, y = problem()
        groups = [{"params": [model.weight]}, {"params": [model.bias], key: value}]
        if key in probe.whole_model_keys:
            with pytest.raises(ValueError, match=f"{key} is one value for the whole optimizer"):
                build(info, inp, groups)
            continue
        runs = []
        for g in (groups, [{"params": [model.weight]}, {"params": [model.bias]}]):
            model, x, y = problem()
            g = [{**g[0], "params": [model.weight]}, {**g[1], "params": [model.bias]}]
            opt = build(info, inp, g)
            for _ in range(3):
                step(opt, info, inp, model, x, y, "loss")
            runs.append(model.bias.detach().clone())
        assert not torch.equal(runs[0], runs[1]), f"{info.name}: {key} per group had no effect"


@pytest.mark.parametrize("info", classes_of([i for i in OURS if not i.name.startswith("SPM")]))
def test_a_torch_hyperparameter_the_method_lacks_is_refused_not_ignored(info):
    """``weight_decay`` in a group, as one writes it for SGD: SAV has none (its λ is a
    stabiliser), so the group is refused; a key that is no hyperparameter (a logger's
    ``name``) passes, as torch lets it."""
    model, x, y = problem()
    with pytest.raises(ValueError, match="has no hyperparameter weight_decay"):
        build(info, info.inputs[0], [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.01}])
    opt = build(info, info.inputs[0], [{"params": [model.weight], "name": "w"}, {"params": [model.bias]}])
    assert opt.param_groups[0]["name"] == "w"


def test_a_per_replica_whole_model_value_in_one_group_is_refused_with_a_valueerror():
    a, b = torch.zeros(3, 4), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="C is one value for the whole optimizer"):
        RelSAV([{"params": [a]}, {"params": [b], "C": [1.0, 2.0, 1.0]}], replicas=3, lr=0.1)
    opt = RelSAV([{"params": [a], "C": [1.0, 2.0, 3.0]}, {"params": [b], "C": [1.0, 2.0, 3.0]}], replicas=3, lr=0.1)
    assert opt.param_groups[1]["C"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("info", classes_of([i for i in OURS if i.name in ("SAV", "ExpSAV", "RelSAV")]))
def test_a_whole_model_value_written_into_one_group_later_is_refused_at_the_step(info):
    model, x, y = problem()
    inp = info.inputs[0]
    opt = build(info, inp, [{"params": [model.weight]}, {"params": [model.bias]}])
    opt.param_groups[1]["C"] = 5.0
    with pytest.raises(ValueError, match="C is one value for the whole optimizer"):
        step(opt, info, inp, model, x, y)


def test_sav_with_two_groups_steps_by_the_formula():
    """Per-group Δt and λ, one r: θ_g ← θ_g − K c_g (r̃/√E) g_g with c_g = Δt_g/(1+λ_gΔt_g)
    and r̃ = r⁰/(1 + Σ_g K c_g‖g_g‖²/(2E)), E = I + C (paper Alg. 2 with groups)."""
    model, x, y = problem()
    C, K = 2.0, 1.5
    groups = [(model.weight, 0.1, 0.0), (model.bias, 0.3, 4.0)]
    opt = SAV([{"params": [p], "lr": lr, "lam": lam} for p, lr, lam in groups], C=C, time_scale=K)
    loss = loss_of(model, x, y)
    loss.backward()
    grads = [p.grad.clone() for p, _, _ in groups]
    theta = [p.detach().clone() for p, _, _ in groups]
    E = loss.item() + C
    cs = [lr / (1 + lam * lr) for _, lr, lam in groups]
    r_tilde = E ** 0.5 / (1 + sum(K * c * float((g * g).sum()) for c, g in zip(cs, grads)) / (2 * E))
    opt.step(loss=loss)
    for (p, _, _), t, c, g in zip(groups, theta, cs, grads):
        torch.testing.assert_close(p.detach(), t - K * c * (r_tilde / E ** 0.5) * g, rtol=1e-13, atol=1e-15)
    assert float(opt.diagnostics()["r"]) == pytest.approx(r_tilde, rel=1e-13)


# --------------------------------------------------------------- no-ops, lr 0, tensor lr
@pytest.mark.parametrize("info,inp", CASES)
def test_step_is_noop_when_params_have_no_grad(info, inp):
    model, x, y = problem()
    for p in model.parameters():
        p.requires_grad_(False)
    opt = build(info, inp, model.parameters())
    before = flat(model)
    if info.functional or inp.batch_closure:
        step(opt, info, inp, model, x, y)
    else:
        opt.step(lambda: torch.tensor([1.0]))
    assert torch.equal(flat(model), before)


@pytest.mark.parametrize("info,inp", [c for c in CASES if not c.values[0].functional])
def test_step_is_noop_for_zero_grads(info, inp):
    param = Parameter(torch.randn(5, 1))
    kept = param.detach().clone()
    opt = build(info, inp, [param])
    param.grad = torch.zeros_like(param)
    if inp.batch_closure:
        opt.step(_FixedClosure(torch.tensor(1.0), param))
    else:
        opt.step(lambda: torch.tensor([1.0]))
    assert torch.equal(param.detach(), kept)


class _FixedClosure:
    """A closure with a backward keyword that returns a fixed loss and leaves the gradients."""

    def __init__(self, loss, *params):
        self.loss = loss

    def __call__(self, backward=True):
        return self.loss


@pytest.mark.parametrize("info,inp", CASES)
def test_lr_zero_is_accepted_and_a_warmup_from_zero_trains(info, inp):
    """torch accepts lr=0: the step leaves θ where it is (no division by Δt); a warm-up
    schedule that starts there then trains."""
    model, x, y = problem()
    opt = build(info, inp, model.parameters(), lr=0.0)
    before = flat(model)
    step(opt, info, inp, model, x, y)
    assert torch.equal(flat(model), before)
    model, x, y = problem()
    opt = build(info, inp, model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: min(1.0, epoch / 5))
    assert opt.param_groups[0]["lr"] == 0.0
    start = value(model, x, y)
    for _ in range(20):
        step(opt, info, inp, model, x, y)
        sched.step()
    after = value(model, x, y)
    assert after == after and after < start
    if hasattr(opt, "diagnostics"):
        assert all(bool(torch.isfinite(v).all()) for v in opt.diagnostics().values())


@pytest.mark.parametrize("shape", [(), (1,)], ids=["0-d", "1-element"])
@pytest.mark.parametrize("info,inp", CASES)
def test_tensor_lr(info, inp, shape):
    """A tensor lr in a param group steps as the same float lr does (torch's test_tensor_lr)."""
    runs = []
    for tensor in (False, True):
        model, x, y = problem()
        lr = inp.kwargs["lr"]
        opt = build(info, inp, model.parameters(), lr=torch.tensor(lr).reshape(shape) if tensor else lr)
        for _ in range(5):
            step(opt, info, inp, model, x, y)
        runs.append(flat(model))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- state dicts and copies
def prime(info, inp, n=10, seed=0):
    model, x, y = problem(seed=seed)
    opt = build(info, inp, model.parameters())
    if hasattr(opt, "epoch_start"):
        opt.epoch_start()
    for _ in range(n):
        step(opt, info, inp, model, x, y)
    return model, opt, x, y


def twin(info, inp, model, loaded_state):
    model_c = Affine(Parameter(model.weight.detach().clone()), Parameter(model.bias.detach().clone()))
    opt_c = build(info, inp, model_c.parameters())
    opt_c.load_state_dict(loaded_state)
    return model_c, opt_c


def assert_same_states(a, b):
    def same(u, v):
        if isinstance(u, torch.Tensor):
            return isinstance(v, torch.Tensor) and u.dtype == v.dtype and torch.equal(u, v)
        if isinstance(u, dict):
            return u.keys() == v.keys() and all(same(u[k], v[k]) for k in u)
        if isinstance(u, (list, tuple)):
            return len(u) == len(v) and all(same(s, t) for s, t in zip(u, v))
        return u == v
    assert same(a, b)


@pytest.mark.parametrize("info,inp", CASES)
def test_state_dict_deterministic(info, inp):
    """torch's test_state_dict_deterministic: a fresh optimizer that loads the state continues
    bit-identically, and the state dicts then agree (repeated groups alike)."""
    model, opt, x, y = prime(info, inp)
    model_c, opt_c = twin(info, inp, model, copy.deepcopy(opt.state_dict()))
    for _ in range(10):
        step(opt, info, inp, model, x, y)
        step(opt_c, info, inp, model_c, x, y)
        assert torch.equal(flat(model), flat(model_c))
    assert_same_states(opt.state_dict(), opt_c.state_dict())
    opt_c.param_groups.extend(opt_c.param_groups)
    assert_same_states(opt.state_dict()["param_groups"][-1], opt_c.state_dict()["param_groups"][-1])


@pytest.mark.parametrize("info,inp", CASES)
def test_save_load_equality_with_weights_only(info, inp):
    """Through torch.save and torch.load(weights_only=True), into a fresh optimizer: the same
    continuation bit for bit (what a Lightning or hand-written checkpoint does)."""
    model, opt, x, y = prime(info, inp)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    model_c, opt_c = twin(info, inp, model, torch.load(buf, weights_only=True))
    for _ in range(5):
        step(opt, info, inp, model, x, y)
        step(opt_c, info, inp, model_c, x, y)
    assert torch.equal(flat(model), flat(model_c))


@pytest.mark.parametrize("info,inp", CASES)
def test_load_nontensor_step(info, inp):
    """A step count saved as a Python number (an older torch, a JSON round trip) loads."""
    model, opt, x, y = prime(info, inp, n=3)
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        if "step" in st and torch.is_tensor(st["step"]):
            st["step"] = st["step"].item()
    opt.load_state_dict(sd)
    step(opt, info, inp, model, x, y)
    assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("scheduled", [False, True], ids=["plain", "with a scheduler"])
@pytest.mark.parametrize("info,inp", CASES)
def test_deepcopy_and_pickle_give_an_optimizer_that_steps_alike(info, inp, scheduled):
    """torch's test_deepcopy_copies_all_public_attrs; then the copy (of model and optimizer
    together) steps exactly as the original does, and stepping it leaves the original alone
    — also with a scheduler attached, which keeps a wrapper of the original's step on it."""
    model, opt, x, y = prime(info, inp, n=3)
    if scheduled:
        torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    public = {k for k in opt.__dict__ if not k.startswith("_")} - {"step"}
    for copied in (copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))):
        model_c, opt_c = copied
        assert {k for k in opt_c.__dict__ if not k.startswith("_")} - {"step"} == public
        before = copy.deepcopy(opt.state_dict())
        for _ in range(3):
            step(opt_c, info, inp, model_c, x, y)
        assert_same_states(opt.state_dict(), before)           # the original is untouched
        m2, o2 = copy.deepcopy((model, opt))
        for _ in range(3):
            step(opt, info, inp, model, x, y)
        assert torch.equal(flat(model_c), flat(model))
        model, opt = m2, o2


@pytest.mark.parametrize("info", classes_of(INFOS))
def test_named_parameters(info):
    """torch 2.x's named parameters: the names ride along in the state dict, which loads."""
    inp = info.inputs[0]
    model, x, y = problem()
    opt = build(info, inp, model.named_parameters())
    step(opt, info, inp, model, x, y)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["weight", "bias"]
    fresh_model = problem()[0]
    fresh = build(info, inp, fresh_model.named_parameters())
    fresh.load_state_dict(sd)
    step(fresh, info, inp, fresh_model, x, y)
    assert fresh.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


def test_mismatched_groups_are_refused():
    model, x, y = problem()
    opt = SAV(model.parameters())
    other = SAV([{"params": [model.weight]}, {"params": [model.bias]}])
    with pytest.raises(ValueError):
        other.load_state_dict(opt.state_dict())


def test_spm_loads_the_state_dict_layout_of_earlier_versions():
    info = next(i for i in INFOS if i.name == "SPM(SAV)")
    inp = info.inputs[0]
    model, opt, x, y = prime(info, inp, n=3)
    sd = opt.state_dict()
    old = {"base": {k: v for k, v in sd.items() if k != "spm"}, "spm": sd["spm"]}
    model_c, opt_c = twin(info, inp, model, old)
    for _ in range(3):
        step(opt, info, inp, model, x, y)
        step(opt_c, info, inp, model_c, x, y)
    assert torch.equal(flat(model), flat(model_c))


@pytest.mark.parametrize("info", classes_of([i for i in OURS if i.name in ("RelSAV", "RelExpSAV")]))
def test_a_state_dict_from_before_rhat_batch_runs_the_same_batch_form(info):
    """A checkpoint saved before ``rhat_batch`` existed ran the relaxation on the step's batch."""
    model, opt, x, y = prime(info, info.inputs[2 if info.name == "RelSAV" else 1], n=2)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["rhat_batch"]
    fresh = info.make(problem()[0].parameters(), lr=0.05)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["rhat_batch"] == "same"


# ------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("info", classes_of(INFOS))
def test_hooks_fire(info):
    """Step pre/post hooks (the optimizer's and the global ones), state-dict and
    load-state-dict pre/post hooks, as torch's test_*_hook tests register them."""
    inp = info.inputs[0]
    model, x, y = problem()
    opt = build(info, inp, model.parameters())
    seen = []
    handles = [opt.register_step_pre_hook(lambda o, a, k: seen.append("pre")),
               opt.register_step_post_hook(lambda o, a, k: seen.append("post")),
               register_optimizer_step_pre_hook(lambda o, a, k: seen.append("global")),
               opt.register_state_dict_pre_hook(lambda o: seen.append("sd_pre")),
               opt.register_state_dict_post_hook(lambda o, sd: {**sd, "mark": 1}),
               opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load_pre")),
               opt.register_load_state_dict_post_hook(lambda o: seen.append("load_post"))]
    try:
        step(opt, info, inp, model, x, y)
        assert seen[:1] == ["global"] and "pre" in seen and seen[-1] == "post"
        sd = opt.state_dict()
        assert sd["mark"] == 1 and "sd_pre" in seen
        opt.load_state_dict(sd)
        assert seen[-2:] == ["load_pre", "load_post"]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("info", classes_of(INFOS))
def test_a_profiler_sees_the_step_as_torch_names_it(info):
    """Under a profiler the step is recorded as torch.optim records its own
    (``Optimizer.step#<Class>.step``); without one it skips that scope (docs/speed.md)."""
    inp = info.inputs[0]
    model, x, y = problem()
    opt = build(info, inp, model.parameters())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(opt, info, inp, model, x, y)
    names = {e.name for e in prof.events()}
    assert f"Optimizer.step#{type(opt).__name__}.step" in names


@pytest.mark.parametrize("info,inp", [c for c in CASES if not c.values[0].functional])
def test_grads_are_never_written_into(info, inp):
    model, x, y = problem()
    opt = build(info, inp, model.parameters())
    for _ in range(3):
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        if inp.batch_closure:
            opt.step(_FixedClosure(loss.detach()))
        else:
            opt.step() if info.control else opt.step(loss=loss)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


# --------------------------------------------------------- complex, sparse, dtypes, devices
@pytest.mark.parametrize("info,inp", [c for c in CASES if c.values[0].supports_complex and not c.values[1].batch_closure])
def test_complex(info, inp):
    """torch's test_complex: a complex parameter steps as its real view does (a real
    parameter beside it), so every inner product is Re⟨x, y⟩ and ‖g‖² = Σ|g|²."""
    gen = torch.Generator().manual_seed(0)
    cplx = [torch.randn(10, 5, dtype=torch.complex128, generator=gen, requires_grad=True),
            torch.randn(10, dtype=torch.complex128, generator=gen, requires_grad=True),
            torch.randn(10, 5, dtype=torch.float64, generator=gen, requires_grad=True)]
    real = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_() for p in cplx]
    opt_c, opt_r = build(info, inp, cplx), build(info, inp, real)
    for _ in range(3):
        loss = torch.rand((), generator=gen, dtype=torch.float64) + 0.5
        for pc, pr in zip(cplx, real):
            g = torch.randn(pr.shape, generator=gen, dtype=torch.float64)
            pr.grad = g.clone()
            pc.grad = torch.view_as_complex(g.clone()) if pc.is_complex() else g.clone()
        if info.control:
            opt_c.step(), opt_r.step()
        else:
            opt_c.step(loss=loss), opt_r.step(loss=loss)
        for pc, pr in zip(cplx, real):
            torch.testing.assert_close(torch.view_as_real(pc.detach()) if pc.is_complex() else pc.detach(),
                                       pr.detach(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("info", classes_of([i for i in INFOS if not i.supports_complex]))
def test_complex_is_refused_where_unsupported(info):
    with pytest.raises(ValueError, match="complex"):
        info.make([torch.randn(3, dtype=torch.complex128, requires_grad=True)], **info.inputs[0].kwargs)


@pytest.mark.parametrize("info", classes_of([i for i in INFOS if not i.functional and not i.supports_sparse]))
def test_sparse_gradients_are_refused_clearly(info):
    p = Parameter(torch.randn(4))
    opt = info.make([p], **info.inputs[0].kwargs)
    p.grad = torch.randn(4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step(lambda: torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("info", classes_of(INFOS))
def test_narrow_dtypes_train(info, dtype):
    inp = info.inputs[0]
    model, x, y = problem(dtype=dtype)
    opt = build(info, inp, model.parameters())
    start = value(model, x, y)
    for _ in range(10):
        step(opt, info, inp, model, x, y)
    assert all(p.dtype == dtype for p in model.parameters())
    assert value(model, x, y) < start


def test_ieq_trains_around_a_frozen_parameter():
    model, x, y = problem()
    model.bias.requires_grad_(False)
    kept = model.bias.detach().clone()
    opt = IEQ(model.parameters(), lr=0.05)
    start = value(model, x, y)
    for _ in range(5):
        opt.step(BatchClosure(model, MSELoss(), x, y))
    assert torch.equal(model.bias.detach(), kept) and value(model, x, y) < start


# ---------------------------------------------------------------------------- schedulers
SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.9),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=o.param_groups[0]["lr"] * 2,
                                                                total_steps=21, cycle_momentum=False),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=2),
    "SWALR": lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=o.param_groups[0]["lr"] / 2, anneal_epochs=5),
}


@pytest.mark.parametrize("sched", sorted(SCHEDULERS))
@pytest.mark.parametrize("info", classes_of(INFOS))
def test_param_group_with_lrscheduler_goes_right_direction(info, sched):
    inp = info.inputs[0]
    model, x, y = problem()
    opt = build(info, inp, model.parameters())
    scheduler = SCHEDULERS[sched](opt)
    start = value(model, x, y)
    for _ in range(20):
        loss = step(opt, info, inp, model, x, y)
        scheduler.step(float(loss)) if sched == "ReduceLROnPlateau" else scheduler.step()
    assert value(model, x, y) < start


# --------------------------------------------------------------------- restart="epoch"
@pytest.mark.parametrize("cls", [SAV, RelSAV, ExpSAV, RelExpSAV, AEGD], ids=lambda c: c.__name__)
def test_the_epoch_restart_in_ones_own_loop(cls):
    """``restart='epoch'``: the step after the loop calls ``opt.epoch_start()`` re-anchors the
    auxiliary variable to its defining value, √(I(θⁿ)+C) (exp(I/C) for ExpSAV), so it is the
    first step of a fresh optimizer at θⁿ, bit for bit; a step without the call is not."""
    info, inp = Info(cls.__name__, cls, []), Input({})
    kw = {"lr": 0.5, "C": 1.0, "restart": "epoch"}
    if cls in (RelSAV, RelExpSAV):
        kw["eta"] = 0.0        # else a full relaxation can itself land r on √(I+C), as a restart does
    model, x, y = problem()
    opt = cls(model.parameters(), **kw)
    for _ in range(5):
        step(opt, info, inp, model, x, y, "loss")
    after = {}
    for call in (False, True):
        m, o = copy.deepcopy((model, opt))
        if call:
            o.epoch_start()
        step(o, info, inp, m, x, y, "loss")
        after[call] = flat(m)
    fresh_model = copy.deepcopy(model)
    step(cls(fresh_model.parameters(), **kw), info, inp, fresh_model, x, y, "loss")
    assert torch.equal(after[True], flat(fresh_model))
    assert not torch.equal(after[False], flat(fresh_model))


# --------------------------------------------------------- an optimizer from the outside
def test_every_class_is_in_the_table():
    import gradflow_exp.optim as optim

    ours = {getattr(optim, n) for n in optim.__all__ if isinstance(getattr(optim, n), type)
            and issubclass(getattr(optim, n), torch.optim.Optimizer)}
    tabled = {i.make for i in INFOS} | {SPM}
    assert ours <= tabled | {EnergyOptimizer}
    assert {c.__name__ for c in ours} == {"SAV", "ResSAV", "RelSAV", "ASAV", "AResSAV", "ARelSAV", "ExpSAV",
                                          "RelExpSAV", "IEQ", "IEQAdaptive", "AEGD", "SPM"}



@pytest.mark.parametrize("form", [torch_forms.SGD, torch_forms.Adam, torch_forms.RMSprop], ids=lambda c: c.__name__)
def test_the_runners_form_of_a_torch_optimizer_takes_torchs_steps(form):
    """torch_forms' classes change only the step's wrapper: bit-identical steps and state."""
    torch_cls = form.__mro__[2]
    runs = []
    for cls in (torch_cls, form):
        model, x, y = problem()
        opt = cls(model.parameters(), lr=0.01, **({"momentum": 0.9} if torch_cls is torch.optim.SGD else {}))
        for _ in range(4):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
        runs.append((flat(model), opt.state_dict()))
    assert isinstance(opt, torch_cls) and torch.equal(runs[0][0], runs[1][0])
    assert str(runs[0][1]) == str(runs[1][1])
