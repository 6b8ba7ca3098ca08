"""One process per run directory, checkpoints that prove whose they are, and failures that
end the same way (gradflow_exp/run/rundir.py)."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import SMALL, compose_cfg, hydra_inprocess

RUN = SMALL + ["experiment=fig7", "dataset.M=300", "optimizer=sav", "trainer.log_every=1", "threads=1"]


def _run(run_dir, *extra):
    from gradflow_exp.run.job import run

    return run(compose_cfg(RUN + list(extra)), run_dir)


def _files(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}


def test_a_second_process_on_a_run_directory_is_refused_naming_it(tmp_path):
    """While another process holds the run directory (a run training there), this one is
    refused in one line naming its PID, and writes nothing; once it is gone (even killed:
    the kernel drops the lock) the directory is free."""
    from gradflow_exp.run.job import ConfigError

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from gradflow_exp.run.rundir import Lock\n"
                               "with Lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"is in use by process {holder.pid} .*wait for it to end"):
            _run(run_dir, "trainer.epochs=1")
        assert not (run_dir / "summary.json").exists() and not (run_dir / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _run(run_dir, "trainer.epochs=1")["status"] == "completed"       # no stale lock after SIGKILL


@pytest.mark.slow
def test_resume_of_a_run_still_training_is_refused(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = [*RUN, "trainer.epochs=5000", "trainer.checkpoint_every=1", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "gradflow_exp.train", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(SystemExit) as exit_:
            hydra_inprocess(f"resume={run_dir}", monkeypatch=monkeypatch)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and err == (
            f"error: {run_dir} is in use by process {proc.pid} on {os.uname().nodename}"
            f"{err.split(os.uname().nodename, 1)[1]}") and "\n" not in err
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    finally:
        proc.kill()
        proc.wait()


def test_another_runs_checkpoint_is_never_resumed(tmp_path):
    """A checkpoint copied from another run (another seed, same shapes) is refused in one
    line naming what differs, and the run's files are left as they were."""
    from gradflow_exp.run.job import ConfigError

    for seed in (0, 1):
        _run(tmp_path / f"s{seed}", f"seed={seed}", "trainer.epochs=3", "trainer.checkpoint_every=1")
    target = tmp_path / "s0"
    shutil.copy(tmp_path / "s1" / "checkpoint.pt", target / "checkpoint.pt")
    (target / "summary.json").write_text(json.dumps({"status": "running"}))     # as if killed
    before = _files(target)
    with pytest.raises(ConfigError, match=r"is another run's checkpoint \(.*seed: 1 → 0\); never resumed: "
                                          r"delete it .* to start this run afresh") as e:
        _run(target, "trainer.epochs=3", "trainer.checkpoint_every=1")
    assert "\n" not in str(e.value) and _files(target) == before


def test_a_corrupt_checkpoint_is_never_resumed(tmp_path):
    """Flipped bytes in the payload fail the checksum: refused, never a 'result'."""
    from gradflow_exp.run.job import ConfigError

    run_dir = tmp_path / "run"
    _run(run_dir, "trainer.epochs=3")
    raw = bytearray((run_dir / "checkpoint.pt").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
    (run_dir / "checkpoint.pt").write_bytes(bytes(raw))
    (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted", "epochs_completed": 3}))
    before = _files(run_dir)
    for epochs in (3, 6):        # resuming it, or training it on
        with pytest.raises(ConfigError, match="fails its checksum .* to start this run afresh"):
            _run(run_dir, f"trainer.epochs={epochs}")
    assert _files(run_dir) == before
    (run_dir / "checkpoint.pt").write_bytes(b"gradflow_exp checkpoint 2\n{not json")
    with pytest.raises(ConfigError, match="not a gradflow_exp checkpoint"):
        _run(run_dir, "trainer.epochs=3")


def test_a_killed_write_leaves_no_temp_file_for_long(tmp_path):
    """Temp files of atomic writes cut short by a kill are removed when the directory is
    taken again."""
    run_dir = tmp_path / "run"
    _run(run_dir, "trainer.epochs=2")
    (run_dir / ".summary.json.tmp-abc").write_text("{")
    (run_dir / ".checkpoint.pt.tmp-abc").write_bytes(b"x")
    _run(run_dir, "trainer.epochs=2")          # skipped: finished, but the directory is taken
    assert not [p.name for p in run_dir.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_ends_in_one_line_and_a_failed_summary(tiny_disk, monkeypatch, capsys):
    """The disk fills while the run writes: exit code 1, one line, no traceback and no
    logging noise, no temp file left, and the summary says failed (once the temp file's
    space is back, that much fits)."""
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 1024 * 1024 - 160 * 1024))
    run_dir = tiny_disk / "run"
    with pytest.raises(SystemExit) as exit_:
        hydra_inprocess(*RUN, "trainer.epochs=2000", "trainer.checkpoint_every=1", f"hydra.run.dir={run_dir}",
                        monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 1 and "Traceback" not in err and "Logging error" not in err
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    """Killed before any checkpoint (summary 'running', some rows): the same command, or
    one with more epochs, trains it from epoch 0; nothing of another run's is kept."""
    run_dir = tmp_path / "run"
    _run(run_dir, "trainer.epochs=2", "trainer.checkpoint=false")
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    (run_dir / "metrics.csv").write_text("epoch,step\n0,0\n1,")
    again = _run(run_dir, "trainer.epochs=4", "trainer.checkpoint=false")
    assert again["status"] == "completed" and again["epochs_completed"] == 4
    assert (run_dir / "metrics.csv").read_text().count("\n") == 6       # header + epochs 0..4
