"""Replicas: several seeds, or several values of Δt, C, λ or η, trained as one batch in ONE process.

    gradflow-train experiment=fig7 optimizer=sav replicas.seeds=[0,1,2]
    gradflow-train experiment=fig2 optimizer=sgd replicas.seeds=[0,1] replicas.lr=[0.1,0.2]

Why. On the paper's small nets a step is a few small matmuls plus a few hundred µs of
per-step Python and dispatch work (closure, optimizer, hooks). R single runs pay that R
times; a batch of R replicas pays it once per step for all of them.

How. Each replica is built exactly as the single run ``… seed=S`` builds it
(gradflow_exp/run/build.py on that run's config): its own data set drawn from S, its
initialisation after ``seed_everything(S)``, its own batch order. The replicas are then one
batch on the one run path (gradflow_exp/run/batch.py): the models stacked and trained by the
loop (`gradflow_exp.training.loop.Stacked`) with the same optimizer class, built once for all with
``replicas=R`` (`gradflow_exp.optim.build_replica_optimizer`): every update is the single
run's code, with a replica dimension (gradflow_exp/optim/base.py, "Replicas"). So a
replica's trajectory is its single run's to rounding (tests/test_replicas.py checks rtol 1e-9).

What this module keeps is what is particular to replicas: expanding the ``replicas`` lists
into single-run configs, one run directory per replica (``<run dir>/seed_<S>[-lr_<v>…]/``,
written as its single run's: metrics.csv, summary.json, ``.hydra/`` with the single run's
config and overrides, checkpoints a single run can resume, and vice versa), the job's
summary for a sweeper, and the methods that cannot be stacked: full-Jacobian IEQ (a
batch × batch solve per step), LAMB (its trust ratio mixes a parameter's entries), a
reduce-on-plateau schedule (a decision per run), a schedule with per-replica Δt.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import math
import statistics
from pathlib import Path

import hydra.utils
from omegaconf import DictConfig, open_dict, read_write

from gradflow_exp.run.batch import Member, train_together
from gradflow_exp.run.rundir import Lock, write_record
from gradflow_exp.config.schema import ConfigError
from gradflow_exp.training.metrics import SELECT_ON

HPARAMS = ("lr", "C", "lam")          # optimizer keys that may vary across replicas


def requested(resolved: dict) -> bool:
    """True when the (resolved) config asks for replicas (any list under ``replicas``)."""
    node = resolved.get("replicas") or {}
    return any(node.get(k) is not None for k in ("seeds", *HPARAMS))


def expand(cfg: DictConfig) -> list[Member]:
    """The replicas a config asks for: seeds × each listed hyperparameter (a product)."""
    node = cfg.replicas
    seeds = list(node.seeds) if node.get("seeds") is not None else [cfg.seed]
    axes = [(k, list(node[k])) for k in HPARAMS if node.get(k) is not None]
    out = []
    for seed, *values in itertools.product(seeds, *(v for _, v in axes)):
        hp = {k: v for (k, _), v in zip(axes, values)}
        c = copy.deepcopy(cfg)
        with read_write(c), open_dict(c):
            c.seed = seed
            for k in ("seeds", *HPARAMS):
                c.replicas[k] = None
            for k, v in hp.items():
                c.optimizer[k] = v
        name = "-".join([f"seed_{seed}"] + [f"{k}_{v}" for k, v in hp.items()])
        out.append(Member(seed, hp, name, c))
    return out


def check_supported(cfg: DictConfig, replicas: list[Member]) -> None:
    """What replicas cannot share, refused before anything is built (ConfigError, one
    line); the optimizer's own limits are `build_replica_optimizer`'s."""
    sched = cfg.get("scheduler") or {}
    if sched.get("name") == "plateau":
        raise ConfigError("replicas: scheduler=plateau decides per run (on its own loss); run the replicas "
                          "as a -m sweep, or use another schedule")
    if sched.get("name", "none") != "none" and len({float(r.cfg.optimizer.lr) for r in replicas}) > 1:
        raise ConfigError("replicas: a schedule over per-replica Δt is not supported; batch the seeds and "
                          "sweep lr with -m")


def run(cfg: DictConfig, resolved: dict, run_dir: Path, record: dict) -> dict:
    """A replica-mode job: its replicas trained together (gradflow_exp/run/batch.py) into
    ``run_dir/<replica>``; returns the job's summary (`aggregate`)."""
    replicas = expand(cfg)
    check_supported(cfg, replicas)
    target = hydra.utils.get_class(cfg.optimizer._target_)
    for key in replicas[0].hparams:
        if key not in inspect.signature(target.__init__).parameters:
            raise ConfigError(f"replicas.{key}: {target.__name__} has no hyperparameter {key}")
    for k, rep in enumerate(replicas):
        rep.dir = run_dir / rep.name
        rep.overrides = _replica_overrides(record.get("overrides") or [], rep)
        rep.cfg_name = ",".join(sorted(rep.overrides)) or "default"
        rep.hydra = record.get("hydra")
        rep.in_batch = {"batch_dir": str(run_dir), "index": k, "of": len(replicas)}
    with Lock(run_dir):
        train_together(cfg, replicas, batch_dir=run_dir)
        write_record(run_dir, resolved, record.get("overrides"), record.get("hydra"))
    return aggregate(replicas)


def aggregate(replicas: list[Member]) -> dict:
    """The job's summary for the entry point and sweepers: status ``completed`` only when
    every replica completed (else interrupted / failed / diverged, in that order of
    precedence), final and best validation and test relative errors the means over replicas."""
    summaries = {r.name: r.summary or {"status": "failed"} for r in replicas}
    statuses = [s.get("status") for s in summaries.values()]
    status = next((s for s in ("interrupted", "failed", "diverged") if s in statuses), "completed")

    def mean(which, metric):
        vals = [s.get(which, {}).get(metric) for s in summaries.values()]
        vals = [v for v in vals if isinstance(v, (int, float))]
        return statistics.fmean(vals) if vals else math.nan

    return {"status": status, **{which: {m: mean(which, m) for m in (SELECT_ON, "test_rel_error")}
                                 for which in ("final", "best")}, "replicas": summaries}


def _replica_overrides(parent: list[str], rep: Member) -> list[str]:
    """The single run's overrides: the batch's, with ``replicas.*`` (and the seed and the
    varied hyperparameters) replaced by this replica's values."""
    drop = {"seed", "replicas", *(f"optimizer.{k}" for k in rep.hparams)}
    kept = [o for o in parent
            if (key := o.split("=", 1)[0].lstrip("+~")) not in drop and not key.startswith("replicas.")]
    return kept + [f"seed={rep.seed}"] + [f"optimizer.{k}={v}" for k, v in rep.hparams.items()]
