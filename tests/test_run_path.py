"""The one run path (gradflow_exp/run/batch.py) where runs meet the outside: a replica batch
killed while it writes its checkpoints, Ctrl-C, checkpoints by the clock, and the bad input
around a run or a sweep that must be refused in one line before anything trains."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from helpers import SMALL, cli, compose_cfg

BATCH = ["experiment=fig7", "dataset.M=300", "model.width=10", "trainer.epochs=6", "trainer.log_every=1",
         "trainer.checkpoint_every=2", "optimizer=sav", "replicas.seeds=[0,1,2]", "threads=1"]


def _run(overrides, run_dir):
    from gradflow_exp.run.job import run

    return run(compose_cfg(SMALL + list(overrides)), run_dir)


def _same_csv(a, b):
    x, y = pd.read_csv(a).drop(columns="wall_time"), pd.read_csv(b).drop(columns="wall_time")
    pd.testing.assert_frame_equal(x, y, check_exact=True)


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from helpers import SMALL, compose_cfg
    import gradflow_exp.run.batch as batch
    from gradflow_exp.run.job import run

    real = batch.save_checkpoint
    def save(path, state, config, **kw):
        real(path, state, config, **kw)
        if state["epoch"] == 4 and path.parent.name == "seed_0":   # the first of three writes of epoch 4
            os.kill(os.getpid(), signal.SIGKILL)
    batch.save_checkpoint = save
    run(compose_cfg(SMALL + {overrides!r}), {run_dir!r})
""")


@pytest.mark.slow
def test_a_batch_killed_while_writing_its_checkpoints_resumes_as_one(tmp_path):
    """SIGKILL after the first replica's epoch-4 checkpoint, before the others': the batch
    resumes every replica from epoch 2 (the ahead one from its previous checkpoint) and each
    ends with the metrics.csv of an uninterrupted batch, bit for bit."""
    from pathlib import Path

    tests = str(Path(__file__).parent)
    script = KILLER.format(tests=tests, overrides=BATCH, run_dir=str(tmp_path / "killed"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    epochs = {s: json.loads((tmp_path / "killed" / f"seed_{s}" / "summary.json").read_text())["status"]
              for s in (0, 1, 2)}
    assert set(epochs.values()) == {"running"}
    summary = _run(BATCH, tmp_path / "killed")
    assert summary["status"] == "completed"
    _run(BATCH, tmp_path / "straight")
    for s in (0, 1, 2):
        _same_csv(tmp_path / "killed" / f"seed_{s}" / "metrics.csv", tmp_path / "straight" / f"seed_{s}" / "metrics.csv")


@pytest.mark.slow
def test_ctrl_c_ends_after_the_epoch_with_a_checkpoint_and_the_same_command_resumes(tmp_path):
    args = ["experiment=fig7", "dataset.M=2000", "trainer.epochs=100000", "trainer.log_every=1", "logger=none",
            "trainer.progress=false", "threads=1", f"hydra.run.dir={tmp_path}/run"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gradflow_exp.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "metrics.csv").exists():
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    assert "interrupted (Ctrl-C) after epoch" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (tmp_path / "run" / "checkpoint.pt").is_file()
    from gradflow_exp.run.rundir import read_checkpoint

    header, _ = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert header["epoch"] == summary["epochs_completed"] > 0
    done = cli(*args[:2], "trainer.epochs=" + str(summary["epochs_completed"] + 2), *args[3:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming after epoch" in done.stderr + done.stdout


def test_checkpoints_by_the_clock(tmp_path, monkeypatch):
    """trainer.checkpoint_minutes: a checkpoint as soon as that much training time has passed
    since the last (here every epoch: the clock is made to run fast), none with null."""
    import gradflow_exp.training.loop as loop

    saved = []
    real = loop.time.perf_counter
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: real() + 600.0 * next(ticks))   # 10 min a call
    import gradflow_exp.run.batch as batch

    orig = batch.save_checkpoint

    def save(path, state, config, **kw):
        saved.append(state["epoch"])
        orig(path, state, config, **kw)

    monkeypatch.setattr(batch, "save_checkpoint", save)
    base = ["experiment=fig7", "dataset.M=200", "model.width=10", "trainer.epochs=4", "optimizer=sgd"]
    _run(base + ["trainer.checkpoint_minutes=5"], tmp_path / "clock")
    assert saved[:-1] == [1, 2, 3] and saved[-1] == 4           # each epoch, then the final one
    saved.clear()
    _run(base + ["trainer.checkpoint_minutes=null"], tmp_path / "none")
    assert saved == [4]


@pytest.mark.parametrize("arg", ["hydra.run.dir=", "hydra.run.dir=''", "+hydra.sweep.dir= "])
def test_an_empty_run_directory_is_refused(arg, tmp_path):
    out = cli("experiment=fig7", arg, cwd=tmp_path)
    assert out.returncode == 2 and "is empty" in out.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("setting, message", [
    ("max_replicas=-1", "max_replicas=-1: must be a positive integer"),
    ("max_replicas=abc", "max_replicas='abc': must be a positive integer"),
    ("max_replicas=1.5", "max_replicas=1.5: must be a positive integer"),
    ("n_jobs=abc", "n_jobs='abc': must be a positive integer or -1"),
    ("n_jobs=0", "n_jobs=0: must be a positive integer or -1"),
])
def test_the_batched_launchers_settings_are_checked_in_one_line(setting, message, tmp_path):
    out = cli("-m", "hydra/launcher=batched", f"hydra.launcher.{setting}", "experiment=fig7", "trainer.epochs=1",
              "seed=0,1", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"error: hydra.launcher.{message}"]


@pytest.mark.parametrize("value, key", [
    ("model.width=1000000000000000000000000000000", "model.width"),
    ("seed=18446744073709551616", "seed"),
    ("seed=4294967296", "seed"),
    ("trainer.epochs=100000000000000000000", "trainer.epochs"),
    ("dataset.M=99999999999", "dataset.M"),
])
def test_values_the_schema_cannot_train_are_refused_naming_their_key(value, key, tmp_path):
    out = cli("experiment=fig7", value, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and key in line and "Traceback" not in out.stderr


def test_a_sweep_whose_every_job_is_refused_exits_nonzero(tmp_path):
    out = cli("-m", "experiment=fig7", "trainer.epochs=1", "optimizer=sgd", "optimizer.lr=-1,-2",
              f"hydra.sweep.dir={tmp_path}/sweep", "logger=none", cwd=tmp_path)
    assert out.returncode == 1
    assert "every job of the sweep failed or was refused (2 of 2)" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["multirun", "optuna search"])
def test_a_second_sweep_on_a_sweep_directory_in_use_is_refused_at_once(tmp_path, kind):
    """Also an Optuna search (hparams_search sets MULTIRUN in its file, no -m typed): a second
    one would otherwise take the first's running trial for a killed one's."""
    what = ["-m", "experiment=fig7", "optimizer=sgd", "seed=0,1"] if kind == "multirun" else ["hparams_search=fig7"]
    sweep = [*what, "dataset.M=2000", "trainer.epochs=300",
             f"hydra.sweep.dir={tmp_path}/sweep", "logger=none", "trainer.progress=false", "threads=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "gradflow_exp.train", *sweep], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "sweep" / "0" / "metrics.csv").exists():
            time.sleep(0.2)
        start = time.time()
        second = cli(*sweep, cwd=tmp_path)
        assert second.returncode == 2 and time.time() - start < 30
        assert second.stderr.strip().splitlines() == [
            next(line for line in second.stderr.splitlines() if "is in use by process" in line)]
        assert "hydra.sweep.dir" in second.stderr
    finally:
        first.kill()
        first.wait()
