"""Replica mode (gradflow_exp/run/replicas.py): R seeds, or R values of Δt, C, λ, in one process.

Each replica must follow its single run `... seed=S`: same data, initialisation and batch
order, the same optimizer code (with a replica dimension). Not bit for bit: a batched
gradient (bmm, vmap) or a per-replica reduction may sum in another order than the single
run's, which moves the last bit now and then; over these few epochs the metrics agree to
~1e-15 relative, checked at rtol 1e-9, for every method that stacks.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from gradflow_exp.config import optimizer_names
from gradflow_exp.run.rundir import read_checkpoint
from helpers import SMALL, compose_cfg

SMALL_FIG7 = ["experiment=fig7", "dataset.M=500", "model.width=20", "trainer.epochs=3", "trainer.log_every=1"]
SMALL_FIG2 = ["experiment=fig2", "dataset.M=500", "model.width=20", "trainer.epochs=3", "trainer.log_every=1"]
TINY = ["experiment=fig7", "dataset.M=200", "model.width=10", "trainer.epochs=2", "trainer.log_every=1",
        "trainer.batch_size=50"]
STACKABLE = [m for m in optimizer_names() if m not in ("ieq", "spm_ieq", "lamb", "spm_lamb")]
CASES = {
    "sgd-fig7": SMALL_FIG7 + ["optimizer=sgd"],
    "sav-fig7": SMALL_FIG7 + ["optimizer=sav"],          # restart=epoch (conf/method/fig7/sav.yaml)
    "sgd-fig2": SMALL_FIG2 + ["optimizer=sgd"],          # time_scale=150
    "sav-fig2": SMALL_FIG2 + ["optimizer=sav"],
    "ressav-fig7": SMALL_FIG7 + ["optimizer=ressav"],
    # tanh: no hand-written gradient, so the replicas take the torch.func.vmap(grad) path
    "sav-fig7-vmap": SMALL_FIG7 + ["optimizer=sav", "model.activation=tanh"],
    "spm_relsav-mlp": ["experiment=mnist", "dataset.subsample_train=200", "dataset.subsample_test=50",
                       "model.hidden=[8]", "trainer.epochs=2", "optimizer=spm_relsav"],
    "adam-cosine": SMALL_FIG7 + ["optimizer=adam", "scheduler=cosine"],
    "sav-warmup-penalty": SMALL_FIG7 + ["optimizer=sav", "scheduler=warmup", "scheduler.warmup_epochs=2",
                                        "loss=mse_l2", "loss.penalty.schedule=linear"],
    "asav-diagnostics": SMALL_FIG7 + ["optimizer=asav", "diagnostics.hessian.every=2",
                                      "diagnostics.grad_noise.every=1"],
}
RTOL = 1e-9


def _run(overrides, run_dir):
    from gradflow_exp.run.job import run

    return run(compose_cfg(SMALL + list(overrides)), run_dir)


def _metrics(run_dir):
    return pd.read_csv(run_dir / "metrics.csv")


def assert_same_trajectory(replica_dir, single_dir):
    a, b = _metrics(replica_dir), _metrics(single_dir)
    assert list(a.columns) == list(b.columns)
    assert list(a.epoch) == list(b.epoch) and list(a.step) == list(b.step)
    for col in a.columns.drop(["epoch", "step", "wall_time"]):
        np.testing.assert_allclose(a[col], b[col], rtol=RTOL, atol=0, err_msg=col)


@pytest.mark.parametrize("optimizer", STACKABLE)
def test_every_method_stacks(optimizer, tmp_path):
    """Every method but full-Jacobian IEQ and LAMB, SPM forms included, in replica mode:
    each replica's metrics.csv is its single run's."""
    overrides = TINY + [f"optimizer={optimizer}"]
    batch = _run(overrides + ["replicas.seeds=[0,1]"], tmp_path / "batch")
    assert batch["status"] == "completed", batch
    for seed in (0, 1):
        _run(overrides + [f"seed={seed}"], tmp_path / f"single_{seed}")
        assert_same_trajectory(tmp_path / "batch" / f"seed_{seed}", tmp_path / f"single_{seed}")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "spm_relsav-mlp" else c for c in sorted(CASES)])
def test_each_replica_follows_its_single_run(case, tmp_path):
    overrides = CASES[case]
    if case.startswith("sav"):
        assert compose_cfg(SMALL + overrides).optimizer.restart == "epoch"
    batch = _run(overrides + ["replicas.seeds=[0,1,2]"], tmp_path / "batch")
    assert batch["status"] == "completed" and sorted(batch["replicas"]) == ["seed_0", "seed_1", "seed_2"]
    for seed in (0, 1, 2):
        single = _run(overrides + [f"seed={seed}"], tmp_path / f"single_{seed}")
        rep_dir = tmp_path / "batch" / f"seed_{seed}"
        assert_same_trajectory(rep_dir, tmp_path / f"single_{seed}")
        rep = json.loads((rep_dir / "summary.json").read_text())
        assert rep["status"] == "completed" and rep["steps"] == single["steps"]
        # the replica's record is its single run's (seed S, no replicas), and its name is that run's
        assert (rep_dir / ".hydra" / "config.yaml").read_text() == \
            (tmp_path / f"single_{seed}" / ".hydra" / "config.yaml").read_text()
        assert rep["code"] == single["code"] and [c["from_epoch"] for c in rep["code_segments"]] == [0]
        saved = yaml.safe_load((rep_dir / ".hydra" / "config.yaml").read_text())
        assert saved["seed"] == seed and all(v is None for v in saved["replicas"].values())
        # final checkpoint: the single run's parameters (and SAV's r), to rounding
        _, a = read_checkpoint(rep_dir / "checkpoint.pt")
        _, b = read_checkpoint(tmp_path / f"single_{seed}" / "checkpoint.pt")
        for name, p in b["model"].items():
            torch.testing.assert_close(a["model"][name], p, rtol=RTOL, atol=1e-15)
        # the optimizer state (SAV's r, Adam's moments, SPM's generator): the single run's
        assert_close_tree(a["optimizer"], b["optimizer"])
        assert torch.equal(a["data_rng"], b["data_rng"]) and torch.equal(a["torch_rng"], b["torch_rng"])


def assert_close_tree(a, b, path="optimizer"):
    """Two state dicts: the same structure, tensors equal to rounding, the rest equal."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), path
        for k in b:
            assert_close_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_tree(x, y, f"{path}[{i}]")
    elif isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, path
        if b.is_floating_point():
            torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-15, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=RTOL, nan_ok=True), path
    else:
        assert a == b, path


def test_diverging_replica_is_marked_while_the_others_complete(tmp_path):
    from gradflow_exp.run.job import objective
    from gradflow_exp.report.load import load_runs

    overrides = SMALL_FIG7 + ["optimizer=sgd", "replicas.seeds=[0,1]", "replicas.lr=[0.01,10.0]"]
    batch = _run(overrides, tmp_path / "batch")
    status = {name: s["status"] for name, s in batch["replicas"].items()}
    assert status == {"seed_0-lr_0.01": "completed", "seed_0-lr_10.0": "diverged",
                      "seed_1-lr_0.01": "completed", "seed_1-lr_10.0": "diverged"}
    assert batch["status"] == "diverged" and objective(batch) == float("inf")
    # both kinds of replica still equal their single runs (the diverged one: its rows up to
    # the epoch it diverged, where the single run stopped too)
    for seed in (0, 1):
        for lr in ("0.01", "10.0"):
            single = _run(SMALL_FIG7 + ["optimizer=sgd", f"seed={seed}", f"optimizer.lr={lr}"],
                          tmp_path / f"single_{seed}_{lr}")
            rep = json.loads((tmp_path / "batch" / f"seed_{seed}-lr_{lr}" / "summary.json").read_text())
            assert rep["status"] == single["status"] and rep["epochs_completed"] == single["epochs_completed"]
            a, b = _metrics(tmp_path / "batch" / f"seed_{seed}-lr_{lr}"), _metrics(tmp_path / f"single_{seed}_{lr}")
            cols = ["train_mse", "test_rel_error", "lr"]
            np.testing.assert_allclose(a[cols], b[cols], rtol=RTOL, atol=0)
    # the report reads the batch as two methods (the Δt values) with two seeds each
    df = load_runs([tmp_path / "batch"])
    runs = df.drop_duplicates("run_dir")
    assert sorted(runs.method.unique()) == ["sgd lr=0.01", "sgd lr=10"]
    assert sorted(runs.seed) == [0, 0, 1, 1]
    assert set(runs[runs.method == "sgd lr=10"].status) == {"diverged"}


@pytest.mark.parametrize("optimizer", ["adam", "spm_sgd"])
def test_torch_optimizers_with_per_replica_lr_follow_their_single_runs(optimizer, tmp_path):
    """torch's optimizers stepped once over the stacked tensors at the largest lr, each
    replica moved to its own (`PerReplicaLr`), SPM's perturbations around that included."""
    overrides = TINY + [f"optimizer={optimizer}", "replicas.seeds=[0]", "replicas.lr=[0.01,0.003]"]
    batch = _run(overrides, tmp_path / "batch")
    assert batch["status"] == "completed"
    for lr in ("0.01", "0.003"):
        _run(TINY + [f"optimizer={optimizer}", "seed=0", f"optimizer.lr={lr}"], tmp_path / f"single_{lr}")
        assert_same_trajectory(tmp_path / "batch" / f"seed_0-lr_{lr}", tmp_path / f"single_{lr}")


def test_report_reads_replicas_as_seeds_and_a_rerun_skips_them(tmp_path):
    from gradflow_exp.report.load import load_runs

    overrides = SMALL_FIG7 + ["optimizer=sav", "replicas.seeds=[0,1,2]"]
    first = _run(overrides, tmp_path / "batch")
    df = load_runs([tmp_path / "batch"])
    runs = df.drop_duplicates("run_dir")
    assert list(runs.method.unique()) == ["sav"] and sorted(runs.seed) == [0, 1, 2]
    assert set(runs.status) == {"completed"} and "energy" in df.columns
    mtime = (tmp_path / "batch" / "seed_1" / "metrics.csv").stat().st_mtime_ns
    again = _run(overrides, tmp_path / "batch")      # finished replicas are skipped
    assert again["replicas"] == first["replicas"]
    assert (tmp_path / "batch" / "seed_1" / "metrics.csv").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("extra, message", [
    (["optimizer=lamb"], "Lamb is not element-wise"),
    (["optimizer=ieq"], "IEQ solves a batch × batch system per step"),
    (["optimizer=sav", "scheduler=plateau"], "scheduler=plateau decides per run"),
    (["optimizer=sav", "scheduler=cosine", "replicas.lr=[0.1,0.2]"], "a schedule over per-replica Δt"),
    (["optimizer=sgd", "replicas.C=[1,2]"], "SGD has no hyperparameter C"),
])
def test_unsupported_is_refused_before_training(extra, message, tmp_path):
    from gradflow_exp.run.job import ConfigError, run

    cfg = compose_cfg(SMALL + SMALL_FIG7 + ["replicas.seeds=[0,1]"] + extra)
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path / "run")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("run/**/metrics.csv"))        # nothing trained; a fresh replica says failed
    assert all(json.loads(p.read_text())["status"] == "failed" for p in tmp_path.glob("run/**/summary.json"))


def test_bad_replica_values_are_refused():
    from omegaconf import OmegaConf

    from gradflow_exp.config.schema import ConfigError, validate

    for bad, message in [("replicas.seeds=[0,0]", "without repeats"), ("replicas.seeds=[]", "non-empty list"),
                         ("replicas.lr=[0.1,x]", "replicas.lr\\[1\\] must be a number")]:
        with pytest.raises(ConfigError, match=message):
            validate(OmegaConf.to_container(compose_cfg(SMALL + [bad]), resolve=True))


@pytest.mark.parametrize("seeds", ["[0]", "[0,1,2,3]"])
def test_threads_auto_follows_one_runs_step(seeds, tmp_path, monkeypatch):
    """threads=auto decides on one run's work, whatever the batch: one fig7 model of width
    100 at batch 64 is a small step (2.7e5 < 1e6: one thread), and so is a batch of four
    (a second thread made a 36-job batched sweep 4× slower on a busy 2-core machine); a
    job after a small one gets the default back."""
    from gradflow_exp.run import build

    monkeypatch.setattr(build, "DEFAULT_THREADS", 2)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _run(SMALL_FIG7 + ["optimizer=sgd", "model.width=100", "trainer.epochs=1", "threads=auto",
                           f"replicas.seeds={seeds}"], tmp_path / "batch")
        assert torch.get_num_threads() == 1
        _run(SMALL_FIG7 + ["optimizer=sgd", "model.width=3000", "trainer.epochs=1", "threads=auto"],
             tmp_path / "wide")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
