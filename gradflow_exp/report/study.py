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


def draw(db: Path, write) -> list[str]:
    """The figures of every study in ``db``; ``write(name, figure)`` saves one. Returns the
    names written, and says in the log what could not be drawn (too few finite trials)."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.ERROR)    # its "differs from the Plotly plot" notes
    storage = f"sqlite:///{Path(db).resolve()}"
    names = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for summary in optuna.get_all_study_summaries(storage):
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
                plots["contour"] = lambda: ovm.plot_contour(finite, target=_log10, target_name=LOG_TARGET)
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
