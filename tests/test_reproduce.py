import subprocess
import sys

import pandas as pd


def test_reproduce_runs_the_method_set_and_reports(tmp_path):
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "gradflow_exp.reproduce", "fig7", "--epochs", "2",
                        "--seeds", "0,1", "--out", str(out), "logger=none", "dataset.M=300",
                        "trainer.progress=false"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # fig7's method set: PM/SPM × {SGD, SAV}, two seeds each
    assert len([p for p in out.iterdir() if p.is_dir() and p.name.isdigit()]) == 8
    table = pd.read_csv(out / "report" / "summary.csv")
    assert set(table.method) == {"sgd", "sav", "spm_sgd", "spm_sav"}
    assert (out / "report" / "fig7_curves.png").exists()


def test_reproduce_unknown_experiment(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gradflow_exp.reproduce", "fig99"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "valid: " in r.stderr and "fig7" in r.stderr and "Traceback" not in r.stderr
