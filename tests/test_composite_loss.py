"""Composite loss I(θ) = data + w(t)·½‖θ‖²: the schedules, the closure every optimizer uses
(value and gradient, never the hand-written MSE gradient), and the runner's columns."""
import math

import pandas as pd
import pytest
import torch

from gradflow_exp.losses import CompositeLoss, MSELoss, WeightSchedule
from gradflow_exp.models import TwoLayerNet
from gradflow_exp.optim import BatchClosure

FIG7 = ["experiment=fig7", "dataset.M=300", "trainer.log_every=1", "threads=1"]


def test_weight_schedules():
    const = WeightSchedule("constant", weight=0.3, start_weight=0.1)
    assert const(0) == const(7) == 0.3
    lin = WeightSchedule("linear", weight=1.0, start_weight=0.2, ramp_epochs=4)
    assert [lin(t) for t in (0, 2, 4, 9)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    sig = WeightSchedule("sigmoid", weight=2.0, start_weight=0.0, epochs=100, midpoint=0.4, steepness=8.0)
    assert sig(40) == pytest.approx(1.0)                       # half-way at the midpoint
    vals = [sig(t) for t in range(101)]
    assert all(a < b for a, b in zip(vals, vals[1:])) and vals[0] < 0.1 and vals[-1] > 1.98
    # the note on composite losses: λ(t) = λ_max / (1 + exp(−8(t/T − 0.4)))
    assert sig(70) == pytest.approx(2.0 / (1 + math.exp(-8 * (0.7 - 0.4))))


def test_closure_returns_the_composite_loss_and_gradient():
    """The two-layer net has a hand-written MSE gradient: with a penalty it must not be used."""
    torch.manual_seed(0)
    model = TwoLayerNet(in_dim=4, width=6).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    w = 0.7
    loss_fn = CompositeLoss(MSELoss(), WeightSchedule("constant", weight=w))
    closure = BatchClosure(model, loss_fn, x, y)
    loss = closure()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    data_only = BatchClosure(model, MSELoss(), x, y)
    data_loss = data_only()
    sq = sum(p.detach().pow(2).sum() for p in model.parameters())
    assert float(loss) == pytest.approx(float(data_loss) + w * 0.5 * float(sq), rel=1e-13)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad + w * p.detach(), rtol=1e-12, atol=1e-14)
    assert float(closure(backward=False)) == pytest.approx(float(loss), rel=1e-13)
    params = {n: p.detach() for n, p in model.named_parameters()}
    assert float(closure.functional_loss(params)) == pytest.approx(float(loss), rel=1e-13)
    with pytest.raises(TypeError, match="ieq_adaptive"):
        closure.functional_residuals(params)


def test_runner_logs_weight_and_penalty_and_reports_data_metrics(run_inprocess):
    summary, run_dir = run_inprocess(*FIG7, "optimizer=sav", "loss=mse_l2", "loss.penalty.weight=0.5",
                                     "loss.penalty.schedule=linear", "loss.penalty.ramp_epochs=2",
                                     "trainer.epochs=4", "trainer.batch_size=null")
    assert summary["status"] == "completed"
    m = pd.read_csv(run_dir / "metrics.csv")
    assert list(m.loss_weight) == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.5])   # w during epoch e = w(e − 1)
    # full batch, one step per epoch: train_loss is the composite loss at the epoch's start
    row = m.iloc[3]
    prev = m.iloc[2]
    assert row.train_loss == pytest.approx(prev.train_mse + row.loss_weight * prev.penalty, rel=1e-10)
    assert (m.train_mse != m.train_loss).iloc[1:].any()           # the data metric is reported separately
    assert m.energy.notna().iloc[1:].all()


def test_penalty_refused_with_full_jacobian_ieq(run_inprocess):
    from gradflow_exp.run.job import ConfigError

    with pytest.raises(ConfigError, match="use optimizer=ieq_adaptive"):
        run_inprocess(*FIG7, "optimizer=ieq", "loss=mse_l2", "trainer.epochs=1")
    assert run_inprocess(*FIG7, "optimizer=ieq_adaptive", "loss=mse_l2", "trainer.epochs=1")[0]["status"] == "completed"
