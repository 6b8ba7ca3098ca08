"""Hydra's Optuna sweeper with its study stored in the sweep directory, so that a search
killed or stopped midway is continued by the same command (conf/hparams_search/*.yaml).

- ``storage: null`` (the default here) stores the study in ``<sweep dir>/optuna.db``
  (SQLite); a given ``hydra.sweeper.storage`` URL is used as it is.
- ``n_trials`` is the study's total: trials already finished count toward it, so a rerun
  runs only those still to go (none for a complete study, which then only writes its best).
- A trial left running by a killed search is marked failed and its point is asked again
  first: the search loses that trial's epochs, never the point it was trying.
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

        impl = self.sweeper
        sweep_dir = Path(str(impl.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if impl.storage is None:
            impl.storage = f"sqlite:///{(sweep_dir / DB_NAME).resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)     # its "Using an existing study" line
        study = optuna.create_study(study_name=impl.study_name, storage=impl.storage,
                                    directions=impl._get_directions(), load_if_exists=True)
        done = [t for t in study.trials if t.state.is_finished()]
        stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        for t in stale:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        impl.job_idx = len(study.trials)        # the next trial's number (an enqueued one's too)
        with warnings.catch_warnings():         # enqueue_trial is "experimental" in optuna 2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for t in stale:
                study.enqueue_trial(t.params)
        total = impl.n_trials
        impl.n_trials = max(0, total - len(done))
        if done or stale:
            _reseed(impl.sampler, impl.config.hydra.sweeper.sampler.get("seed"), len(study.trials))
            log.info("Optuna study %r in %s: %d of %d trials finished%s; %d to go", study.study_name,
                     impl.storage, len(done), total,
                     f", {len(stale)} left running by a stopped search asked again" if stale else "",
                     impl.n_trials)
        if impl.n_trials == 0 and done:
            _write_best(study, sweep_dir)
            return None
        return impl.sweep(arguments)


def _reseed(sampler: Any, seed: int | None, n_trials: int) -> None:
    """A continued search's sampler on a stream of its own (optuna 2.x keeps it in ``_rng``)."""
    import numpy as np

    if seed is None:
        sampler.reseed_rng()
        return
    state = int(np.random.SeedSequence([int(seed), n_trials]).generate_state(1)[0])
    for s in (sampler, getattr(sampler, "_random_sampler", None)):
        if s is not None and hasattr(s, "_rng"):
            s._rng = np.random.RandomState(state)


def _write_best(study: Any, sweep_dir: Path) -> None:
    from omegaconf import OmegaConf

    best = study.best_trial
    log.info("Best parameters: %s", best.params)
    log.info("Best value: %s", best.value)
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value}),
                   sweep_dir / "optimization_results.yaml")
