import pytest
import json
import math

from gradflow_exp.commands.bench import main


def test_bench_writes_ratios_and_targets(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--problems", "fig7", "--methods", "sgd,sav,spm_sav", "--repeats", "1", "--steps", "2",
                 "--threads", "1", "--runner-epochs", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["problems"]["fig7"]["methods"]
    assert m["sgd"]["ratio_sgd"] == 1.0 and m["sav"]["ratio_sgd"] > 0
    assert res["matmul_gflops"]["float64"] > 0 and res["problems"]["fig7"]["steps_per_epoch"] == 125
    assert any("spm_sav vs sav" in line for line in res["targets"])
    runner = res["runner"]["fig7"]          # the runner's epoch against the plain script's
    # a further epoch is a difference of two timings: finite, but 2 epochs are too few to sign it
    assert runner["plain_epoch_s"] > 0 and runner["ratio_whole"] > 0 and math.isfinite(runner["ratio"])
    assert any("fig7   runner vs plain" in line for line in res["targets"])
    assert "targets (ratios measured in this run)" in capsys.readouterr().out


def test_the_matmul_floor_is_the_steps_matmuls_at_their_shapes(tmp_path):
    """A two-layer net's step: forward and weight gradient of both layers, the input
    gradient of the second only (x needs none): model_flops less the first layer's input
    gradient. The bench reports each step as a multiple of it."""
    import torch

    from gradflow_exp.commands.bench import matmul_ops, model_flops
    from gradflow_exp.models import TwoLayerNet

    net = TwoLayerNet(40, 1, width=100)
    ops = matmul_ops(net, 64, torch.float64, torch.device("cpu"))
    assert len(ops) == 5
    shapes = [tuple(o.shape) for _, _, o in ops]    # a weight gradient in either layout, the faster one
    assert shapes[0] == (64, 100) and shapes[1] in ((100, 40), (40, 100)) and shapes[2] == (64, 1)
    assert shapes[3] in ((1, 100), (100, 1)) and shapes[4] == (64, 100)
    assert sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in ops) == model_flops(net, 64) - 2 * 64 * 40 * 100
    out = tmp_path / "bench.json"
    assert main(["--problems", "fig7", "--methods", "sgd", "--repeats", "1", "--steps", "2", "--threads", "1",
                 "--runner-epochs", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["problems"]["fig7"]["floor_s"] > 0 and math.isfinite(res["problems"]["fig7"]["methods"]["sgd"]["ratio_floor"])
    assert any("fig7   sgd vs matmul floor" in line for line in res["targets"])


def test_bench_rejects_unknown_method():
    assert main(["--methods", "sgd,savv"]) == 2


@pytest.mark.slow
def test_bench_replicas_reports_a_speedup(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--problems", "fig7", "--methods", "sgd", "--repeats", "1", "--steps", "2", "--threads", "1",
                 "--runner-epochs", "0", "--replicas", "2", "--replica-epochs", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["replicas"]["fig7"]
    assert set(res) == {"sgd", "sav"}
    for r in res.values():          # timing only: no assertion on the speedup's size
        assert r["R"] == 2 and r["singles_s"] > 0 and r["batch_s"] > 0 and math.isfinite(r["speedup"])
    assert "replica batch vs single runs one after another" in capsys.readouterr().out
    assert main(["--replicas", "2", "--replica-methods", "ieq"]) == 2      # does not stack
    assert main(["--replicas", "2", "--replica-lrs", "0.1,x"]) == 2
    assert main(["--problems", "fig7", "--methods", "sgd", "--repeats", "1", "--steps", "2", "--threads", "1",
                 "--runner-epochs", "0", "--replicas", "2", "--replica-methods", "adam", "--replica-lrs", "0.01,0.1",
                 "--replica-epochs", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["replicas"]["fig7"]["adam"]["batch_s"] > 0


def test_bench_own_loop_times_the_optimizers_against_sgd(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--problems", "fig7", "--methods", "sgd", "--repeats", "1", "--steps", "2", "--threads", "1",
                 "--runner-epochs", "0", "--own-loop", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    own = res["own_loop"]
    assert own["sgd"]["ratio_sgd"] == 1.0
    assert {"sav", "relsav", "relsav, rhat_batch=same, closure(backward=False)"} <= set(own)
    assert all(v["step_s"] > 0 for v in own.values())
    assert any(line.split()[1:3] == ["own", "loop"] and "sav" in line for line in res["targets"])


@pytest.mark.slow
def test_bench_sweep_runs_each_launcher(tmp_path, monkeypatch):
    """One round of a fig7 sweep (the README's, on a small data set: the command, not the
    training, is what this checks), one epoch a job, through every launcher."""
    from gradflow_exp.commands import bench

    monkeypatch.setattr(bench, "SWEEP", [*bench.SWEEP, "dataset.M=300"])
    out = tmp_path / "bench.json"
    assert main(["--problems", "fig7", "--methods", "sgd", "--repeats", "1", "--steps", "1", "--threads", "1",
                 "--runner-epochs", "0", "--sweep-epochs", "1", "--json", str(out)]) == 0
    sweep = json.loads(out.read_text())["sweep"]
    assert set(sweep) == {"basic", "batched", "batched, n_jobs=2"} and sweep["basic"]["speedup"] == 1.0
    assert all(v["wall_s"] > 0 and math.isfinite(v["speedup"]) for v in sweep.values())


@pytest.mark.slow
def test_bench_counts_graph_breaks(tmp_path):
    """--graph-breaks alone (no problem timed): each method's step traces to one graph."""
    out = tmp_path / "bench.json"
    assert main(["--problems", "", "--methods", "sgd,relsav,ieq,spm_sav", "--runner-epochs", "0", "--graph-breaks",
                 "--json", str(out)]) == 0
    counts = json.loads(out.read_text())["graph_breaks"]
    assert set(counts) == {"sgd", "relsav", "ieq", "spm_sav"}
    assert all(v["step"] == {"graphs": 1, "breaks": 0} for v in counts.values())
    assert counts["relsav"]["train_step"]["breaks"] >= 1          # the closure's backward()


def test_against_times_an_older_tree_in_the_same_rounds(tmp_path, capsys):
    """``--against REV`` exports the package at REV as its own package and times its steps
    beside the current tree's; a revision that does not exist is refused in one line."""
    import subprocess
    import sys

    from gradflow_exp.commands.bench import REPO

    if subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("needs a git checkout with history")
    out = tmp_path / "bench.json"
    assert main(["--problems", "fig7", "--methods", "sgd,sav", "--repeats", "2", "--steps", "2", "--threads", "1",
                 "--runner-epochs", "0", "--against", "HEAD~1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["problems"]["fig7"]["methods"]
    assert {"sgd", "sav", "sgd@HEAD~1", "sav@HEAD~1"} <= set(m)
    assert len(res["problems"]["fig7"]["rounds"]["sav@HEAD~1"]) == 2 and m["sav@HEAD~1"]["step_s"] > 0
    assert sys.modules["gradflow_exp_HEAD_1.optim"].SAV is not sys.modules["gradflow_exp.optim"].SAV
    assert not any("@" in line for line in res["targets"])      # compared, not judged
    assert "new tree against HEAD~1" in capsys.readouterr().out
    assert main(["--problems", "fig7", "--methods", "sgd", "--against", "no-such-revision"]) == 2
    assert "not a revision" in capsys.readouterr().err
