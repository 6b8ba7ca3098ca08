"""gradflow-report on a sweep: swept keys, sensitivity and map figures, the stability frontier,
the best setting chosen on validation, the pandas loader, and an --out that cannot be written."""
from __future__ import annotations

import errno
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gradflow_exp.report import cli, load_runs, run_table, sensitivity
from gradflow_exp.report.cli import main

OPTIMIZERS = {"sgd": "torch.optim.SGD", "sav": "gradflow_exp.optim.SAV"}


def _hydra_yaml(overrides: list[str], optimizer: str, out_dir: Path) -> dict:
    """hydra.yaml as Hydra writes it for a multirun job (the parts the report reads, and the
    bulk that makes it slow to parse)."""
    return {"hydra": {
        "run": {"dir": "outputs/${name}/runs/${now:%Y-%m-%d_%H-%M-%S_%f}"},
        "sweep": {"dir": str(out_dir.parent), "subdir": "${hydra.job.num}"},
        "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "max_batch_size": None, "params": {"optimizer": "sgd,sav,spm_sgd,spm_sav"}},
        "help": {"app_name": "${hydra.job.name}", "header": "${hydra.help.app_name} is powered by Hydra.\n",
                 "footer": "Powered by Hydra (https://hydra.cc)\nUse --hydra-help to view Hydra specific help\n",
                 "template": "${hydra.help.header}\n== Configuration groups ==\n$APP_CONFIG_GROUPS\n"
                             "== Config ==\nOverride anything in the config (foo.bar=value)\n$CONFIG\n"},
        "hydra_logging": {"version": 1, "formatters": {"simple": {"format": "[%(asctime)s][HYDRA] %(message)s"}},
                          "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple",
                                                   "stream": "ext://sys.stdout"}},
                          "root": {"level": "INFO", "handlers": ["console"]}, "disable_existing_loggers": False},
        "job_logging": {"version": 1, "formatters": {"simple": {"format": "[%(asctime)s][%(name)s] - %(message)s"}},
                        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple"},
                                     "file": {"class": "logging.FileHandler", "formatter": "simple",
                                              "filename": "${hydra.runtime.output_dir}/${hydra.job.name}.log"}},
                        "root": {"level": "INFO", "handlers": ["console", "file"]}},
        "mode": "MULTIRUN", "overrides": {"hydra": [f"hydra.sweep.dir={out_dir.parent}", "hydra.mode=MULTIRUN"],
                                          "task": overrides},
        "job": {"name": "train", "override_dirname": ",".join(sorted(overrides)), "id": out_dir.name,
                "num": int(out_dir.name) if out_dir.name.isdigit() else 0, "config_name": "train"},
        "runtime": {"version": "1.3.8", "version_base": "1.3", "cwd": "/work", "output_dir": str(out_dir),
                    "config_sources": [{"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                                       {"path": "/work/conf", "schema": "file", "provider": "main"}],
                    "choices": {"hparams_search": None, "experiment": "fig7", "trainer": "default", "logger": "none",
                                "scheduler": "none", "loss": "mse", "optimizer": optimizer, "model": "two_layer",
                                "dataset": "quadratic", "method": f"fig7/{optimizer}", "hydra/launcher": "basic"}},
        "verbose": False}}


def make_job(run_dir: Path, *, optimizer: str = "sav", seed: int = 0, hp: dict | None = None,
             train=(1.0, 0.1, 0.01), val=None, test=None, status: str = "completed", q=None,
             epochs: int | None = None, experiment: str = "fig7", extra: dict | None = None,
             config: dict | None = None) -> Path:
    """One multirun job directory in the runner's format: metrics.csv (train/val/test columns
    as given: ``val=None`` writes no val_* columns, as runs made before the split), summary.json,
    .hydra/{config,overrides,hydra}.yaml with ``hp`` as the optimizer.* overrides."""
    hp = dict(hp or {})
    run_dir.mkdir(parents=True)
    train = [float(v) for v in train]
    n = len(train)
    test = [float(v) for v in (test if test is not None else [v * 1.1 for v in train])]
    epochs = epochs if epochs is not None else n - 1
    ep = [round(i * epochs / max(n - 1, 1)) for i in range(n)]
    cols = {"epoch": ep, "step": [10 * e for e in ep], "train_loss": [2 * v for v in train],
            "train_mse": [2 * v for v in train], "train_rel_error": train}
    if val is not None:
        val = [float(v) for v in val]
        cols |= {"val_mse": [2 * v for v in val], "val_rel_error": val}
    cols |= {"test_mse": [2 * v for v in test], "test_rel_error": test, "lr": hp.get("lr", 0.1),
             "wall_time": [0.01 * e for e in ep]}
    cols |= extra or {}
    if optimizer == "sav":
        qs = list(q) if q is not None else [math.nan] + [0.9] * (n - 1)
        cols |= {"energy": [v + 1 for v in train], "r": [math.sqrt(v + 1) for v in train],
                 "r_hat": [math.sqrt(v + 1) for v in train], "q": qs, "eff_step": [0.01] * n}
    m = pd.DataFrame(cols)
    m.to_csv(run_dir / "metrics.csv", index=False)
    metric_cols = [c for c in m.columns if c.startswith(("train_", "val_", "test_"))]
    fin = m[metric_cols].where(np.isfinite(m[metric_cols]))
    (run_dir / "summary.json").write_text(json.dumps({
        "status": status, "error": "a non-finite loss" if status == "diverged" else None,
        "epochs_completed": ep[-1], "epochs_planned": epochs, "steps": 10 * ep[-1], "wall_time": 0.01 * ep[-1],
        "final": m.iloc[-1].to_dict(), "best": fin.min().to_dict(), "flags": [],
        "run_dir": str(run_dir), "name": "x", "device": "cpu"}))
    overrides = [f"optimizer={optimizer}", f"experiment={experiment}",
                 *[f"optimizer.{k}={v}" for k, v in hp.items()],
                 f"trainer.epochs={epochs}", f"seed={seed}", "logger=none", "trainer.progress=False"]
    opt = {"_target_": OPTIMIZERS[optimizer], "lr": 0.1, **({"C": 1, "lam": 0, "restart": "epoch"}
                                                            if optimizer == "sav" else {}), **hp}
    cfg = {"name": experiment, "seed": seed, "dtype": "float64", "device": "auto", "threads": "auto",
           "time_scale": "plain", "hparams_objective": "final", "references": [],
           "replicas": {"seeds": None, "lr": None, "C": None, "lam": None},
           "dataset": {"_target_": "gradflow_exp.data.synthetic.dataset", "name": "quadratic", "D": 40,
                       "M": 10000, "train_fraction": 0.8, "seed": seed},
           "model": {"_target_": "gradflow_exp.models.TwoLayerNet", "width": 100, "activation": "relu"},
           "optimizer": {**opt, **(config or {})}, "loss": {"name": "mse"}, "scheduler": {"name": "none"},
           "logger": {"backend": "none", "job_type": "train"},
           "trainer": {"epochs": epochs, "batch_size": 64, "log_every": 10, "shuffle": True, "progress": False,
                       "eval_chunk": 2048, "collapse_q": 0.01, "checkpoint": True}}
    hydra = run_dir / ".hydra"
    hydra.mkdir()
    (hydra / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra / "hydra.yaml").write_text(yaml.safe_dump(_hydra_yaml(overrides, optimizer, run_dir), sort_keys=False))
    return run_dir


def fabricate_sweep(root: Path, n_jobs: int = 500, rows: int = 20) -> Path:
    """A C × λ × Δt × seed grid of SAV jobs (5 × 5 × 5 × 4 = 500), ``rows`` logged epochs each,
    with val columns; the largest Δt diverges, λ = 0 at C = 1 collapses."""
    j = 0
    rng = np.random.default_rng(0)
    for C in (1, 10, 100, 1000, 10000):
        for lam in (0, 1, 2, 4, 8):
            for lr in (0.01, 0.03, 0.1, 0.3, 1.0):
                for seed in range(4):
                    if j >= n_jobs:
                        return root
                    decay = lr * (1 + lam / 10) / (1 + math.log10(C)) * (1 + 0.1 * rng.standard_normal())
                    train = [math.exp(-decay * e) for e in range(rows)]
                    status, q = "completed", None
                    if lr == 1.0:
                        train[-1], status = math.nan, "diverged"
                    if C == 1 and lam == 0:
                        q = [math.nan] + [0.5] * (rows - 2) + [0.001]
                    make_job(root / str(j), seed=seed, hp={"C": C, "lam": lam, "lr": lr}, train=train,
                             val=[v * 1.2 for v in train], q=q, status=status, epochs=10 * (rows - 1))
                    j += 1
    return root


# --- tests ------------------------------------------------------------------------------

def _grid(root: Path, values: dict, *, seeds=(0, 1), optimizer="sav", make=None) -> Path:
    """One job per point of the product of ``values`` ({"C": [...], ...}) and seed;
    ``make(hp, seed)`` gives make_job's other arguments."""
    j = len(list(root.iterdir())) if root.exists() else 0
    keys = list(values)
    for point in itertools.product(*values.values()):
        hp = dict(zip(keys, point))
        for seed in seeds:
            make_job(root / str(j), optimizer=optimizer, seed=seed, hp=hp, **(make(hp, seed) if make else {}))
            j += 1
    return root


def _decay(rate: float, n: int = 4, start: float = 1.0) -> list[float]:
    return [start * math.exp(-rate * e) for e in range(n)]


def test_swept_keys_are_found_and_get_numeric_columns(tmp_path):
    """The keys the sweep varied, in the order typed, each a numeric column in the run × epoch
    frame and in the one-row-per-run table; seed, trainer.epochs and the optimizer choice are
    not swept keys; a non-numeric key varied between runs makes another method."""
    root = _grid(tmp_path / "s", {"C": [1, 100], "lam": [0, 4], "lr": [0.01, 0.1]},
                 make=lambda hp, seed: {"val": _decay(hp["lr"]), "train": _decay(hp["lr"])})
    make_job(root / "99", seed=0, hp={"C": 1, "lam": 0, "lr": 0.1}, config={"restart": "none"})
    df = load_runs([root])
    assert df.attrs["swept"] == ["optimizer.C", "optimizer.lam", "optimizer.lr", "optimizer.restart"]
    for k, want in (("optimizer.C", [1.0, 100.0]), ("optimizer.lam", [0.0, 4.0]), ("optimizer.lr", [0.01, 0.1])):
        assert df[k].dtype == float and sorted(df[k].unique()) == want
    runs = run_table(df)
    assert len(runs) == 17 and runs["optimizer.C"].dtype == float
    assert {"final_val_rel_error", "best_test_rel_error", "initial_train_rel_error"} <= set(runs.columns)
    fam = sensitivity.with_family(runs)
    assert sorted(fam["family"].unique()) == ["sav restart=epoch", "sav restart=none"]
    # a key overridden identically everywhere is no swept key, nor is one that NOT_METHOD excludes
    assert "trainer.epochs" not in df.attrs["swept"] and "seed" not in df.attrs["swept"]


def test_swept_keys_are_found_per_optimizer(tmp_path):
    """sgd has no C: sgd and sav swept over Δt, only sav over C; sgd's C is NaN, not a setting."""
    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1]}, optimizer="sgd")
    _grid(root, {"C": [1, 10], "lr": [0.01, 0.1]})
    df = load_runs([root])
    assert df.attrs["swept"] == ["optimizer.lr", "optimizer.C"]
    runs = run_table(df)
    assert runs.loc[runs.optimizer == "sgd", "optimizer.C"].isna().all()
    sens = sensitivity.analyse(runs, "test_rel_error")
    assert sens.best.set_index("method").loc["sgd", "settings_tried"] == 2
    assert sens.best.set_index("method").loc["sav", "settings_tried"] == 4


def test_the_best_setting_is_selected_on_validation_even_where_test_disagrees(tmp_path):
    """lr=0.1 has the lower validation error, lr=0.01 the lower test error: lr=0.1 is chosen,
    and its own test error (not the better one) is what the table reports beside it."""
    def make(hp, seed):
        good_val = hp["lr"] == 0.1
        return {"train": _decay(1.0), "val": _decay(2.0 if good_val else 1.0),
                "test": _decay(1.0 if good_val else 2.0, start=1.0 + 0.01 * seed)}

    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1]}, seeds=(0, 1, 2), make=make)
    sens = sensitivity.analyse(run_table(load_runs([root])), "test_rel_error")
    best = sens.best.iloc[0]
    assert best["optimizer.lr"] == 0.1 and best["selected_on"] == "final val_rel_error"
    assert best["select_median"] == pytest.approx(math.exp(-6.0))
    assert best["test_median"] == pytest.approx(1.01 * math.exp(-3.0))                   # lr=0.1's test error
    assert best["test_min"] == pytest.approx(math.exp(-3.0)) and best["test_max"] == pytest.approx(1.02 * math.exp(-3))
    assert best["seeds"] == 3
    md = sensitivity.best_markdown(sens.best, sens.selections, sens.keys)
    assert "selected on the median over seeds of the final val_rel_error" in md and "never selected on" in md


def test_without_a_validation_split_it_ranks_by_train_loss_and_says_so(tmp_path):
    def make(hp, seed):
        return {"train": _decay(2.0 if hp["lr"] == 0.1 else 1.0), "test": _decay(1.0 if hp["lr"] == 0.1 else 2.0)}

    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1]}, make=make)
    out = tmp_path
    built, printed = cli.build_tables(load_runs([root]), "test_rel_error", 1e-3)
    for name in ("best.csv", "best.md"):
        built["files"][name](out / name)
    assert "no validation split in these runs: ranked by train_loss" in printed[0]
    best = pd.read_csv(out / "best.csv")
    assert best["optimizer.lr"].tolist() == [0.1] and best["selected_on"].tolist() == ["final train_loss"]
    assert "no validation split in these runs: ranked by train_loss" in (out / "best.md").read_text()


def test_accuracy_is_selected_highest(tmp_path):
    def make(hp, seed):
        acc = [0.1, 0.5, 0.8, 0.9 if hp["lr"] == 0.01 else 0.5]
        return {"train": _decay(1.0), "val": _decay(1.0),
                "extra": {"train_accuracy": acc, "val_accuracy": acc, "test_accuracy": acc}}

    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1]}, make=make)
    sens = sensitivity.analyse(run_table(load_runs([root])), "test_accuracy")
    assert sens.best.iloc[0]["optimizer.lr"] == 0.01 and sens.best.iloc[0]["select_median"] == pytest.approx(0.9)


def test_a_seed_that_diverged_counts_as_the_worst_value(tmp_path):
    """lr=0.1: one seed reaches 1e-6, the other diverges (median over 2 seeds: diverged);
    lr=0.01: both seeds at 1e-2. The setting that trains every time wins."""
    def make(hp, seed):
        if hp["lr"] == 0.1:
            v = [1.0, 1e-3, 1e-6] if seed == 0 else [1.0, 10.0, math.nan]
            return {"train": v, "val": v, "status": "completed" if seed == 0 else "diverged"}
        return {"train": [1.0, 0.1, 1e-2], "val": [1.0, 0.1, 1e-2]}

    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1]}, make=make)
    sens = sensitivity.analyse(run_table(load_runs([root])), "test_rel_error")
    assert sens.best.iloc[0]["optimizer.lr"] == 0.01
    lr01 = sens.settings.set_index("optimizer.lr").loc[0.1]
    assert math.isinf(lr01["select_median"]) and lr01["diverged"] == 1 and lr01["seeds_finite"] == 1


def test_diverged_and_frozen_runs_are_marked_in_the_sensitivity_figure_not_dropped(tmp_path, monkeypatch):
    """The diverged run is in the run table (diverged) and drawn as × on the top edge at its
    Δt; the frozen one (q collapsed) as a hollow ○ at its value."""
    def make(hp, seed):
        if hp["lr"] == 1.0 and seed == 1:
            return {"train": [1.0, 10.0, math.nan], "val": [1.0, 10.0, math.nan], "status": "diverged"}
        if hp["lr"] == 0.01 and seed == 0:
            return {"train": [1.0, 0.5, 0.4], "val": [1.0, 0.5, 0.4], "q": [math.nan, 0.5, 1e-4]}
        return {"train": [1.0, 0.1, 0.01], "val": [1.0, 0.1, 0.01]}

    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1, 1.0]}, make=make)
    runs = run_table(load_runs([root]))
    assert len(runs) == 6
    assert runs.set_index(["optimizer.lr", "seed"]).loc[(1.0, 1), "diverged"]
    assert runs.set_index(["optimizer.lr", "seed"]).loc[(0.01, 0), "frozen"]
    sens = sensitivity.analyse(runs, "test_rel_error")
    drawn = []
    plt = sensitivity._plt()
    monkeypatch.setattr(plt, "close", drawn.append)        # keep the figures to inspect
    paths = sensitivity.draw(sens, "test_rel_error", tmp_path)
    assert {p.name for p in paths} == {"sensitivity_lr.png", "frontier.png"}
    fig = drawn[0]
    ax = fig.axes[0]                       # final val_rel_error against lr: what the best setting is selected on
    assert "val_rel_error" in ax.get_title()
    assert ax.get_xscale() == "log"
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [1.0] and list(crosses[0].get_ydata()) == [1.0]
    assert crosses[0].get_transform() == ax.get_xaxis_transform()      # y in axes fraction: the top edge
    hollow = [ln for ln in ax.lines if ln.get_marker() == "o" and ln.get_markerfacecolor() == "none"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [0.01]
    assert hollow[0].get_ydata()[0] == pytest.approx(0.4)               # at its (validation) value


def test_the_frontier_is_the_largest_step_at_which_most_seeds_train(tmp_path):
    """Hand-computed, per C:
    C=1:   0.01 trains, 0.1 trains, 0.3 one seed of two diverged (not most), 1 both diverged
           → 0.1, fails at 0.3;
    C=10:  0.01 trains, 0.1 both frozen, 0.3 trains, 1 no progress (ends above its start)
           → 0.3, fails at 1, also fails at 0.1;
    C=100: every Δt trains → ≥ 1 (a lower bound)."""
    def make(hp, seed):
        C, lr = hp["C"], hp["lr"]
        if C == 1 and (lr == 1.0 or (lr == 0.3 and seed == 1)):
            return {"train": [1.0, 10.0, math.nan], "status": "diverged"}
        if C == 10 and lr == 0.1:
            return {"train": [1.0, 0.5, 0.4], "q": [math.nan, 0.5, 1e-4]}
        if C == 10 and lr == 1.0:
            return {"train": [1.0, 0.5, 2.0]}
        return {"train": [1.0, 0.1, 0.01]}

    root = _grid(tmp_path / "s", {"C": [1, 10, 100], "lr": [0.01, 0.1, 0.3, 1.0]}, make=make)
    front = sensitivity.frontier_table(sensitivity.with_family(run_table(load_runs([root])))).set_index("optimizer.C")
    assert front["largest_trains"].tolist() == [0.1, 0.3, 1.0]
    assert front.loc[1.0, "fails_at"] == 0.3 and front.loc[1.0, "why"] == "1/2 diverged, 1/2 trains"
    assert front.loc[10.0, "fails_at"] == 1.0 and front.loc[10.0, "why"] == "2/2 no progress"
    assert front.loc[10.0, "also_fails_at"] == "0.1"
    assert math.isnan(front.loc[100.0, "fails_at"]) and front.loc[100.0, "bound"].startswith("lower bound")
    md = sensitivity.frontier_markdown(front.reset_index())
    assert "| sav | 100 | ≥ 1 |" in md and "| sav | 1 | 0.1 | 0.3 |" in md


def test_a_run_whose_r_collapsed_after_its_error_fell_tenfold_still_trains(tmp_path):
    """fig7's SAV: r collapses once the error has fallen a hundredfold; that Δt trains. A
    collapse before a tenfold fall is frozen."""
    def make(hp, seed):
        if hp["lr"] == 0.1:
            return {"train": [1.0, 1e-2, 1e-3], "q": [math.nan, 0.5, 1e-4]}     # fell 1000×, then collapsed
        if hp["lr"] == 1.0:
            return {"train": [1.0, 0.5, 0.2], "q": [math.nan, 0.5, 1e-4]}      # collapsed at 0.2 of its start
        return {"train": [1.0, 0.1, 1e-2]}

    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1, 1.0]}, make=make)
    runs = run_table(load_runs([root]))
    assert runs.set_index(["optimizer.lr", "seed"]).loc[(0.1, 0), "frozen"]     # flagged, and drawn ○
    front = sensitivity.frontier_table(sensitivity.with_family(runs))
    assert front["largest_trains"].tolist() == [0.1] and front["why"].tolist() == ["2/2 frozen"]


def test_a_search_gets_one_frontier_per_method_not_one_row_per_trial(tmp_path):
    """An Optuna search draws a new (C, Δt) per trial: the frontier is taken over all its
    trials (30 here), the other keys not held fixed."""
    rng = np.random.default_rng(1)
    root = tmp_path / "search"
    for j, (C, lr) in enumerate(zip(10 ** rng.uniform(-2, 3, 30), 10 ** rng.uniform(-3, 1, 30))):
        diverges = lr > 1
        make_job(root / str(j), seed=0, hp={"C": float(C), "lr": float(lr)},
                 train=[1.0, 10.0, math.nan] if diverges else [1.0, 0.1, 0.01],
                 status="diverged" if diverges else "completed")
    runs = run_table(load_runs([root]))
    front = sensitivity.frontier_table(sensitivity.with_family(runs))
    lrs = runs["optimizer.lr"]
    assert len(front) == 1 and "optimizer.C" not in front.columns
    assert front["largest_trains"].iloc[0] == pytest.approx(lrs[lrs <= 1].max())
    assert front["fails_at"].iloc[0] == pytest.approx(lrs[lrs > 1].min())


def test_many_settings_test_and_draw_each_methods_best_only(tmp_path):
    """12 settings of one method: the paired tests cover the best 8 (28 pairs, not 66), the
    best table and the frontier are printed first."""
    root = _grid(tmp_path / "s", {"C": [1, 10, 100], "lr": [0.01, 0.03, 0.1, 0.3]},
                 make=lambda hp, seed: {"train": _decay(hp["lr"] * 10), "val": _decay(hp["lr"] * 10 / hp["C"] ** 0.1)})
    df = load_runs([root])
    built, printed = cli.build_tables(df, "test_rel_error", 1e-3)
    assert len(built["sens"].shown) == 8 and built["many"]
    assert printed[0].startswith("Best setting per method (fig7)") and "\n\nStability frontier (fig7)" in printed[0]
    assert "the best 8 of 12 settings" in printed[1]
    sig = cli.build_tables(df, "test_rel_error", 1e-3)[0]["files"]["significance.csv"]
    sig(tmp_path / "sig.csv")
    pairs = pd.read_csv(tmp_path / "sig.csv")
    assert len(pairs) == 28 and set(pairs.method_a) | set(pairs.method_b) <= built["sens"].shown
    # the 8 shown are the best by validation: the lr=0.3 row of every C, not lr=0.01
    shown = df[df.method.isin(built["sens"].shown)]
    assert 0.3 in set(shown["optimizer.lr"]) and 0.01 not in set(shown["optimizer.lr"])


def test_a_bad_row_or_an_older_header_costs_one_run_or_nothing(tmp_path):
    """The loader parses files with one header together; one that does not parse is read alone
    (and named), one with another header (a run from before the val split) loads beside."""
    root = _grid(tmp_path / "s", {"lr": [0.01, 0.1]}, make=lambda hp, seed: {"train": _decay(1.0), "val": _decay(1.0)})
    make_job(root / "old", hp={"lr": 0.3})                             # no val_* columns
    with open(root / "0" / "metrics.csv", "a") as f:
        f.write("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21\n")  # too many fields
    df = load_runs([root])
    assert len(df.attrs["skipped"]) == 1 and "s/0/metrics.csv" in df.attrs["skipped"][0]
    assert df.run_dir.nunique() == 4 and df.loc[df.run_dir.str.endswith("old"), "val_rel_error"].isna().all()
    assert df.groupby("run_dir").size().tolist() == [4, 4, 4, 3]
    assert (df.groupby("run_dir")["epoch"].apply(lambda e: e.is_monotonic_increasing)).all()


@pytest.mark.slow
def test_the_report_of_a_sweep_writes_the_sensitivity_outputs_first(tmp_path, capsys):
    root = _grid(tmp_path / "s", {"C": [1, 10], "lam": [0, 4], "lr": [0.01, 0.1, 1.0]},
                 make=lambda hp, seed: ({"train": [1.0, 10.0, math.nan], "val": [1.0, 10.0, math.nan],
                                         "status": "diverged"} if hp["lr"] == 1.0 else
                                        {"train": _decay(hp["lr"] * 10), "val": _decay(hp["lr"] * 10)}))
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("best.csv", "best.md", "frontier.csv", "frontier.md", "frontier.png", "sensitivity_C.png",
                 "sensitivity_lam.png", "sensitivity_lr.png", "map_C_lam.png", "map_C_lr.png", "map_lam_lr.png",
                 "fig7_curves.png", "data.csv", "runs.csv", "summary.md", "significance.csv"):
        assert (out / name).stat().st_size > 0, name
    assert printed.index("Best setting per method") < printed.index("Stability frontier") < printed.index("Per method")
    data = pd.read_csv(out / "data.csv")
    assert {"optimizer.C", "optimizer.lam", "optimizer.lr"} <= set(data.columns)
    assert data.groupby("optimizer.lr")["run_dir"].nunique().to_dict() == {0.01: 8, 0.1: 8, 1.0: 8}
    assert "optimizer.lr" in pd.read_csv(out / "runs.csv").columns
    front = pd.read_csv(out / "frontier.csv")
    assert front["largest_trains"].tolist() == [0.1] * 4 and front["fails_at"].tolist() == [1.0] * 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]       # no staging folder left


# --- an --out that cannot be written ------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    return _grid(tmp_path / "s", {"lr": [0.01, 0.1]}, seeds=(0,))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradflow-report: error: --out ") and "Traceback" not in err[0], err
    return err[0]


def test_out_is_an_existing_file(tmp_path, small, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    assert main([str(small), "--out", str(f)]) == 2
    assert "not a directory" in _one_error_line(capsys) and f.read_text() == "mine"


def test_out_under_a_file(tmp_path, small, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    assert main([str(small), "--out", str(f / "a" / "b")]) == 2
    assert "Not a directory" in _one_error_line(capsys) and f.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_out_is_read_only(tmp_path, small, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main([str(small), "--out", str(ro / "report")]) == 2
        assert "Permission denied" in _one_error_line(capsys) and not list(ro.iterdir())
        assert main([str(small), "--out", str(ro)]) == 2
        _one_error_line(capsys)
    finally:
        ro.chmod(0o755)


def test_a_full_disk_leaves_nothing_half_written(tmp_path, small, capsys, monkeypatch):
    """data.csv's writer runs out of space halfway: exit 2, one line, no data.csv (nor any other
    file of this report) in --out, the folder it made removed; a previous report's files stay."""
    real = pd.DataFrame.to_csv

    def full(self, path=None, *args, **kwargs):
        if path is not None and Path(path).name == "data.csv":
            Path(path).write_text("run_dir,exp")        # a truncated start, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "new" / "report"
    assert main([str(small), "--out", str(out)]) == 2
    assert "No space left on device" in _one_error_line(capsys)
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "data.csv").write_text("the previous report")
    assert main([str(small), "--out", str(old)]) == 2
    _one_error_line(capsys)
    assert [p.name for p in old.iterdir()] == ["data.csv"] and (old / "data.csv").read_text() == "the previous report"


def test_a_figure_that_cannot_be_saved_takes_the_tables_with_it(tmp_path, small, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "report"
    out.mkdir()
    assert main([str(small), "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert not list(out.iterdir())


@pytest.mark.slow
def test_a_sweep_of_a_hundred_jobs_reports_its_best_and_tests_the_best_eight(tmp_path):
    """100 fabricated jobs (λ × Δt × 4 seeds at C = 1): the best setting trains fastest
    without diverging; 25 settings, so the paired tests cover the best 8 (28 pairs). Its
    speed at 500 jobs is measured by scripts/bench_report.py, not here."""
    root = fabricate_sweep(tmp_path / "s", n_jobs=100)
    df = load_runs([root])
    assert df.run_dir.nunique() == 100 and len(df) == 100 * 20
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    best = pd.read_csv(tmp_path / "out" / "best.csv")
    assert len(best) == 1 and best["optimizer.lr"].iloc[0] == 0.3     # 1.0 diverges; the fastest that trains
    assert best["optimizer.lam"].iloc[0] == 8                          # λ speeds the fabricated decay
    assert len(pd.read_csv(tmp_path / "out" / "significance.csv")) == 28


# --- W&B: swept keys as top-level config values ------------------------------------------------

def test_swept_keys_become_top_level_wandb_config(tmp_path):
    """Each key set on the command line under its dotted name with its resolved value; ``swept``
    lists those the sweep varied (its multirun.yaml: a comma list on the command line, a search
    space in the experiment's sweeper params, a replica list), seeds and logging keys left out."""
    from gradflow_exp.run.sinks import is_sweep, swept_config

    assert is_sweep("1,10,100") and is_sweep("tag(log, interval(1e-3, 1.0))") and is_sweep("range(0,3)")
    assert not is_sweep("[1,2]") and not is_sweep("0.1") and not is_sweep("'a,b'")
    sweep = tmp_path / "sweep"
    (sweep / "3").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"params": {"optimizer": "sgd,sav,spm_sgd,spm_sav", "optimizer.lam": "interval(0, 10)"}},
        "overrides": {"task": ["experiment=fig7", "optimizer=sav", "optimizer.C=1,10", "optimizer.lr=0.1",
                               "seed=0,1", "replicas.eta=[0.5,0.9]", "trainer.epochs=20", "logger=wandb"]}}}))
    resolved = {"seed": 1, "name": "fig7", "optimizer": {"_target_": "gradflow_exp.optim.SAV", "lr": 0.1, "C": 10,
                                                         "lam": 2.5, "eta": 0.9}, "trainer": {"epochs": 20}}
    job = ["experiment=fig7", "optimizer=sav", "optimizer.C=10", "optimizer.lr=0.1", "optimizer.lam=2.5",
           "seed=1", "optimizer.eta=0.9", "trainer.epochs=20", "logger=wandb"]
    got = swept_config(resolved, job, sweep / "3")
    assert got == {"optimizer.C": 10, "optimizer.lr": 0.1, "optimizer.lam": 2.5, "optimizer.eta": 0.9,
                   "trainer.epochs": 20, "swept": ["optimizer.C", "optimizer.lam", "optimizer.eta"]}
    # the command line's optimizer=sav beats the experiment's method set: not swept; optimizer=a,b is
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["optimizer=sgd,adam"]}}}))
    assert swept_config({"optimizer": {"lr": 0.1}}, ["optimizer=adam"], sweep / "3")["swept"] == ["method"]
    assert swept_config({"optimizer": {"lr": 0.1}}, ["optimizer.lr=0.1"], tmp_path / "single")["swept"] == ["optimizer.lr"]


@pytest.mark.slow
def test_a_sweeps_wandb_runs_carry_their_swept_keys(tmp_path, monkeypatch):
    """Read back from the offline W&B run (wandb's own records): the nested config is kept and
    the swept key is a top-level value, listed in ``swept``."""
    from gradflow_exp.run.sinks import offline_runs, read_offline
    from helpers import hydra_inprocess

    sweep = tmp_path / "sweep"
    hydra_inprocess("-m", "experiment=fig7", "dataset.M=300", "trainer.progress=false", "threads=1", "logger=wandb",
                    "logger.mode=offline", "optimizer=sgd", "optimizer.lr=0.01,0.1", "trainer.epochs=1",
                    f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch)
    for job, lr in (("0", 0.01), ("1", 0.1)):
        (run,) = offline_runs(sweep / job / "wandb")
        config = {}
        for rec in read_offline(run):
            if rec.get("type") == "run":
                config.update(((rec.get("run") or {}).get("config") or {}).get("update") or {})
        assert config["optimizer.lr"] == lr and config["swept"] == ["optimizer.lr"]
        assert config["optimizer"]["lr"] == lr and config["method"] == "sgd"
