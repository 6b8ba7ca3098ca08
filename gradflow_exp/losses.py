"""Training losses and reporting metrics, kept apart on purpose.

Seed 000: training on the reporting metric (relative error) shrinks the Example 2
gradient by N/Σy² ≈ 3.6e-5 and training stalls. So the optimizer sees the `loss`
group's loss (MSE by default) and every run *reports* the same metrics whatever it
trained on: mse, rel_error = Σ(f−y)²/Σy², and accuracy for classification.

Every training loss also exposes `residuals(pred, target)`, a per-sample residual
matrix r with ``loss == r.pow(2).mean()`` exactly. IEQ-type optimizers build their
quadratic energy from it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class MSELoss:
    """I(θ) = (1/n) Σ (f − y)² — no 1/2, as in the SPEC (mean over all elements)."""

    name = "mse"

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, _as_pred_shape(target, pred))

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pred - _as_pred_shape(target, pred)


class RelErrorLoss:
    """Σ(f − y)² / Σy² on the batch: the reporting metric used as a training loss.

    Here only to demonstrate seed 000's trap; never the default.
    """

    name = "rel_error"

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = _as_pred_shape(target, pred)
        return (pred - t).pow(2).sum() / t.pow(2).sum()

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = _as_pred_shape(target, pred)
        # mean(r²) = Σ(f−y)²/Σy²  ⇔  r = (f−y)·sqrt(numel/Σy²)
        return (pred - t) * torch.sqrt(t.numel() / t.pow(2).sum())


class CrossEntropyLoss:
    """Softmax cross-entropy on integer labels."""

    name = "cross_entropy"

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, target)

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # ℓ_i ≥ 0, so r_i = sqrt(ℓ_i) gives mean(r²) = mean(ℓ). The clamp keeps the
        # Jacobian finite when a sample is fitted exactly.
        per_sample = F.cross_entropy(pred, target, reduction="none")
        return per_sample.clamp_min(1e-30).sqrt().unsqueeze(-1)


LOSSES = {cls.name: cls for cls in (MSELoss, RelErrorLoss, CrossEntropyLoss)}


def build_loss(name: str):
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}") from None


def _as_pred_shape(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return target.reshape(pred.shape) if target.numel() == pred.numel() else target


def _targets_like(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Regression targets as pred's shape; class labels as one-hot probabilities."""
    if target.dtype in (torch.int64, torch.int32):
        return F.one_hot(target, pred.shape[-1]).to(pred.dtype)
    return _as_pred_shape(target, pred)


@torch.no_grad()
def metric_sums(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Additive pieces of the reporting metrics on one chunk (summed over chunks).

    For classification the outputs compared with y are softmax probabilities against
    one-hot labels, so mse and rel_error mean the same thing for every problem.
    """
    classification = target.dtype in (torch.int64, torch.int32)
    out = torch.softmax(pred, dim=-1) if classification else pred
    t = _targets_like(pred, target)
    sums = {
        "sq_err": (out - t).pow(2).sum(),
        "sq_y": t.pow(2).sum(),
        "numel": torch.tensor(float(t.numel()), device=pred.device),
    }
    if classification:
        sums["correct"] = (pred.argmax(-1) == target).sum().to(pred.dtype)
        sums["count"] = torch.tensor(float(target.shape[0]), device=pred.device)
    return sums


def metrics_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {
        "mse": float(sums["sq_err"] / sums["numel"]),
        "rel_error": float(sums["sq_err"] / sums["sq_y"]),
    }
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"] / sums["count"])
    return out
