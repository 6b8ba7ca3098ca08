"""gradflow-report: run dirs → tidy frame → tables, tests and figures (known numbers in, checked out)."""
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from helpers import cli
from gradflow_exp.report import ReportError, find_run_dirs, load_runs
from gradflow_exp.report import stats
from gradflow_exp.report.cli import main
from gradflow_exp.report.figures import legend_label, panels_for, add_derived

TARGETS = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam", "sav": "gradflow_exp.optim.SAV"}


def make_run(run_dir, *, optimizer="sgd", seed=0, experiment="fig7", hp=None, test=(1.0, 0.1, 0.01),
             train=None, status="completed", extra=None, wall_step=1.0, hydra_files=True, flags=()):
    """A run directory as the runner writes it, with known numbers."""
    run_dir.mkdir(parents=True)
    test = list(test)
    train = list(train) if train is not None else [v * 0.5 for v in test]
    epochs = list(range(len(test)))
    m = pd.DataFrame({"epoch": epochs, "step": [10 * e for e in epochs], "train_loss": train,
                      "train_mse": train, "train_rel_error": train, "test_mse": test, "test_rel_error": test,
                      "lr": 0.1, "wall_time": [wall_step * e for e in epochs], **(extra or {})})
    m.to_csv(run_dir / "metrics.csv", index=False)
    finite = m[np.isfinite(m.test_rel_error)]
    (run_dir / "summary.json").write_text(json.dumps({
        "status": status, "error": None, "epochs_completed": epochs[-1], "steps": 10 * epochs[-1],
        "wall_time": wall_step * epochs[-1], "final": m.iloc[-1].to_dict(),
        "best": {"test_rel_error": float(finite.test_rel_error.min())}, "flags": list(flags), "name": "x"}))
    if hydra_files:
        hp = {"lr": 0.1, **(hp or {})}
        cfg = {"name": experiment, "seed": seed, "dataset": {"name": "quadratic", "seed": "${seed}"},
               "optimizer": {"_target_": TARGETS[optimizer], **hp}, "logger": {"backend": "none"},
               "trainer": {"epochs": len(test) - 1, "progress": False}}
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
            [f"optimizer={optimizer}", f"seed={seed}"] + [f"optimizer.{k}={v}" for k, v in (hp or {}).items()]))
        (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"runtime": {"choices": {"optimizer": optimizer, "experiment": experiment}}}}))
    return run_dir


def make_failed(run_dir, error="optimizer.lr must be positive"):
    """A run that failed on bad input: only summary.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": error}))
    return run_dir


@pytest.fixture
def sweep(tmp_path):
    """fig7: sgd × 3 seeds, sav × lr {0.1, 0.2} × 2 seeds, one sgd-lr=50-like diverged run."""
    root = tmp_path / "sweep"
    j = iter(range(100))
    finals = {0: 1e-2, 1: 2e-2, 2: 4e-2}
    for s in range(3):
        make_run(root / str(next(j)), optimizer="sgd", seed=s, test=(1.0, 0.1, finals[s]))
    for lr in (0.1, 0.2):
        for s in range(2):
            make_run(root / str(next(j)), optimizer="sav", seed=s, hp={"lr": lr, "C": 1.0},
                     test=(1.0, 1e-3 * (1 + s), 5e-4 * (1 + s) * lr * 10),
                     extra={"energy": [5.0, 3.0, 2.0], "q": [float("nan"), 0.99, 1.01]})
    return root


def test_finds_runs_in_sweep_order_and_errors(tmp_path, sweep):
    for k in (10, 11, 12):   # job 10 sorts after 9, not after 1
        make_run(sweep / str(k), seed=k)
    dirs = find_run_dirs([sweep])
    assert [d.name for d in dirs] == [str(k) for k in [*range(7), 10, 11, 12]]
    with pytest.raises(ReportError, match="no such file"):
        find_run_dirs([tmp_path / "nope"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ReportError, match="no runs found"):
        find_run_dirs([tmp_path / "empty"])


def test_tidy_frame_contents(sweep):
    df = load_runs([sweep])
    assert list(df.columns[:6]) == ["run_dir", "experiment", "method", "optimizer", "seed", "status"]
    assert len(df) == 7 * 3                                   # one row per run × epoch
    assert list(dict.fromkeys(df.method)) == ["sgd", "sav lr=0.1", "sav lr=0.2"]   # seed and ${seed} not in labels
    assert set(df.experiment) == {"fig7"} and set(df.status) == {"completed"}
    assert sorted(df[df.method == "sgd"].seed.unique()) == [0, 1, 2]
    row = df[(df.method == "sgd") & (df.seed == 1) & (df.epoch == 2)].iloc[0]
    assert row.test_rel_error == pytest.approx(2e-2) and row.train_rel_error == pytest.approx(1e-2)
    assert df[df.method == "sgd"].energy.isna().all() and df[df.method == "sav lr=0.2"].energy.notna().all()


def test_label_without_hydra_choices_uses_target_and_spm(tmp_path):
    d = make_run(tmp_path / "r", optimizer="sav")
    (d / ".hydra" / "hydra.yaml").unlink()
    (d / ".hydra" / "overrides.yaml").write_text("[]")
    cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
    cfg["optimizer"]["spm"] = {"nu": 1.0}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_runs([d]).method.iloc[0] == "spm_sav"


def test_ci_against_scipy_and_single_seed(sweep):
    runs = stats.per_run(load_runs([sweep]))
    table = stats.method_table(runs).set_index("method")
    x = np.array([1e-2, 2e-2, 4e-2])
    lo, hi = sps.t.interval(0.95, df=2, loc=x.mean(), scale=sps.sem(x))
    sgd = table.loc["sgd"]
    assert sgd.n == 3 and sgd.status == "3 completed"
    assert sgd.final_test_rel_error_mean == pytest.approx(x.mean())
    assert sgd.final_test_rel_error_ci95 == pytest.approx((hi - lo) / 2)
    assert sgd.final_test_rel_error_median == pytest.approx(2e-2)
    assert sgd.best_train_rel_error_mean == pytest.approx(x.mean() / 2)
    mean, half, n = stats.mean_ci([3e-3])
    assert (mean, n) == (3e-3, 1) and math.isnan(half)        # n = 1: no interval
    assert stats.fmt_ci(mean, half, n, 1) == "3.000e-03"


def test_time_to_target(sweep):
    runs = stats.per_run(load_runs([sweep]), "test_rel_error", 1e-3).set_index(["method", "seed"])
    # sav lr=0.1 seed 0: [1, 1e-3, 5e-4] → epoch 1 (≤ target), wall 1 s; seed 1: [1, 2e-3, 1e-3] → epoch 2
    assert runs.loc[("sav lr=0.1", 0), ["target_epoch", "target_time"]].tolist() == [1.0, 1.0]
    assert runs.loc[("sav lr=0.1", 1), "target_epoch"] == 2.0
    assert math.isnan(runs.loc[("sgd", 0), "target_epoch"])
    table = stats.method_table(runs.reset_index(), "test_rel_error", 1e-3).set_index("method")
    assert table.loc["sav lr=0.1", "target_reached"] == 2
    assert table.loc["sav lr=0.1", "target_epoch_median"] == 1.5
    assert table.loc["sav lr=0.2", "target_reached"] == 1                 # seed 1 stops at 2e-3
    md = stats.method_markdown(table.reset_index())
    line = {ln.split(" | ")[1]: ln for ln in md.splitlines()[2:]}
    assert "not reached" in line["sgd"] and "1 (1/2)" in line["sav lr=0.2"]


def test_diverged_and_failed_runs_are_visible(tmp_path):
    root = tmp_path / "m"
    make_run(root / "0", seed=0, test=(1.0, 0.5, 0.2))
    make_run(root / "1", seed=1, test=(1.0, 0.6, float("nan")), status="diverged")
    make_failed(root / "2")
    df = load_runs([root])
    assert df.groupby("run_dir").status.first().tolist() == ["completed", "diverged", "failed"]
    failed = df[df.status == "failed"]
    assert len(failed) == 1 and failed.epoch.isna().all() and failed.error.iloc[0] == "optimizer.lr must be positive"
    runs = stats.per_run(df)
    div = runs[runs.status == "diverged"].iloc[0]
    assert math.isnan(div.final_test_rel_error) and div.best_test_rel_error == 0.6
    table = stats.method_table(runs).set_index("method")
    assert table.loc["sgd", "status"] == "1 completed, 1 diverged"
    assert table.loc["sgd", "final_test_rel_error_n"] == 1           # the diverged seed is not averaged in
    assert "(1/2)" in stats.method_markdown(table.reset_index())
    # no config at all: experiment and method cannot be known, but the run is counted
    assert table.loc["unknown", ["experiment", "n", "n_failed", "status"]].tolist() == ["unknown", 1, 1, "1 failed"]
    problems = stats.problem_runs_markdown(runs)
    assert "diverged" in problems and "optimizer.lr must be positive" in problems
    assert legend_label("sgd", pd.Series(["completed", "diverged", "diverged"])) == "sgd (diverged 2/3)"
    # a run killed and not resumed (SIGTERM, a time limit) is named too, never drawn as finished
    assert legend_label("spm_sav", pd.Series(["interrupted", "interrupted", "completed"])) == "spm_sav (interrupted 2/3)"


def test_paired_tests_match_scipy(tmp_path):
    root = tmp_path / "p"
    rng = np.random.default_rng(0)
    a, b = 10 ** rng.uniform(-4, -2, 7), 10 ** rng.uniform(-4, -2, 7)
    for s in range(7):
        make_run(root / f"a{s}", optimizer="sgd", seed=s, test=(1.0, a[s]))
        make_run(root / f"b{s}", optimizer="adam", seed=s, test=(1.0, b[s]))
    runs = stats.per_run(load_runs([root]))
    sig = stats.significance(runs).iloc[0]
    ref = sps.wilcoxon(np.log10(a), np.log10(b))
    assert (sig.method_a, sig.method_b, sig.n_pairs, sig.test) == ("sgd", "adam", 7, "wilcoxon")
    assert sig.statistic == pytest.approx(ref.statistic) and sig.p_value == pytest.approx(ref.pvalue)
    few = stats.significance(runs[runs.seed < 4]).iloc[0]
    ref = sps.ttest_rel(np.log10(a[:4]), np.log10(b[:4]))
    assert few.test == "paired t" and few.n_pairs == 4
    assert few.statistic == pytest.approx(ref.statistic) and few.p_value == pytest.approx(ref.pvalue)
    assert stats.holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06], nan_ok=True)


@pytest.mark.slow
def test_cli_writes_all_outputs(tmp_path, sweep, capsys):
    make_run(tmp_path / "mnist" / "0", experiment="mnist",
             extra={"train_accuracy": [0.1, 0.8, 0.9], "test_accuracy": [0.1, 0.7, 0.85]})
    make_failed(sweep / "7")                       # experiment from the sweep's multirun.yaml
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"name": "fig7", "seed": 0}))
    out = tmp_path / "rep"
    assert main([str(sweep), str(tmp_path / "mnist"), "--out", str(out), "--target", "1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "| experiment | method | n | status |" in printed and str(out / "summary.md") in printed
    for name in ["data.csv", "runs.csv", "summary.csv", "summary.md", "significance.csv", "significance.md",
                 "fig7_curves.png", "fig7_curves.pdf", "mnist_curves.png", "mnist_curves.pdf"]:
        assert (out / name).stat().st_size > 0, name
    assert (out / "fig7_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fig7_curves.pdf").read_bytes()[:4] == b"%PDF"
    table = pd.read_csv(out / "summary.csv")
    assert table.method.tolist() == ["sgd", "sav lr=0.1", "sav lr=0.2", "unknown", "sgd"]
    assert table.experiment.tolist() == ["fig7"] * 4 + ["mnist"]
    assert table.status.tolist()[3] == "1 failed"
    assert table.set_index("experiment").loc["mnist", "final_test_accuracy_mean"] == pytest.approx(0.85)
    assert "failed" in (out / "summary.md").read_text()
    # panels follow the columns: energy and 1 − q for SAV runs, accuracy for MNIST
    df = add_derived(load_runs([sweep, tmp_path / "mnist"]))
    assert [p[0] for p in panels_for(df[df.experiment == "fig7"])] == \
        ["train_rel_error", "test_rel_error", "energy", "one_minus_q"]
    assert [p[0] for p in panels_for(df[df.experiment == "mnist"])][-1] == "test_accuracy"


def test_cli_input_errors_exit_2(tmp_path, sweep, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert main([str(sweep), "--metric", "nonsense", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("gradflow-report: error:") for e in err)
    p = subprocess.run([sys.executable, "-m", "gradflow_exp.report", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "no such file" in p.stderr


@pytest.mark.slow
def test_real_tiny_multirun(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    p = cli("-m", "experiment=fig7", "dataset.M=400", "trainer.epochs=2", "trainer.log_every=1", "optimizer=sgd,adam", "seed=0,1",
            "logger=none", "trainer.progress=false", "trainer.checkpoint=false",
            f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert main([str(sweep_dir)]) == 0
    out = sweep_dir / "report"
    df = pd.read_csv(out / "data.csv")
    assert df.groupby("run_dir").size().tolist() == [3, 3, 3, 3]          # epochs 0, 1, 2
    assert list(dict.fromkeys(df.method)) == ["sgd", "adam"]
    assert set(df.experiment) == {"fig7"} and set(df.status) == {"completed"}
    assert sorted(df[df.method == "adam"].seed.unique()) == [0, 1]
    table = pd.read_csv(out / "summary.csv")
    assert table.n.tolist() == [2, 2] and table.final_test_rel_error_mean.between(0, 2).all()
    sig = pd.read_csv(out / "significance.csv")
    assert sig[["method_a", "method_b", "n_pairs", "test"]].values.tolist() == [["sgd", "adam", 2, "paired t"]]
    assert (out / "fig7_curves.png").is_file() and (out / "fig7_curves.pdf").is_file()
    assert "| fig7 | sgd | 2 | 2 completed |" in capsys.readouterr().out


def test_until_compares_runs_of_different_lengths_at_one_epoch(tmp_path, capsys):
    """--until: a 10-epoch run and an interrupted 6-epoch run compared at epoch 4; a run that
    diverged at epoch 2 stays diverged."""
    long = make_run(tmp_path / "r" / "0", seed=0, test=[1.0 / (e + 1) for e in range(11)])
    cut = make_run(tmp_path / "r" / "1", seed=1, test=[2.0 / (e + 1) for e in range(7)], status="interrupted")
    make_run(tmp_path / "r" / "2", optimizer="sav", seed=0, test=(1.0, 0.5, float("nan")), status="diverged")
    out = tmp_path / "rep"
    assert main([str(tmp_path / "r"), "--out", str(out), "--until", "4"]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("run_dir")
    assert runs.loc[str(long), "final_test_rel_error"] == pytest.approx(1.0 / 5)
    assert runs.loc[str(cut), "final_test_rel_error"] == pytest.approx(2.0 / 5)
    assert runs.loc[str(long), "status"] == runs.loc[str(cut), "status"] == "completed"
    assert runs.loc[str(tmp_path / "r" / "2"), "status"] == "diverged"
    assert pd.read_csv(out / "data.csv").epoch.max() == 4
    # per-epoch wall time from the curve, not the whole run's time over 4 epochs
    assert runs.loc[str(long), "wall_per_epoch"] == pytest.approx(1.0)
    assert main([str(tmp_path / "r"), "--out", str(out), "--until", "-1"]) == 2
    assert "--until -1" in capsys.readouterr().err


def test_table_says_at_which_epochs_final_values_were_taken(tmp_path):
    """Runs of one method that end at different epochs (one trained on, one not): the table
    gives the span, so "final" is never read as one epoch's value."""
    make_run(tmp_path / "r" / "0", seed=0, test=[1.0 / (e + 1) for e in range(11)])
    make_run(tmp_path / "r" / "1", seed=1, test=[2.0 / (e + 1) for e in range(7)])
    make_run(tmp_path / "r" / "2", optimizer="sav", seed=0, test=(1.0, 0.5, 0.2))
    table = stats.method_table(stats.per_run(load_runs([tmp_path / "r"])))
    assert table.set_index("method").loc["sgd", ["epochs_min", "epochs_max"]].tolist() == [6.0, 10.0]
    md = stats.method_markdown(table).splitlines()
    col = md[0].split(" | ").index("epochs")
    cells = {ln.split(" | ")[1]: ln.split(" | ")[col] for ln in md[2:]}
    assert cells == {"sgd": "6–10", "sav": "2"}


def test_flagged_runs_are_named_under_the_table(tmp_path):
    """A completed run whose summary carries a flag (here: stalled) is listed with it below
    the summary table; --until drops flags that describe a later end."""
    make_run(tmp_path / "r" / "0", optimizer="sav", flags=["stalled: q = r/r̂ = 0.013 at the end"])
    make_run(tmp_path / "r" / "1", optimizer="sgd")
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "summary.md").read_text()
    assert "Completed runs with flags" in md and "stalled: q = r/r̂ = 0.013" in md
    assert str(tmp_path / "r" / "1") not in md.split("Completed runs with flags")[1]
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "o2"), "--until", "1"]) == 0
    assert "Completed runs with flags" not in (tmp_path / "o2" / "summary.md").read_text()


def test_until_takes_a_killed_run_as_far_as_its_curve_goes(tmp_path, capsys):
    """--until with a run killed mid-way (summary still "running", no epochs_completed): cut
    where its curve passes the epoch, left out as unfinished where its curve stops short."""
    make_run(tmp_path / "r" / "0", seed=0, test=[1.0 / (e + 1) for e in range(11)])
    for i, n in ((1, 7), (2, 3)):
        run = make_run(tmp_path / "r" / str(i), seed=i, test=[2.0 / (e + 1) for e in range(n)])
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({"status": "running", "name": summary["name"]}))
    out = tmp_path / "rep"
    assert main([str(tmp_path / "r"), "--out", str(out), "--until", "4"]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("seed")
    assert runs.loc[1, "status"] == "completed" and runs.loc[1, "final_test_rel_error"] == pytest.approx(2.0 / 5)
    assert runs.loc[2, "status"] == "running"
    assert "Traceback" not in capsys.readouterr().err


def test_until_keeps_the_flags_of_runs_that_end_there_and_judges_the_rest_at_it(tmp_path):
    """--until 2: a run that ends at epoch 2 keeps its summary's flag (it describes that
    end); one that goes on to epoch 4 is judged on its rows up to 2, where its q has
    collapsed, and not by the flag of its real end (q recovered by then)."""
    ends = make_run(tmp_path / "r" / "0", optimizer="sav", seed=0, test=(1.0, 0.5, 0.4),
                    flags=["aux_collapsed: q = r/r̂ = 1e-18 < 0.01 at the end"])
    longer = make_run(tmp_path / "r" / "1", optimizer="sav", seed=1, test=(1.0, 0.5, 0.4, 0.3, 0.2),
                      extra={"q": [1.0, 0.1, 1e-5, 0.5, 0.9]}, flags=["stalled: at its real end"])
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--until", "2"]) == 0
    flags = pd.read_csv(tmp_path / "o" / "runs.csv").set_index("run_dir")["flags"]
    assert flags[str(ends)].startswith("aux_collapsed: q = r/r̂ = 1e-18")
    assert flags[str(longer)].startswith("aux_collapsed: q = r/r̂ = 1e-05 < 0.01")
    assert "stalled" not in flags[str(longer)]
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "o2"), "--until", "4"]) == 0
    flags = pd.read_csv(tmp_path / "o2" / "runs.csv").set_index("run_dir")["flags"].fillna("")
    assert flags[str(longer)] == "stalled: at its real end"


def test_a_blown_up_run_leaves_the_axis_through_a_marked_top_edge(tmp_path, monkeypatch):
    """fig10's Adam at lr 5000 ends at 1e10: the error panels stop at BLOWUP = 10× the largest
    start (here 1.0), the run gets a ▲ where it leaves, and the falling run keeps its decades."""
    from gradflow_exp.report import figures

    root = tmp_path / "m"
    make_run(root / "0", optimizer="sgd", test=(1.0, 0.1, 1e-3))
    make_run(root / "1", optimizer="adam", test=(1.0, 5.0, 1e4, 1e10))
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)      # keep the figure to inspect
    figures.plot_experiment(load_runs([root]), "fig7", tmp_path / "out")
    (fig,) = drawn
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "test relative error"]
    assert ax.get_ylim()[1] == pytest.approx(figures.BLOWUP * 1.0)
    assert ax.get_ylim()[0] < 1e-3                       # sgd's decades are still on the axis
    ups = [ln for ln in ax.lines if ln.get_marker() == "^"]
    # adam's line leaves the axis between epochs 1 (5.0) and 2 (1e4), where log y crosses 10
    assert len(ups) == 1 and ups[0].get_xdata()[0] == pytest.approx(1 + math.log(2) / math.log(2000))
    assert any("off the axis" in t.get_text() for t in fig.legends[0].get_texts())
    # nothing above the cap: no cap, no marker
    assert figures.blowup_cap(load_runs([root / "0"]), "test_rel_error") is None


def test_a_collapsed_energy_leaves_the_axis_through_a_marked_bottom_edge(tmp_path, monkeypatch):
    """Plain SAV with mini-batches: r² underflows to 1e-323 and then 0. The energy panel ends
    FLOOR_DECADES below its largest value, the collapsed run gets a ▼ where it leaves, and a
    healthy run alone gets no floor."""
    from gradflow_exp.report import figures

    root = tmp_path / "m"
    make_run(root / "0", optimizer="sav", test=(1.0, 0.1, 1e-2, 1e-3), extra={"energy": [2.0, 1.5, 1.2, 1.1]})
    make_run(root / "1", optimizer="sav", seed=1, test=(1.0, 0.5, 0.5, 0.5), extra={"energy": [2.0, 1.0, 1e-100, 0.0]})
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    figures.plot_experiment(load_runs([root]), "fig7", tmp_path / "out")
    (fig,) = drawn
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "energy r²"]
    floor = 2.0 * 10.0 ** -figures.FLOOR_DECADES
    assert ax.get_ylim()[0] == pytest.approx(floor)
    downs = [ln for ln in ax.lines if ln.get_marker() == "v"]
    # seed 1's r² leaves between epochs 1 (1.0) and 2 (1e-100), where log r² crosses log floor
    assert len(downs) == 1 and downs[0].get_xdata()[0] == pytest.approx(1 + math.log(floor) / math.log(1e-100))
    assert any("off the axis" in t.get_text() for t in fig.legends[0].get_texts())
    assert figures.collapse_floor(load_runs([root / "0"]), "energy") is None


def test_flags_are_recomputed_from_the_curve_for_runs_written_before_them(tmp_path):
    """Run directories from before a flag existed carry no such flag in summary.json: the
    report finds it in metrics.csv (blown_up: ends above its start; stalled: low q and no
    progress), without repeating a flag the summary already has."""
    root = tmp_path / "r"
    make_run(root / "0", optimizer="adam", train=(0.5, 5.0, 5e9), test=(1.0, 10.0, 1e10))
    q = {"q": [float("nan"), 0.05, 0.05]}
    make_run(root / "1", optimizer="sav", train=(0.5, 0.3, 0.2999), extra=q)
    make_run(root / "2", optimizer="sav", train=(0.5, 0.3, 0.2999), extra=q, seed=1,
             flags=["stalled: as the loop wrote it"])
    make_run(root / "3", optimizer="sgd")
    flags = load_runs([root]).groupby("run_dir", sort=False).flags.first().tolist()
    assert flags[0].startswith("blown_up: the train error ended at 5e+09")
    assert flags[1].startswith("stalled: q = r/r̂ = 0.05")
    assert flags[2] == "stalled: as the loop wrote it"
    assert flags[3] == ""


def test_one_unreadable_run_is_named_and_left_out(tmp_path, capsys):
    """A metrics.csv that is not a CSV (binary garbage, a directory) costs that run, not the report."""
    make_run(tmp_path / "s" / "0", seed=0)
    make_run(tmp_path / "s" / "1", seed=1)
    (tmp_path / "s" / "1" / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x9c" * 50)
    make_run(tmp_path / "s" / "2", seed=2)
    (tmp_path / "s" / "2" / "metrics.csv").unlink()
    (tmp_path / "s" / "2" / "metrics.csv").mkdir()
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: left out an unreadable run") == 2 and "s/1/metrics.csv" in err and "s/2/metrics.csv" in err
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(runs.seed) == [0]


def test_runs_still_running_stay_out_of_means_and_tests(tmp_path):
    """A run still training has partial values: counted by status, not in the numbers
    (unless --include-unfinished)."""
    for seed in (0, 1):
        make_run(tmp_path / "s" / f"sgd{seed}", seed=seed, test=(1.0, 0.1, 0.01))
        make_run(tmp_path / "s" / f"sav{seed}", optimizer="sav", seed=seed, test=(1.0, 0.1, 0.001))
    make_run(tmp_path / "s" / "sgd2", seed=2, test=(1.0, 0.9, 0.8), status="running")
    make_run(tmp_path / "s" / "sav2", optimizer="sav", seed=2, test=(1.0, 0.9, 0.9), status="running")
    df = load_runs([tmp_path / "s"])
    runs = stats.per_run(df)
    table = stats.method_table(runs).set_index("method")
    assert table.loc["sgd", "n"] == 3 and "1 running" in table.loc["sgd", "status"]
    assert table.loc["sgd", "final_test_rel_error_mean"] == pytest.approx(0.01)
    assert table.loc["sgd", "final_test_rel_error_n"] == 2
    sig = stats.significance(runs)
    assert sig["n_pairs"].tolist() == [2]
    everything = stats.method_table(runs, counted=None).set_index("method")
    assert everything.loc["sgd", "final_test_rel_error_mean"] == pytest.approx((0.01 + 0.01 + 0.8) / 3)
    assert stats.significance(runs, counted=None)["n_pairs"].tolist() == [3]


def test_the_papers_checkpoints_are_tabulated_and_drawn(tmp_path, capsys):
    """fig7's PM rows against the paper's checkpoint values (report/paper.yaml): ours / paper
    at each epoch both have, the median over seeds; checkpoints not reached are said so."""
    for seed, scale in ((0, 1.0), (1, 3.0), (2, 2.0)):
        make_run(tmp_path / "s" / str(seed), seed=seed, test=[1e-3 * scale] * 1001)
    make_run(tmp_path / "s" / "adam", optimizer="adam", test=[1e-3] * 11)       # no paper curve for adam
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 0
    t = pd.read_csv(tmp_path / "out" / "paper.csv")
    assert set(t.method) == {"sgd"}
    row = t[(t.metric == "test_rel_error") & (t.epoch == 1000)].iloc[0]
    assert row.paper == 7e-4 and row.ours == pytest.approx(2e-3) and row.ratio == pytest.approx(2e-3 / 7e-4)
    assert row.seeds == 3
    train100 = t[(t.metric == "train_rel_error") & (t.epoch == 100)].iloc[0]
    assert train100.ours == pytest.approx(1e-3) and train100.ratio == pytest.approx(1e-3 / 1.3e-3)
    assert t[t.epoch == 10000].ours.isna().all()
    md = capsys.readouterr().out
    assert "Against the paper's curves" in md and "not reached" in md and "✓" in md and "✗" in md
    assert (tmp_path / "out" / "fig7_curves.png").is_file()
