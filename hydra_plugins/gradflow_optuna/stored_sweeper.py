"""Hydra's Optuna sweeper with its study stored in the sweep directory, so that a search
killed or stopped midway is continued by the same command (conf/hparams_search/*.yaml).

- ``storage: null`` (the default here) stores the study in ``<sweep dir>/optuna.db``
  (SQLite); a given ``hydra.sweeper.storage`` URL is used as it is.
- ``n_trials`` counts the study's complete trials: a rerun runs only those still to go
  (none for a complete study, which then only writes its best).
- A trial left running by a killed search is marked failed and its point is asked again
  first: the search loses that trial's epochs, never the point it was trying. One whose job
  had already ended (its summary.json says so: a batch of ``n_jobs`` killed midway) is
  told its objective instead.
- Job directories keep their trial's number (``<sweep dir>/<trial number>``), so a rerun
  never meets a directory of another trial (gradflow_exp/run/rundir.py would refuse it).
- A continued search draws new points: the sampler is reseeded from its seed and the
  number of trials so far (the same seed alone would propose the first points again).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

# Hydra imports every module here to find its plugins: optuna (and SQLAlchemy's warnings)
# is imported only once a search starts.
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)
DB_NAME = "optuna.db"


class StoredOptunaSweeper(OptunaSweeper):
    """`OptunaSweeper` whose study lives in the sweep directory (see the module's docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        logging.getLogger("alembic").setLevel(logging.WARNING)    # SQLite schema set-up lines
        impl = self.sweeper
        sweep_dir = Path(str(impl.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if impl.storage is None:
            impl.storage = f"sqlite:///{(sweep_dir / DB_NAME).resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)     # its "Using an existing study" line
        study = optuna.create_study(study_name=impl.study_name, storage=impl.storage,
                                    directions=impl._get_directions(), load_if_exists=True)
        # The sweep directory is locked while a search runs (gradflow_exp/commands/cli.py), so
        # a trial still marked running was cut short by a kill.
        stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        again = []
        for t in stale:
            value = _finished_value(sweep_dir / str(t.number), impl.config)
            if value is not None:          # its job had ended (a batch of n_jobs killed): told, not rerun
                study.tell(t.number, value)
            else:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                again.append(t)
        impl.job_idx = len(study.trials)        # the next trial's number (an enqueued one's too)
        with warnings.catch_warnings():         # enqueue_trial is "experimental" in optuna 2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for t in again:
                study.enqueue_trial(t.params)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        total = impl.n_trials
        impl.n_trials = max(0, total - len(done))
        if len(study.trials) > len(again):
            _reseed(impl.sampler, impl.config.hydra.sweeper.sampler.get("seed"), len(study.trials))
            log.info("Optuna study %r in %s: %d of %d trials complete%s; %d to go", study.study_name,
                     impl.storage, len(done), total,
                     f", {len(again)} cut short by a stopped search asked again" if again else "",
                     impl.n_trials)
        if impl.n_trials == 0 and done:
            _write_best(study, sweep_dir)
            return None
        _write_record(impl.config, sweep_dir)
        return impl.sweep(arguments)


def _write_record(config: Any, sweep_dir: Path) -> None:
    """multirun.yaml, as Hydra's basic sweeper writes it: the search space
    (``hydra.sweeper.params``) and the command line, which say which keys a trial's W&B run
    lists as swept (gradflow_exp/run/sinks.py)."""
    from omegaconf import OmegaConf

    OmegaConf.save(config, sweep_dir / "multirun.yaml")


def _finished_value(job_dir: Path, config: Any) -> float | None:
    """The objective of a trial whose job ended before the search was killed (its
    summary.json says so), None when it did not end."""
    import json

    try:
        summary = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") in (None, "running", "interrupted"):
        return None
    from gradflow_exp.run.job import objective

    return objective(summary, str(config.get("hparams_objective", "final")))


def _reseed(sampler: Any, seed: int | None, n_trials: int) -> None:
    """A continued search's sampler on a stream of its own (optuna 2.x keeps it in ``_rng``,
    and its fallback sampler's in theirs); a grid sampler has none."""
    import numpy as np

    parts = [sampler, *(getattr(sampler, a, None) for a in ("_random_sampler", "_independent_sampler"))]
    parts = [p for p in parts if p is not None and hasattr(p, "_rng")]
    if seed is None:
        for p in parts:
            p.reseed_rng()
        return
    state = int(np.random.SeedSequence([int(seed), n_trials]).generate_state(1)[0])
    for p in parts:
        p._rng = np.random.RandomState(state)


def _write_best(study: Any, sweep_dir: Path) -> None:
    from omegaconf import OmegaConf

    best = study.best_trial
    log.info("Best parameters: %s", best.params)
    log.info("Best value: %s", best.value)
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value}),
                   sweep_dir / "optimization_results.yaml")
