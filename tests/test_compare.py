"""gradflow-compare: the tuned benchmark's protocol end to end on a tiny problem, its resume
after a kill, and its measures against hand computations."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import yaml

from gradflow_exp.report import compare

TINY = ["--problems", "fig7", "--methods", "sgd,sav", "--trials", "2", "--epochs", "1", "--seeds", "2",
        "dataset.M=300", "trainer.log_every=1"]


def test_expected_best_of_n_trials_is_the_mean_of_the_best_over_every_subset():
    """Sivaprasad et al.'s expected best after n random trials, against brute force over
    every n-subset of the k trials (drawn without replacement)."""
    v = [0.3, 0.1, 0.7, 0.2, 1.0]
    for n in range(1, 6):
        brute = np.mean([min(s) for s in combinations(v, n)])
        assert compare.expected_best(v, n) == pytest.approx(brute, rel=1e-12)
    assert compare.expected_best(v, 1) == pytest.approx(np.mean(v)) and compare.expected_best(v, 5) == 0.1
    with pytest.raises(ValueError):
        compare.expected_best(v, 6)
    tu = compare.tuneability(v, n_boot=200)
    assert list(tu["n"]) == [1, 2, 3, 4, 5]
    assert (np.diff(tu["expected_best"]) <= 0).all()                      # more trials never hurt
    assert ((tu["lo"] <= tu["expected_best"] + 1e-12) & (tu["expected_best"] <= tu["hi"] + 1e-12)).all()


def test_a_trial_that_did_not_train_counts_as_the_untrained_model():
    trials = pd.DataFrame({"status": ["completed", "diverged", "completed", "failed"],
                           "final_val_rel_error": [0.01, math.nan, 0.2, math.nan]})
    assert compare.trial_scores(trials).tolist() == [0.01, 1.0, 0.2, 1.0]
    blown = trials.assign(final_val_rel_error=[0.01, math.nan, 3e4, math.nan])   # finite, but worse than zero
    assert compare.trial_scores(blown).tolist() == [0.01, 1.0, 1.0, 1.0]


def test_a_method_whose_trials_all_diverged_has_no_tuned_setting():
    """Optuna still names a best trial when every trial diverged; the table must not print
    it as a tuned setting, nor a cost per epoch for reruns that never ran."""
    trials = pd.DataFrame({"optimizer.lr": [0.16, 0.73], "status": ["diverged", "diverged"],
                           "initial_train_rel_error": [1.0, 1.0], "final_train_rel_error": [math.nan, math.nan],
                           "final_val_rel_error": [math.nan, math.nan]})
    r = compare.MethodResult("sgd", {"optimizer.lr": 0.16}, trials, pd.DataFrame(), pd.DataFrame())
    row = compare.method_row(r, target=1e-3, k=2)
    assert row["setting"] == "none (no trial trained)" and row["trials_train"] == 0
    table = pd.DataFrame([row]).assign(vs="", p_vs_best_baseline=math.nan)
    line = compare.markdown("fig7", table, 1e-3, 2).splitlines()[-1]
    assert "none (no trial trained)" in line and "nan" not in line and "0/2" in line


def test_stability_is_the_fraction_of_trials_that_train_per_decade_of_the_step():
    trials = pd.DataFrame({"optimizer.lr": [0.002, 0.005, 0.03, 0.5, 0.9, 5.0],
                           "status": ["completed", "completed", "completed", "completed", "diverged", "completed"],
                           "initial_train_rel_error": [1.0] * 6,
                           "final_train_rel_error": [0.1, 0.2, 0.01, 1.5, math.nan, 0.3]})
    st = compare.stability(trials).set_index("decade")
    assert st["trials"].to_dict() == {-3: 2, -2: 1, -1: 2, 0: 1}
    assert st["fraction"].to_dict() == {-3: 1.0, -2: 1.0, -1: 0.0, 0: 1.0}   # 0.5 ended above its start


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gradflow_exp.commands.compare", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_bad_input_is_one_line(tmp_path):
    for args, expected in ((["--problems", "fig77", "--methods", "sgd"], "unknown problem fig77"),
                           (["--problems", "fig7", "--methods", "sgd,lbfgs"], "unknown method lbfgs"),
                           (["--problems", "fig7", "--methods", "sgd", "--trials", "1"], "--trials must be at least 2"),
                           (["--problems", "fig7", "--methods", "sgd", "oops"], "key=value")):
        out = _cli(*args, "--out", str(tmp_path / "o"), cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.strip().startswith("gradflow-compare: error:") and expected in out.stderr
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_protocol_end_to_end_and_its_resume_after_a_kill(tmp_path):
    """Two methods, two trials each, two seeds. Killed during the first tuning and run
    again, it ends with exactly two complete trials a method (none lost, none twice), the
    best setting on validation rerun on seeds 1 and 2 with it, and a report whose numbers
    follow from those runs."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "gradflow_exp.commands.compare", *TINY, "--out", str(out)]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "fig7" / "sgd" / "tune" / "1" / "metrics.csv").exists():
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done = _cli(*TINY, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    import optuna

    for method in ("sgd", "sav"):
        base = out / "fig7" / method
        study = optuna.load_study(study_name=f"fig7_{method}", storage=f"sqlite:///{base}/tune/optuna.db")
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert len(complete) == 2
        best = yaml.safe_load((base / "tune" / "optimization_results.yaml").read_text())
        # selected on validation: the best trial's final val_rel_error, not its test error
        vals = {}
        for t in complete:
            s = json.loads((base / "tune" / str(t.number) / "summary.json").read_text())
            vals[t.number] = s["final"]["val_rel_error"] if s["status"] == "completed" else math.inf
            assert t.value == vals[t.number]
        assert best["best_value"] == min(vals.values())
        reruns = [yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
                  for d in (base / "seeds").iterdir() if (d / ".hydra").is_dir()]
        assert sorted(c["seed"] for c in reruns) == [1, 2]
        for cfg in reruns:
            assert cfg["optimizer"]["lr"] == pytest.approx(best["best_params"]["optimizer.lr"], rel=1e-12)
            assert cfg["trainer"]["batch_size"] == 64 and cfg["trainer"]["epochs"] == 1   # the experiment's, for all
    table = pd.read_csv(out / "report" / "fig7.csv").set_index("method")
    assert set(table.index) == {"sgd", "sav"} and (table["seeds"] == 2).all() and (table["trials"] == 2).all()
    res = compare.load_result(out, "fig7", "sav")
    scores = compare.trial_scores(res.trials)
    assert table.loc["sav", "expected_best_val_2"] == pytest.approx(scores.min())
    assert table.loc["sav", "expected_best_val_1"] == pytest.approx(scores.mean())
    finals = res.runs["final_test_rel_error"]
    assert table.loc["sav", "final_test"] == pytest.approx(10 ** np.log10(finals).mean())
    assert (out / "report" / "fig7_compare.png").is_file() and "fig7" in (out / "report" / "compare.md").read_text()
