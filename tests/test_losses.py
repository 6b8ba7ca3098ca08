"""Training loss vs reporting metric (the lesson on the training loss, docs/sources.md)."""
import pandas as pd
import pytest
import torch

from gradflow_exp.losses import LOSSES, build_loss
from gradflow_exp.training.metrics import metric_sums, metrics_from_sums


def test_rel_error_and_mse_against_formula():
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(50, 1, generator=g, dtype=torch.float64), torch.randn(50, 1, generator=g, dtype=torch.float64)
    m = metrics_from_sums(metric_sums(f, y))
    assert m["rel_error"] == pytest.approx(float(((f - y) ** 2).sum() / (y ** 2).sum()), rel=1e-14)
    assert m["mse"] == pytest.approx(float(((f - y) ** 2).mean()), rel=1e-14)


def test_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]], dtype=torch.float64)
    m = metrics_from_sums(metric_sums(logits, torch.tensor([0, 1, 1])))
    assert m["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_residual_contract(name):
    """loss == mean(residuals²) exactly: IEQ builds its quadratic energy on it."""
    loss = build_loss(name)
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(16, 10 if name == "cross_entropy" else 1, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g) if name == "cross_entropy" else 5 + torch.randn(16, 1, generator=g, dtype=torch.float64)
    if name == "rel_norm":   # a norm, not a mean of squares: it says so instead
        with pytest.raises(TypeError, match="no residual form"):
            loss.residuals(pred, y)
        return
    assert float(loss.residuals(pred, y).pow(2).mean()) == pytest.approx(float(loss(pred, y)), rel=1e-12)


def test_rel_norm_against_formula_and_its_gradient_does_not_shrink():
    """‖f − y‖/‖y‖; its gradient with respect to f is (f − y)/(‖f − y‖‖y‖), whose norm is
    1/‖y‖ whatever the residual (MSE's shrinks with it)."""
    g = torch.Generator().manual_seed(2)
    y = 3 + torch.randn(40, 1, generator=g, dtype=torch.float64)
    loss = build_loss("rel_norm")
    for size in (1.0, 1e-6):
        f = (y + size * torch.randn(40, 1, generator=g, dtype=torch.float64)).requires_grad_()
        value = loss(f, y)
        assert float(value) == pytest.approx(float((f - y).norm() / y.norm()), rel=1e-14)
        (grad,) = torch.autograd.grad(value, f)
        assert float(grad.norm()) == pytest.approx(1 / float(y.norm()), rel=1e-12)


def test_mse_has_no_half():
    assert float(build_loss("mse")(torch.tensor([[3.0]]), torch.tensor([[1.0]]))) == 4.0


def test_example2_trap(run_inprocess):
    """The lesson on the training loss: on Example 2 MSE training makes progress, relative-error training stalls,
    and both are judged by the same metric."""
    common = ["experiment=fig7", "dataset.M=2000", "trainer.epochs=15", "trainer.log_every=15"]
    mse, mse_dir = run_inprocess(*common, "loss=mse")
    rel, rel_dir = run_inprocess(*common, "loss=rel_error")
    a, b = pd.read_csv(mse_dir / "metrics.csv"), pd.read_csv(rel_dir / "metrics.csv")
    # same initial model and data: the reported metric does not depend on the training loss
    assert a.train_rel_error.iloc[0] == b.train_rel_error.iloc[0]
    assert a.train_mse.iloc[0] == b.train_mse.iloc[0]
    # the MSE loss falls a lot; relative-error training hardly moves (gradient × N/Σy² ≈ 3.6e-5)
    assert a.train_loss.iloc[-1] < 0.2 * a.train_loss.iloc[0]
    assert a.train_rel_error.iloc[-1] < 0.2 * a.train_rel_error.iloc[0]
    assert b.train_rel_error.iloc[-1] > 0.9 * b.train_rel_error.iloc[0]
    # whichever loss trained it, train_rel_error is Σ(f−y)²/Σy² of the model: for the rel_error run
    # the training loss (batch mean of the same quantity) matches the reported metric's scale
    assert b.train_loss.iloc[0] == pytest.approx(b.train_rel_error.iloc[0], rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("penalty", [False, True])
def test_full_set_loss_in_chunks_is_the_whole_set_loss(name, penalty):
    """Epoch 0's train_loss is taken in chunks of rows (fig10's whole training set in one
    pass would hold 13 GB); it must equal the loss of one pass over every row, with a
    penalty counted once, and a loss that is not a mean over rows (rel_error) in one pass."""
    from gradflow_exp.training.loop import full_loss
    from gradflow_exp.losses import CompositeLoss, WeightSchedule
    from gradflow_exp.models import MLP, TwoLayerNet
    from gradflow_exp.optim import BatchClosure

    torch.manual_seed(0)
    ce = name == "cross_entropy"
    model = (MLP(5, 10, hidden=[8]) if ce else TwoLayerNet(5, width=7)).double()
    x = torch.randn(103, 5, dtype=torch.float64)
    y = torch.randint(0, 10, (103,)) if ce else 2 + torch.randn(103, 1, dtype=torch.float64)
    loss = build_loss(name)
    if penalty:
        loss = CompositeLoss(loss, WeightSchedule(kind="constant", weight=0.3))
    whole = float(BatchClosure(model, loss, x, y)(backward=False))
    assert full_loss(model, loss, x, y, chunk=10) == pytest.approx(whole, rel=1e-13)
    assert full_loss(model, loss, x, y, chunk=1000) == whole
