"""SPM (paper Alg. 1): one batched call, the averaged gradient, its generator state."""
import pytest
import torch
from torch.func import functional_call

from gradflow_exp.losses import MSELoss
from gradflow_exp.optim import SAV, SPM, BatchClosure, RelSAV
from gradflow_exp.optim.spm import PerturbedClosure
from optim_testlib import closure_for, flat, regression_data, small_net


class CountingClosure(BatchClosure):
    calls = 0

    def functional_loss(self, params):
        type(self).calls += 1
        return super().functional_loss(params)


def test_spm_gradient_is_the_average_of_J_perturbed_gradients():
    x, y = regression_data(32, 3)
    model = small_net(3)
    th0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    J, h, lr = 10, 0.05, 0.1
    opt = SPM(torch.optim.SGD(model.parameters(), lr=lr), J=J, h=h, seed=0)
    CountingClosure.calls = 0
    opt.step(CountingClosure(model, MSELoss(), x, y))
    assert CountingClosure.calls == 1               # J perturbations in ONE (vmapped) call
    xi = opt.last_xi
    assert set(xi) == set(th0) and all(v.shape[0] == J for v in xi.values())
    # float64 parameters get float32 directions (cheaper normals), widened inside θ + hξ
    assert all(v.dtype == torch.float32 for v in xi.values())
    # explicit: (1/J) Σ_j ∇I(θ⁰ + hξ_j), one autograd call per perturbation
    avg = {n: torch.zeros_like(p) for n, p in th0.items()}
    losses = []
    for j in range(J):
        pj = {n: (p + h * xi[n][j].to(p.dtype)).requires_grad_(True) for n, p in th0.items()}
        loss = MSELoss()(functional_call(model, pj, (x,)), y)
        grads = torch.autograd.grad(loss, list(pj.values()))
        for n, g in zip(pj, grads):
            avg[n] += g / J
        losses.append(loss.detach())
    for n, p in model.named_parameters():
        assert torch.allclose(p.detach(), th0[n] - lr * avg[n], rtol=1e-12, atol=1e-15), n
    # backward=False evaluates the same averaged loss (same ξ, at the current θ)
    wrapped = PerturbedClosure(BatchClosure(model, MSELoss(), x, y), xi, h)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(th0[n])
    assert torch.allclose(wrapped(backward=False), torch.stack(losses).mean(), rtol=1e-13)
    assert torch.allclose(wrapped(), torch.stack(losses).mean(), rtol=1e-13)


def test_spm_draws_fresh_perturbations_and_is_reproducible():
    x, y = regression_data(16, 3)
    runs = []
    for _ in range(2):
        model = small_net(3)
        opt = SPM(SAV(model.parameters()), J=3, h=1e-3, seed=7)
        opt.step(closure_for(model, x, y))
        xi1 = {n: v.clone() for n, v in opt.last_xi.items()}
        opt.step(closure_for(model, x, y))
        assert not torch.equal(xi1["0.weight"], opt.last_xi["0.weight"])
        runs.append(flat(model))
    assert torch.equal(runs[0], runs[1])


def test_spm_relsav_rhat_uses_the_perturbed_average():
    """RelSAV's extra forward under SPM is the averaged loss at θ^{n+1} (same ξ)."""
    x, y = regression_data(16, 3)
    model = small_net(3)
    opt = SPM(RelSAV(model.parameters(), lr=0.5, C=1.0), J=4, h=0.05, seed=3)
    cl = closure_for(model, x, y)
    opt.step(cl)
    expected = (PerturbedClosure(cl, opt.last_xi, 0.05)(backward=False) + 1.0).sqrt()
    assert float(opt.diagnostics()["xi"]) >= 0.0
    r = opt.state[opt.param_groups[0]["params"][0]]["r"]
    assert float(r) <= float(expected) * (1 + 1e-14)      # r^{n+1} = min(r̂^{n+1}, …)


def test_spm_passthroughs():
    model = small_net(3)
    base = SAV(model.parameters(), lr=0.3, restart="epoch")
    opt = SPM(base, J=2)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == 0.3
    opt.param_groups[0]["lr"] = 0.1                         # e.g. an LR scheduler
    assert base.param_groups[0]["lr"] == 0.1
    assert opt.state is base.state
    assert set(opt.diagnostics()) == set(base.diagnostics())
    opt.epoch_start()
    assert base.state[base.param_groups[0]["params"][0]]["restart_pending"] is True
    sgd = SPM(torch.optim.SGD(small_net(3).parameters(), lr=0.1))
    assert getattr(sgd, "diagnostics", None) is None and getattr(sgd, "epoch_start", None) is None
    sd = opt.state_dict()
    assert "generator" in sd["spm"] and set(sd) == {"state", "param_groups", "spm"}   # torch's layout, plus spm
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)     # schedulers accept the wrapper


def test_spm_load_state_dict_keeps_state_shared_with_base():
    x, y = regression_data(16, 3)
    model = small_net(3)
    opt = SPM(SAV(model.parameters()), J=2, seed=0)
    opt.step(closure_for(model, x, y))
    sd = opt.state_dict()
    opt2 = SPM(SAV(small_net(3).parameters()), J=2, seed=5)
    opt2.load_state_dict(sd)
    assert opt2.state is opt2.base.state and opt2.param_groups is opt2.base.param_groups
    assert torch.equal(opt2.generator.get_state(), opt.generator.get_state())
    with pytest.raises(ValueError):
        SPM(opt2)


@pytest.mark.parametrize("mean_field", [True, False])
def test_two_layer_closed_form_equals_the_vmap_path(mean_field):
    """The two-layer net's hand-written SPM loss and gradient (one backward for all J)
    against the generic vmap + autograd path on the same perturbations."""
    from gradflow_exp.models import TwoLayerNet

    x, y = regression_data(24, 3)
    torch.manual_seed(2)
    model = TwoLayerNet(3, 1, width=7, mean_field=mean_field)
    closure = BatchClosure(model, MSELoss(), x, y)
    J, h = 5, 0.3
    xi = {n: torch.randn((J, *p.shape)) for n, p in model.named_parameters()}
    pc = PerturbedClosure(closure, xi, h)
    fast = pc()                                   # closed form, grads into .grad
    fast_grads = [p.grad.clone() for p in model.parameters()]
    assert torch.allclose(pc(backward=False), fast, rtol=1e-14)

    class Generic:                                # the same closure without perturbed_mse
        params = closure.params
        functional_loss = closure.functional_loss

    slow = PerturbedClosure(Generic(), xi, h)()
    assert torch.allclose(fast, slow, rtol=1e-12)
    for g_fast, p in zip(fast_grads, model.parameters()):
        assert torch.allclose(g_fast, p.grad, rtol=1e-10, atol=1e-14)
