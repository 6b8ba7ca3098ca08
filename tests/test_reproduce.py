import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow
def test_reproduce_runs_the_method_set_and_reports(tmp_path):
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "gradflow_exp.commands.reproduce", "fig7", "--epochs", "2",
                        "--seeds", "0,1", "--out", str(out), "logger=none", "dataset.M=300",
                        "trainer.progress=false"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # fig7's method set: PM/SPM × {SGD, SAV}, two seeds each
    assert len([p for p in out.iterdir() if p.is_dir() and p.name.isdigit()]) == 8
    table = pd.read_csv(out / "report" / "summary.csv")
    assert set(table.method) == {"sgd", "sav", "spm_sgd", "spm_sav"}
    assert (out / "report" / "fig7_curves.png").exists()


def test_reproduce_unknown_experiment(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gradflow_exp.commands.reproduce", "fig99"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "valid: " in r.stderr and "fig7" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_reproduce_runs_the_reference_curves(tmp_path):
    """fig8's reference Euler(Δt = 0.01) runs beside the SPM sweep and is drawn with it; a
    user's optimizer.lr sets the methods' Δt but not the reference's."""
    import json

    import yaml

    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "gradflow_exp.commands.reproduce", "fig8", "--epochs", "1", "--seeds", "0",
                        "--out", str(out), "logger=none", "dataset.M=300", "trainer.progress=false",
                        "optimizer.lr=0.4"],     # the methods' Δt; the reference keeps its own
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ref_runs = [p for p in (out / "reference_0").iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(ref_runs) == 1           # one seed, one reference: not crossed with the sweep's params
    cfg = yaml.safe_load((ref_runs[0] / ".hydra" / "config.yaml").read_text())
    assert cfg["optimizer"]["_target_"] == "torch.optim.SGD" and cfg["optimizer"]["lr"] == 0.01
    assert json.loads((ref_runs[0] / "summary.json").read_text())["status"] == "completed"
    table = pd.read_csv(out / "report" / "summary.csv")
    assert len(table) == 5 and "sgd" in set(table.method)     # 4 SPM methods at Δt 0.4, and the reference


@pytest.mark.parametrize("experiment, names, method", [
    ("fig10", ["optimizer=adam", "optimizer=adagrad", "optimizer=rmsprop"], "optimizer=spm_sgd"),
    ("fig4", ["optimizer=adam"], "optimizer=spm_adam"),
])
def test_library_references_run_at_a_plain_lr_beside_per_particle_methods(experiment, names, method):
    """The methods take Δt per particle (lr = K·Δt, K = m/2); references named by a library
    optimizer, Adam/Adagrad/RMSprop(1e-3), run at lr 1e-3 itself (on fig10 at K·1e-3 = 5
    Adam and RMSprop blow up)."""
    from gradflow_exp.run.build import build
    from gradflow_exp.commands.reproduce import references
    from helpers import SMALL, compose_cfg

    small = [*SMALL, f"experiment={experiment}", "dataset.M=300", "model.width=20", "trainer.batch_size=64"]
    refs = references(experiment, [])
    assert [r.split()[0] for r in refs] == names
    for ref in refs:
        optimizer = build(compose_cfg(small + ref.split()))[3]
        assert optimizer.param_groups[0]["lr"] == 1e-3
    optimizer = build(compose_cfg(small + [method, "optimizer.lr=1"]))[3]
    assert optimizer.param_groups[0]["lr"] == 10.0          # K = m/2 = 10 for width 20
