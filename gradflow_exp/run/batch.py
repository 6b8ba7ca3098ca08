"""Training runs as one batch, each into its own run directory: the one path every run takes.

A single run is a batch of one; a replica job (gradflow_exp/run/replicas.py) and a group of a
batched sweep (gradflow_exp/sweep.py) are batches of several. For each member,
`train_together` takes its run directory (gradflow_exp/run/rundir.py decides: a finished run
is skipped, an unfinished one resumes from its checkpoint, another run's is refused), and
`Batch` builds it (gradflow_exp/run/build.py), trains the members together with the loop
(gradflow_exp/training/loop.py: one model, or R stacked), and writes what each run writes, once:
summary.json, metrics.csv, W&B, checkpoints, the log lines.

Signals: SIGTERM (kill, Slurm's scancel, a requeue) and Ctrl-C end every run after its
current epoch, with a checkpoint and status ``interrupted``; a second Ctrl-C stops at
once (the last periodic checkpoint, at most ``trainer.checkpoint_minutes`` old, resumes it).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import hydra.errors
import numpy as np
import torch
from omegaconf import DictConfig

from gradflow_exp.config import schema
from gradflow_exp.run.build import build
from gradflow_exp.training.loop import OneModel, Run, Stacked, train
from gradflow_exp.training.step_graph import CudaCapture
from gradflow_exp.optim import build_replica_optimizer, resolve_time_scale
from gradflow_exp.run.provenance import code_segments, code_version
from gradflow_exp.run.rundir import RunDir, read_json, save_checkpoint, write_json
from gradflow_exp.config.schema import ConfigError
from gradflow_exp.run.sinks import CSVSink, WandbRun, WandbSink, device_name, method_of

log = logging.getLogger("gradflow_exp")

# the signal that stopped the last batch (SIGTERM or SIGINT), for the exit code: 128 + it
stopped_by: int | None = None


@dataclass
class Member:
    """One run of a batch: its config (a single run's), its directory, its record."""
    seed: int
    hparams: dict | None             # a replica's own optimizer values (e.g. {"lr": 0.1}); None otherwise
    name: str                        # how the log names it: a replica's directory name, a sweep's job
    cfg: DictConfig                  # the single run's config
    dir: Path = Path()
    overrides: list[str] = field(default_factory=list)   # the single run's command-line overrides
    cfg_name: str = "default"        # those overrides joined, as Hydra names a job
    hydra: object = None             # the hydra node its record keeps (HydraConfig's)
    in_batch: dict | None = None     # {"batch_dir", "index", "of"} for summary.json: a replica's place
    resolved: dict = field(default_factory=dict)
    rundir: RunDir | None = None     # its directory, locked while the batch runs
    checkpoint: dict | None = None   # the state it resumes from
    summary: dict | None = None      # set once it has ended (or was already finished)


def train_together(cfg: DictConfig, members: list[Member], batch_dir: Path) -> None:
    """Every member's directory locked and decided (a finished run skipped, its summary kept;
    an unfinished one resumed from its checkpoint), the others built and trained as one batch,
    or one batch per checkpoint epoch when they resume from different ones. ConfigError on
    bad input, before anything trains."""
    names = [str(m.dir) for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"replicas: repeated replicas {sorted({n for n in names if names.count(n) > 1})}")
    with contextlib.ExitStack() as held:
        try:
            for m in members:
                m.resolved = m.resolved or schema.load(m.cfg)
                m.rundir = held.enter_context(RunDir(m.dir, m.resolved, m.overrides, m.hydra))
                plan = m.rundir.decide()
                if plan.note:
                    log.info("%s: %s", m.dir, plan.note)
                if plan.action == "skip":
                    m.summary = plan.previous
                m.checkpoint = plan.checkpoint
            _align(members)
            by_epoch: dict[int, list[Member]] = {}
            for m in members:
                if m.summary is None:
                    by_epoch.setdefault(m.checkpoint["epoch"] if m.checkpoint else 0, []).append(m)
            for group in by_epoch.values():
                Batch(cfg, batch_dir, group).train()
        except (ValueError, TypeError, hydra.errors.InstantiationException) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(str(e).strip().splitlines()[-1]) from None


def _align(members: list[Member]) -> None:
    """Members that resume from different epochs — a batch killed while they wrote their
    checkpoints one after another — resume from the epoch they share, the ahead ones from
    their previous checkpoint: the same batch then continues, and ends as it would have
    uninterrupted. (Without a shared epoch, each epoch's members train as a batch of their own.)"""
    todo = [m for m in members if m.summary is None]
    epochs = {m.checkpoint["epoch"] if m.checkpoint else 0 for m in todo}
    if len(epochs) < 2:
        return
    low = min(epochs)
    earlier = {}
    for m in todo:
        here = m.checkpoint["epoch"] if m.checkpoint else 0
        prev = m.rundir.previous_checkpoint() if here > low else None
        if here > low and (prev is None or prev["epoch"] != low):
            return
        earlier[m.dir] = prev
    for m in todo:
        if earlier.get(m.dir) is not None:
            log.info("%s: resuming after epoch %d with the rest of its batch (its checkpoint of epoch %d was the "
                     "batch's last write)", m.dir, low, m.checkpoint["epoch"])
            m.checkpoint = earlier[m.dir]


class Batch:
    """Members that train together: one model (a batch of one) or R stacked ones."""

    def __init__(self, cfg: DictConfig, batch_dir: Path, members: list[Member]):
        self.cfg, self.batch_dir, self.members = cfg, batch_dir, members

    def train(self) -> None:
        built = [self._build(m) for m in self.members]
        first = built[0]
        trainee = self._trainee(built)
        data, model = first["data"], first["model"]
        log.info("%s: data %d train / %d validation / %d test, model %d parameters, optimizer %s", self._where(),
                 data.x_train.shape[0], 0 if data.x_val is None else data.x_val.shape[0], data.x_test.shape[0],
                 sum(p.numel() for p in model.parameters()),
                 type(trainee.optimizer).__name__)
        self.ends = []            # the members' summaries, written once all their final checkpoints are
        runs = [self._run(k, m, built[k]) for k, m in enumerate(self.members)]
        with stop_on_signals() as should_stop:
            try:
                train(trainee, first["loop_cfg"], runs, should_stop=should_stop)
            finally:
                for end in self.ends:
                    end()
                for run in runs:
                    run.sinks[0].close()

    def _build(self, m: Member) -> dict:
        data, model, loss_fn, optimizer, loop_cfg = build(m.cfg)
        return {"data": data, "model": model, "loss_fn": loss_fn, "optimizer": optimizer, "loop_cfg": loop_cfg,
                # the global RNGs as the single run leaves them after initialisation: training
                # draws nothing from them, so they are a replica's checkpoint's RNG states
                "rng": {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                        "python_rng": random.getstate(),
                        "cuda_rng": torch.cuda.get_rng_state(data.x_train.device) if data.x_train.is_cuda else None}}

    def _trainee(self, built: list[dict]):
        first = built[0]
        if len(built) == 1:
            if first["loop_cfg"].cuda_graph:
                log.info("trainer.cuda_graph: a single run steps eagerly; the graph is a replica batch's "
                         "(hydra/launcher=batched)")
            return OneModel(first["model"], first["optimizer"], first["loss_fn"], first["data"])
        def shapes(b):
            return ([(n, p.shape) for n, p in b["model"].named_parameters()],
                    {split: (x.shape, y.shape) for split, (x, y) in b["data"].splits().items()})

        for b in built[1:]:
            if shapes(b) != shapes(first):
                raise ValueError("replicas: the replicas' parameters or data sets differ in shape; "
                                 "replicas must share model and data sizes")
        trainee = Stacked([b["model"] for b in built], [b["data"] for b in built], first["loss_fn"])
        trainee.optimizer = build_replica_optimizer([m.cfg.optimizer for m in self.members],
                                                    list(trainee.params.values()),
                                                    resolve_time_scale(self.cfg.time_scale, first["model"]))
        if first["loop_cfg"].cuda_graph:
            device = trainee.x.device
            trainee.use_graph(CudaCapture(device) if device.type == "cuda" else None)
        return trainee

    def _where(self) -> str:
        if len(self.members) == 1:
            return str(self.members[0].dir)
        return f"{self.batch_dir} ({len(self.members)} in one batch: {', '.join(m.name for m in self.members)})"

    # -- what a run writes, once
    def _run(self, k: int, m: Member, built: dict) -> Run:
        cfg, ckpt = m.cfg, m.checkpoint
        m.rundir.accept()
        base = {"run_dir": str(m.dir), "name": m.cfg_name, "device": device_name(built["data"].x_train.device),
                "code": code_version(),
                "code_segments": code_segments(read_json(m.dir / "summary.json"), ckpt["epoch"] if ckpt else 0)}
        if m.in_batch is not None:
            base["replica"] = m.in_batch
        # Until it ends, summary.json says the run is unfinished: a killed run is never taken
        # for a complete one, and a restart knows to resume it.
        write_json(m.dir / "summary.json", {"status": "running", **base,
                                            "resumed_from_epoch": ckpt["epoch"] if ckpt else None})
        csv_sink = CSVSink(m.dir / "metrics.csv")
        # metrics.csv starts again from the checkpoint's rows (the same bytes): rows logged
        # after the checkpoint, or one cut by a kill, are dropped; the run appends the rest.
        for row in (ckpt or {}).get("rows", []):
            csv_sink.log(row)
        sinks = [csv_sink]
        wandb_sink = None
        if cfg.logger.backend == "wandb":        # one live W&B run per member
            method, experiment = method_of(m.hydra, m.resolved)
            info = WandbRun(m.dir, m.resolved, list(m.overrides), method, experiment,
                            sum(p.numel() for p in built["model"].parameters()),
                            job_type=None if m.hparams is None else "replica")
            wandb_sink = WandbSink(cfg.logger, info, rows=(ckpt or {}).get("rows"))
            sinks.append(wandb_sink)

        together = len(self.members) > 1

        def save(state):
            save_checkpoint(m.dir / "checkpoint.pt", state, m.resolved, keep_previous=together)

        def end(summary):
            write_json(m.dir / "summary.json", summary)
            csv_sink.close()
            if wandb_sink is not None:
                wandb_sink.finish(summary, files=[m.dir / "metrics.csv", m.dir / ".hydra" / "config.yaml"])
            _log_end(m, summary)

        def on_finish(summary, state):
            summary.update(base)
            m.summary = summary
            if state is not None and cfg.trainer.checkpoint:
                save(state)
            if together and summary["status"] in ("completed", "interrupted"):
                # the batch's members end at one epoch: every final checkpoint first, then
                # the summaries, so a kill in between resumes the whole batch from one epoch
                self.ends.append(lambda: end(summary))
            else:
                end(summary)

        return Run(seed=m.seed, sinks=sinks, on_finish=on_finish,
                   on_checkpoint=save if cfg.trainer.checkpoint else None, resume=ckpt,
                   name=m.name, rng=built["rng"] if len(self.members) > 1 else None)


def _log_end(m: Member, summary: dict) -> None:
    final = summary["final"]
    log.info("%s: %s after %d epochs: train rel error %.3e, validation %.3e, test %.3e%s", m.name,
             summary["status"], summary["epochs_completed"], final.get("train_rel_error", math.nan),
             final.get("val_rel_error", math.nan), final.get("test_rel_error", math.nan),
             f", test accuracy {final['test_accuracy']:.4f}" if "test_accuracy" in final else "")
    for flag in summary["flags"]:
        log.warning("%s: %s", m.name, flag)


@contextlib.contextmanager
def stop_on_signals():
    """``should_stop()`` for the loop: true once SIGTERM or Ctrl-C arrived (the runs then
    end after their epoch, checkpointed); a second Ctrl-C raises KeyboardInterrupt at once.
    Signal handlers can only be set in the main thread; elsewhere nothing stops early."""
    global stopped_by
    stopped_by = None
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop.is_set
        return

    def on_term(signum, frame):
        global stopped_by
        stopped_by = signal.SIGTERM
        stop.set()

    def on_int(signum, frame):
        global stopped_by
        if stop.is_set():
            raise KeyboardInterrupt
        stopped_by = signal.SIGINT
        stop.set()
        log.warning("Ctrl-C: stopping after this epoch, with a checkpoint (Ctrl-C again stops at once)")

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, on_term), (signal.SIGINT, on_int))}
    try:
        yield stop.is_set
    finally:
        for s, h in old.items():
            signal.signal(s, h)
