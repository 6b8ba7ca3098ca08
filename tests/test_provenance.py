"""summary.json records which code trained a run, one entry per segment of a resumed run."""
import json
import subprocess

from gradflow_exp.run.provenance import ROOT, code_segments
from helpers import SMALL, compose_cfg

RUN = SMALL + ["experiment=fig7", "dataset.M=200", "optimizer=sgd", "threads=1", "trainer.checkpoint=true"]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_a_run_records_its_commit_and_each_resumed_segment(tmp_path):
    from gradflow_exp.run.job import run

    run_dir = tmp_path / "run"
    run(compose_cfg(RUN + ["trainer.epochs=2"]), run_dir)
    first = _summary(run_dir)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:                       # a checkout (CI's clean clone is one)
        assert first["code"]["commit"] == head.stdout.strip()
        assert isinstance(first["code"]["dirty"], bool)
    assert first["code"]["torch"]
    assert [s["from_epoch"] for s in first["code_segments"]] == [0]

    run(compose_cfg(RUN + ["trainer.epochs=5"]), run_dir)      # trains the same run on
    second = _summary(run_dir)
    assert second["epochs_completed"] == 5
    assert [s["from_epoch"] for s in second["code_segments"]] == [0, 2]
    assert second["code_segments"][0] == first["code_segments"][0]


def test_segments_of_a_run_written_before_code_was_recorded():
    old = {"status": "running", "fingerprint": "abc"}               # no code_segments
    segs = code_segments(old, 3000)
    assert segs[0]["from_epoch"] == 0 and segs[0]["commit"].startswith("unknown")
    assert segs[1]["from_epoch"] == 3000
    # a segment that started after the checkpoint being resumed is dropped (its epochs are redone)
    later = {"code_segments": [{"from_epoch": 0, "commit": "a"}, {"from_epoch": 40, "commit": "b"}]}
    assert [s["commit"] for s in code_segments(later, 30)[:-1]] == ["a"]
    assert code_segments(later, 0)[0]["from_epoch"] == 0 and len(code_segments(later, 0)) == 1
