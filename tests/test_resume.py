"""Checkpoint and resume: a killed run, started again, ends exactly as an uninterrupted run
(CPU, float64: metrics.csv identical except wall_time, the same summary)."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from gradflow_exp.run.rundir import checkpoint_header, read_checkpoint
from helpers import SMALL, compose_cfg, hydra_inprocess

RUN = ["experiment=fig7", "dataset.M=300", "trainer.epochs=200", "threads=1"]


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]


def assert_same_run(run_dir, reference):
    assert rows(run_dir) == rows(reference)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    for s in (a, b):
        s["final"].pop("wall_time")
    assert a["status"] == b["status"] == "completed"
    for key in ("final", "best", "steps", "epochs_completed", "flags"):
        assert a[key] == b[key], key


def checkpoint_epoch(run_dir) -> int:
    try:        # written atomically (rename): a read sees the old or the new file
        return checkpoint_header(run_dir / "checkpoint.pt")["epoch"]
    except FileNotFoundError:
        return -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    from gradflow_exp.run.job import run

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert run(compose_cfg(SMALL + RUN), run_dir)["status"] == "completed"
    return run_dir


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_exactly(tmp_path, reference, monkeypatch):
    args = [*SMALL, *RUN, "trainer.checkpoint_every=1", f"hydra.run.dir={tmp_path}/run"]
    run_dir = tmp_path / "run"
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gradflow_exp.train", *args], cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_SILENT": "true"})
        deadline = time.monotonic() + 240
        while checkpoint_epoch(run_dir) < 12:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()
        proc.wait()
    killed_at = checkpoint_epoch(run_dir)
    assert 12 <= killed_at < 200
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"   # not passed off as done
    hydra_inprocess(*args, monkeypatch=monkeypatch)          # the same command again
    assert f"resuming after epoch {killed_at}" in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, reference)
    assert not list(run_dir.glob(".checkpoint.pt.*"))      # no temp file left by the kill
    assert not list(run_dir.glob(".summary.json.*"))


def test_sigterm_writes_checkpoint_and_interrupted_summary(tmp_path, reference):
    from gradflow_exp.run.job import run

    cfg = compose_cfg(SMALL + RUN + ["trainer.checkpoint_every=1"])
    run_dir = tmp_path / "run"

    done = threading.Event()

    def send_sigterm():
        while not done.is_set() and checkpoint_epoch(run_dir) < 5:
            time.sleep(0.01)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    # run() handles SIGTERM while it trains; this handler only guards pytest around it.
    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    sender = threading.Thread(target=send_sigterm)
    try:
        sender.start()
        summary = run(cfg, run_dir)
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGTERM, previous)
    assert summary["status"] == "interrupted" and 5 <= summary["epochs_completed"] < 200
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    _, ckpt = read_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["status"] == "interrupted" and ckpt["epoch"] == summary["epochs_completed"]
    assert {"model", "optimizer", "data_rng", "torch_rng", "numpy_rng", "python_rng", "rows", "wall_time"} <= set(ckpt)
    # Started again (checkpoint_every only changes what is written, not the run): resumes.
    assert run(compose_cfg(SMALL + RUN), run_dir)["status"] == "completed"
    assert_same_run(run_dir, reference)


def test_a_system_exit_mid_epoch_is_interrupted_and_resumes(tmp_path, reference, monkeypatch, caplog):
    """submitit at a Slurm time limit or preemption calls ``sys.exit`` from its signal
    handler, mid-epoch: the run is 'interrupted' (not 'failed'), and the same run started
    again resumes from its last checkpoint to the uninterrupted run's end."""
    import gradflow_exp.training.loop as loop
    from gradflow_exp.run.job import run

    real, calls = loop.OneModel.step, []

    def step(self, b, bs):
        calls.append(b)
        if len(calls) == 5 * 4 + 2:          # dataset.M=300: 4 steps an epoch; in epoch 6
            raise SystemExit(-1)
        return real(self, b, bs)
    monkeypatch.setattr(loop.OneModel, "step", step)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):
        run(compose_cfg(SMALL + RUN + ["trainer.checkpoint_every=1"]), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 5, summary
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="gradflow_exp"):
        assert run(compose_cfg(SMALL + RUN), run_dir)["status"] == "completed"
    assert "unfinished (interrupted): resuming after epoch 5" in caplog.text
    assert_same_run(run_dir, reference)


def resume_from_epoch_2_matches(cfg, tmp_path, monkeypatch, age=None):
    """Run ``cfg`` (checkpoint_every=2) to the end, rewind it to epoch 2's checkpoint as if
    killed there (``age(run_dir)`` may then make its files those of an earlier version),
    run it again, and check it ends exactly as the uninterrupted run. Returns the run directory."""
    import shutil

    import gradflow_exp.run.batch as batch
    import gradflow_exp.run.job as job

    save = batch.save_checkpoint

    def save_and_keep_epoch_2(path, state, config, **kw):
        save(path, state, config, **kw)
        if state["epoch"] == 2:
            shutil.copy(path, tmp_path / "epoch2.pt")

    monkeypatch.setattr(batch, "save_checkpoint", save_and_keep_epoch_2)
    run_dir = tmp_path / "run"
    done = job.run(cfg, run_dir)
    assert done["status"] == "completed"
    shutil.copytree(run_dir, tmp_path / "reference")
    shutil.copy(tmp_path / "epoch2.pt", run_dir / "checkpoint.pt")     # killed after epoch 2's checkpoint
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    if age is not None:
        age(run_dir)
    assert job.run(cfg, run_dir)["status"] == "completed"
    assert_same_run(run_dir, tmp_path / "reference")
    return run_dir


def test_energy_method_resumes_exactly(tmp_path, monkeypatch):
    """SPM-SAV: r, the SPM wrapper's own generator and the rows after the checkpoint (dropped
    from metrics.csv on resume) — rewound to epoch 2's checkpoint, it ends as before."""
    cfg = compose_cfg(SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=spm_sav", "trainer.epochs=6",
                               "trainer.log_every=1", "trainer.checkpoint_every=2", "threads=1"])
    resume_from_epoch_2_matches(cfg, tmp_path, monkeypatch)


def test_finished_run_is_skipped_and_another_config_refused(tmp_path):
    from gradflow_exp.run.job import ConfigError, run

    cfg = compose_cfg(SMALL + ["experiment=fig7", "dataset.M=300", "trainer.epochs=1"])
    run_dir = tmp_path / "run"
    first = run(cfg, run_dir)
    stamp = (run_dir / "metrics.csv").stat().st_mtime_ns
    assert run(cfg, run_dir) == json.loads((run_dir / "summary.json").read_text()) and first["status"] == "completed"
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp
    other = compose_cfg(SMALL + ["experiment=fig7", "dataset.M=300", "trainer.epochs=1", "seed=1"])
    with pytest.raises(ConfigError, match="already holds a run of another configuration"):
        run(other, run_dir)
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp


def test_resume_argument_is_the_run_command(tmp_path):
    from gradflow_exp.commands.cli import expand_resume

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- experiment=fig7\n- optimizer.lr=0.02\n")
    assert expand_resume([f"resume={tmp_path}/run", "trainer.progress=false"]) == \
        ["experiment=fig7", "optimizer.lr=0.02", "trainer.progress=false", f"hydra.run.dir={tmp_path}/run",
         "hydra.mode=RUN"]


def test_run_of_an_earlier_version_resumes(tmp_path, monkeypatch):
    """A run started before config keys such as ``replicas``, ``scheduler`` or RelSAV's
    ``rhat_batch`` existed (its record and its checkpoint, a bare torch.save without a
    checksum, lack them) resumes: a missing key is compared at its default (the schema's,
    or the optimizer constructor's). Set to something else, they make another run."""
    import yaml

    from gradflow_exp.run.job import ConfigError, run

    overrides = SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=relsav", "trainer.epochs=6",
                         "trainer.log_every=1", "trainer.checkpoint_every=2", "threads=1"]
    newer = ("replicas", "scheduler", "diagnostics")

    def age(run_dir):
        record = run_dir / ".hydra" / "config.yaml"
        config = yaml.safe_load(record.read_text())
        for key in newer:
            config.pop(key, None)
        config["optimizer"].pop("rhat_batch", None)
        record.write_text(yaml.safe_dump(config))
        _, state = read_checkpoint(run_dir / "checkpoint.pt")
        torch.save({**state, "config": config}, run_dir / "checkpoint.pt")     # the old format

    run_dir = resume_from_epoch_2_matches(compose_cfg(overrides), tmp_path, monkeypatch, age)
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    for other, what in ((["scheduler=cosine"], "scheduler.name: none → cosine"),
                        (["optimizer.rhat_batch=next"], "optimizer.rhat_batch: same → next")):
        age(run_dir)
        with pytest.raises(ConfigError, match=f"another configuration \\(.*{what}"):
            run(compose_cfg(overrides + other), run_dir)


def test_reporting_and_logging_keys_may_differ(tmp_path):
    """Keys that change what a run writes or reports, not what it computes (rundir.MAY_DIFFER),
    may differ between the command that started a run and the one that trains it on."""
    from gradflow_exp.run.job import run

    base = SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=sav", "trainer.log_every=1", "threads=1"]
    run_dir = tmp_path / "run"
    assert run(compose_cfg(base + ["trainer.epochs=3", "trainer.collapse_q=0.1"]), run_dir)["status"] == "completed"
    longer = run(compose_cfg(base + ["trainer.epochs=5", "trainer.checkpoint_every=2", "threads=2",
                                     "hparams_objective=best"]), run_dir)
    assert longer["status"] == "completed" and longer["epochs_completed"] == 5


def test_finished_run_extends_to_more_epochs(tmp_path, caplog):
    """The same command with a larger trainer.epochs trains a finished run on from its
    checkpoint, ending exactly as a run that long from the start; a shorter length, or one
    an lr schedule depends on, is another run and refused."""
    from gradflow_exp.run.job import ConfigError, run

    base = SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=spm_sav", "trainer.log_every=1", "threads=1"]
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    assert run(compose_cfg(base + ["trainer.epochs=3"]), run_dir)["status"] == "completed"
    stamp = (run_dir / "metrics.csv").stat().st_mtime_ns
    for refused, why in ((["trainer.epochs=2"], "holds this run with trainer.epochs=3; it has already trained 3"),
                         (["trainer.epochs=6", "scheduler=cosine"], "another configuration"),
                         (["trainer.epochs=6", "seed=1"], "another configuration")):
        with pytest.raises(ConfigError, match=why):
            run(compose_cfg(base + refused), run_dir)
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp
    with caplog.at_level("INFO", logger="gradflow_exp"):
        longer = run(compose_cfg(base + ["trainer.epochs=6"]), run_dir)
    assert "completed after 3 of 3 epochs: resuming after epoch 3, training it on to 6" in caplog.text
    assert "resuming after epoch 3" in caplog.text and longer["epochs_planned"] == 6
    assert run(compose_cfg(base + ["trainer.epochs=6"]), reference)["status"] == "completed"
    assert_same_run(run_dir, reference)
    # now a 6-epoch run: the same command skips it, the 3-epoch one is another run
    again = run(compose_cfg(base + ["trainer.epochs=6"]), run_dir)
    assert (again["status"], again["epochs_completed"], again["final"]) == ("completed", 6, longer["final"])
    with pytest.raises(ConfigError, match="already trained 6 epochs"):
        run(compose_cfg(base + ["trainer.epochs=3"]), run_dir)
    # a schedule stretched over the run's length would change: another run
    warm = ["scheduler=warmup", "scheduler.warmup_epochs=1"]
    run(compose_cfg(base + ["trainer.epochs=3", *warm]), tmp_path / "warmup")
    with pytest.raises(ConfigError, match="warm-up cosine schedule is stretched over trainer.epochs"):
        run(compose_cfg(base + ["trainer.epochs=6", *warm]), tmp_path / "warmup")


def test_a_refused_command_keeps_the_runs_record(tmp_path, monkeypatch, capsys):
    """A job writes its .hydra/ record only once it is accepted: a resume with another
    setting must not overwrite the run's record (resume=RUN would rebuild the refused
    command from it). The refusal names what differs; an accepted extension records the
    new length once, not beside the old one."""
    import yaml

    run_dir = tmp_path / "run"
    base = [*SMALL, "experiment=fig7", "dataset.M=300", "optimizer=sgd", "trainer.epochs=2", "threads=1",
            f"hydra.run.dir={run_dir}"]
    hydra_inprocess(*base, monkeypatch=monkeypatch)
    record = {f.name: f.read_bytes() for f in (run_dir / ".hydra").iterdir()}
    for refused, why in ((["optimizer.lr=0.5"], "another configuration (optimizer.lr: 0.01 → 0.5)"),
                         (["seed=3", "trainer.epochs=4"], "seed: 0 → 3)")):
        with pytest.raises(SystemExit) as exit_:
            hydra_inprocess(f"resume={run_dir}", *refused, monkeypatch=monkeypatch)
        assert exit_.value.code == 2 and why in capsys.readouterr().err
        assert {f.name: f.read_bytes() for f in (run_dir / ".hydra").iterdir()} == record
    hydra_inprocess(f"resume={run_dir}", "trainer.epochs=3", monkeypatch=monkeypatch)
    assert json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == 3
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert [o for o in overrides if o.startswith("trainer.epochs=")] == ["trainer.epochs=3"]
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["trainer"]["epochs"] == 3


def test_a_fresh_run_that_fails_on_bad_input_records_its_config(tmp_path, monkeypatch):
    """Input only the job can check (a batch larger than the data): the fresh directory
    says failed, and keeps the command's config to say what failed."""
    run_dir = tmp_path / "bad"
    with pytest.raises(SystemExit):
        hydra_inprocess(*SMALL, "experiment=fig7", "dataset.M=300", "trainer.batch_size=5000",
                        f"hydra.run.dir={run_dir}", monkeypatch=monkeypatch)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_a_diverged_run_asked_for_more_epochs_is_skipped(tmp_path, caplog):
    """A longer run of a diverged one is that run up to the same NaN: extending a sweep
    (gradflow-reproduce FIG --epochs N into the same directory) skips it, files untouched."""
    from gradflow_exp.run.job import run

    base = SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=sgd", "optimizer.lr=500", "threads=1"]
    run_dir = tmp_path / "run"
    first = run(compose_cfg(base + ["trainer.epochs=2"]), run_dir)
    assert first["status"] == "diverged"
    stamp = (run_dir / "metrics.csv").stat().st_mtime_ns
    written = json.loads((run_dir / "summary.json").read_text())
    with caplog.at_level("INFO", logger="gradflow_exp"):
        again = run(compose_cfg(base + ["trainer.epochs=5"]), run_dir)
    assert again == written and "a longer run diverges there too: skipping it" in caplog.text
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp
