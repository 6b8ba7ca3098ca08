"""Learning-rate schedules (scheduler group) and the AdamW/NAdam/LAMB baselines, through the runner:
the logged lr column follows the schedule's formula for every optimizer kind, and a resumed run
with a stateful schedule ends exactly as an uninterrupted one."""
import math

import pandas as pd
import pytest
from test_resume import resume_from_epoch_2_matches

from helpers import SMALL, compose_cfg

FIG7 = ["experiment=fig7", "dataset.M=300", "trainer.log_every=1", "threads=1"]
LR = 0.01      # fig7's Δt


def lr_column(run_inprocess, *overrides):
    summary, run_dir = run_inprocess(*FIG7, *overrides)
    assert summary["status"] == "completed", summary["error"]
    m = pd.read_csv(run_dir / "metrics.csv")
    return m.set_index("epoch")["lr"], m


# lr used during epoch e (e ≥ 1); the row of epoch 0 shows epoch 1's
FORMULAS = {
    "cosine": (["scheduler=cosine"], lambda e: LR * (1 + math.cos(math.pi * (e - 1) / 8)) / 2),
    "step": (["scheduler=step", "scheduler.step_size=3", "scheduler.gamma=0.5"], lambda e: LR * 0.5 ** ((e - 1) // 3)),
    "warmup_cosine": (["scheduler=warmup", "scheduler.warmup_epochs=3", "scheduler.start_factor=0.25"],
                      lambda e: LR * (0.25 + 0.75 * (e - 1) / 3) if e <= 3 else
                      LR * (1 + math.cos(math.pi * (e - 4) / 5)) / 2),
    "warmup_constant": (["scheduler=warmup", "scheduler.warmup_epochs=2", "scheduler.start_factor=0.5",
                         "scheduler.then=constant"], lambda e: LR * (0.5 + 0.5 * (e - 1) / 2) if e <= 2 else LR),
    # threshold 1: no epoch counts as an improvement, so lr halves after every patience + 1 = 2 epochs
    "plateau": (["scheduler=plateau", "scheduler.patience=1", "scheduler.threshold=1.0"],
                lambda e: LR * 0.5 ** ((e - 1) // 2)),
}


@pytest.mark.parametrize("optimizer", ["sgd", "spm_sav"])
@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_logged_lr_follows_the_schedule(run_inprocess, name, optimizer):
    overrides, formula = FORMULAS[name]
    lr, _ = lr_column(run_inprocess, f"optimizer={optimizer}", "trainer.epochs=8", *overrides)
    for e in range(1, 9):
        assert lr[e] == pytest.approx(formula(e), rel=1e-12), (name, e)
    assert lr[0] == pytest.approx(formula(1), rel=1e-12)


def test_schedule_changes_an_energy_stable_run(run_inprocess):
    """SAV reads group['lr'] at every step: a schedule changes its trajectory and step size."""
    _, plain = lr_column(run_inprocess, "optimizer=sav", "trainer.epochs=4")
    _, sched = lr_column(run_inprocess, "optimizer=sav", "trainer.epochs=4", "scheduler=step",
                         "scheduler.step_size=1", "scheduler.gamma=0.1")
    assert plain.train_mse.iloc[1] == sched.train_mse.iloc[1]          # epoch 1: same lr
    assert plain.train_mse.iloc[-1] != sched.train_mse.iloc[-1]
    # eff_step = Δt·r̃/√E: scales with the scheduled Δt (r̃/√E stays near 1 with restart=epoch)
    ratio = sched.eff_step.iloc[-1] / plain.eff_step.iloc[-1]
    assert ratio == pytest.approx(1e-3, rel=0.2)


@pytest.mark.parametrize("optimizer,cls", [("adamw", "torch.optim.adamw.AdamW"), ("nadam", "torch.optim.nadam.NAdam"),
                                           ("lamb", "pytorch_optimizer.optimizer.lamb.Lamb")])
def test_new_baselines_build_and_train(run_inprocess, optimizer, cls):
    from gradflow_exp.run.build import build

    cfg = compose_cfg(SMALL + FIG7 + [f"optimizer={optimizer}", "optimizer.lr=0.003"])
    _, _, _, opt, _ = build(cfg)
    import importlib

    module, name = cls.rsplit(".", 1)      # torch's classes are built in their lean forms (optim/torch_forms.py)
    assert isinstance(opt, getattr(importlib.import_module(module), name)) and type(opt).__name__ == name
    assert opt.param_groups[0]["lr"] == 0.003
    summary, run_dir = run_inprocess(*FIG7, f"optimizer={optimizer}", "optimizer.lr=0.003", "trainer.epochs=5",
                                     "scheduler=cosine")
    m = pd.read_csv(run_dir / "metrics.csv")
    assert summary["status"] == "completed" and m.train_mse.iloc[-1] < m.train_mse.iloc[0]


@pytest.mark.parametrize("overrides", [["optimizer=sav", "scheduler=warmup", "scheduler.warmup_epochs=3"],
                                       ["optimizer=spm_sgd", "scheduler=plateau", "scheduler.patience=0",
                                        "scheduler.threshold=0.5"],
                                       ["optimizer=sav", "loss=mse_l2", "loss.penalty.weight=0.1",
                                        "loss.penalty.schedule=sigmoid"]])
def test_stateful_schedules_resume_exactly(tmp_path, monkeypatch, overrides):
    """Rewound to epoch 2's checkpoint, the run ends exactly as before (scheduler state and
    the loss weight come back)."""
    cfg = compose_cfg(SMALL + FIG7 + overrides + ["trainer.epochs=6", "trainer.checkpoint_every=2"])
    run_dir = resume_from_epoch_2_matches(cfg, tmp_path, monkeypatch)
    lr = pd.read_csv(run_dir / "metrics.csv")["lr"]
    if "scheduler=none" not in overrides and any(o.startswith("scheduler=") for o in overrides):
        assert lr.nunique() > 1           # the schedule did move across the checkpoint
