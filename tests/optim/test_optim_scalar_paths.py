"""The two scalar paths of the energy bookkeeping (base.py): Python floats on CPU, 0-d
float64 tensors on accelerators. CI has no GPU, so the tensor path is forced here on CPU
and must take the same steps, diagnostics and state as the float path."""
import math

import pytest
import torch

from gradflow_exp.optim.base import EnergyOptimizer
from optim_testlib import METHODS, batches, closure_for, flat, regression_data, small_net

SCALAR_METHODS = [m for m in METHODS if m != "ieq"]   # IEQ's step is a Cholesky solve, no scalar path


def run(name, host, monkeypatch, **extra):
    monkeypatch.setattr(EnergyOptimizer, "_host", property(lambda self: host))
    cls, kw = METHODS[name]
    model = small_net()
    opt = cls(model.parameters(), **{**kw, **extra})
    x, y = regression_data(scale=3.0)
    for epoch, first, xb, yb in batches(x, y, 16, 3):
        if first and hasattr(opt, "epoch_start"):
            opt.epoch_start()
        opt.step(closure_for(model, xb, yb))
    return flat(model), opt


@pytest.mark.parametrize("name", SCALAR_METHODS)
def test_float_and_tensor_scalars_take_the_same_steps(name, monkeypatch):
    extra = {"restart": "epoch"} if name in ("sav", "relsav", "expsav", "aegd") else {}
    theta_f, opt_f = run(name, True, monkeypatch, **extra)
    theta_t, opt_t = run(name, False, monkeypatch, **extra)
    assert not torch.equal(theta_f, flat(small_net()))          # it trained
    torch.testing.assert_close(theta_f, theta_t, rtol=1e-12, atol=1e-14)
    for k, v in opt_f.diagnostics().items():
        w = opt_t.diagnostics()[k]
        assert v.dtype == w.dtype == torch.float64 and v.dim() == w.dim() == 0, k
        assert math.isclose(float(v), float(w), rel_tol=1e-11, abs_tol=1e-14), (k, float(v), float(w))
    # the stored scalar state is 0-d float64 tensors on both paths
    for key in ("r", "log_r", "step", "r_hat"):
        for opt in (opt_f, opt_t):
            st = opt._anchor()
            if key in st:
                assert isinstance(st[key], torch.Tensor) and st[key].dtype == torch.float64, key


def test_float_path_is_what_cpu_uses():
    cls, kw = METHODS["sav"]
    opt = cls(small_net().parameters(), **kw)
    assert opt._host and isinstance(opt._scalar(torch.tensor(2.0)), float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(METHODS))
def test_cuda_takes_the_cpu_steps(name):
    """On a GPU the tensor path runs for real: every operand on the parameters' device."""
    extra = {"restart": "epoch"} if name in ("sav", "relsav", "expsav", "aegd") else {}
    out = {}
    for device in ("cpu", "cuda"):
        cls, kw = METHODS[name]
        model = small_net().to(device)
        opt = cls(model.parameters(), **{**kw, **extra})
        x, y = (t.to(device) for t in regression_data(scale=3.0))
        for epoch, first, xb, yb in batches(x, y, 16, 3):
            if first and hasattr(opt, "epoch_start"):
                opt.epoch_start()
            opt.step(closure_for(model, xb, yb))
        out[device] = flat(model).cpu()
    torch.testing.assert_close(out["cpu"], out["cuda"], rtol=1e-9, atol=1e-12)


def test_host_sums_overflow_to_inf_and_nan_as_tensors_do():
    """A diverging run's huge gradients give inf/nan on the float path, never an exception
    (which would end the run 'failed' instead of 'diverged')."""
    from gradflow_exp.optim.base import dot, sqnorm

    big = [torch.tensor([1e200, 1.0], dtype=torch.float64), torch.tensor([1e300], dtype=torch.float64)]
    assert sqnorm(big, host=True) == math.inf == float(sqnorm(big))
    assert dot([torch.tensor([1e308, 1e308], dtype=torch.float64)], [torch.tensor([1.0, 1.0], dtype=torch.float64)],
               host=True) == math.inf
    inf_minus_inf = ([torch.tensor([1e300], dtype=torch.float64), torch.tensor([1e300], dtype=torch.float64)],
                     [torch.tensor([1e300], dtype=torch.float64), torch.tensor([-1e300], dtype=torch.float64)])
    assert math.isnan(dot(*inf_minus_inf, host=True)) and torch.isnan(dot(*inf_minus_inf))



@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-14), (torch.float32, 1e-6), (torch.bfloat16, 1e-12)])
def test_host_sqnorm_is_accurate_in_every_dtype(dtype, rtol):
    """‖g‖² on the host path against the exact float64 sum of the same entries: float64
    to rounding, float32 within its own rounding (its norms are accumulated in float32),
    bfloat16 exactly (its products are exact in float32, summed in float64)."""
    from gradflow_exp.optim.base import sqnorm

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1000, 40, generator=g).to(dtype), torch.randn(1000, generator=g).to(dtype),
          torch.randn(1, 1000, generator=g).to(dtype), torch.randn(1, generator=g).to(dtype)]
    exact = math.fsum(float(v) ** 2 for x in xs for v in x.double().reshape(-1))
    assert sqnorm(xs, host=True) == pytest.approx(exact, rel=rtol)
    assert float(sqnorm(xs)) == pytest.approx(exact, rel=rtol)


def test_host_sqnorm_of_mixed_dtypes_is_never_taken_in_the_narrow_one():
    from gradflow_exp.optim.base import sqnorm

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(300, generator=g, dtype=torch.float32), torch.randn(300, generator=g).to(torch.bfloat16)]
    exact = math.fsum(float(v) ** 2 for x in xs for v in x.double())
    # float32 products round (1e-9 here); a norm taken in bfloat16 would be 2e-3 off
    assert sqnorm(xs, host=True) == pytest.approx(exact, rel=1e-8)
