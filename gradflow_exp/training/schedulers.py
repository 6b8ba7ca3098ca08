"""Learning-rate schedules (the ``scheduler`` group), from ``torch.optim.lr_scheduler``.

Every schedule is stepped once per epoch, after the epoch's steps and its logged row, so
the ``lr`` column of the row for epoch e is the Δt used during epoch e (the row for epoch
0 shows epoch 1's). It works for every optimizer of the runner: the energy-stable ones
read ``group["lr"]`` at each step, and `gradflow_exp.optim.SPM` shares its base
optimizer's ``param_groups``. With a time scale K the torch baselines hold lr·K (see
`gradflow_exp.optim.registry`); a schedule multiplies either by the same factor.
"""
from __future__ import annotations

import torch
from torch.optim import lr_scheduler as lrs


class EpochScheduler:
    """One ``step(epoch_loss)`` per epoch; ``epoch_loss`` (a 0-d tensor, the mean training
    loss of the epoch) is read only by reduce-on-plateau, so the others add no host sync."""

    def __init__(self, scheduler, needs_loss: bool = False):
        self.scheduler = scheduler
        self.needs_loss = needs_loss

    def step(self, epoch_loss: torch.Tensor) -> None:
        if self.needs_loss:
            self.scheduler.step(float(epoch_loss))
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def stretched_over_run(node: dict | None) -> bool:
    """Whether build_scheduler takes this schedule's length from the run's ``epochs`` in code
    (warm-up then cosine), so a longer run is another schedule. (cosine's T_max is
    ``${trainer.epochs}`` in its config, where the comparison of a run's recorded config already sees it.)"""
    node = node or {}
    return node.get("name") == "warmup" and node.get("then") == "cosine"


def build_scheduler(node: dict | None, optimizer, epochs: int) -> EpochScheduler | None:
    """The schedule a ``scheduler`` node names (checked by `gradflow_exp.commands.cli.check_scheduler`);
    None for ``none``. ``epochs`` is the run's length (warm-up's cosine ends there)."""
    name = (node or {}).get("name", "none")
    if name == "none":
        return None
    if name == "cosine":
        return EpochScheduler(lrs.CosineAnnealingLR(optimizer, T_max=node["T_max"], eta_min=node["eta_min"]))
    if name == "step":
        return EpochScheduler(lrs.StepLR(optimizer, step_size=node["step_size"], gamma=node["gamma"]))
    if name == "plateau":
        return EpochScheduler(lrs.ReduceLROnPlateau(optimizer, mode="min", factor=node["factor"],
                                                    patience=node["patience"], threshold=node["threshold"],
                                                    min_lr=node["min_lr"]), needs_loss=True)
    if name == "warmup":
        warm = node["warmup_epochs"]
        first = lrs.LinearLR(optimizer, start_factor=node["start_factor"], end_factor=1.0, total_iters=warm)
        if node["then"] == "cosine":
            then = lrs.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warm), eta_min=node["eta_min"])
        else:
            then = lrs.ConstantLR(optimizer, factor=1.0, total_iters=0)
        return EpochScheduler(lrs.SequentialLR(optimizer, [first, then], milestones=[warm]))
    raise ValueError(f"scheduler.name={name!r}; valid: none, cosine, step, plateau, warmup")
