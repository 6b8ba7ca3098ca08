"""gradflow-report draws the Hessian spectrum (λ_max with 2/Δt, λ_min) and the gradient SNR
when runs logged them, and only then."""
import pytest
import numpy as np
import pandas as pd

from gradflow_exp.report import load_runs
from gradflow_exp.report.cli import main
from gradflow_exp.report.figures import panels_for
from helpers import SMALL, hydra_inprocess

FIG7 = ["experiment=fig7", "dataset.M=300", "trainer.log_every=1", "threads=1", "trainer.epochs=4"]
DIAG = ["diagnostics.hessian.every=2", "diagnostics.grad_noise.every=2"]


@pytest.mark.slow
def test_spectrum_and_snr_panels(tmp_path, monkeypatch, capsys):
    hydra_inprocess("-m", *SMALL, *FIG7, "optimizer=sgd,sav", *DIAG, f"hydra.sweep.dir={tmp_path}/sweep",
                    monkeypatch=monkeypatch)
    out = tmp_path / "report"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert (out / "fig7_curves.png").read_bytes()[:4] == b"\x89PNG" and (out / "fig7_curves.pdf").is_file()
    df = load_runs([tmp_path])
    assert set(df.method) == {"sgd", "sav"}
    panels = [p[0] for p in panels_for(df)]
    assert panels[-3:] == ["hess_lambda_max", "hess_lambda_min", "grad_snr"]
    data = pd.read_csv(out / "data.csv")
    measured = data.dropna(subset=["hess_lambda_max"])
    assert sorted(set(measured.epoch)) == [0, 2, 4] and len(measured) == 6
    np.testing.assert_allclose(measured.stability_limit, 2 / measured.lr)
    assert (data.dropna(subset=["grad_snr"]).grad_snr > 0).all()


def test_no_diagnostic_panels_without_the_columns(run_inprocess, tmp_path):
    assert run_inprocess(*FIG7, "optimizer=sgd")[0]["status"] == "completed"
    panels = [p[0] for p in panels_for(load_runs([tmp_path]))]
    assert not {"hess_lambda_max", "hess_lambda_min", "grad_snr"} & set(panels)


def test_symlog_axis_over_many_decades_has_few_ticks():
    """1 − r/r̂ of both signs from 1e-10 to 1e-2 (fig1's SPM-RelSAV): ticks stride over
    decades instead of one overprinted label per decade on each side."""
    import matplotlib.pyplot as plt

    from gradflow_exp.report.figures import SYMLOG_TICKS, _set_scale

    values = np.concatenate([np.logspace(-10, -2, 50), -np.logspace(-10, -2, 50)])
    fig, ax = plt.subplots()
    ax.plot(values)
    _set_scale(ax, "symlog", values)
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    plt.close(fig)
    assert ax.get_yscale() == "symlog" and 3 <= len(ticks) <= SYMLOG_TICKS + 1
    assert 0 in ticks and min(abs(t) for t in ticks if t != 0) > 1.5e-10   # none overprinting 0


def test_log_axis_under_a_decade_labels_ticks_apart():
    """fig10's energy r² stays within 1e-4 of C = 100: four significant digits would label
    every tick "100"; the labels must differ and read back within 1 % of the tick spacing."""
    import matplotlib.pyplot as plt

    from gradflow_exp.report.figures import _set_scale

    values = np.linspace(100 - 1e-4, 100 + 1e-4, 50)
    fig, ax = plt.subplots()
    ax.plot(values)
    _set_scale(ax, "log", values)
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    ticks = [(t.get_position()[1], t.get_text()) for t in ax.get_yticklabels(minor=True)
             if lo <= t.get_position()[1] <= hi]
    plt.close(fig)
    assert len(ticks) >= 3
    spacing = min(np.diff(sorted(v for v, _ in ticks)))
    assert len({lab for _, lab in ticks}) == len(ticks)
    assert all(abs(float(lab) - v) <= 0.01 * spacing for v, lab in ticks)
