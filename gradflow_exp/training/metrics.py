"""The reported metrics, in one table: how each is computed and which way is better.

Whatever loss trains a run, every run reports the same metrics of its model on each split
(``train_<metric>``, ``val_<metric>``, ``test_<metric>`` in metrics.csv, summary.json and W&B), plus
``train_loss``, the training loss itself. The loop computes them on whole sets in chunks
of rows (`metric_sums` are additive over chunks), the summary keeps each one's best value
by `Metric.better`, W&B summarises it the same way, and the report tabulates those marked
``reported``.

Adding a metric: its additive pieces in `metric_sums`, its value in `metrics_from_sums`,
its row in `METRICS`. (torch is imported in the functions that compute: the table is read
by the report and the command line, which do not load torch.)
"""
from __future__ import annotations

from dataclasses import dataclass

# Train, validation (what a sweep, a search or a best-setting table selects on), test (only
# reported: README, "Validation").
SPLITS = ("train", "val", "test")
TRAIN_LOSS = "train_loss"
SELECT_ON = "val_rel_error"     # the sweepers' objective: a run's validation relative error


@dataclass(frozen=True)
class Metric:
    name: str
    better: str                        # "lower" or "higher"
    label: str                         # in figures and tables
    reported: bool = True              # in the report's tables and tests
    classification_only: bool = False  # logged only where the targets are class labels


METRICS = (
    Metric("mse", "lower", "MSE", reported=False),
    Metric("rel_error", "lower", "relative error"),
    Metric("accuracy", "higher", "accuracy", classification_only=True),
)


def columns(better: str | None = None, reported: bool | None = None) -> tuple[str, ...]:
    """``<split>_<metric>`` for every split and metric (``better``, ``reported``: only those);
    the training loss counts as a ``lower`` column, never as a reported one."""
    out = [TRAIN_LOSS] if better in (None, "lower") and not reported else []
    out += [f"{split}_{m.name}" for m in METRICS for split in SPLITS
            if (better is None or m.better == better) and (reported is None or m.reported == reported)]
    return tuple(out)


LOWER_IS_BETTER = columns("lower")        # errors: a run keeps their minimum
HIGHER_IS_BETTER = columns("higher")      # accuracies: their maximum


def higher_is_better(column: str) -> bool:
    return column in HIGHER_IS_BETTER


def metric_sums(pred, target) -> dict:
    """Additive pieces of the metrics on one chunk (summed over chunks; tensors, no grad).

    For classification the outputs compared with y are softmax probabilities against
    one-hot labels, so mse and rel_error mean the same thing for every problem.
    """
    import torch

    pred = pred.detach()
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


def metrics_from_sums(sums: dict) -> dict[str, float]:
    out = {
        "mse": float(sums["sq_err"] / sums["numel"]),
        "rel_error": float(sums["sq_err"] / sums["sq_y"]),
    }
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"] / sums["count"])
    return out


def evaluate(model, x, y, chunk: int) -> dict[str, float]:
    """Every metric of ``model`` on a whole set, ``chunk`` rows a forward pass."""
    import torch

    sums = None
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            part = metric_sums(model(x[i:i + chunk]), y[i:i + chunk])
            sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
    return metrics_from_sums(sums)


def _targets_like(pred, target):
    """Regression targets as pred's shape; class labels as one-hot probabilities."""
    import torch

    from gradflow_exp.losses import as_pred_shape

    if target.dtype in (torch.int64, torch.int32):
        return torch.nn.functional.one_hot(target, pred.shape[-1]).to(pred.dtype)
    return as_pred_shape(target, pred)
