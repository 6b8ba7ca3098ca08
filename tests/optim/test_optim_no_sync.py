"""A replica batch's step reads nothing back to the host (docs/speed.md): on an accelerator every
such read (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``) waits for the device, so the
step must stay a chain of kernels, with the per-replica scalars (r, ξ, the step sizes)
as tensors [R].

On CPU the reads from Python are caught by making them raise while the steps run (after a
first step, which may set up state); syncs inside C++ ops (boolean-mask indexing,
``nonzero``) are not, and on CUDA `torch.cuda.set_sync_debug_mode("error")` catches every
synchronising call (skipped without a GPU).

It also keeps its state where it was: a CUDA graph of the step (trainer.cuda_graph,
gradflow_exp/training/step_graph.py) replays onto the storage it captured, so every state
tensor is updated in place, a restart step's too."""
import contextlib

import pytest
import torch

from gradflow_exp.losses import MSELoss
from gradflow_exp.models import TwoLayerNet
from gradflow_exp.optim import SPM, ReplicaClosure
from gradflow_exp.optim.stacked import PerReplicaLr
from optim_testlib import METHODS, regression_data

R = 3
REPLICABLE = sorted(m for m in METHODS if m != "ieq")      # full-Jacobian IEQ stays one run
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    def refuse(name):
        def read(self, *args, **kwargs):
            raise HostRead(f"Tensor.{name} in a replica step")
        return read

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, refuse(name))
        yield


def _batch(device):
    """R two-layer nets (the hand-written batched gradient) and one with autograd (vmap),
    stacked, with per-replica Δt; a closure per step on each replica's own rows."""
    data = [regression_data(n=48, seed=s) for s in range(R)]
    x = torch.stack([d[0] for d in data]).to(device)
    y = torch.stack([d[1] for d in data]).to(device)
    models = []
    for k in range(R):
        torch.manual_seed(k)
        models.append(TwoLayerNet(3, 1, width=16).double().to(device))
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).clone()
               for n, _ in models[0].named_parameters()}

    def closure(i):
        rows = slice((i * 16) % 48, (i * 16) % 48 + 16)
        return ReplicaClosure(models[0], MSELoss(), stacked, x[:, rows].double(), y[:, rows].double())

    return stacked, closure


def _optimizer(name, stacked, spm=False):
    cls, kw = METHODS[name]
    lr = kw["lr"]
    if name in ("sav", "relsav", "expsav", "aegd"):
        kw = {**kw, "restart": "epoch"}
    opt = cls(list(stacked.values()), **{**kw, "lr": [lr, lr / 2, lr / 4]}, replicas=R)
    return SPM(opt, J=4, h=1e-3, seed=[0, 1, 2]) if spm else opt


def _steps(opt, closure, first, last):
    for i in range(first, last):
        if i == 4 and hasattr(opt, "epoch_start"):
            opt.epoch_start()                 # a restart step among them (restart='epoch' forms)
        opt.step(closure(i))


@pytest.mark.parametrize("name", REPLICABLE)
def test_a_replica_step_reads_nothing_back_to_the_host(name, monkeypatch):
    stacked, closure = _batch("cpu")
    opt = _optimizer(name, stacked)
    _steps(opt, closure, 0, 1)
    before = [p.clone() for p in stacked.values()]
    with no_host_reads(monkeypatch):
        _steps(opt, closure, 1, 8)
    assert all(not torch.equal(a, b) for a, b in zip(before, stacked.values()))     # it stepped


@pytest.mark.parametrize("name", ["sgd", "sav", "relsav"])
def test_spm_over_a_replica_batch_reads_nothing_back_to_the_host(name, monkeypatch):
    stacked, closure = _batch("cpu")
    if name == "sgd":
        base = torch.optim.SGD(list(stacked.values()), lr=0.1, foreach=False)
        base.replicas = R          # as build_replica_optimizer marks a torch optimizer over stacked tensors
        opt = SPM(base, J=4, h=1e-3, seed=[0, 1, 2])
    else:
        opt = _optimizer(name, stacked, spm=True)
    _steps(opt, closure, 0, 1)
    before = [p.clone() for p in stacked.values()]
    with no_host_reads(monkeypatch):
        _steps(opt, closure, 1, 6)
    assert all(not torch.equal(a, b) for a, b in zip(before, stacked.values()))     # it stepped


def _torch_per_replica_lr(cls, stacked, **kw):
    """torch's optimizer over the stacked tensors, each replica its own lr (`PerReplicaLr`)."""
    return PerReplicaLr(lambda ps, lr: cls(ps, lr=lr, foreach=False, **kw), list(stacked.values()),
                        [0.1, 0.05, 0.02])


def test_torch_sgd_with_per_replica_lr_reads_nothing_back_to_the_host(monkeypatch):
    """(torch's Adam reads its step count with ``.item()``: a CPU tensor, so no device sync,
    but this guard cannot tell; it runs in the CUDA test below.)"""
    stacked, closure = _batch("cpu")
    opt = _torch_per_replica_lr(torch.optim.SGD, stacked, momentum=0.9)
    _steps(opt, closure, 0, 1)
    before = [p.clone() for p in stacked.values()]
    with no_host_reads(monkeypatch):
        _steps(opt, closure, 1, 6)
    assert all(not torch.equal(a, b) for a, b in zip(before, stacked.values()))


def _storage(opt) -> dict:
    return {(i, k): v.data_ptr() for i, st in enumerate(opt.state.values()) for k, v in st.items()
            if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", REPLICABLE + ["torch_sgd", "torch_adam"])
def test_a_replica_step_keeps_its_state_in_place(name):
    """After the first steps (which create the state), the steps — a restart among them —
    leave every state tensor (the energy variables, moments, diagnostics, step counts) in
    its storage, holding new values."""
    stacked, closure = _batch("cpu")
    if name.startswith("torch_"):
        opt = _torch_per_replica_lr(torch.optim.SGD if name == "torch_sgd" else torch.optim.Adam, stacked,
                                    **({"momentum": 0.9} if name == "torch_sgd" else {}))
    else:
        opt = _optimizer(name, stacked)
    _steps(opt, closure, 0, 3)
    where = _storage(opt)
    values = {k: v.clone() for i, st in enumerate(opt.state.values()) for k, v in st.items()
              if isinstance(v, torch.Tensor) and k.startswith("diag_")}
    assert where
    _steps(opt, closure, 3, 8)
    assert _storage(opt) == where
    assert all(not torch.equal(v, opt._anchor()[k]) for k, v in values.items() if k != "diag_xi")   # new values


def test_the_guard_catches_a_host_read(monkeypatch):
    t = torch.ones(2)
    with no_host_reads(monkeypatch), pytest.raises(HostRead):
        if t.sum():
            pass
    with no_host_reads(monkeypatch), pytest.raises(HostRead):
        float(t[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", REPLICABLE + ["torch_sgd", "torch_adam"])
def test_on_cuda_a_replica_step_never_synchronises(name):
    stacked, closure = _batch("cuda")
    if name.startswith("torch_"):
        cls = torch.optim.SGD if name == "torch_sgd" else torch.optim.Adam
        opt = _torch_per_replica_lr(cls, stacked)
    else:
        opt = _optimizer(name, stacked)
    _steps(opt, closure, 0, 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _steps(opt, closure, 1, 8)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
