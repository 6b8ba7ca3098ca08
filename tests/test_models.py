import pytest
import torch

from gradflow_exp.losses import MSELoss
from gradflow_exp.models import TwoLayerNet


@pytest.mark.parametrize("mean_field", [True, False])
def test_two_layer_is_the_papers_net(mean_field):
    torch.manual_seed(0)
    net = TwoLayerNet(3, 1, width=7, mean_field=mean_field).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    W, b, a = net.hidden.weight, net.hidden.bias, net.out.weight
    # f(x) = (1/m) Σ_k a_k relu(w_k·[x;1])
    expected = torch.relu(torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], 1) @ torch.cat([W, b[:, None]], 1).t()) @ a.t()
    expected = expected / 7 if mean_field else expected
    assert torch.allclose(net(x), expected, rtol=1e-14, atol=1e-15)
    assert net.particle_scale == (3.5 if mean_field else 1.0)


@pytest.mark.parametrize("mean_field", [True, False])
def test_manual_gradient_equals_autograd(mean_field):
    torch.manual_seed(1)
    net = TwoLayerNet(4, 1, width=9, mean_field=mean_field).double()
    x, y = torch.randn(13, 4, dtype=torch.float64), torch.randn(13, 1, dtype=torch.float64)
    loss = MSELoss()(net(x), y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    manual = net.mse_loss_and_grad(x, y)
    assert torch.allclose(manual, loss, rtol=1e-14)
    assert torch.allclose(net.mse_loss(x, y.reshape(-1)), loss, rtol=1e-14)   # forward only, 1-d targets
    for p, g in zip(net.parameters(), grads):
        assert torch.allclose(p.grad, g, rtol=1e-12, atol=1e-15)


def test_closed_form_gram_matches_jacobian_and_ieq_takes_the_same_step():
    """IEQ with the two-layer net's closed-form JJᵀ gives the trajectory of the jacrev path."""
    from torch.func import functional_call, jacrev

    from gradflow_exp.optim import IEQ, BatchClosure

    torch.manual_seed(2)
    net = TwoLayerNet(5, 1, width=11).double()
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 1, dtype=torch.float64)
    named = {k: v.detach() for k, v in net.named_parameters()}
    J = jacrev(lambda p: functional_call(net, p, (x,)).reshape(-1))(named)
    Jm = torch.cat([J[n].reshape(9, -1) for n in named], 1)
    q, G, vjp = net.residual_gram(x, y)
    assert torch.allclose(G, Jm @ Jm.T, rtol=1e-12, atol=1e-15)
    assert torch.allclose(q, (net(x) - y).reshape(-1), rtol=0, atol=0)
    v = torch.randn(9, dtype=torch.float64)
    sizes = [p.numel() for p in named.values()]
    for got, want in zip(vjp(v), torch.split(Jm.T @ v, sizes)):
        assert torch.allclose(got.reshape(-1), want, rtol=1e-12, atol=1e-15)

    class JacobianOnly:              # the same closure without residual_gram: jacrev path
        def __init__(self, inner):
            self.inner, self.params, self.functional_residuals = inner, inner.params, inner.functional_residuals

        def __call__(self, backward=True):
            return self.inner(backward)

    fast_net, slow_net = TwoLayerNet(5, 1, width=11).double(), TwoLayerNet(5, 1, width=11).double()
    slow_net.load_state_dict(fast_net.state_dict())
    fast, slow = IEQ(fast_net.parameters(), lr=3.0), IEQ(slow_net.parameters(), lr=3.0)
    for _ in range(5):
        fast.step(BatchClosure(fast_net, MSELoss(), x, y))
        slow.step(JacobianOnly(BatchClosure(slow_net, MSELoss(), x, y)))
    for a, b in zip(fast_net.parameters(), slow_net.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    for k, v in fast.diagnostics().items():
        assert torch.allclose(v, slow.diagnostics()[k], rtol=1e-9), k



class _Rows:
    """A sink that keeps the rows it is given."""

    def __init__(self):
        self.rows = []

    def log(self, row):
        self.rows.append(dict(row))


@pytest.mark.parametrize("width", [30, 600], ids=["small", "factored-backward"])   # batch × width vs FACTORED_BACKWARD
@pytest.mark.parametrize("method", ["sgd", "sav", "relsav", "asav", "expsav"])
def test_the_runners_hand_written_step_trains_as_autograd_does(method, width, monkeypatch):
    """A few epochs through the runner's loop with the two-layer net's hand-written
    gradient (in-place relu, relu's backward into its own buffer: docs/speed.md) log the
    rows that the same run logs with autograd, to rounding."""
    from gradflow_exp.config import dataset_config, optimizer_config
    from gradflow_exp.data import build_dataset
    from gradflow_exp.optim import build_optimizer
    from gradflow_exp.training.loop import LoopConfig, OneModel, Run, train

    data = build_dataset(dataset_config("quadratic", D=6, M=400), 0).to("cpu", torch.float64)

    def rows(manual: bool) -> list[dict]:
        monkeypatch.setattr(TwoLayerNet, "supports_manual_grad", property(lambda self: manual))
        torch.manual_seed(0)
        model = TwoLayerNet(6, 1, width=width).double()
        cfg = optimizer_config(method)
        cfg.lr = {"sgd": 1e-3, "asav": 0.01}.get(method, 0.5)
        opt = build_optimizer(cfg, model)
        sink = _Rows()
        train(OneModel(model, opt, MSELoss(), data), LoopConfig(epochs=4, batch_size=32, progress=False),
              [Run(seed=0, sinks=[sink])])
        return sink.rows

    fast, slow = rows(True), rows(False)
    assert len(fast) == len(slow) == 5 and fast[-1]["train_rel_error"] < fast[0]["train_rel_error"]
    for a, b in zip(fast, slow):
        for key in a:
            if key != "wall_time":
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-300, nan_ok=True), (key, a["epoch"])


@pytest.mark.parametrize("width", [30, 600], ids=["small", "factored-backward"])
def test_the_replica_closed_form_is_each_replicas_own_gradient(width):
    """`two_layer_mse_grad` over R stacked nets gives each net's `mse_loss_and_grad`, below
    and above FACTORED_BACKWARD."""
    from gradflow_exp.optim.closure import two_layer_mse_grad

    nets, xs, ys = [], [], []
    for k in range(3):
        torch.manual_seed(k)
        nets.append(TwoLayerNet(6, 1, width=width).double())
        xs.append(torch.randn(32, 6, dtype=torch.float64))
        ys.append(torch.randn(32, dtype=torch.float64))
    params = {n: torch.stack([dict(net.named_parameters())[n].detach() for net in nets]) for n, _ in nets[0].named_parameters()}
    losses, grads = two_layer_mse_grad(nets[0].scale, params, torch.stack(xs), torch.stack(ys))
    for k, net in enumerate(nets):
        with torch.no_grad():
            loss = net.mse_loss_and_grad(xs[k], ys[k])
        assert losses[k].item() == pytest.approx(loss.item(), rel=1e-13)
        for n, p in net.named_parameters():
            assert torch.allclose(grads[n][k], p.grad, rtol=1e-11, atol=1e-16), n
