"""W&B as the dashboard (README, W&B): offline runs read back in wandb's own record format
(``wandb leet inspect --json``): names, groups, config, tags, live summaries, outcomes,
durability across a SIGKILL, live replica runs, the report run, and one sync command."""
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from gradflow_exp.run.rundir import checkpoint_header
from gradflow_exp.run.sinks import offline_runs, read_offline
from helpers import hydra_inprocess

TINY = ["experiment=fig7", "dataset.M=300", "trainer.log_every=1", "trainer.progress=false", "threads=1",
        "logger=wandb", "logger.mode=offline"]


def _records(run_dir):
    """Every record of every offline segment of the run in ``run_dir`` (one W&B run id)."""
    runs = offline_runs(run_dir / "wandb")
    assert runs, f"no offline W&B run in {run_dir}"
    assert len({r.name.rsplit("-", 1)[1] for r in runs}) == 1       # one W&B run, however many segments
    return [rec for r in runs for rec in read_offline(r)]


def _of(records, kind):
    return [r[kind] for r in records if r.get("type") == kind]


def _history_epochs(records):
    return [h["item"]["epoch"] for h in _of(records, "history")]


def _summary(records):
    out = {}
    for s in _of(records, "summary"):
        out.update(s.get("update") or {})
    return out


def _run_info(records):
    out = {}
    for r in _of(records, "run"):
        out.update({k: v for k, v in r.items() if v})
    return out


@pytest.mark.slow
def test_a_run_is_named_grouped_and_tagged_and_its_outcome_is_visible(tmp_path, monkeypatch):
    """What a W&B user groups and filters by: the method (optimizer choice), the experiment,
    the overrides, the parameter count, the job type, the group; tags with the method, the
    experiment and the outcome; best values live (define_metric min / max); 1 − q."""
    run_dir = tmp_path / "run"
    hydra_inprocess(*TINY, "optimizer=spm_sav", "trainer.epochs=2", f"hydra.run.dir={run_dir}", monkeypatch=monkeypatch)
    recs = _records(run_dir)
    info = _run_info(recs)
    config = {}
    for r in _of(recs, "run"):
        config.update((r.get("config") or {}).get("update") or {})
    assert info["job_type"] == "train" and info["run_group"] == "fig7"
    assert config["method"] == "spm_sav" and config["experiment"] == "fig7" and config["n_params"] == 4200
    assert "optimizer=spm_sav" in config["overrides"]
    name = info["display_name"]
    assert "optimizer=spm_sav" in name and "threads" not in name and "progress" not in name and "logger" not in name
    assert {"spm_sav", "fig7", "completed"} <= set(info["tags"])
    metrics = {m.get("name"): m for m in _of(recs, "metric")}
    assert metrics["test_rel_error"]["summary"] == {"min": True}
    m = pd.read_csv(run_dir / "metrics.csv")
    assert _history_epochs(recs) == list(m.epoch)
    summary = _summary(recs)
    assert summary["test_rel_error"] == {"min": pytest.approx(m.test_rel_error.min())}
    assert summary["status"] == "completed" and summary["flags"] == "" and "rel_error" not in summary
    assert summary["one_minus_q"] == pytest.approx(1 - m.q.iloc[-1])
    assert [e["exit_code"] for e in _of(recs, "exit")] == [0]


def test_a_diverged_run_says_so(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    hydra_inprocess(*TINY, "optimizer=sgd", "optimizer.lr=500", "trainer.epochs=3", f"hydra.run.dir={run_dir}",
                    monkeypatch=monkeypatch)
    recs = _records(run_dir)
    assert "diverged" in _run_info(recs)["tags"]
    summary = _summary(recs)
    assert summary["status"] == "diverged" and summary["epochs_completed"] >= 1
    assert "min" in summary["train_rel_error"]            # its best value stays visible


@pytest.mark.slow
def test_every_row_reaches_wandb_across_a_sigkill(tmp_path, monkeypatch):
    """Killed mid-run and resumed by the same command: one W&B run id, its segments together
    hold every row of metrics.csv, each once."""
    run_dir = tmp_path / "run"
    args = [*TINY, "optimizer=sav", "trainer.epochs=400", "trainer.checkpoint_every=1", f"hydra.run.dir={run_dir}"]
    # its own W&B service: one inherited from this process (WANDB_SERVICE, set by the tests
    # above) would keep the killed run's id open in it
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = subprocess.Popen([sys.executable, "-m", "gradflow_exp.train", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**env, "WANDB_SILENT": "true"})
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoint.pt").exists() or checkpoint_header(run_dir / "checkpoint.pt")["epoch"] < 30:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    hydra_inprocess(*args, monkeypatch=monkeypatch)
    recs = _records(run_dir)
    epochs = _history_epochs(recs)
    m = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(epochs) == list(m.epoch) and len(epochs) == len(set(epochs)) == 401
    assert len(offline_runs(run_dir / "wandb")) == 2


def test_replicas_log_live_under_their_own_names(tmp_path, monkeypatch):
    batch = tmp_path / "batch"
    hydra_inprocess(*TINY, "optimizer=sav", "trainer.epochs=30", "replicas.seeds=[0,1]", f"hydra.run.dir={batch}",
                    monkeypatch=monkeypatch)
    for seed in (0, 1):
        recs = _records(batch / f"seed_{seed}")
        info = _run_info(recs)
        assert info["job_type"] == "replica" and f"seed={seed}" in info["display_name"]
        stamps = [h["item"]["_timestamp"] for h in _of(recs, "history")]
        assert len(stamps) == 31 and stamps[-1] > stamps[0]      # logged as it trained, not at the end


@pytest.mark.slow
def test_report_logs_a_report_run_and_sync_finds_every_run(tmp_path, monkeypatch):
    from gradflow_exp.report.cli import main as report_main
    from gradflow_exp.commands.sync import main as sync_main

    sweep = tmp_path / "sweep"
    hydra_inprocess("-m", *TINY, "trainer.epochs=1", "optimizer=sgd,sav", "seed=0,1", "hydra/launcher=batched",
                    f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch)
    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out), "--wandb"]) == 0
    recs = [rec for r in offline_runs(out / "wandb") for rec in read_offline(r)]
    info = _run_info(recs)
    assert info["job_type"] == "report" and info["run_group"] == "fig7"
    summary = _summary(recs)
    assert summary["table/summary._type"] == "table-file" and summary["table/significance._type"] == "table-file"
    assert summary["figure/fig7_curves._type"] == "image-file"
    listed = subprocess.run([sys.executable, "-m", "gradflow_exp.commands.sync", str(tmp_path), "--list"],
                            capture_output=True, text=True).stdout.split()
    assert len(listed) == 5 and all("offline-run-" in p for p in listed)      # 4 jobs + the report
    assert sync_main([str(tmp_path / "nothing_here")]) == 2
