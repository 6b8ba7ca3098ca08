"""One job, after its config has passed the schema: build → take the run directory → loop → sinks.

`gradflow_exp.train` (the command line) imports this only once the input is known good: it
is where torch comes in.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import threading
from pathlib import Path

import hydra
import hydra.errors
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gradflow_exp import replicas, schema
from gradflow_exp.data import build_dataset
from gradflow_exp.loop import LoopConfig, OneModel, Run, train
from gradflow_exp.losses import build_training_loss
from gradflow_exp.optim import build_optimizer, resolve_time_scale
from gradflow_exp.provenance import code_segments, code_version
from gradflow_exp.rundir import RunDir, save_checkpoint, write_json
from gradflow_exp.schema import ConfigError
from gradflow_exp.sinks import CSVSink, WandbRun, WandbSink, device_name, method_of

log = logging.getLogger("gradflow_exp")

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def build(cfg: DictConfig):
    """Everything a run needs (``cfg`` has passed `schema.load`); ConfigError for what only
    the built objects can tell (an optimizer's own ranges, a batch larger than the data)."""
    try:
        dtype, device = DTYPES[cfg.dtype], resolve_device(cfg.device)
        data = build_dataset(cfg.dataset, seed=int(cfg.dataset.get("seed", cfg.seed))).to(device, dtype)
        seed_everything(cfg.seed)
        model = hydra.utils.instantiate(cfg.model, in_dim=data.in_dim, out_dim=data.out_dim).to(device, dtype)
        loss_fn = build_training_loss(OmegaConf.to_container(cfg.loss, resolve=True), cfg.trainer.epochs)
        optimizer = build_optimizer(cfg.optimizer, model, resolve_time_scale(cfg.time_scale, model))
    except (ValueError, TypeError, hydra.errors.InstantiationException) as e:
        raise ConfigError(_short(e)) from None
    t = cfg.trainer
    loop_cfg = LoopConfig(epochs=t.epochs, batch_size=t.batch_size, log_every=t.log_every,
                          shuffle=t.shuffle, progress=t.progress, eval_chunk=t.eval_chunk,
                          collapse_q=t.collapse_q, checkpoint_every=t.checkpoint_every if t.checkpoint else None,
                          scheduler=_plain(cfg.get("scheduler")), diagnostics=_plain(cfg.get("diagnostics")))
    n = data.x_train.shape[0]
    if (loop_cfg.batch_size or 0) > n:
        raise ConfigError(f"trainer.batch_size={loop_cfg.batch_size} is larger than the training set ({n} samples)")
    set_threads(cfg.threads, model, loop_cfg.batch_size or n, device)
    reuse_freed_memory()
    return data, model, loss_fn, optimizer, loop_cfg


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4      # glibc's malloc.h


def reuse_freed_memory() -> None:
    """Serve every allocation from the heap and keep what is freed there, for the next step
    to reuse (glibc's ``mallopt``: no mmap, trim above 2 GiB only). By default glibc maps a
    large block (≥ 32 MiB at most) fresh at each allocation and unmaps it when freed, so
    fig2's 8000 × 1000 activations at an evaluation, or fig1's full-batch step, are
    page-faulted in anew every time: an evaluation took 2.2× and a full-batch fig2 gradient
    1.7× the time (docs/speed.md). The process keeps its peak memory instead. Where the C
    library is not glibc, nothing changes."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)


# PyTorch's own choice (the CPUs this process may use, OMP_NUM_THREADS), taken before any run
# sets it: 'auto' must restore it, not inherit the last job's 1 in a sequential multirun.
DEFAULT_THREADS = torch.get_num_threads()


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def set_threads(threads, model, batch_size: int, device: torch.device, copies: int = 1) -> None:
    """CPU intra-op threads. 'auto': one thread when a step is small (copies × batch ×
    parameters < 1e6, e.g. fig7; ``copies``: the replicas trained as one batch): there a
    second thread costs more in synchronisation than it saves (on a busy 2-core machine up
    to 10× per step); also one per job under the joblib and submitit_local launchers, whose
    jobs run side by side on one machine; otherwise PyTorch's default (DEFAULT_THREADS)."""
    if device.type != "cpu":
        return
    if threads == "auto":
        work = copies * batch_size * sum(p.numel() for p in model.parameters())
        small = work < 1e6 or _parallel_local_launcher()
        torch.set_num_threads(1 if small else DEFAULT_THREADS)
        return
    torch.set_num_threads(threads)


def _parallel_local_launcher() -> bool:
    from hydra.core.hydra_config import HydraConfig

    try:
        target = str(HydraConfig.get().launcher.get("_target_", ""))
    except ValueError:      # not under Hydra (tests, notebooks)
        return False
    return "joblib" in target.lower() or target.endswith("LocalLauncher")


def objective(summary: dict, which: str = "final") -> float:
    """What a job returns to a sweeper (Optuna minimises it): the final or best test relative
    error; inf for a run that did not complete (diverged, failed, interrupted), so a search
    ranks it last instead of stopping (Optuna records NaN as a failed trial)."""
    if summary.get("status") != "completed":
        return float("inf")
    value = summary.get(which, {}).get("test_rel_error")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("inf")


def run(cfg: DictConfig, run_dir: Path, record: dict | None = None) -> dict:
    """Train one job into ``run_dir``; returns its summary. ``record``: Hydra's overrides,
    hydra node and job name for the run's ``.hydra/`` (none outside Hydra).

    What the directory already holds decides what happens (`gradflow_exp.rundir`): this run
    finished → skipped; unfinished → resumed from its checkpoint; shorter → trained on;
    another run's → refused (ConfigError). Bad input raises ConfigError before anything trains.
    """
    record = record or {}
    resolved = schema.load(cfg)
    if replicas.requested(resolved):
        # several seeds / hyperparameter values as one batch in this process (gradflow_exp/replicas.py)
        return replicas.run(cfg, resolved, Path(run_dir), record, build, set_threads)
    with RunDir(run_dir, resolved, record.get("overrides"), record.get("hydra")) as rd:
        plan = rd.decide()
        if plan.note:
            log.info("%s: %s", run_dir, plan.note)
        if plan.action == "skip":
            return plan.previous
        data, model, loss_fn, optimizer, loop_cfg = build(cfg)
        rd.accept()
        return _train(cfg, resolved, rd, plan, data, model, loss_fn, optimizer, loop_cfg, record)


def _train(cfg, resolved, rd: RunDir, plan, data, model, loss_fn, optimizer, loop_cfg, record: dict) -> dict:
    run_dir, ckpt = rd.path, plan.checkpoint
    name = record.get("name") or "default"
    base = {"run_dir": str(run_dir), "name": name,
            "device": device_name(next(model.parameters()).device), "code": code_version(),
            "code_segments": code_segments(plan.previous, ckpt["epoch"] if ckpt else 0)}
    # Until it ends, summary.json says the run is unfinished: a killed run is never taken
    # for a complete one, and a restart knows to resume it.
    write_json(run_dir / "summary.json", {"status": "running", **base,
                                          "resumed_from_epoch": ckpt["epoch"] if ckpt else None})
    log.info("run directory: %s", run_dir)
    log.info("data: %d train / %d test, model: %d parameters, optimizer: %s",
             data.x_train.shape[0], data.x_test.shape[0],
             sum(p.numel() for p in model.parameters()), type(optimizer).__name__)

    csv_sink = CSVSink(run_dir / "metrics.csv")
    if ckpt:
        # metrics.csv starts again from the checkpoint's rows (the same bytes): rows logged
        # after the checkpoint, or one cut by a kill, are dropped; the run appends the rest.
        for row in ckpt["rows"]:
            csv_sink.log(row)
    sinks = [csv_sink]
    wandb_sink = None
    if cfg.logger.backend == "wandb":
        method, experiment = method_of(record.get("hydra"), resolved)
        info = WandbRun(run_dir, resolved, list(record.get("overrides") or []), method, experiment,
                        sum(p.numel() for p in model.parameters()))
        wandb_sink = WandbSink(cfg.logger, info, rows=ckpt["rows"] if ckpt else None)
        sinks.append(wandb_sink)

    def save(state):
        save_checkpoint(run_dir / "checkpoint.pt", state, resolved)

    def on_finish(summary, state):
        summary.update(base)
        if state is not None and cfg.trainer.checkpoint:
            save(state)
        write_json(run_dir / "summary.json", summary)
        csv_sink.close()
        if wandb_sink is not None:
            wandb_sink.finish(summary, files=[run_dir / "metrics.csv", run_dir / ".hydra" / "config.yaml"])

    # SIGTERM (kill, Slurm's scancel) ends the run after the current epoch, with a final
    # checkpoint and status 'interrupted'. Signal handlers can only be set in the main thread.
    stop = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set()) if in_main_thread else None
    try:
        run = Run(seed=cfg.seed, sinks=sinks, on_finish=on_finish, on_checkpoint=save if cfg.trainer.checkpoint else None,
                  resume=ckpt, name=str(run_dir))
        (summary,) = train(OneModel(model, optimizer, loss_fn, data), loop_cfg, [run], should_stop=stop.is_set)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        csv_sink.close()
    final = summary["final"]
    log.info("%s after %d epochs: train rel error %.3e, test rel error %.3e%s — %s",
             summary["status"], summary["epochs_completed"], final.get("train_rel_error", float("nan")),
             final.get("test_rel_error", float("nan")),
             f", test accuracy {final['test_accuracy']:.4f}" if "test_accuracy" in final else "",
             run_dir)
    for flag in summary["flags"]:
        log.warning(flag)
    return summary


def _short(e: Exception) -> str:
    """Hydra wraps constructor errors; keep the innermost message."""
    while isinstance(e, hydra.errors.InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).strip().splitlines()
    return msg[-1] if msg else type(e).__name__
