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

from helpers import SMALL, compose_cfg
from test_sweeps import hydra_inprocess

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
        return torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"]
    except FileNotFoundError:
        return -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    from gradflow_exp.train import run

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert run(compose_cfg(SMALL + RUN), run_dir)["status"] == "completed"
    return run_dir


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


def test_sigterm_writes_checkpoint_and_interrupted_summary(tmp_path, reference):
    from gradflow_exp.train import run

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
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["status"] == "interrupted" and ckpt["epoch"] == summary["epochs_completed"]
    assert {"model", "optimizer", "data_rng", "torch_rng", "numpy_rng", "python_rng", "rows", "wall_time"} <= set(ckpt)
    # Started again (checkpoint_every only changes what is written, not the run): resumes.
    assert run(compose_cfg(SMALL + RUN), run_dir)["status"] == "completed"
    assert_same_run(run_dir, reference)


def resume_from_epoch_2_matches(cfg, tmp_path, monkeypatch, written_fingerprint=None):
    """Run ``cfg`` (checkpoint_every=2) to the end, rewind it to epoch 2's checkpoint as if
    killed there (its summary.json carrying ``written_fingerprint``, default the run's own),
    run it again, and check it ends exactly as the uninterrupted run. Returns the run directory."""
    import shutil

    import gradflow_exp.train as train_mod

    save = train_mod.save_checkpoint

    def save_and_keep_epoch_2(path, state):
        save(path, state)
        if state["epoch"] == 2:
            shutil.copy(path, tmp_path / "epoch2.pt")

    monkeypatch.setattr(train_mod, "save_checkpoint", save_and_keep_epoch_2)
    run_dir = tmp_path / "run"
    done = train_mod.run(cfg, run_dir)
    assert done["status"] == "completed"
    shutil.copytree(run_dir, tmp_path / "reference")
    shutil.copy(tmp_path / "epoch2.pt", run_dir / "checkpoint.pt")     # killed after epoch 2's checkpoint
    fp = written_fingerprint or done["fingerprint"]
    (run_dir / "summary.json").write_text(json.dumps({"status": "running", "fingerprint": fp}))
    assert train_mod.run(cfg, run_dir)["status"] == "completed"
    assert_same_run(run_dir, tmp_path / "reference")
    return run_dir


def test_energy_method_resumes_exactly(tmp_path, monkeypatch):
    """SPM-SAV: r, the SPM wrapper's own generator and the rows after the checkpoint (dropped
    from metrics.csv on resume) — rewound to epoch 2's checkpoint, it ends as before."""
    cfg = compose_cfg(SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=spm_sav", "trainer.epochs=6",
                               "trainer.log_every=1", "trainer.checkpoint_every=2", "threads=1"])
    resume_from_epoch_2_matches(cfg, tmp_path, monkeypatch)


def test_finished_run_is_skipped_and_another_config_refused(tmp_path):
    from gradflow_exp.train import ConfigError, run

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
    from gradflow_exp.cli import expand_resume

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- experiment=fig7\n- optimizer.lr=0.02\n")
    assert expand_resume([f"resume={tmp_path}/run", "trainer.progress=false"]) == \
        ["experiment=fig7", "optimizer.lr=0.02", "trainer.progress=false", f"hydra.run.dir={tmp_path}/run",
         "hydra.mode=RUN"]


def test_run_of_an_earlier_version_resumes(tmp_path, monkeypatch):
    """A run started before config keys such as ``replicas`` or ``scheduler`` existed (its
    fingerprint hashed the config without them, inert keys included) still resumes when
    those keys are at their "off" value; set to something else they make another run."""
    from omegaconf import OmegaConf

    import gradflow_exp.train as train_mod

    overrides = SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=sav", "trainer.epochs=6",
                         "trainer.log_every=1", "trainer.checkpoint_every=2", "threads=1"]
    cfg = compose_cfg(overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    older = train_mod._hash(train_mod._without(resolved, train_mod.NOT_IDENTITY + ("replicas", "scheduler")))
    assert older != train_mod.fingerprint(resolved)
    resume_from_epoch_2_matches(cfg, tmp_path, monkeypatch, written_fingerprint=older)
    cosine = OmegaConf.to_container(compose_cfg(overrides + ["scheduler=cosine"]), resolve=True)
    assert not train_mod.same_run(older, cosine)
    assert train_mod.fingerprint(cosine) != train_mod.fingerprint(resolved)


def test_a_reporting_threshold_does_not_make_another_run(tmp_path, caplog):
    """trainer.collapse_q only decides a summary flag. A run fingerprinted while it was part
    of a run's identity (and its default 0.1) extends under today's default, at the value
    its saved config records; without that record, or with a changed real key, it is
    another run as before."""
    from omegaconf import OmegaConf

    import gradflow_exp.train as train_mod

    base = SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=sav", "trainer.log_every=1", "threads=1"]
    old_cfg = compose_cfg(base + ["trainer.epochs=3", "trainer.collapse_q=0.1"])
    run_dir = tmp_path / "run"
    assert train_mod.run(old_cfg, run_dir)["status"] == "completed"
    old = OmegaConf.to_container(old_cfg, resolve=True)      # as earlier versions hashed it
    skip = tuple(k for k in train_mod.NOT_IDENTITY if k != "trainer.collapse_q")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["fingerprint"] = train_mod._hash(train_mod._without(old, skip))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(old_cfg, run_dir / ".hydra" / "config.yaml")
    saved = tmp_path / "saved"
    import shutil
    shutil.copytree(run_dir, saved)

    assert compose_cfg(base).trainer.collapse_q == 0.01
    with pytest.raises(train_mod.ConfigError, match="another configuration"):
        train_mod.run(compose_cfg(base + ["trainer.epochs=6", "seed=1"]), run_dir)
    with caplog.at_level("INFO", logger="gradflow_exp"):
        longer = train_mod.run(compose_cfg(base + ["trainer.epochs=6"]), run_dir)
    assert "completed after 3 of 3 epochs; training it on to 6" in caplog.text
    assert longer["status"] == "completed" and longer["epochs_completed"] == 6
    # with no saved config to read the old value from, the old fingerprint cannot match
    shutil.rmtree(saved / ".hydra")
    with pytest.raises(train_mod.ConfigError, match="another configuration"):
        train_mod.run(compose_cfg(base + ["trainer.epochs=6"]), saved)


def test_finished_run_extends_to_more_epochs(tmp_path, caplog):
    """The same command with a larger trainer.epochs trains a finished run on from its
    checkpoint, ending exactly as a run that long from the start; a shorter length, or one
    an lr schedule depends on, is another run and refused."""
    from gradflow_exp.train import ConfigError, run

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
    assert "completed after 3 of 3 epochs; training it on to 6" in caplog.text
    assert "resuming after epoch 3" in caplog.text and longer["epochs_planned"] == 6
    assert run(compose_cfg(base + ["trainer.epochs=6"]), reference)["status"] == "completed"
    assert_same_run(run_dir, reference)
    # now a 6-epoch run: the same command skips it, the 3-epoch one is another run
    assert run(compose_cfg(base + ["trainer.epochs=6"]), run_dir)["fingerprint"] == longer["fingerprint"]
    with pytest.raises(ConfigError, match="already trained 6 epochs"):
        run(compose_cfg(base + ["trainer.epochs=3"]), run_dir)
    # a schedule stretched over the run's length would change: another run
    warm = ["scheduler=warmup", "scheduler.warmup_epochs=1"]
    run(compose_cfg(base + ["trainer.epochs=3", *warm]), tmp_path / "warmup")
    with pytest.raises(ConfigError, match="warm-up cosine schedule is stretched over trainer.epochs"):
        run(compose_cfg(base + ["trainer.epochs=6", *warm]), tmp_path / "warmup")


def test_a_refused_command_keeps_the_runs_record(tmp_path, monkeypatch, capsys):
    """Hydra writes a job's .hydra/ before the job can refuse it: a resume with another
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
                         (["seed=3", "trainer.epochs=4"], "(seed: 0 → 3)")):
        with pytest.raises(SystemExit) as exit_:
            hydra_inprocess(f"resume={run_dir}", *refused, monkeypatch=monkeypatch)
        assert exit_.value.code == 2 and why in capsys.readouterr().err
        assert {f.name: f.read_bytes() for f in (run_dir / ".hydra").iterdir()} == record
        assert not (run_dir / ".hydra_pending").exists()
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
    assert (run_dir / ".hydra" / "config.yaml").is_file() and not (run_dir / ".hydra_pending").exists()


def test_a_diverged_run_asked_for_more_epochs_is_skipped(tmp_path, caplog):
    """A longer run of a diverged one is that run up to the same NaN: extending a sweep
    (gradflow-reproduce FIG --epochs N into the same directory) skips it, files untouched."""
    from gradflow_exp.train import run

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
