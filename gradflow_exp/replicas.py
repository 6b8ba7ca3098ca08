"""Replicas: several seeds, or several values of Δt, C, λ or η, trained as one batch in ONE process.

    gradflow-train experiment=fig7 optimizer=sav replicas.seeds=[0,1,2]
    gradflow-train experiment=fig2 optimizer=sgd replicas.seeds=[0,1] replicas.lr=[0.1,0.2]

Why. On the paper's small nets a step is a few small matmuls plus a few hundred µs of
per-step Python and dispatch work (closure, optimizer, hooks). R single runs pay that R
times; a batch of R replicas pays it once per step for all of them.

How. Each replica is built exactly as the single run ``… seed=S`` builds it
(gradflow_exp/job.py's ``build`` on that run's config): its own data set drawn from S, its
initialisation after ``seed_everything(S)``, its own batch order. Then the models are
stacked and trained by the training loop itself (`gradflow_exp.loop.Stacked`) with the
same optimizer class, built once for all with ``replicas=R``
(`gradflow_exp.optim.build_replica_optimizer`): every update is the single run's code,
with a replica dimension (gradflow_exp/optim/base.py, "Replicas"). So a replica's
trajectory is its single run's to rounding (tests/test_replicas.py checks rtol 1e-9).

What this module keeps is what is particular to replicas: expanding the ``replicas`` lists
into single-run configs, one run directory per replica (``<run dir>/seed_<S>[-lr_<v>…]/``,
written as its single run's: metrics.csv, summary.json, ``.hydra/`` with the single run's
config and overrides, checkpoints a single run can resume, and vice versa), the job's
summary for a sweeper, and the methods that cannot be stacked: full-Jacobian IEQ (a
batch × batch solve per step), LAMB (its trust ratio mixes a parameter's entries), a
reduce-on-plateau schedule (a decision per run), a schedule with per-replica Δt.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import logging
import math
import random
import signal
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path

import hydra.errors
import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig, open_dict, read_write

from gradflow_exp import schema
from gradflow_exp.loop import Run, Stacked, train
from gradflow_exp.optim import build_replica_optimizer, resolve_time_scale
from gradflow_exp.provenance import code_segments, code_version
from gradflow_exp.rundir import Lock, RunDir, read_json, save_checkpoint, write_json, write_record
from gradflow_exp.schema import ConfigError
from gradflow_exp.sinks import CSVSink, WandbRun, WandbSink, device_name, method_of

log = logging.getLogger("gradflow_exp")

HPARAMS = ("lr", "C", "lam")          # optimizer keys that may vary across replicas


def requested(resolved: dict) -> bool:
    """True when the (resolved) config asks for replicas (any list under ``replicas``)."""
    node = resolved.get("replicas") or {}
    return any(node.get(k) is not None for k in ("seeds", *HPARAMS))


# --------------------------------------------------------------- the runner's replica mode
@dataclass
class Replica:
    seed: int
    hparams: dict | None             # e.g. {"lr": 0.1}: this replica's optimizer values (None: a sweep's job)
    name: str                        # its directory: seed_0, seed_0-lr_0.1
    cfg: DictConfig                  # the single run's config (that seed, replicas null)
    resolved: dict = field(default_factory=dict)
    dir: Path = Path()
    overrides: list[str] = field(default_factory=list)   # the single run's command-line overrides
    cfg_name: str = ""               # those overrides joined, as Hydra names a job
    hydra: object = None             # the hydra node its record keeps (HydraConfig's)
    rundir: RunDir | None = None     # its directory, locked while the batch runs
    checkpoint: dict | None = None   # the state it resumes from
    summary: dict | None = None      # set once it has ended (or was already finished)


def expand(cfg: DictConfig) -> list[Replica]:
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
        out.append(Replica(seed, hp, name, c))
    return out


def check_supported(cfg: DictConfig, replicas: list["Replica"]) -> None:
    """What replicas cannot share, refused before anything is built (ConfigError, one
    line); the optimizer's own limits are `build_replica_optimizer`'s."""
    sched = cfg.get("scheduler") or {}
    if sched.get("name") == "plateau":
        raise ConfigError("replicas: scheduler=plateau decides per run (on its own loss); run the replicas "
                          "as a -m sweep, or use another schedule")
    if sched.get("name", "none") != "none" and len({float(r.cfg.optimizer.lr) for r in replicas}) > 1:
        raise ConfigError("replicas: a schedule over per-replica Δt is not supported; batch the seeds and "
                          "sweep lr with -m")


def run(cfg: DictConfig, resolved: dict, run_dir: Path, record: dict, build, set_threads) -> dict:
    """A replica-mode job (``build``, ``set_threads``: gradflow_exp/job.py's, which this
    module does not import): its replicas trained together (`train_together`) into
    ``run_dir/<replica>``; returns the job's summary (`aggregate`)."""
    replicas = expand(cfg)
    check_supported(cfg, replicas)
    target = hydra.utils.get_class(cfg.optimizer._target_)
    for key in replicas[0].hparams:
        if key not in inspect.signature(target.__init__).parameters:
            raise ConfigError(f"replicas.{key}: {target.__name__} has no hyperparameter {key}")
    for rep in replicas:
        rep.dir = run_dir / rep.name
        rep.overrides = _replica_overrides(record.get("overrides") or [], rep)
        rep.cfg_name = ",".join(sorted(rep.overrides)) or "default"
        rep.hydra = record.get("hydra")
    with Lock(run_dir):
        train_together(cfg, replicas, build, set_threads, batch_dir=run_dir)
        write_record(run_dir, resolved, record.get("overrides"), record.get("hydra"))
    return aggregate(replicas)


def train_together(cfg: DictConfig, replicas: list["Replica"], build, set_threads, batch_dir: Path) -> None:
    """Every replica's directory locked and decided (a finished run skipped, its summary
    kept; an unfinished one resumed from its checkpoint), the others built and trained as
    one batch, or one per checkpoint epoch when they resume from different ones. Also the
    batched launcher's (hydra_plugins/gradflow_batched_launcher): there each replica is a
    job of a sweep. ConfigError on bad input, before anything trains."""
    names = [str(r.dir) for r in replicas]
    if len(set(names)) != len(names):
        raise ConfigError(f"replicas: repeated replicas {sorted({n for n in names if names.count(n) > 1})}")
    with contextlib.ExitStack() as held:
        try:
            check_supported(cfg, replicas)
            for rep in replicas:
                rep.resolved = rep.resolved or schema.load(rep.cfg)
                rep.rundir = held.enter_context(RunDir(rep.dir, rep.resolved, rep.overrides, rep.hydra))
                plan = rep.rundir.decide()
                if plan.note:
                    log.info("%s: %s", rep.dir, plan.note)
                if plan.action == "skip":
                    rep.summary = plan.previous
                rep.checkpoint = plan.checkpoint
            by_epoch: dict[int, list[Replica]] = {}
            for rep in replicas:
                if rep.summary is None:
                    by_epoch.setdefault(rep.checkpoint["epoch"] if rep.checkpoint else 0, []).append(rep)
            for group in by_epoch.values():
                Batch(cfg, batch_dir, replicas, group, build, set_threads).train()
        except (ValueError, TypeError, hydra.errors.InstantiationException) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(str(e).strip().splitlines()[-1]) from None


class Batch:
    """Replicas that train together (one `gradflow_exp.loop.Stacked`), each into its own directory."""

    def __init__(self, cfg, run_dir, replicas, todo, build, set_threads):
        self.cfg, self.run_dir, self.all, self.todo = cfg, run_dir, replicas, todo
        self.build, self.set_threads = build, set_threads

    def train(self) -> None:
        cfg, todo = self.cfg, self.todo
        built = []
        for rep in todo:
            data, model, loss_fn, optimizer, loop_cfg = self.build(rep.cfg)
            # the global RNGs as the single run leaves them after initialisation: training draws
            # nothing from them, so they are its checkpoint's RNG states
            rng = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                   "python_rng": random.getstate(),
                   "cuda_rng": torch.cuda.get_rng_state(data.x_train.device) if data.x_train.is_cuda else None}
            built.append({"data": data, "model": model, "loss_fn": loss_fn, "rng": rng, "loop_cfg": loop_cfg})
            shapes = [(n, p.shape) for n, p in model.named_parameters()]
            if shapes != [(n, p.shape) for n, p in built[0]["model"].named_parameters()] or any(
                    getattr(data, k).shape != getattr(built[0]["data"], k).shape
                    for k in ("x_train", "y_train", "x_test", "y_test")):
                raise ValueError("replicas: the replicas' parameters or data sets differ in shape; "
                                 "replicas must share model and data sizes")
        first = built[0]
        trainee = Stacked([b["model"] for b in built], [b["data"] for b in built], first["loss_fn"])
        trainee.optimizer = build_replica_optimizer([rep.cfg.optimizer for rep in todo], list(trainee.params.values()),
                                                    resolve_time_scale(cfg.time_scale, first["model"]))
        loop_cfg = first["loop_cfg"]
        device = first["data"].x_train.device
        self.set_threads(cfg.threads, first["model"], loop_cfg.batch_size or first["data"].x_train.shape[0], device,
                         copies=len(todo))
        runs = [self._run(k, rep, built[k], device) for k, rep in enumerate(todo)]
        log.info("replicas: %d in one batch (%s) under %s; data: %d train / %d test, model: %d parameters, "
                 "optimizer: %s", len(todo), ", ".join(r.name for r in todo), self.run_dir,
                 first["data"].x_train.shape[0], first["data"].x_test.shape[0],
                 sum(p.numel() for p in first["model"].parameters()), type(trainee.optimizer).__name__)
        # SIGTERM ends every replica after the current epoch (status interrupted), as a single run.
        stop = threading.Event()
        in_main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set()) if in_main else None
        try:
            train(trainee, loop_cfg, runs, should_stop=stop.is_set)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            for run in runs:
                run.sinks[0].close()

    def _run(self, k: int, rep: Replica, built: dict, device) -> Run:
        cfg = self.cfg
        ckpt = rep.checkpoint
        rep.rundir.accept()
        base = self._base(rep, device, ckpt)
        write_json(rep.dir / "summary.json", {"status": "running", **base,
                                              "resumed_from_epoch": ckpt["epoch"] if ckpt else None})
        csv_sink = CSVSink(rep.dir / "metrics.csv")
        for row in (ckpt or {}).get("rows", []):
            csv_sink.log(row)
        sinks = [csv_sink]
        wandb_sink = None
        if rep.cfg.logger.backend == "wandb":        # one live W&B run per replica
            method, experiment = method_of(rep.hydra, rep.resolved)
            info = WandbRun(rep.dir, rep.resolved, rep.overrides, method, experiment,
                            sum(p.numel() for p in built["model"].parameters()),
                            job_type=None if rep.hparams is None else "replica")
            wandb_sink = WandbSink(rep.cfg.logger, info, rows=(ckpt or {}).get("rows"))
            sinks.append(wandb_sink)

        def save(state):
            save_checkpoint(rep.dir / "checkpoint.pt", state, rep.resolved)

        def on_finish(summary, state):
            summary.update(base)
            rep.summary = summary
            if state is not None and cfg.trainer.checkpoint:
                save(state)
            write_json(rep.dir / "summary.json", summary)
            csv_sink.close()
            if wandb_sink is not None:
                wandb_sink.finish(summary, files=[rep.dir / "metrics.csv", rep.dir / ".hydra" / "config.yaml"])
            final = summary["final"]
            log.info("%s: %s after %d epochs: train rel error %.3e, test rel error %.3e", rep.name,
                     summary["status"], summary["epochs_completed"], final.get("train_rel_error", math.nan),
                     final.get("test_rel_error", math.nan))

        return Run(seed=rep.seed, sinks=sinks, on_finish=on_finish,
                   on_checkpoint=save if cfg.trainer.checkpoint else None, resume=ckpt, name=rep.name,
                   rng=built["rng"])

    def _base(self, rep: Replica, device, ckpt) -> dict:
        names = [r.name for r in self.all]
        return {"run_dir": str(rep.dir), "name": rep.cfg_name,
                "device": device_name(device), "code": code_version(),
                "code_segments": code_segments(read_json(rep.dir / "summary.json"), ckpt["epoch"] if ckpt else 0),
                "replica": {"batch_dir": str(self.run_dir), "index": names.index(rep.name), "of": len(names)}}


def aggregate(replicas: list[Replica]) -> dict:
    """The job's summary for the entry point and sweepers: status ``completed`` only when
    every replica completed (else interrupted / failed / diverged, in that order of
    precedence), final and best test_rel_error the mean over replicas."""
    summaries = {r.name: r.summary or {"status": "failed"} for r in replicas}
    statuses = [s.get("status") for s in summaries.values()]
    status = next((s for s in ("interrupted", "failed", "diverged") if s in statuses), "completed")

    def mean(which):
        vals = [s.get(which, {}).get("test_rel_error") for s in summaries.values()]
        vals = [v for v in vals if isinstance(v, (int, float))]
        return statistics.fmean(vals) if vals else math.nan

    return {"status": status, "final": {"test_rel_error": mean("final")},
            "best": {"test_rel_error": mean("best")}, "replicas": summaries}


def _replica_overrides(parent: list[str], rep: Replica) -> list[str]:
    """The single run's overrides: the batch's, with ``replicas.*`` (and the seed and the
    varied hyperparameters) replaced by this replica's values."""
    drop = {"seed", "replicas", *(f"optimizer.{k}" for k in rep.hparams)}
    kept = [o for o in parent
            if (key := o.split("=", 1)[0].lstrip("+~")) not in drop and not key.startswith("replicas.")]
    return kept + [f"seed={rep.seed}"] + [f"optimizer.{k}={v}" for k, v in rep.hparams.items()]
