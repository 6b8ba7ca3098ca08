"""Every method trains a small regression problem; checkpoints resume bit-identically."""
import io

import pytest
import torch

from gradflow_exp.models import TwoLayerNet
from gradflow_exp.optim import SAV, SPM, RelSAV, ARelSAV, IEQ, ExpSAV
from optim_testlib import METHODS, batches, closure_for, flat, regression_data, small_net

RESTARTABLE = {"sav", "relsav", "asav", "arelsav", "asav_scalar", "expsav", "relexpsav", "aegd"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_lowers_the_loss(name):
    cls, kw = METHODS[name]
    x, y = regression_data(64, 3)
    torch.manual_seed(0)
    model = TwoLayerNet(3, 1, width=16)
    opt = cls(model.parameters(), **{**kw, "time_scale": model.particle_scale})
    cl = closure_for(model, x, y)
    l0 = float(cl(backward=False))
    for _ in range(150):
        opt.step(cl)
    l1 = float(cl(backward=False))
    assert l1 < 0.5 * l0, (name, l0, l1)


def test_spm_sav_lowers_the_loss():
    x, y = regression_data(64, 3)
    model = small_net(3)
    opt = SPM(SAV(model.parameters(), lr=0.2), J=10, h=1e-4, seed=0)
    cl = closure_for(model, x, y)
    l0 = float(cl(backward=False))
    for _ in range(150):
        opt.step(cl)
    assert float(cl(backward=False)) < 0.5 * l0


def _builders():
    out = {}
    for name, (cls, kw) in METHODS.items():
        extra = {"restart": "epoch"} if name in RESTARTABLE else {}
        out[name] = (lambda m, cls=cls, kw=kw, extra=extra: cls(m.parameters(), **kw, **extra))
    out["spm_sav"] = lambda m: SPM(SAV(m.parameters(), lr=0.2, restart="epoch"), J=3, h=1e-3, seed=1)
    out["spm_relsav"] = lambda m: SPM(RelSAV(m.parameters(), lr=0.2), J=3, h=1e-3, seed=1)
    out["spm_arelsav"] = lambda m: SPM(ARelSAV(m.parameters(), lr=0.01), J=3, h=1e-3, seed=1)
    out["spm_expsav"] = lambda m: SPM(ExpSAV(m.parameters(), lr=0.2), J=3, h=1e-3, seed=1)
    out["spm_ieq"] = lambda m: SPM(IEQ(m.parameters(), lr=0.2), J=2, h=1e-3, seed=1)
    out["spm_sgd"] = lambda m: SPM(torch.optim.SGD(m.parameters(), lr=0.1), J=3, h=1e-3, seed=1)
    out["spm_adam"] = lambda m: SPM(torch.optim.Adam(m.parameters(), lr=0.01), J=3, h=1e-3, seed=1)
    return out


BUILDERS = _builders()


def _train(model, opt, x, y, start, stop):
    """Steps [start, stop) of a fixed mini-batch schedule (epoch_start at epoch boundaries)."""
    for i, (_, first, xb, yb) in enumerate(batches(x, y, 16, 3)):
        if i >= stop:
            break
        if i < start:
            continue
        if first and getattr(opt, "epoch_start", None) is not None:
            opt.epoch_start()
        opt.step(closure_for(model, xb, yb))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_resume_is_bit_identical(name):
    build = BUILDERS[name]
    x, y = regression_data(48, 3)
    total, cut = 8, 3        # 3 batches per epoch: the cut is at an epoch start

    ref_model = small_net(3)
    ref = build(ref_model)
    _train(ref_model, ref, x, y, 0, total)

    model = small_net(3)
    opt = build(model)
    _train(model, opt, x, y, 0, cut)
    if getattr(opt, "epoch_start", None) is not None:
        opt.epoch_start()    # a pending restart must survive the checkpoint too
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)

    model2 = small_net(3, seed=99)                            # a different init, overwritten
    model2.load_state_dict(ckpt["model"])
    opt2 = build(model2)
    if isinstance(opt2, SPM):
        opt2.generator.manual_seed(12345)                     # must come from the checkpoint
    opt2.load_state_dict(ckpt["opt"])
    # continue; the first resumed step is an epoch start, epoch_start was already called
    for i, (_, first, xb, yb) in enumerate(batches(x, y, 16, 3)):
        if i >= total:
            break
        if i < cut:
            continue
        if first and i != cut and getattr(opt2, "epoch_start", None) is not None:
            opt2.epoch_start()
        opt2.step(closure_for(model2, xb, yb))
    assert torch.equal(flat(model2), flat(ref_model)), name
    d_ref = getattr(ref, "diagnostics", None)
    if d_ref is not None:
        for k, v in d_ref().items():
            assert torch.equal(torch.as_tensor(opt2.diagnostics()[k]), torch.as_tensor(v)), (name, k)


def test_float32_model_keeps_float64_energy_across_resume():
    torch.set_default_dtype(torch.float32)
    x, y = regression_data(32, 3)
    model = small_net(3)
    opt = SAV(model.parameters(), lr=0.2)
    opt.step(closure_for(model, x, y))
    p0 = opt.param_groups[0]["params"][0]
    assert opt.state[p0]["r"].dtype == torch.float64
    model2 = small_net(3)
    model2.load_state_dict(model.state_dict())
    opt2 = SAV(model2.parameters(), lr=0.2)
    opt2.load_state_dict(opt.state_dict())
    q0 = opt2.param_groups[0]["params"][0]
    assert opt2.state[q0]["r"].dtype == torch.float64
    assert torch.equal(opt2.state[q0]["r"], opt.state[p0]["r"])
    opt.step(closure_for(model, x, y))
    opt2.step(closure_for(model2, x, y))
    assert torch.equal(flat(model), flat(model2))
