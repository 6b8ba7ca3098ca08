"""Launched sweeps: submitit (local), a restarted multirun, an Optuna search; launcher configs."""
import json
import math

import pytest
import yaml

from helpers import hydra_inprocess

TINY = ["experiment=fig7", "dataset.M=300", "logger=none", "trainer.progress=false"]
# Two jobs through submitit, each its own process; Δt = 50 makes the second diverge.
SWEEP = ["-m", *TINY, "optimizer=sgd", "optimizer.lr=0.01,50", "trainer.epochs=2", "trainer.log_every=1"]


def compose_hydra(overrides):
    """The config with its hydra node (launcher, sweeper)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gradflow_exp.commands.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def statuses(sweep):
    return [json.loads((sweep / str(i) / "summary.json").read_text())["status"] for i in range(2)]


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("submitit")
    with pytest.MonkeyPatch.context() as mp:
        hydra_inprocess(*SWEEP, "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp}/sweep", monkeypatch=mp)
    return tmp


@pytest.mark.slow
def test_submitit_sweep_records_statuses_and_reports(submitit_sweep):
    from gradflow_exp.report.cli import main as report_main

    sweep = submitit_sweep / "sweep"
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2     # ran as submitit jobs
    assert statuses(sweep) == ["completed", "diverged"]
    assert report_main([str(sweep)]) == 0
    runs = (sweep / "report" / "runs.csv").read_text()
    assert "completed" in runs and "diverged" in runs


def test_restarted_multirun_skips_finished_jobs(submitit_sweep, monkeypatch):
    """The sweep died while job 0 was running: restarted (the same overrides, here with the
    basic launcher), it runs job 0 again and leaves the diverged job 1 alone."""
    sweep = submitit_sweep / "sweep"
    done = json.loads((sweep / "0" / "summary.json").read_text())
    metrics1 = (sweep / "1" / "metrics.csv").stat().st_mtime_ns
    (sweep / "0" / "checkpoint.pt").unlink()
    (sweep / "0" / "summary.json").write_text(json.dumps({"status": "running"}))
    (sweep / "0" / "metrics.csv").write_text("epoch,step\n0,0\n1,")        # cut by the crash
    hydra_inprocess(*SWEEP, f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch)
    assert "already diverged; skipping it" in (sweep / "1" / "train.log").read_text()
    assert (sweep / "1" / "metrics.csv").stat().st_mtime_ns == metrics1
    assert statuses(sweep) == ["completed", "diverged"]
    again = json.loads((sweep / "0" / "summary.json").read_text())
    assert again["final"] == {**done["final"], "wall_time": again["final"]["wall_time"]}


def test_optuna_search_over_lr_C_lam(tmp_path, monkeypatch):
    hydra_inprocess("hparams_search=fig7", *TINY[1:], "trainer.epochs=1", "hparams_objective=best",
                    "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}/search", monkeypatch=monkeypatch)
    search = tmp_path / "search"
    result = yaml.safe_load((search / "optimization_results.yaml").read_text())
    trials = sorted(p for p in search.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1", "2"]
    best = []
    for trial in trials:
        summary = json.loads((trial / "summary.json").read_text())
        config = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())
        assert summary["status"] == "completed" and config["optimizer"]["_target_"].endswith("SAV")
        assert 1e-3 <= config["optimizer"]["lr"] <= 1 and 1e-2 <= config["optimizer"]["C"] <= 1e3
        assert 0 <= config["optimizer"]["lam"] <= 10
        best.append(summary["best"]["val_rel_error"])              # selected on validation
        assert summary["best"]["test_rel_error"] != summary["best"]["val_rel_error"]
    assert result["best_value"] == min(best)
    assert set(result["best_params"]) == {"optimizer.lr", "optimizer.C", "optimizer.lam"}
    assert (search / "optuna.db").is_file()                         # the study, in the sweep dir


def _trial_points(search):
    out = {}
    for trial in sorted((p for p in search.iterdir() if (p / ".hydra" / "config.yaml").is_file()),
                        key=lambda p: int(p.name)):
        o = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())["optimizer"]
        out[int(trial.name)] = (o["lr"], o["C"], o["lam"])
    return out


@pytest.mark.slow
def test_an_optuna_search_is_continued_by_the_same_command(tmp_path, monkeypatch):
    """The study is stored in the sweep dir: the same command with a larger n_trials runs
    only the trials to go, in new job dirs, at new points; a trial a killed search left
    running is asked again at its point; a complete study only writes its best."""
    import optuna

    search = tmp_path / "search"
    args = ["hparams_search=fig7", *TINY[1:], "trainer.epochs=1", f"hydra.sweep.dir={search}"]
    hydra_inprocess(*args, "hydra.sweeper.n_trials=2", monkeypatch=monkeypatch)
    first = _trial_points(search)
    assert list(first) == [0, 1]
    # a search killed in its third trial, and in a fourth whose job had ended (a batch of
    # n_jobs cut short): the study holds both as running
    study = optuna.load_study(study_name="fig7", storage=f"sqlite:///{search}/optuna.db")

    def ask():
        t = study.ask()
        return t, (t.suggest_float("optimizer.lr", 1e-3, 1.0, log=True),
                   t.suggest_float("optimizer.C", 1e-2, 1e3, log=True), t.suggest_float("optimizer.lam", 0, 10))

    killed, point = ask()
    ended, _ = ask()
    (search / "3").mkdir()
    (search / "3" / "summary.json").write_text(json.dumps(
        {"status": "completed", "final": {"val_rel_error": 0.5, "test_rel_error": 0.4}}))
    hydra_inprocess(*args, "hydra.sweeper.n_trials=5", monkeypatch=monkeypatch)
    points = _trial_points(search)
    assert list(points) == [0, 1, 4, 5] and {k: points[k] for k in (0, 1)} == first
    assert points[4] == pytest.approx(point, rel=1e-12)               # asked again, first
    assert len(set(points.values())) == 4                              # the new one is new
    study = optuna.load_study(study_name="fig7", storage=f"sqlite:///{search}/optuna.db")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert study.trials[3].value == 0.5                                # told from its summary, not rerun
    mtimes = {p: p.stat().st_mtime_ns for p in search.glob("*/summary.json")}
    hydra_inprocess(*args, "hydra.sweeper.n_trials=5", monkeypatch=monkeypatch)   # complete: nothing runs
    assert {p: p.stat().st_mtime_ns for p in search.glob("*/summary.json")} == mtimes
    assert len(optuna.load_study(study_name="fig7", storage=f"sqlite:///{search}/optuna.db").trials) == 6
    # the report draws the stored study beside the sweep's own figures
    from gradflow_exp.report.cli import main as report_main

    assert report_main([str(search)]) == 0
    drawn = {p.name for p in (search / "report").glob("optuna_*.png")}
    assert drawn == {f"optuna_fig7_{k}.png" for k in ("history", "slice", "contour", "importances")}


def test_objective_counts_unfinished_runs_as_worst():
    from gradflow_exp.run.job import objective

    run = {"status": "completed", "final": {"val_rel_error": 0.2, "test_rel_error": 0.05},
           "best": {"val_rel_error": 0.1, "test_rel_error": 0.01}}
    assert objective(run) == 0.2 and objective(run, "best") == 0.1        # validation, never test
    for status in ("diverged", "failed", "interrupted"):
        assert objective({**run, "status": status}) == math.inf
    assert objective({"status": "completed", "final": {"val_rel_error": math.nan}}) == math.inf
    assert objective({"status": "completed", "final": {"test_rel_error": 0.1}}) == math.inf   # no validation


@pytest.mark.parametrize("problem", ["fig1", "fig2", "fig7"])
def test_hparams_search_configs(problem):
    cfg = compose_hydra([f"hparams_search={problem}"])
    sweeper = cfg.hydra.sweeper
    assert cfg.name == problem and sweeper.direction == "minimize" and "Optuna" in sweeper._target_
    assert {"optimizer.lr", "optimizer.C", "optimizer.lam"} <= set(sweeper.params)
    assert sweeper.params.optimizer == "sav"        # not the experiment's method set


def test_launcher_configs():
    slurm = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                           "hydra.launcher.cpus_per_task=2", "hydra.launcher.gpus_per_node=1",
                           "hydra.launcher.mem_gb=16"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.timeout_min, slurm.cpus_per_task, slurm.gpus_per_node, slurm.mem_gb) == \
        ("gpu", 30, 2, 1, 16)
    joblib = compose_hydra(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]).hydra.launcher
    assert "Joblib" in joblib._target_ and joblib.n_jobs == 2


@pytest.mark.slow
def test_joblib_parallel_sweep(tmp_path):
    """Two jobs side by side through the joblib launcher, each its own directory and status."""
    from helpers import cli

    sweep = tmp_path / "sweep"
    r = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "optimizer=sgd,adam",
            "trainer.epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    statuses = sorted(json.loads((sweep / j / "summary.json").read_text())["status"] for j in ("0", "1"))
    assert statuses == ["completed", "completed"]


def _sweep_rows(sweep):
    import csv

    out = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        with open(job / "metrics.csv", newline="") as f:
            out[job.name] = [{k: float(v) for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]
    return out


@pytest.mark.slow
def test_batched_launcher_gives_the_basic_launchers_results(tmp_path, monkeypatch):
    """The README's fig7 sweep (8 jobs: 2 methods × 2 Δt × 2 seeds), shortened: under
    hydra/launcher=batched each method's 4 jobs train as one batch, and every job's run
    directory holds what the basic launcher writes there (to rounding)."""
    args = ["-m", *TINY, "trainer.epochs=3", "optimizer=sgd,adam", "optimizer.lr=0.01,0.1", "seed=0,1"]
    hydra_inprocess(*args, f"hydra.sweep.dir={tmp_path}/basic", monkeypatch=monkeypatch)
    hydra_inprocess(*args, "hydra/launcher=batched", f"hydra.sweep.dir={tmp_path}/batched", monkeypatch=monkeypatch)
    basic, batched = _sweep_rows(tmp_path / "basic"), _sweep_rows(tmp_path / "batched")
    assert sorted(basic) == sorted(batched) == [str(i) for i in range(8)]
    for job in basic:
        assert len(basic[job]) == len(batched[job]) >= 2
        for a, b in zip(batched[job], basic[job]):
            assert a.keys() == b.keys()
            for key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=0), (job, key)
        for name in ("overrides.yaml", "config.yaml"):
            assert (tmp_path / "batched" / job / ".hydra" / name).read_text() == \
                (tmp_path / "basic" / job / ".hydra" / name).read_text()
    log = (tmp_path / "batched" / "0" / "train.log").read_text()
    assert "4 in one batch" in log


@pytest.mark.slow
def test_batched_launcher_runs_the_rest_alone(tmp_path, monkeypatch, capsys):
    """A job with bad input (C = 0) and a method that does not stack (LAMB) run as the
    basic launcher runs them; the others batch."""
    sweep = tmp_path / "sweep"
    hydra_inprocess("-m", *TINY, "trainer.epochs=1", "hydra/launcher=batched", "optimizer=sav", "optimizer.C=1,0",
                    "seed=0,1", f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch)
    status = [json.loads((sweep / str(i) / "summary.json").read_text())["status"] for i in range(4)]
    assert status == ["completed", "completed", "failed", "failed"]
    assert "C must be positive" in capsys.readouterr().err
    sweep = tmp_path / "lamb"
    hydra_inprocess("-m", *TINY, "trainer.epochs=1", "hydra/launcher=batched", "optimizer=lamb", "seed=0,1",
                    f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch)
    assert [json.loads((sweep / str(i) / "summary.json").read_text())["status"] for i in range(2)] == ["completed"] * 2
    assert "in one batch" not in (sweep / "0" / "train.log").read_text()
