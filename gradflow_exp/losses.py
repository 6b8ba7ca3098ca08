"""Training losses and reporting metrics, kept apart on purpose.

The lesson on the training loss (docs/sources.md): training on the reporting metric (relative error) shrinks the Example 2
gradient by N/Σy² ≈ 3.6e-5 and training stalls. So the optimizer sees the `loss`
group's loss (MSE by default) and every run *reports* the same metrics whatever it
trained on: mse, rel_error = Σ(f−y)²/Σy², and accuracy for classification.

Every training loss also exposes `residuals(pred, target)`, a per-sample residual
matrix r with ``loss == r.pow(2).mean()`` exactly. IEQ-type optimizers build their
quadratic energy from it.

A composite loss (`CompositeLoss`, the evaluation's eq. 1) adds a weighted penalty w(t)·R(θ) to a
data loss, with w on a schedule over the epochs (the note on composite losses, docs/sources.md); the optimizer sees the sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class MSELoss:
    """I(θ) = (1/n) Σ (f − y)² — no 1/2 (mean over all elements; README, `loss`)."""

    name = "mse"
    row_mean = True   # a mean over rows: a full set's loss can be summed in chunks

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, as_pred_shape(target, pred))

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pred - as_pred_shape(target, pred)


class RelErrorLoss:
    """Σ(f − y)² / Σy² on the batch: the reporting metric used as a training loss.

    Here only to demonstrate the trap of the lesson on the training loss; never the default.
    """

    name = "rel_error"
    row_mean = False  # a ratio of sums, not a mean over rows

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = as_pred_shape(target, pred)
        return (pred - t).pow(2).sum() / t.pow(2).sum()

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = as_pred_shape(target, pred)
        # mean(r²) = Σ(f−y)²/Σy²  ⇔  r = (f−y)·sqrt(numel/Σy²)
        return (pred - t) * torch.sqrt(t.numel() / t.pow(2).sum())


class RelNormLoss:
    """‖f − y‖ / ‖y‖ on the batch: the relative error as a norm ratio, not squared.

    The paper (p. 8) takes "the relative error as the loss function" without defining it.
    Unlike MSE its gradient Jᵀ(f − y)/(‖f − y‖‖y‖) does not shrink with the residual, so a
    fixed step stalls at an error that grows with the step, and it cannot blow up the way an
    MSE step past the stability limit does (REPRODUCTION.md, fig8: the large-step study).
    No residual form: IEQ's quadratic energy needs a loss that is a mean of squares.
    """

    name = "rel_norm"
    row_mean = False

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = as_pred_shape(target, pred)
        return torch.sqrt((pred - t).pow(2).sum() / t.pow(2).sum())

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise TypeError("loss=rel_norm has no residual form: use optimizer=ieq_adaptive, not ieq")


class CrossEntropyLoss:
    """Softmax cross-entropy on integer labels."""

    name = "cross_entropy"
    row_mean = True

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, target)

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # ℓ_i ≥ 0, so r_i = sqrt(ℓ_i) gives mean(r²) = mean(ℓ). The clamp keeps the
        # Jacobian finite when a sample is fitted exactly.
        per_sample = F.cross_entropy(pred, target, reduction="none")
        return per_sample.clamp_min(1e-30).sqrt().unsqueeze(-1)


LOSSES = {cls.name: cls for cls in (MSELoss, RelErrorLoss, RelNormLoss, CrossEntropyLoss)}


def build_loss(name: str):
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}") from None


@dataclass
class WeightSchedule:
    """w(t) at epoch index t = 0, 1, … (the epoch being trained is t + 1). The note on composite losses:

    constant  w(t) = weight
    linear    w(t) = start + (weight − start)·min(1, t/ramp_epochs)
    sigmoid   w(t) = start + (weight − start)·σ(steepness·(t/epochs − midpoint)), σ(z) = 1/(1+e^{−z})
    """
    kind: str = "constant"
    weight: float = 0.0
    start_weight: float = 0.0
    ramp_epochs: int = 1
    epochs: int = 1
    midpoint: float = 0.4
    steepness: float = 8.0

    def __call__(self, t: int) -> float:
        if self.kind == "constant":
            return float(self.weight)
        if self.kind == "linear":
            frac = min(1.0, t / self.ramp_epochs)
        elif self.kind == "sigmoid":
            frac = 1.0 / (1.0 + math.exp(-self.steepness * (t / self.epochs - self.midpoint)))
        else:
            raise ValueError(f"loss.penalty.schedule={self.kind!r}; valid: constant, linear, sigmoid")
        return self.start_weight + (self.weight - self.start_weight) * frac


def l2_penalty(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """R(θ) = ½‖θ‖² over the given parameters (its gradient is θ: weight decay w)."""
    return 0.5 * sum(p.pow(2).sum() for p in params.values())


class CompositeLoss:
    """I(θ) = data(f(θ), y) + w(t)·R(θ).

    ``loss(pred, target)`` is the data term and ``penalty(params)`` the weighted w·R(θ);
    `gradflow_exp.optim.BatchClosure` adds the two, so every optimizer (SAV's r included)
    sees the composite energy. The weight is a plain float set by ``epoch_start(epoch)``
    (a function of the epoch alone, so a resumed run gets it back without saved state);
    for energy-stable methods the energy guarantee holds while w is constant, and w
    changing between epochs acts like a restart. No ``residuals``: full-Jacobian IEQ would
    need n extra residual rows for R (its N × N solve becomes (N+n) × (N+n)).
    """

    def __init__(self, data, schedule: WeightSchedule):
        self.data = data
        self.name = data.name
        self.row_mean = data.row_mean
        self.schedule = schedule
        self.weight = schedule(0)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.data(pred, target)

    def penalty(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.weight * l2_penalty(params)

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise TypeError("a loss with a penalty has no residual form: use optimizer=ieq_adaptive, not ieq")

    def epoch_start(self, epoch: int) -> None:
        self.weight = self.schedule(epoch - 1)

    @torch.no_grad()
    def diagnostics(self, params: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss_weight": self.weight, "penalty": float(l2_penalty(params))}


def penalty_stretched_over_run(node) -> bool:
    """Whether build_training_loss fills the penalty schedule's length (ramp_epochs or
    epochs left null) from the run's ``epochs``, so a longer run is another schedule."""
    p = (node or {}).get("penalty")
    return p is not None and (p.get("ramp_epochs") is None or p.get("epochs") is None)


def build_training_loss(node, epochs: int):
    """The ``loss`` group's node → its training loss: ``name`` alone, or with a ``penalty``
    sub-node (conf/loss/mse_l2.yaml; checked by `gradflow_exp.commands.cli.check_penalty`)."""
    data = build_loss(node["name"])
    p = node.get("penalty")
    if p is None:
        return data
    schedule = WeightSchedule(kind=p["schedule"], weight=p["weight"], start_weight=p["start_weight"],
                              ramp_epochs=p.get("ramp_epochs") or epochs, epochs=p.get("epochs") or epochs,
                              midpoint=p.get("midpoint", 0.4), steepness=p.get("steepness", 8.0))
    return CompositeLoss(data, schedule)


def as_pred_shape(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return target.reshape(pred.shape) if target.numel() == pred.numel() else target
