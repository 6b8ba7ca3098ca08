"""The training loop: batches → optimizer.step(closure) → evaluate → sinks, for one run or
for R runs trained as one batch (replicas, gradflow_exp/run/replicas.py) — the same loop.

What is trained is a `Trainee`: `OneModel` (a model and its optimizer, stepped through a
`BatchClosure`), or `Stacked` (R copies of one model, their parameters stacked along a
leading replica dimension, one optimizer built with ``replicas=R`` and stepped through a
`ReplicaClosure`: every step is one batched gradient for all R). Each run keeps its own
batch order (its generator, seeded with its seed), rows, sinks, status and checkpoints;
a run that diverges ends there while the others go on (its numbers stay its own: nothing
crosses between replicas).

It never branches on a method's name: optimizers are driven through the closure
contract (`gradflow_exp.optim.closure`) and two optional hooks, ``epoch_start()`` and
``diagnostics()``; a composite loss through ``epoch_start(epoch)`` (its weight schedule)
and ``diagnostics(params)``. Data stay on the device and are batched by index; the only
host syncs are one finiteness check per epoch and the logging points.

Optional, off by default (each costs one ``if`` per epoch when off): a learning-rate
schedule stepped once per epoch after the epoch's row (`gradflow_exp.training.schedulers`), and
diagnostics (Hessian spectrum, gradient noise; `gradflow_exp.diagnostics`) computed at
their epochs, which always get a row; their time is left out of ``wall_time``.

Checkpoints are taken at epoch boundaries and hold everything the rest of a run depends on
(parameters, optimizer state, every RNG, counters, the rows so far), so a run resumed from
one ends exactly as an uninterrupted run would; a replica's checkpoint is its single
run's (`Stacked.state` splits the batch's optimizer state), so either can resume it.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from gradflow_exp.data import Dataset
from gradflow_exp.diagnostics import build_diagnostics
from gradflow_exp.training.flags import COLLAPSE_Q, run_flags
from gradflow_exp.training.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER, evaluate
from gradflow_exp.optim import BatchClosure, ReplicaClosure
from gradflow_exp.optim.stacked import split_state, stack_states
from gradflow_exp.training.schedulers import build_scheduler
from gradflow_exp.training.step_graph import StepGraph

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """The ``trainer`` node's values (checked by gradflow_exp/config/schema.py)."""
    epochs: int
    batch_size: int | None = None     # None or 0: full batch (GD)
    log_every: int = 1                # epochs between logged rows (first and last always logged)
    shuffle: bool = True
    progress: bool = True
    eval_chunk: int = 2048            # rows per forward pass when evaluating full sets (docs/speed.md)
    collapse_q: float = COLLAPSE_Q    # summary flags q = r/r̂ below this as a collapsed auxiliary variable
    cuda_graph: bool = False          # a replica batch steps through `StepGraph` (captured on CUDA)
    checkpoint_every: int | None = None   # epochs between on_checkpoint calls (None: none)
    checkpoint_minutes: float | None = None   # and at most this much wall time between them (None: none)
    scheduler: dict | None = None     # the `scheduler` node (None: constant lr)
    diagnostics: dict | None = None   # the `diagnostics` node (None: none)


@dataclass
class Run:
    """One run's end of the loop. ``on_finish(summary, state)`` is called once when the run
    ends (also when training raises; ``state`` is then None), ``on_checkpoint(state)`` every
    ``checkpoint_every`` epochs; ``resume``: such a state to continue from; ``rng``: the
    global RNG states the checkpoint records (default: the process's, as training leaves
    them)."""
    seed: int
    sinks: list = field(default_factory=list)
    on_finish: Callable | None = None
    on_checkpoint: Callable | None = None
    resume: dict | None = None
    name: str = "run"
    rng: dict | None = None


# ------------------------------------------------------------------ what is trained
class OneModel:
    """One model and its optimizer."""

    def __init__(self, model: torch.nn.Module, optimizer, loss_fn, data: Dataset):
        self.models, self.optimizer, self.loss_fn, self.datas = [model], optimizer, loss_fn, [data]
        self.R = 1

    def order(self, perms) -> None:
        # the epoch's data in its batch order, gathered once: a batch is then a view, the
        # same rows as indexing each batch (one gather an epoch instead of two a step)
        data, perm = self.datas[0], perms[0]
        self._x, self._y = (data.x_train, data.y_train) if perm is None else (data.x_train[perm], data.y_train[perm])

    def step(self, b: int, bs: int) -> torch.Tensor:
        xb, yb = self._x, self._y
        if bs != xb.shape[0]:
            xb, yb = xb[b * bs:(b + 1) * bs], yb[b * bs:(b + 1) * bs]
        return self.optimizer.step(BatchClosure(self.models[0], self.loss_fn, xb, yb))

    def model(self, k: int) -> torch.nn.Module:
        return self.models[0]

    def group(self, k: int) -> dict:
        return self.optimizer.param_groups[0]

    def value(self, x, k: int) -> float:
        """Run k's value of a per-run quantity (a hyperparameter, a diagnostic)."""
        return float(x)

    def state(self, k: int) -> dict:
        return {"model": self.models[0].state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, states: list[dict]) -> None:
        self.models[0].load_state_dict(states[0]["model"])
        self.optimizer.load_state_dict(states[0]["optimizer"])     # the scheduled lr too


class Stacked:
    """R copies of one model as one: their parameters stacked [R, …] into leaf tensors that
    ``optimizer`` (built over `params` with ``replicas=R``) steps; each replica's data set
    stacked likewise. ``models[k]`` gets replica k's parameters when it is read (`model`)."""

    def __init__(self, models: list[torch.nn.Module], datas: list[Dataset], loss_fn):
        self.models, self.datas, self.loss_fn, self.R = models, datas, loss_fn, len(models)
        with torch.no_grad():
            self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).clone()
                           for n, _ in models[0].named_parameters()}
        self.x = _stack([d.x_train for d in datas])
        self.y = _stack([d.y_train for d in datas])
        self._rows = torch.arange(self.R, device=self.x.device).unsqueeze(1)
        self.optimizer = None
        self.graph = None

    def use_graph(self, capture=None) -> None:
        """Step through `StepGraph` (``trainer.cuda_graph``): static batch buffers, and with
        ``capture`` the steady steps replayed from one CUDA graph. After ``optimizer`` is set."""
        if hasattr(capture, "prepare"):
            capture.prepare(self.optimizer)
        self.graph = StepGraph(self._step, self.optimizer, self.loss_fn, capture)

    def order(self, perms) -> None:
        # the epoch's data in its batch order, gathered once: a batch is then a slice, the
        # same rows as indexing each batch (one gather an epoch instead of one a step)
        if perms[0] is None:
            self._x, self._y = self.x, self.y
        else:
            perm = torch.stack(perms)
            self._x, self._y = self.x[self._rows, perm], self.y[self._rows, perm]

    def step(self, b: int, bs: int) -> torch.Tensor:
        if bs == self.x.shape[1]:
            xb, yb = self._x, self._y
        else:
            xb, yb = self._x[:, b * bs:(b + 1) * bs], self._y[:, b * bs:(b + 1) * bs]
        return self._step(xb, yb) if self.graph is None else self.graph(xb, yb)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return self.optimizer.step(ReplicaClosure(self.models[0], self.loss_fn, self.params, xb, yb))

    @torch.no_grad()
    def model(self, k: int) -> torch.nn.Module:
        for name, p in self.models[k].named_parameters():
            p.copy_(self.params[name][k])
        return self.models[k]

    def group(self, k: int) -> dict:
        """The (first) param group; its per-replica values are vectors [R] (see `value`)."""
        return self.optimizer.param_groups[0]

    def value(self, x, k: int) -> float:
        return float(x[k]) if isinstance(x, torch.Tensor) and x.dim() == 1 else float(x)

    def state(self, k: int) -> dict:
        return {"model": self.model(k).state_dict(), "optimizer": split_state(self.optimizer, self.optimizer.state_dict(), k)}

    @torch.no_grad()
    def load(self, states: list[dict]) -> None:
        for k, st in enumerate(states):
            self.models[k].load_state_dict(st["model"])
            for name, p in self.models[k].named_parameters():
                self.params[name][k].copy_(p)
        self.optimizer.load_state_dict(stack_states(self.optimizer, [st["optimizer"] for st in states]))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[R, …]; replicas that share their data (hyperparameter replicas of one seed) share one
    copy in memory (an expanded view)."""
    first = tensors[0]
    if all(t is first or torch.equal(t, first) for t in tensors[1:]):
        return first.unsqueeze(0).expand(len(tensors), *first.shape)
    return torch.stack(tensors)


# ------------------------------------------------------------------ metrics
@torch.no_grad()
def full_loss(model, loss_fn, x, y, chunk: int) -> float:
    """The training loss on a whole set (epoch 0's ``train_loss``), in chunks of rows like
    `evaluate` when the loss is a mean over rows: one pass over fig10's 80 000 rows × 10 000
    hidden units would hold 13 GB. A penalty is added in every chunk and so, weighted by
    the chunk's share of rows, once in all."""
    n = x.shape[0]
    if n <= chunk or not getattr(loss_fn, "row_mean", False):
        return float(BatchClosure(model, loss_fn, x, y)(backward=False))
    total = 0.0
    for i in range(0, n, chunk):
        xc, yc = x[i:i + chunk], y[i:i + chunk]
        total += float(BatchClosure(model, loss_fn, xc, yc)(backward=False)) * xc.shape[0]
    return total / n


# ------------------------------------------------------------------ the loop
def train(trainee, cfg: LoopConfig, runs: list[Run], should_stop=None) -> list[dict]:
    """Train ``trainee``'s R runs (``runs[k]`` is replica k's end) and return their summaries.

    ``should_stop()`` is polled after every epoch (SIGTERM, Ctrl-C): when true every run
    still going ends there with status ``interrupted``, its checkpoint written. A run
    resumes from ``runs[k].resume`` (all resumed runs of one call at the same epoch).
    """
    loop = _Loop(trainee, cfg, runs)
    loop.start()                                   # epoch 0's row, or the checkpoint's state
    bar = tqdm(loop.epochs_left(), desc="train" if loop.R == 1 else f"train ×{loop.R}",
               disable=not cfg.progress, dynamic_ncols=True, leave=False)
    try:
        for epoch in bar:
            loss = loop.epoch(epoch)               # every batch's step
            loop.log(epoch, loss)                  # the rows due, and those of a run that diverged
            loop.show(bar)
            if not loop.live():
                break
            loop.schedule(loss)
            if epoch == cfg.epochs:
                break                              # `complete` writes the final checkpoint
            loop.checkpoint(epoch)
            if should_stop is not None and should_stop():
                log.warning("stop requested: interrupted after epoch %d, checkpoint written", epoch)
                loop.end_all("interrupted")
                break
        loop.end_all("completed")
    except BaseException as e:
        loop.abort(e)                              # mid-epoch: the last periodic checkpoint resumes it
        raise
    finally:
        bar.close()
    return loop.summaries


class _Loop:
    """The state one `train` call carries across epochs, and its steps by name."""

    def __init__(self, trainee, cfg: LoopConfig, runs: list[Run]):
        self.trainee, self.cfg, self.runs, self.R = trainee, cfg, runs, trainee.R
        datas = trainee.datas
        self.n = datas[0].x_train.shape[0]
        self.bs = min(cfg.batch_size or self.n, self.n)
        self.n_batches = math.ceil(self.n / self.bs)
        self.device = datas[0].x_train.device
        self.gens = [torch.Generator(device=self.device).manual_seed(run.seed) for run in runs]   # data order
        self.scheduler = build_scheduler(cfg.scheduler, trainee.optimizer, cfg.epochs)   # sets epoch 1's lr
        self.diags = [build_diagnostics(cfg.diagnostics, self.bs, cfg.epochs, run.seed) for run in runs]
        self.opt_diagnostics = getattr(trainee.optimizer, "diagnostics", None)
        self.steps, self.last_epoch = 0, 0
        self.status = ["running"] * self.R
        self.rows: list[list[dict]] = [[] for _ in range(self.R)]
        self.summaries: list[dict | None] = [None] * self.R
        self.loss_sum = torch.zeros(self.R, dtype=datas[0].x_train.dtype, device=self.device)
        self.t0, self.wall0, self.diag_time = time.perf_counter(), 0.0, 0.0   # diagnostics: not in wall_time
        self.last_save = self.t0

    # -- start: a fresh run's epoch 0, or a checkpoint's state
    def start(self) -> None:
        resumes = [run.resume for run in self.runs]
        if all(r is None for r in resumes):
            t, d = self.trainee, self.trainee.datas
            self.log_rows(0, [full_loss(t.model(k), t.loss_fn, d[k].x_train, d[k].y_train, self.cfg.eval_chunk)
                              for k in range(self.R)], range(self.R))
            return
        if any(r is None for r in resumes) or len({r["epoch"] for r in resumes}) != 1:
            raise ValueError("runs trained as one batch resume together, from checkpoints of one epoch")
        self.trainee.load(resumes)
        first = resumes[0]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(first["scheduler"])
        for k, r in enumerate(resumes):
            self.gens[k].set_state(r["data_rng"])
            self.rows[k] = [dict(row) for row in r["rows"]]      # the sinks already hold these
        if self.runs[0].rng is None:          # one run: the process's RNGs are its own
            _set_rngs(first, self.device)
        self.last_epoch, self.steps, self.wall0 = first["epoch"], first["steps"], first["wall_time"]
        for k, r in enumerate(resumes):
            if r["status"] == "diverged":       # killed between its checkpoint and its summary
                self.finish(k, "diverged")      # (a completed one trains on if asked for more epochs)

    def epochs_left(self) -> range:
        return range(self.last_epoch + 1, self.cfg.epochs + 1) if "running" in self.status else range(0)

    # -- one epoch
    def epoch(self, epoch: int) -> list[float]:
        """Every batch's step; the epoch's mean training loss of each run."""
        t, cfg = self.trainee, self.cfg
        epoch_start = getattr(t.optimizer, "epoch_start", None)
        if epoch_start is not None:
            epoch_start()
        loss_epoch_start = getattr(t.loss_fn, "epoch_start", None)
        if loss_epoch_start is not None:
            loss_epoch_start(epoch)
        shuffle = cfg.shuffle and self.bs < self.n
        t.order([torch.randperm(self.n, generator=g, device=self.device) if shuffle else None for g in self.gens])
        self.loss_sum.zero_()
        for b in range(self.n_batches):
            self.loss_sum += t.step(b, self.bs)
            self.steps += 1
        self.last_epoch = epoch
        return [v / self.n_batches for v in self.loss_sum.tolist()]    # one sync an epoch; float64

    # -- rows
    def log(self, epoch: int, loss: list[float]) -> None:
        """The epoch's row for each live run where one is due, and for a run whose loss is no
        longer finite, which ends there as diverged (the others go on)."""
        cfg = self.cfg
        due = epoch % cfg.log_every == 0 or epoch == cfg.epochs or (self.diags[0] is not None and self.diags[0].due(epoch))
        which = [k for k in self.live() if due or not math.isfinite(loss[k])]
        for k, row in self.log_rows(epoch, loss, which).items():
            if not math.isfinite(loss[k]) or not _finite_row(row):
                log.warning("%s: loss is not finite at epoch %d: run diverged%s", self.runs[k].name, epoch,
                            " (the others go on)" if self.R > 1 else "")
                self.finish(k, "diverged")

    def log_rows(self, epoch: int, train_loss, which) -> dict[int, dict]:
        t, cfg = self.trainee, self.cfg
        values = self.opt_diagnostics() if self.opt_diagnostics is not None else {}
        loss_diagnostics = getattr(t.loss_fn, "diagnostics", None)
        out = {}
        for k in which:
            model, data = t.model(k), t.datas[k]
            row = {"epoch": epoch, "step": self.steps, "train_loss": train_loss[k]}
            for split, (x, y) in data.splits().items():
                row.update({f"{split}_{key}": v for key, v in evaluate(model, x, y, cfg.eval_chunk).items()})
            group = t.group(k)
            row["lr"] = t.value(group["lr"], k)
            row["wall_time"] = self.wall()
            row.update({key: t.value(v, k) for key, v in values.items()})
            if loss_diagnostics is not None:
                row.update(loss_diagnostics({n: p for n, p in model.named_parameters() if p.requires_grad}))
            if self.diags[k] is not None:
                start = time.perf_counter()
                step = row["lr"] * t.value(group.get("time_scale", 1.0), k)
                row.update(self.diags[k].row(epoch, model, step, t.loss_fn, data.x_train, data.y_train))
                self.diag_time += time.perf_counter() - start
                row["wall_time"] = self.wall()
            self.rows[k].append(row)
            for sink in self.runs[k].sinks:
                sink.log(row)
            out[k] = row
        return out

    def show(self, bar) -> None:
        if self.R > 1:
            bar.set_postfix(running=f"{len(self.live())}/{self.R}", refresh=False)
        elif self.status[0] == "running" and self.rows[0]:
            row = self.rows[0][-1]
            bar.set_postfix(train=f"{row['train_rel_error']:.3g}", test=f"{row['test_rel_error']:.3g}", refresh=False)

    # -- between epochs
    def schedule(self, loss: list[float]) -> None:
        if self.scheduler is not None:
            self.scheduler.step(self.loss_sum[0] / self.n_batches)

    def checkpoint(self, epoch: int) -> None:
        """Every ``checkpoint_every`` epochs, and every ``checkpoint_minutes`` of wall time."""
        cfg = self.cfg
        by_epoch = cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0
        by_time = cfg.checkpoint_minutes and time.perf_counter() - self.last_save >= 60 * cfg.checkpoint_minutes
        if not (by_epoch or by_time):
            return
        for k in self.live():
            if self.runs[k].on_checkpoint is not None:
                self.runs[k].on_checkpoint(self.state(k, "running"))
        self.last_save = time.perf_counter()

    # -- the end
    def live(self) -> list[int]:
        return [k for k in range(self.R) if self.status[k] == "running"]

    def end_all(self, status: str) -> None:
        for k in self.live():
            self.finish(k, status)

    def abort(self, e: BaseException) -> None:
        # SystemExit mid-epoch is submitit at a time limit or a preemption: it requeues the job
        # and the last checkpoint resumes it, as after Ctrl-C
        st = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
        error = "KeyboardInterrupt" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        for k in self.live():
            self.finish(k, st, error=error)

    def finish(self, k: int, status: str, error: str | None = None) -> None:
        self.status[k] = status
        self.summaries[k] = _summary(self.rows[k], status, error, self.steps, self.last_epoch, self.wall(), self.cfg)
        if self.runs[k].on_finish is not None:
            self.runs[k].on_finish(self.summaries[k], None if error is not None else self.state(k, status))

    def state(self, k: int, status: str) -> dict:
        """Everything the rest of run k depends on, at the end of epoch ``last_epoch``."""
        rng = self.runs[k].rng or _get_rngs(self.device)
        return {"epoch": self.last_epoch, "steps": self.steps, "status": status, "wall_time": self.wall(),
                "rows": [dict(r) for r in self.rows[k]], **self.trainee.state(k), "data_rng": self.gens[k].get_state(),
                **rng, "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def wall(self) -> float:
        return self.wall0 + time.perf_counter() - self.t0 - self.diag_time


def _get_rngs(device) -> dict:
    """The process's global RNG states (a checkpoint of one run records them)."""
    return {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rngs(state: dict, device) -> None:
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    if state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _finite_row(row: dict) -> bool:
    return all(math.isfinite(row[k]) for k in LOWER_IS_BETTER if k in row)


def _summary(rows, status, error, steps, epochs, wall, cfg: LoopConfig) -> dict:
    final = dict(rows[-1]) if rows else {}
    best = {}
    for keys, pick in ((LOWER_IS_BETTER, min), (HIGHER_IS_BETTER, max)):
        for k in keys:
            vals = [r[k] for r in rows if k in r and math.isfinite(r[k])]
            if vals:
                best[k] = pick(vals)
    return {"status": status, "error": error, "epochs_completed": epochs, "epochs_planned": cfg.epochs,
            "steps": steps, "wall_time": wall, "final": final, "best": best,
            "flags": run_flags(rows, cfg.collapse_q)}
