"""A figure by name is one to put beside the paper's: the paper's method names, curves that
stay apart where they coincide, a label at every decade, the paper's ◇ only where drawn, one
panel row per Δt, enough logged points, and gradflow-reproduce's closing comparison."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from gradflow_exp.report import figures, load_runs
from gradflow_exp.report.paper import compact, display_name, paper_name, points, table

FIG7 = ("sgd", "sav", "spm_sgd", "spm_sav")


def make_run(run_dir, *, optimizer="sgd", seed=0, experiment="fig7", train, test=None, lr=0.01,
             status="completed", log_every=1):
    """A run directory as the runner writes it (metrics.csv every ``log_every`` epochs,
    summary.json, .hydra records), with the given curves."""
    run_dir.mkdir(parents=True)
    train = [float(v) for v in train]
    test = [float(v) for v in (test if test is not None else [v * 1.2 for v in train])]
    epochs = [i * log_every for i in range(len(train))]
    m = pd.DataFrame({"epoch": epochs, "step": [10 * e for e in epochs], "train_loss": train,
                      "train_rel_error": train, "test_rel_error": test, "lr": lr, "wall_time": epochs})
    m.to_csv(run_dir / "metrics.csv", index=False)
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "epochs_completed": epochs[-1],
                                                      "wall_time": float(epochs[-1]), "flags": []}))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"name": experiment, "seed": seed, "optimizer": {"_target_": "x", "lr": lr},
         "trainer": {"epochs": epochs[-1], "log_every": log_every}}))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"optimizer={optimizer}", f"seed={seed}", f"optimizer.lr={lr}"]))
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"optimizer": optimizer, "experiment": experiment}}}}))
    return run_dir


def fig7_sweep(root, epochs=50, seeds=(0, 1)):
    """fig7's four methods on one curve (as they are: PM-SGD ≈ PM-SAV ≈ SPM-*)."""
    j = iter(range(100))
    curve = [1.0] + [1.5e-3 * (1 - 0.001 * e) for e in range(1, epochs + 1)]
    for optimizer in FIG7:
        for seed in seeds:
            make_run(root / str(next(j)), optimizer=optimizer, seed=seed, train=curve)
    return root


def draw(df, experiment, tmp_path, monkeypatch):
    """plot_experiment, keeping the figure to inspect."""
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    figures.plot_experiment(df, experiment, tmp_path / "out")
    (fig,) = drawn
    fig.canvas.draw()
    return fig


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def panel(fig, title):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def method_lines(ax):
    return [ln for ln in ax.lines if str(ln.get_gid() or "").startswith("method:")]


def test_the_legend_says_the_papers_names(tmp_path, monkeypatch):
    fig = draw(load_runs([fig7_sweep(tmp_path / "s")]), "fig7", tmp_path, monkeypatch)
    assert legend_texts(fig) == ["PM-SGD", "PM-SAV", "SPM-SGD", "SPM-SAV"]


def test_the_names_table_covers_every_figure_by_name():
    """Every method of every experiment's method set has a name of the paper's (never the
    choice as typed), and the other keys of a label read as the paper writes them."""
    from gradflow_exp.config import CONF_DIR

    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        for optimizer in figures.method_set(path.stem):
            assert paper_name(path.stem, optimizer) != optimizer, (path.stem, optimizer)
    assert [paper_name("fig8", o) for o in ("spm_sgd", "spm_relsav", "sgd")] == ["SPM-Euler", "SPM-RelSAV", "Euler"]
    assert [paper_name("fig10", o) for o in ("spm_adam", "adam")] == ["SPM-A-Euler", "Adam"]
    assert paper_name("fig1", "sgd") == "PM-GD" and paper_name("eval_ex1", "spm_ieq_adaptive") == "SPM-IEQ-adaptive"
    assert display_name("fig5", "spm_sav", "spm_sav lam=4") == "SPM-SAV λ=4"
    assert display_name("fig8", "spm_sav", "spm_sav lr=0.4 C=1", drop=("lr",)) == "SPM-SAV C=1"


def test_no_two_methods_share_colour_and_dash_pattern(tmp_path, monkeypatch):
    fig = draw(load_runs([fig7_sweep(tmp_path / "s")]), "fig7", tmp_path, monkeypatch)
    for title in ("train relative error", "test relative error"):
        lines = method_lines(panel(fig, title))
        looks = {(ln.get_color(), str(getattr(ln, "_unscaled_dash_pattern", ln.get_linestyle()))) for ln in lines}
        assert len(lines) == 4 and len(looks) == 4
        # earlier lines are thicker: the later, dashed ones are drawn over them and both show
        widths = [ln.get_linewidth() for ln in lines]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
        # markers at staggered epochs: no two coinciding curves put one on the same point
        starts = [ln.get_markevery()[0] for ln in lines]
        assert len(set(starts)) == 4
    # past the colours' count, the (colour, dash) pair still never repeats
    styles = figures.method_styles([f"m{i}" for i in range(len(figures.COLORS) * 3)])
    assert len({(s["color"], s["dash_name"]) for s in styles.values()}) == len(styles)


def test_the_papers_diamonds_are_in_the_legend_only_when_drawn(tmp_path, monkeypatch):
    # 50 epochs: the paper's first checkpoint (100) is not on the axis, and not in the legend
    fig = draw(load_runs([fig7_sweep(tmp_path / "short")]), "fig7", tmp_path, monkeypatch)
    assert not any(t.startswith("paper") for t in legend_texts(fig))
    assert not any(ln.get_marker() == "D" for ax in fig.axes for ln in ax.lines)
    # 150 epochs: epoch 100 is drawn, in both panels, and named once
    fig = draw(load_runs([fig7_sweep(tmp_path / "long", epochs=150, seeds=(0,))]), "fig7", tmp_path, monkeypatch)
    assert sum(t.startswith("paper: PM-SGD ≈ PM-SAV") for t in legend_texts(fig)) == 1
    for title, value in (("train relative error", 1.3e-3), ("test relative error", 1.5e-3)):
        (diamonds,) = [ln for ln in panel(fig, title).lines if ln.get_marker() == "D"]
        assert list(diamonds.get_xdata()) == [100] and list(diamonds.get_ydata()) == [value]


def _decade_labels(ax) -> dict[int, str]:
    lo, hi = ax.get_ylim()
    return {round(math.log10(t.get_position()[1])): t.get_text() for t in ax.get_yticklabels()
            if lo <= t.get_position()[1] <= hi and t.get_text()}


def test_every_decade_of_the_data_is_labelled(tmp_path, monkeypatch):
    """fig7 at 50 epochs falls from 1 to 1.5e-3 in its first epoch; matplotlib labelled
    10⁰, 10⁻¹, 10⁻² and left 10⁻³ off. Every decade in the data's range is labelled, and
    the decade under its minimum is on the axis."""
    fig = draw(load_runs([fig7_sweep(tmp_path / "s")]), "fig7", tmp_path, monkeypatch)
    for title in ("train relative error", "test relative error"):
        ax = panel(fig, title)
        labels = _decade_labels(ax)
        assert {-3, -2, -1, 0} <= set(labels), labels
        assert all("10^{" in labels[k] for k in labels)           # 10⁻³, not 0.001
        assert ax.get_ylim()[0] <= 1e-3
        assert len(ax.yaxis.get_minorticklocs()) > 0


@pytest.mark.parametrize("low, high", [(2e-5, 3e-2), (1.0e-3, 0.9), (4e-7, 5.0)])
def test_log_axis_labels_each_decade(low, high):
    import matplotlib.pyplot as plt

    values = np.geomspace(low, high, 40)
    fig, ax = plt.subplots()
    ax.plot(values)
    figures._set_scale(ax, "log", values)
    fig.canvas.draw()
    labels = _decade_labels(ax)
    plt.close(fig)
    inside = range(math.ceil(math.log10(low)), math.floor(math.log10(high)) + 1)
    assert set(inside) <= set(labels) and math.floor(math.log10(low)) in labels


def test_one_panel_row_per_dt_with_the_references_in_each(tmp_path, monkeypatch):
    """fig8: SPM {Euler, SAV} at Δt 0.4 and 1, and the reference Euler(0.01): as the paper, a
    row per Δt (train and test side by side), the reference in both, the step out of the names."""
    root = tmp_path / "s"
    j = iter(range(100))
    for optimizer in ("spm_sgd", "spm_sav"):
        for lr in (0.4, 1.0):
            make_run(root / str(next(j)), optimizer=optimizer, experiment="fig8", lr=lr,
                     train=[1.0, 0.1 * lr, 0.01 * lr])
    make_run(root / "reference_0" / "0", optimizer="sgd", experiment="fig8", lr=0.01, train=[1.0, 0.5, 0.2])
    fig = draw(load_runs([root]), "fig8", tmp_path, monkeypatch)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["train relative error, Δt = 0.4", "test relative error, Δt = 0.4",
                      "train relative error, Δt = 1", "test relative error, Δt = 1"]
    assert legend_texts(fig) == ["SPM-Euler", "SPM-SAV", "Euler(0.01)"]
    for title in titles:
        gids = [ln.get_gid() for ln in method_lines(panel(fig, title))]
        assert gids == ["method:SPM-Euler", "method:SPM-SAV", "method:Euler(0.01)"]
    # each row holds its own Δt's runs: SPM-Euler ends at 0.01·Δt
    assert method_lines(panel(fig, "train relative error, Δt = 0.4"))[0].get_ydata()[-1] == pytest.approx(0.004)
    assert method_lines(panel(fig, "train relative error, Δt = 1"))[0].get_ydata()[-1] == pytest.approx(0.01)


def test_reproduce_prints_a_row_per_paper_checkpoint(tmp_path, capsys):
    """gradflow-reproduce's last word: ours against the paper, one row per (method with a
    curve of the paper's, split, checkpoint), not-reached ones said so."""
    from gradflow_exp.commands.reproduce import print_against_paper

    fig7_sweep(tmp_path / "s", epochs=1000)
    print_against_paper(tmp_path / "s", "fig7")
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:6] == ["method", "split", "epoch", "paper",
                                                                              "ours", "ours/paper"])
    rows = [line.split() for line in lines[header + 2:] if line.strip()]
    (curve,) = points()["fig7"]
    expected = {(name, split, str(epoch)) for name in ("PM-SGD", "PM-SAV")
                for split in ("train", "test") for epoch in curve[f"{split}_rel_error"]}
    assert {(r[0], r[1], r[2]) for r in rows} == expected and len(rows) == len(expected)
    by = {(r[0], r[1], r[2]): r for r in rows}
    assert by[("PM-SGD", "train", "100")][3:6] == ["0.0013", f"{1.5e-3 * 0.9:.3g}", f"{1.5e-3 * 0.9 / 1.3e-3:.2f}"]
    assert by[("PM-SAV", "test", "2000")][4:] == ["not", "reached", "(ran", "to", "1000)"]
    # a figure the paper's values are not tabulated for says so
    print_against_paper(tmp_path / "s", "fig8")
    assert "no checkpoint values for fig8" in capsys.readouterr().out


def test_compact_table_keeps_the_rows_of_the_markdown_one(tmp_path):
    df = load_runs([fig7_sweep(tmp_path / "s", epochs=120, seeds=(0,))])
    t = table(df)
    text = compact(t, df)
    assert len(text.splitlines()) == 2 + len(t) and "✓" in text


def test_a_short_reproduce_logs_enough_points(tmp_path):
    """--epochs 50 logs every epoch (51 rows, not 6); a length the config's cadence already
    draws keeps it; the user's own cadence, or the one a sweep directory was started with, wins."""
    from gradflow_exp.commands.reproduce import MIN_POINTS, compose_experiment, log_every

    cfg = compose_experiment("fig7", [])
    assert cfg.trainer.log_every == 10
    assert log_every(50, cfg, [], tmp_path / "new") == 1
    assert log_every(200, cfg, [], tmp_path / "new") == 2          # a divisor of 10: its rows stay
    assert 200 // 2 >= MIN_POINTS > 200 // 5
    assert log_every(1000, cfg, [], tmp_path / "new") is None
    assert log_every(None, cfg, [], tmp_path / "new") is None
    assert log_every(50, cfg, ["trainer.log_every=5"], tmp_path / "new") is None
    make_run(tmp_path / "old" / "0", train=[1.0, 0.5], log_every=2)
    assert log_every(1500, cfg, [], tmp_path / "old") == 2


@pytest.mark.slow
def test_logging_more_often_changes_no_logged_number(run_inprocess):
    """The denser cadence of a short reproduce only adds rows: those both cadences log agree
    in every column but the wall time (SAV's energy and q included; SPM's draws too)."""
    frames = {}
    for optimizer in ("sav", "spm_sgd"):
        for every in (1, 3):
            _, run_dir = run_inprocess("experiment=fig7", "dataset.M=300", "threads=1", "trainer.epochs=6",
                                       f"optimizer={optimizer}", f"trainer.log_every={every}")
            frames[optimizer, every] = pd.read_csv(run_dir / "metrics.csv").set_index("epoch").drop(columns="wall_time")
        dense, sparse = frames[optimizer, 1], frames[optimizer, 3]
        assert list(sparse.index) == [0, 3, 6] and len(dense) == 7
        pd.testing.assert_frame_equal(dense.loc[sparse.index], sparse)
