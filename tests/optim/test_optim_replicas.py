"""``replicas=R``: one optimizer over R stacked models is R independent copies of itself.

Replica k of an optimizer built over stacked parameters [R, …] (a `ReplicaClosure`) must
follow the same optimizer run on model k alone (a `BatchClosure`), step for step, with its
own batches and, where they differ, its own Δt, C, λ: same formulas, so equal to rounding
(reductions may sum in another order). Checked on parameters, the SAV variable and every
diagnostic, at rtol 1e-10 over a dozen steps."""
import pytest
import torch

from gradflow_exp.losses import MSELoss
from gradflow_exp.models import TwoLayerNet
from gradflow_exp.optim import ReplicaClosure
from optim_testlib import METHODS, closure_for, regression_data, small_net

R = 3
RTOL = 1e-10
REPLICABLE = sorted(m for m in METHODS if m != "ieq")      # full-Jacobian IEQ stays one run


def _data(seeds, n=48):
    return [regression_data(n=n, seed=s) for s in seeds]


def _run(name, make_model, per_replica=None, steps=12, batch=16, restart_at=(0, 6)):
    """(single runs, replica run): lists of (params, diagnostics) per replica."""
    cls, kw = METHODS[name]
    per_replica = per_replica or {}
    data = _data(range(R))
    perms = [torch.randperm(48, generator=torch.Generator().manual_seed(10 + k)) for k in range(R)]

    def batch_of(k, i):
        idx = perms[k][(i * batch) % 48:(i * batch) % 48 + batch]
        return data[k][0][idx], data[k][1][idx]

    singles = []
    for k in range(R):
        model = make_model(k)
        opt = cls(model.parameters(), **{**kw, **{key: v[k] for key, v in per_replica.items()}})
        for i in range(steps):
            if i in restart_at and hasattr(opt, "epoch_start"):
                opt.epoch_start()
            opt.step(closure_for(model, *batch_of(k, i)))
        singles.append(([p.detach().clone() for p in model.parameters()], opt.diagnostics()))

    models = [make_model(k) for k in range(R)]
    names = [n for n, _ in models[0].named_parameters()]
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).clone() for n in names}
    opt = cls(list(stacked.values()), **{**kw, **per_replica}, replicas=R)
    for i in range(steps):
        if i in restart_at and hasattr(opt, "epoch_start"):
            opt.epoch_start()
        xb, yb = (torch.stack(t) for t in zip(*(batch_of(k, i) for k in range(R))))
        opt.step(ReplicaClosure(models[0], MSELoss(), stacked, xb, yb))
    diag = opt.diagnostics()
    replicas = [([stacked[n][k] for n in names], {key: v[k] for key, v in diag.items()}) for k in range(R)]
    return singles, replicas


def _assert_same(singles, replicas):
    for (p1, d1), (p2, d2) in zip(singles, replicas):
        for a, b in zip(p1, p2):
            torch.testing.assert_close(b, a, rtol=RTOL, atol=1e-13)
        assert d1.keys() == d2.keys()
        for key in d1:
            torch.testing.assert_close(d2[key].to(torch.float64), d1[key].to(torch.float64), rtol=RTOL, atol=1e-13,
                                       msg=key)


@pytest.mark.parametrize("name", REPLICABLE)
def test_each_replica_is_its_own_run(name):
    """An autograd model (tanh MLP): the vmap path."""
    _assert_same(*_run(name, lambda k: small_net(seed=k)))


@pytest.mark.parametrize("name", ["sav", "relsav", "asav", "expsav", "aegd", "ieq_adaptive"])
def test_each_replica_is_its_own_run_on_the_closed_form_two_layer_net(name):
    """The paper's two-layer net under MSE: the hand-written batched gradient."""
    def make(k):
        torch.manual_seed(k)
        return TwoLayerNet(3, 1, width=8, init="kaiming")
    _assert_same(*_run(name, make))


@pytest.mark.parametrize("name", ["sav", "relsav", "arelsav", "expsav", "relexpsav"])
def test_replicas_with_their_own_dt_C_lam(name):
    per = {"lr": [0.05, 0.1, 0.2], "C": [0.5, 1.0, 4.0], "lam": [0.0, 1.0, 2.0]}
    if name.startswith("a"):
        per["lr"] = [0.003, 0.01, 0.02]
    if "exp" in name:
        per["lam"] = [0.0, 0.5, 1.0]
    _assert_same(*_run(name, lambda k: small_net(seed=k), per_replica=per))


def test_replicas_check_their_shapes_and_values():
    from gradflow_exp.optim import SAV

    p = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="leading dimension of 2"):
        SAV([p], replicas=2)
    with pytest.raises(ValueError, match="3 values; one per replica needs replicas=3"):
        SAV([p], lr=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="lr \\(Δt\\) must be non-negative"):
        SAV([p], lr=[0.1, -1.0, 0.3], replicas=3)
    opt = SAV([p], lr=[0.1, 0.2, 0.3], replicas=3)
    assert opt.param_groups[0]["lr"].tolist() == [0.1, 0.2, 0.3]
    state = opt.state_dict()
    again = SAV([torch.zeros(3, 4)], lr=[0.1, 0.2, 0.3], replicas=3)
    again.load_state_dict(state)
    assert again.param_groups[0]["lr"].tolist() == [0.1, 0.2, 0.3]


TORCH_ELEMENTWISE = {
    "sgd": (torch.optim.SGD, {}),
    "sgd_nesterov_wd": (torch.optim.SGD, dict(momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "sgd_dampening": (torch.optim.SGD, dict(momentum=0.5, dampening=0.3)),
    "adam_amsgrad": (torch.optim.Adam, dict(amsgrad=True, weight_decay=1e-2)),
    "adamw": (torch.optim.AdamW, dict(weight_decay=0.1)),
    "nadam": (torch.optim.NAdam, {}),
    "adagrad_decay": (torch.optim.Adagrad, dict(lr_decay=0.1)),
    "rmsprop_centered": (torch.optim.RMSprop, dict(centered=True, momentum=0.5)),
}


@pytest.mark.parametrize("name", sorted(TORCH_ELEMENTWISE))
def test_torch_optimizers_with_per_replica_lr_are_their_single_runs(name):
    """`PerReplicaLr`: one torch optimizer over the stacked models at the largest lr, each
    replica moved to its own lr's step. Parameters follow the single runs to rounding,
    replica k's split state dict is its single run's, and stacking those back resumes."""
    from gradflow_exp.optim.stacked import PerReplicaLr, split_state, stack_states

    cls, kw = TORCH_ELEMENTWISE[name]
    lrs = [0.01, 0.003, 0.02]
    data = _data(range(R))
    models = [small_net(seed=k) for k in range(R)]
    singles = [cls(m.parameters(), lr=lrs[k], **kw) for k, m in enumerate(models)]
    names = [n for n, _ in models[0].named_parameters()]
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).clone() for n in names}
    opt = PerReplicaLr(lambda ps, lr: cls(ps, lr=lr, **kw), list(stacked.values()), lrs)

    def steps(first, last):
        for i in range(first, last):
            rows = slice((i * 16) % 48, (i * 16) % 48 + 16)
            for k in range(R):
                singles[k].step(closure_for(models[k], data[k][0][rows], data[k][1][rows]))
            xb, yb = torch.stack([d[0][rows] for d in data]), torch.stack([d[1][rows] for d in data])
            opt.step(ReplicaClosure(models[0], MSELoss(), stacked, xb, yb))

    def assert_same():
        for k, m in enumerate(models):
            for n, p in m.named_parameters():
                torch.testing.assert_close(stacked[n][k], p.detach(), rtol=RTOL, atol=1e-13)

    steps(0, 12)
    assert not torch.equal(stacked[names[0]][0], small_net(seed=0).state_dict()[names[0]])   # it trained
    assert_same()
    assert opt.param_groups[0]["lr"].tolist() == lrs
    full = opt.state_dict()
    for k in range(R):
        mine, theirs = split_state(opt, full, k), singles[k].state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        for i, st in theirs["state"].items():
            for key, v in st.items():
                torch.testing.assert_close(mine["state"][i][key], v, rtol=RTOL, atol=1e-13, msg=f"{k}.{key}")
    again = PerReplicaLr(lambda ps, lr: cls(ps, lr=lr, **kw), list(stacked.values()), lrs)
    again.load_state_dict(stack_states(again, [singles[k].state_dict() for k in range(R)]))
    opt = again
    steps(12, 18)
    assert_same()
