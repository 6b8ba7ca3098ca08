"""The training loop: batches → optimizer.step(closure) → evaluate → sinks.

It never branches on a method's name: optimizers are driven through the closure
contract (`gradflow_exp.optim.closure`) and two optional hooks, ``epoch_start()`` and
``diagnostics()``; a composite loss through ``epoch_start(epoch)`` (its weight schedule)
and ``diagnostics(params)``. Data stay on the device and are batched by index; the only
host syncs are one finiteness check per epoch and the logging points.

Optional, off by default (each costs one ``if`` per epoch when off): a learning-rate
schedule stepped once per epoch after the epoch's row (`gradflow_exp.schedulers`), and
diagnostics (Hessian spectrum, gradient noise; `gradflow_exp.diagnostics`) computed at
their epochs, which always get a row; their time is left out of ``wall_time``.

Checkpoints are taken at epoch boundaries and hold everything the rest of the run depends
on (parameters, optimizer state, every RNG, counters, the rows so far), so a run resumed
from one ends exactly as an uninterrupted run would.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from gradflow_exp.data import Dataset
from gradflow_exp.diagnostics import build_diagnostics
from gradflow_exp.flags import COLLAPSE_Q, run_flags
from gradflow_exp.losses import metric_sums, metrics_from_sums
from gradflow_exp.optim import BatchClosure
from gradflow_exp.schedulers import build_scheduler

log = logging.getLogger(__name__)

ERROR_METRICS = ("train_mse", "test_mse", "train_rel_error", "test_rel_error", "train_loss")
ACCURACY_METRICS = ("train_accuracy", "test_accuracy")


@dataclass
class LoopConfig:
    """The ``trainer`` node's values (checked by gradflow_exp/schema.py)."""
    epochs: int
    batch_size: int | None = None     # None or 0: full batch (GD)
    log_every: int = 1                # epochs between logged rows (first and last always logged)
    shuffle: bool = True
    progress: bool = True
    eval_chunk: int = 8192            # rows per forward pass when evaluating full sets
    collapse_q: float = COLLAPSE_Q    # summary flags q = r/r̂ below this as a collapsed auxiliary variable
    checkpoint_every: int | None = None   # epochs between on_checkpoint calls (None: none)
    scheduler: dict | None = None     # the `scheduler` node (None: constant lr)
    diagnostics: dict | None = None   # the `diagnostics` node (None: none)


@torch.no_grad()
def evaluate(model, x, y, chunk: int) -> dict[str, float]:
    sums = None
    for i in range(0, x.shape[0], chunk):
        part = metric_sums(model(x[i:i + chunk]), y[i:i + chunk])
        sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
    return metrics_from_sums(sums)


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


def train(model, optimizer, loss_fn, data: Dataset, cfg: LoopConfig, sinks, seed: int,
          on_finish=None, on_checkpoint=None, resume: dict | None = None, should_stop=None) -> dict:
    """Train and return the run summary. ``sinks`` get every logged row.

    ``on_finish(summary, state)`` is called once at the end, also when training raises,
    with the summary so far and (unless it failed mid-epoch) everything needed to resume.
    ``on_checkpoint(state)`` is called every ``cfg.checkpoint_every`` epochs. ``resume``:
    such a state, to continue from. ``should_stop()`` is polled after every epoch (SIGTERM):
    when true the run ends there with status ``interrupted``.
    """
    n = data.x_train.shape[0]
    bs = min(cfg.batch_size or n, n)
    n_batches = math.ceil(n / bs)
    device = data.x_train.device
    gen = torch.Generator(device=device).manual_seed(seed)   # data order, separate from init
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs)   # sets epoch 1's lr
    diag = build_diagnostics(cfg.diagnostics, bs, cfg.epochs, seed)
    loss_epoch_start = getattr(loss_fn, "epoch_start", None)
    loss_diagnostics = getattr(loss_fn, "diagnostics", None)

    t0 = time.perf_counter()
    wall0 = 0.0                       # wall time of earlier segments of a resumed run
    diag_time = 0.0                   # seconds spent in diagnostics (not in wall_time)
    steps = 0
    status, error = "completed", None
    rows: list[dict] = []
    last_epoch = 0
    loss_sum = torch.zeros((), dtype=data.x_train.dtype, device=device)

    def wall() -> float:
        return wall0 + time.perf_counter() - t0 - diag_time

    def log_row(epoch: int, train_loss: float) -> dict:
        nonlocal diag_time
        train = evaluate(model, data.x_train, data.y_train, cfg.eval_chunk)
        test = evaluate(model, data.x_test, data.y_test, cfg.eval_chunk)
        row = {"epoch": epoch, "step": steps, "train_loss": train_loss}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"test_{k}": v for k, v in test.items()})
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        row["wall_time"] = wall()
        diagnostics = getattr(optimizer, "diagnostics", None)
        if diagnostics is not None:
            row.update({k: float(v) for k, v in diagnostics().items()})
        if loss_diagnostics is not None:
            row.update(loss_diagnostics({n: p for n, p in model.named_parameters() if p.requires_grad}))
        if diag is not None:
            t = time.perf_counter()
            row.update(diag.row(epoch, model, optimizer, loss_fn, data.x_train, data.y_train))
            diag_time += time.perf_counter() - t
            row["wall_time"] = wall()
        rows.append(row)
        for sink in sinks:
            sink.log(row)
        return row

    def state(status: str) -> dict:
        """Everything the rest of the run depends on, at the end of epoch ``last_epoch``."""
        return {"epoch": last_epoch, "steps": steps, "status": status, "wall_time": wall(),
                "rows": [dict(r) for r in rows], "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "data_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}

    if resume is None:
        log_row(0, full_loss(model, loss_fn, data.x_train, data.y_train, cfg.eval_chunk))
    else:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])     # the scheduled lr too
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        gen.set_state(resume["data_rng"])
        torch.set_rng_state(resume["torch_rng"])
        np.random.set_state(resume["numpy_rng"])
        random.setstate(resume["python_rng"])
        if resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resume["cuda_rng"], device)
        last_epoch, steps, wall0 = resume["epoch"], resume["steps"], resume["wall_time"]
        rows = [dict(r) for r in resume["rows"]]      # the sinks already hold these
        if resume["status"] in ("completed", "diverged"):   # killed between checkpoint and summary
            status = resume["status"]
    todo = range(last_epoch + 1, cfg.epochs + 1) if status == "completed" else []
    bar = tqdm(todo, desc="train", disable=not cfg.progress, dynamic_ncols=True, leave=False)
    try:
        for epoch in bar:
            epoch_start = getattr(optimizer, "epoch_start", None)
            if epoch_start is not None:
                epoch_start()
            if loss_epoch_start is not None:
                loss_epoch_start(epoch)
            perm = torch.randperm(n, generator=gen, device=device) if (cfg.shuffle and bs < n) else None
            loss_sum.zero_()
            for b in range(n_batches):
                if perm is None and bs == n:
                    xb, yb = data.x_train, data.y_train
                else:
                    idx = perm[b * bs:(b + 1) * bs] if perm is not None else slice(b * bs, (b + 1) * bs)
                    xb, yb = data.x_train[idx], data.y_train[idx]
                loss = optimizer.step(BatchClosure(model, loss_fn, xb, yb))
                loss_sum += loss
                steps += 1
            last_epoch = epoch
            finite = bool(torch.isfinite(loss_sum))     # one sync per epoch
            if (not finite or epoch % cfg.log_every == 0 or epoch == cfg.epochs
                    or (diag is not None and diag.due(epoch))):
                row = log_row(epoch, float(loss_sum) / n_batches)
                if not finite or not _finite_row(row):
                    status = "diverged"
                    log.warning("loss is not finite at epoch %d: run diverged", epoch)
                    break
                bar.set_postfix(train=f"{row['train_rel_error']:.3g}", test=f"{row['test_rel_error']:.3g}",
                                refresh=False)
            if scheduler is not None:
                scheduler.step(loss_sum / n_batches)
            if epoch == cfg.epochs:
                break                 # on_finish writes the final checkpoint
            if on_checkpoint is not None and cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                on_checkpoint(state("running"))
            if should_stop is not None and should_stop():
                status = "interrupted"
                log.warning("stop requested (SIGTERM): run interrupted after epoch %d", epoch)
                break
    except KeyboardInterrupt:
        # Mid-epoch: no consistent state to save; the last periodic checkpoint resumes it.
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except Exception as e:  # noqa: BLE001 - recorded in summary.json, then re-raised by the caller
        status, error = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        summary = _summary(rows, status, error, steps, last_epoch, wall(), cfg)
        if on_finish is not None:
            on_finish(summary, None if error is not None else state(status))
    return summary


def _finite_row(row: dict) -> bool:
    return all(math.isfinite(row[k]) for k in ERROR_METRICS if k in row)


def _summary(rows, status, error, steps, epochs, wall, cfg: LoopConfig) -> dict:
    final = dict(rows[-1]) if rows else {}
    best = {}
    for k in ERROR_METRICS:
        vals = [r[k] for r in rows if k in r and math.isfinite(r[k])]
        if vals:
            best[k] = min(vals)
    for k in ACCURACY_METRICS:
        vals = [r[k] for r in rows if k in r and math.isfinite(r[k])]
        if vals:
            best[k] = max(vals)
    return {"status": status, "error": error, "epochs_completed": epochs, "epochs_planned": cfg.epochs,
            "steps": steps, "wall_time": wall, "final": final, "best": best,
            "flags": run_flags(rows, cfg.collapse_q)}
