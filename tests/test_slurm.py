"""Sweeps through a real Slurm scheduler (hydra/launcher=slurm, submitit): submit, fail one
point, requeue, time limit, Optuna. Run where ``sinfo`` answers: `.ci/run` starts a
one-node cluster first (scripts/slurm-local.sh); skipped elsewhere."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLURM = shutil.which("sbatch") is not None and subprocess.run(
    ["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0 if shutil.which("sinfo") else False
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SLURM, reason="no Slurm cluster answers (bash scripts/slurm-local.sh starts one)")]

LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=local", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10", "logger=none", "trainer.progress=false",
            "threads=1"]
TINY = ["experiment=fig7", "dataset.M=300", "trainer.epochs=3", "trainer.log_every=1"]


def _start(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen([sys.executable, "-m", "gradflow_exp.train", "-m", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]


def _status(job_dir):
    return json.loads((job_dir / "summary.json").read_text())["status"]


def _job_ids(sweep):
    return sorted({p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit()})


def _release(job_id):
    """A requeued job waits (reason BeginTime); start it now."""
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)


def test_a_sweep_through_slurm_is_the_basic_launchers(tmp_path):
    """Four jobs as Slurm jobs: the run directories the basic launcher writes, byte for byte
    (but wall_time), a failed point among them, and gradflow-report reads the sweep."""
    from gradflow_exp.report.cli import main as report_main

    args = [*TINY, "optimizer=sgd,sav", "seed=0,1"]
    code, out = _wait(_start(*LAUNCHER, *args, f"hydra.sweep.dir={tmp_path}/slurm", cwd=tmp_path))
    assert code == 0, out
    code, out = _wait(_start(*args, "logger=none", "trainer.progress=false", "threads=1",
                             f"hydra.sweep.dir={tmp_path}/basic", cwd=tmp_path))
    assert code == 0, out
    assert len(_job_ids(tmp_path / "slurm")) == 1          # one array job of 4
    for job in range(4):
        a, b = tmp_path / "slurm" / str(job), tmp_path / "basic" / str(job)
        assert _status(a) == "completed" and _rows(a) == _rows(b)
        assert (a / ".hydra" / "config.yaml").read_text() == (b / ".hydra" / "config.yaml").read_text()
    assert report_main([str(tmp_path / "slurm"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "summary.csv").is_file()

    code, out = _wait(_start(*LAUNCHER, *TINY, "optimizer=sav", "optimizer.C=1,0", f"hydra.sweep.dir={tmp_path}/bad",
                             cwd=tmp_path))
    assert code == 0, out
    assert [_status(tmp_path / "bad" / str(j)) for j in range(2)] == ["completed", "failed"]
    assert "C must be positive" in json.loads((tmp_path / "bad" / "1" / "summary.json").read_text())["error"]


def _submitit_logs(sweep: Path) -> str:
    return "".join(f.read_text(errors="replace") for f in (sweep / ".submitit").rglob("*_log.*"))


def test_a_requeued_job_then_at_its_time_limit_resumes_exactly(tmp_path):
    """One job under a one-minute time limit: requeued by ``scontrol requeue`` (a preemption)
    after its first checkpoint, then stopped by its time limit (submitit's USR2, requeued by
    the launcher). Each time it comes back and resumes from its checkpoint; once both have
    happened the test lifts the limit, and the job ends with the metrics.csv of an
    uninterrupted run. Lifting the limit keeps the test bounded on a slow machine, where a
    one-minute segment may hardly get past start-up."""
    run = ["experiment=fig7", "dataset.M=3000", "trainer.epochs=8000", "trainer.checkpoint_every=1",
           "optimizer=sav", "seed=0"]          # about 45 s of training on a free core: past one time limit
    job = _start(*LAUNCHER, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30",
                 "hydra.launcher.max_num_timeout=20", *run, f"hydra.sweep.dir={tmp_path}/job", cwd=tmp_path)
    reference = _start(*run, "logger=none", "trainer.progress=false", "threads=1",
                       f"hydra.sweep.dir={tmp_path}/reference", cwd=tmp_path)
    run_dir, sweep = tmp_path / "job" / "0", tmp_path / "job"

    def resumes() -> int:
        log = run_dir / "train.log"
        return log.read_text().count("resuming after epoch") if log.is_file() else 0

    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline, _submitit_logs(sweep)
        time.sleep(0.2)
    (job_id,) = _job_ids(sweep)
    assert subprocess.run(["scontrol", "requeue", job_id], capture_output=True).returncode == 0
    # one resume is the requeue's; a second needs a time limit that stopped it after a checkpoint
    deadline = time.monotonic() + 600
    while resumes() < 2 or "timed-out" not in _submitit_logs(sweep):
        assert job.poll() is None, (job.communicate()[0], _submitit_logs(sweep))
        assert time.monotonic() < deadline, _submitit_logs(sweep)
        _release(job_id)
        time.sleep(1)
    assert subprocess.run(["scontrol", "update", f"jobid={job_id}", "TimeLimit=30"], capture_output=True).returncode == 0
    deadline = time.monotonic() + 600
    while job.poll() is None:
        _release(job_id)
        assert time.monotonic() < deadline, _submitit_logs(sweep)
        time.sleep(1)
    assert job.returncode == 0, job.communicate()[0]
    code, out = _wait(reference)
    assert code == 0, out
    assert _status(run_dir) == "completed"
    assert _rows(run_dir) == _rows(tmp_path / "reference" / "0")
    log = (run_dir / "train.log").read_text()
    assert "unfinished (failed)" not in log and log.count("unfinished (interrupted): resuming after epoch") >= 2, log
    print("resumed:", [line for line in (run_dir / "train.log").read_text().splitlines() if "resuming after epoch" in line])


def test_optuna_over_slurm(tmp_path):
    code, out = _wait(_start("hparams_search=fig7", *LAUNCHER, "dataset.M=300", "trainer.epochs=1",
                             "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}/search", cwd=tmp_path))
    assert code == 0, out
    import yaml

    result = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"optimizer.lr", "optimizer.C", "optimizer.lam"}
    assert [_status(tmp_path / "search" / str(j)) for j in range(3)] == ["completed"] * 3
    assert Path(tmp_path / "search" / ".submitit").is_dir()


def test_the_batched_launcher_submits_one_slurm_job_per_batch(tmp_path):
    """hydra/launcher=batched with slurm=...: the sgd and sav seeds train as one Slurm job
    each, LAMB's jobs (which do not stack) as a Slurm job each; every run directory holds
    what the basic launcher writes there."""
    args = [*TINY, "optimizer=sgd,sav,lamb", "seed=0,1"]
    code, out = _wait(_start("hydra/launcher=batched",
                             "hydra.launcher.slurm={partition: local, cpus_per_task: 1, mem_gb: 1, timeout_min: 5}",
                             "logger=none", "trainer.progress=false", "threads=1", *args,
                             f"hydra.sweep.dir={tmp_path}/batched", cwd=tmp_path))
    assert code == 0, out
    assert len(_job_ids(tmp_path / "batched")) == 4            # 2 batches + 2 LAMB jobs
    code, out = _wait(_start(*args, "logger=none", "trainer.progress=false", "threads=1",
                             f"hydra.sweep.dir={tmp_path}/basic", cwd=tmp_path))
    assert code == 0, out
    for job in range(6):
        a, b = tmp_path / "batched" / str(job), tmp_path / "basic" / str(job)
        assert _status(a) == "completed"
        for ra, rb in zip(_rows(a), _rows(b), strict=True):
            assert ra.keys() == rb.keys()
            for k in rb:
                assert float(ra[k] or "nan") == pytest.approx(float(rb[k] or "nan"), rel=1e-9, abs=0, nan_ok=True), (job, k)


def test_a_job_that_can_never_start_fails_the_sweep_within_a_minute(tmp_path):
    """More CPUs than the partition's node has: the job would pend for PartitionConfig for
    ever; the sweep names the reason and the request, cancels its jobs and exits 1 within a
    minute, and says once, not at every poll, that sacct cannot answer."""
    launcher = [a for a in LAUNCHER if not a.startswith("hydra.launcher.cpus_per_task")]
    start = time.monotonic()
    code, out = _wait(_start(*launcher, "hydra.launcher.cpus_per_task=64", *TINY, "seed=0,1",
                             f"hydra.sweep.dir={tmp_path}/never", cwd=tmp_path), timeout=180)
    assert code == 1, out
    assert time.monotonic() - start < 60
    (line,) = [x for x in out.splitlines() if x.startswith("error:")]
    assert "can never start" in line and "PartitionConfig" in line and "cpus_per_task=64" in line
    ids = _job_ids(tmp_path / "never")
    queued = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True).stdout
    assert queued.strip() == ""                                  # cancelled
    assert "Bypassing sacct" not in out and out.count("sacct cannot answer") <= 1
