"""gradflow-paper: the whole paper in chunks (REPRODUCTION.md, "Running the whole paper").

At a tiny length on the CPU: a figure runs with its references and is then skipped; a chunk
that runs out of budget checkpoints its runs and the same command trains them on."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from gradflow_exp.commands import paper

SMALL = ["logger=none", "dataset.M=300"]


def run(tmp_path, *args):
    return paper.main(["--out", str(tmp_path / "paper"), *args])


@pytest.mark.parametrize("args, says", [
    (["--figures", "fig7,fig99"], "unknown figure(s) fig99"),
    (["--seeds", "0,a"], "--seeds must be integers"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--budget", "10"], "--budget must leave a chunk"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, says):
    assert run(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_figure_with_its_references_then_skipped(tmp_path, monkeypatch):
    """fig8 at 2 epochs: its 8 SPM runs and the Euler(0.01) reference, all ended (Euler at
    Δt = 1 diverges at epoch 1, which is a result); the status says so; a second call runs
    nothing."""
    assert run(tmp_path, "--figures", "fig8", "--epochs", "2", "--seeds", "0", *SMALL) == 0
    out = tmp_path / "paper"
    summaries = [json.loads(p.read_text()) for p in (out / "fig8").rglob("summary.json")]
    assert len(summaries) == 9
    assert {s["status"] for s in summaries} <= {"completed", "diverged"}
    row = next(line for line in (out / "status.md").read_text().splitlines() if line.startswith("| fig8 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "9" and cells[3].endswith("/ 2") and "completed" in cells[4]
    assert "fig8" in json.loads((out / "progress.json").read_text())

    monkeypatch.setattr(paper, "run_figure", lambda *a, **k: pytest.fail("a finished figure ran again"))
    assert run(tmp_path, "--figures", "fig8", "--epochs", "2", "--seeds", "0", *SMALL) == 0


@pytest.mark.slow
def test_a_chunk_stops_with_checkpoints_and_the_next_trains_on(tmp_path, monkeypatch):
    """Two chunks of a run far too long for either: each ends with exit 3 and the run
    interrupted with a checkpoint; the second trains on from the first's epoch, one row an
    epoch, none twice."""
    monkeypatch.setattr(paper, "GRACE_S", 5.0)
    monkeypatch.setattr(paper, "MIN_CHUNK_S", 5.0)
    args = ["--figures", "fig7", "--epochs", "1000000", "--seeds", "0", "--budget", "22",
            "optimizer=sgd", "trainer.log_every=1", *SMALL]
    reached = []
    for _ in range(2):
        assert run(tmp_path, *args) == paper.MORE_TO_RUN
        summary = json.loads((tmp_path / "paper" / "fig7" / "0" / "summary.json").read_text())
        assert summary["status"] == "interrupted"
        reached.append(summary["epochs_completed"])
        assert (tmp_path / "paper" / "fig7" / "0" / "checkpoint.pt").exists()
        assert "interrupted" in (tmp_path / "paper" / "status.md").read_text()
    assert 0 < reached[0] < reached[1]
    epochs = pd.read_csv(tmp_path / "paper" / "fig7" / "0" / "metrics.csv")["epoch"]
    assert epochs.is_monotonic_increasing and not epochs.duplicated().any() and epochs.iloc[-1] == reached[1]
    assert not (tmp_path / "paper" / "progress.json").exists()


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "gradflow_exp.commands.paper", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--budget" in r.stdout
