"""An Optuna search's own figures, from the study its sweep stored (``<sweep dir>/optuna.db``,
hydra_plugins/gradflow_optuna): history, slice, contour and parameter importances, drawn
with optuna's matplotlib backend (no plotly).

The objective is a validation error (README, "Validation"). Trials that diverged returned
inf; they are counted in the history's title and left out of the plots, whose log axes
and importance fits cannot hold them. Importances are the random forest's mean decrease in
impurity (seeded): optuna 2's default, fANOVA, fails on this numpy.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

log = logging.getLogger("gradflow_exp")
DB_NAME = "optuna.db"
LOG_TARGET = "log10 validation error"


def _log10(trial) -> float:
    """Contours and importances on log10 of the error, which spans decades across a search."""
    return math.log10(trial.value) if trial.value > 0 else -math.inf


def find_studies(dirs: list[Path]) -> list[Path]:
    """Every stored study under ``dirs`` (a sweep directory holds at most one database)."""
    out = []
    for d in dirs:
        d = Path(d)
        out += [d / DB_NAME] if (d / DB_NAME).is_file() else sorted(d.rglob(DB_NAME))
    return sorted(set(out))


class StudyUnreadable(Exception):
    """A database that is no optuna study, or optuna not installed: a warning, not the end."""


def draw(db: Path, write) -> list[str]:
    """The figures of every study in ``db``; ``write(name, figure)`` saves one. Returns the
    names written, and says in the log what could not be drawn (too few finite trials)."""
    import matplotlib.pyplot as plt

    try:
        import optuna
    except ImportError:
        raise StudyUnreadable(f"{db}: optuna is not installed (the [hparams] extra); its study is not drawn") from None
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.ERROR)    # its "differs from the Plotly plot" notes
    storage = f"sqlite:///file:{Path(db).resolve()}?mode=ro&uri=true"    # read only: the report writes no input
    names = []
    if Path(db).stat().st_size == 0:
        log.warning("%s is empty: no study to draw", db)
        return names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", DeprecationWarning)      # SQLAlchemy 1.4's notes on 2.0
        try:
            summaries = optuna.get_all_study_summaries(storage)
        except Exception as e:  # noqa: BLE001 - not a study (or not readable): say so, draw the rest
            raise StudyUnreadable(f"{db} is not a readable optuna study ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160]})") from None
        for summary in summaries:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            finite = _finite_copy(study)
            n_all = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            n = len(finite.trials)
            prefix = f"optuna_{summary.study_name}"
            if n == 0:
                log.warning("%s: no trial with a finite objective; nothing to draw", db)
                continue
            plots = {"history": lambda: ovm.plot_optimization_history(finite),
                     "slice": lambda: ovm.plot_slice(finite)}
            if n >= 2 and len(finite.best_trial.params) >= 2:
                plots["contour"] = lambda: _pairs(finite)
            if n >= 3:
                plots["importances"] = lambda: _importances(finite)
            for kind, plot in plots.items():
                try:
                    axes = plot()
                except Exception as e:  # noqa: BLE001 - one plot optuna cannot draw: the others still are
                    log.warning("%s: optuna could not draw its %s plot: %s", db, kind, e)
                    continue
                ax = axes.flat[0] if hasattr(axes, "flat") else axes
                fig = ax.figure
                if kind in ("history", "slice"):
                    for a in (axes.flat if hasattr(axes, "flat") else [axes]):
                        a.set_yscale("log")
                        a.set_ylabel("objective (validation)")
                if kind == "history":
                    ax.set_title(f"{summary.study_name}: {n} finite of {n_all} trials"
                                 + (f" ({n_all - n} diverged or failed, not drawn)" if n_all > n else ""))
                write(f"{prefix}_{kind}.png", fig)
                plt.close(fig)
                names.append(f"{prefix}_{kind}.png")
    return names


def _pairs(study):
    """Every pair of parameters, each trial a dot coloured by log10 of its objective, the
    best ringed (optuna 2's matplotlib contour interpolates a 100 × 100 grid in Python
    loops: 20 s a plot)."""
    import itertools

    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted(study.best_trial.params)
    pairs = list(itertools.combinations(names, 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
    z = np.array([_log10(t) for t in study.trials])
    best = study.best_trial
    for ax, (a, b) in zip(axes.flat, pairs):
        xs = np.array([t.params.get(a, np.nan) for t in study.trials], dtype=float)
        ys = np.array([t.params.get(b, np.nan) for t in study.trials], dtype=float)
        sc = ax.scatter(xs, ys, c=z, cmap="viridis_r", s=36, edgecolors="k", linewidths=0.3)
        ax.scatter([best.params[a]], [best.params[b]], s=160, facecolors="none", edgecolors="red", linewidths=1.5)
        for axis, v in ((ax.set_xscale, xs), (ax.set_yscale, ys)):
            if np.nanmin(v) > 0 and np.nanmax(v) / np.nanmin(v) > 20:
                axis("log")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
    fig.colorbar(sc, ax=list(axes.flat), label=LOG_TARGET)
    fig.suptitle(f"trials by pair of parameters ({len(study.trials)}; best ringed)")
    return axes


def _importances(study):
    """Bars of each parameter's importance to log10 of the objective (optuna 2's own plot
    calls a matplotlib function that matplotlib 3.9 removed)."""
    import matplotlib.pyplot as plt
    import optuna

    imp = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0), target=_log10)
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[k] for k in names], color="tab:blue")
    for y, k in enumerate(names):
        ax.text(imp[k], y, f" {imp[k]:.2f}", va="center")
    ax.set_xlim(0, 1.15)
    ax.set_xlabel(f"importance for {LOG_TARGET} (mean decrease in impurity)")
    ax.set_title(f"parameter importances ({len(study.trials)} trials)")
    return ax


def _finite_copy(study):
    """The study's complete trials with a finite objective, in an in-memory study."""
    import optuna

    copy = optuna.create_study(directions=study.directions)
    copy.add_trials([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                     and t.values is not None and all(math.isfinite(v) for v in t.values)])
    return copy
