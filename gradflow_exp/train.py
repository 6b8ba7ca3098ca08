"""The one entry point: compose → build → loop → sinks.

    gradflow-train experiment=fig7 trainer.epochs=100
    python -m gradflow_exp.train -m experiment=fig7 optimizer=sgd,adam seed=0,1,2
    gradflow-train resume=outputs/fig7/runs/<time>        # continue a killed run
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m gradflow_exp.train`: reject bad input in one line before the multi-second
    # torch import below (the console script does the same in main()).
    from gradflow_exp.cli import preflight

    sys.argv[1:] = preflight(sys.argv[1:])

import copy
import hashlib
import itertools
import json
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
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradflow_exp import jobdir, replicas
from gradflow_exp.cli import CONF_DIR, preflight, validate_config
from gradflow_exp.data import build_dataset
from gradflow_exp.losses import build_training_loss, penalty_stretched_over_run
from gradflow_exp.loop import LoopConfig, train
from gradflow_exp.models import BurgersPINN
from gradflow_exp.optim import IEQ, build_optimizer, resolve_time_scale
from gradflow_exp.provenance import code_segments, code_version
from gradflow_exp.schedulers import stretched_over_run
from gradflow_exp.sinks import CSVSink, WandbSink, device_name, read_json, save_checkpoint, write_json

log = logging.getLogger("gradflow_exp")

DTYPES = {"float32": torch.float32, "float64": torch.float64}
FINISHED = ("completed", "diverged")      # a job with this status is not run again
# Keys that change how a run is logged, checkpointed or scheduled, not what it computes:
# a run may be resumed with different values of these.
NOT_IDENTITY = ("trainer.progress", "trainer.checkpoint", "trainer.checkpoint_every", "threads",
                "hparams_objective", "logger", "references", "trainer.collapse_q")
# Keys of NOT_IDENTITY that earlier versions hashed into a run's fingerprint: such a run
# still matches at the value its own saved config (.hydra/config.yaml) records.
FORMER_IDENTITY = ("trainer.collapse_q",)
# Keys added to the config after runs already existed, and the test for the value that
# means "off" (the behaviour from before the key). At that value a key is left out of the
# identity, so a run started before the key existed still resumes. A new key goes here.
INERT = {
    "scheduler": lambda v: v.get("name") == "none",
    "diagnostics": lambda v: all(g.get("every") is None for g in v.values()),
    "replicas": lambda v: all(x is None for x in v.values()),
    "optimizer.rhat_batch": lambda v: v == "same",
}


class ConfigError(ValueError):
    """Bad input found before training starts."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not str(name).startswith("cuda:"):
        raise ConfigError(f"device={name!r}; valid: cpu, cuda, cuda:N, auto")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def run_name() -> str:
    """The job's overrides, e.g. 'experiment=fig7,optimizer=sav,seed=1'."""
    try:
        name = HydraConfig.get().job.override_dirname
    except ValueError:
        name = ""
    return name or "default"


def build(cfg: DictConfig):
    """Everything a run needs, validated before any file is written."""
    validate_config(cfg)
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r}; valid: {', '.join(DTYPES)}")
    dtype, device = DTYPES[cfg.dtype], resolve_device(cfg.device)
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    data_seed = cfg.dataset.get("seed", cfg.seed)
    data = build_dataset(cfg.dataset, seed=int(data_seed)).to(device, dtype)
    seed_everything(cfg.seed)
    model = hydra.utils.instantiate(cfg.model, in_dim=data.in_dim, out_dim=data.out_dim).to(device, dtype)
    loss_fn = build_training_loss(OmegaConf.to_container(cfg.loss, resolve=True), cfg.trainer.epochs)
    if data.task == "classification" and loss_fn.name != "cross_entropy":
        raise ConfigError(f"loss={loss_fn.name} needs regression targets; dataset mnist needs loss=cross_entropy")
    if data.task == "regression" and loss_fn.name == "cross_entropy":
        raise ConfigError(f"loss=cross_entropy needs class labels; dataset {cfg.dataset.name} is a regression problem")
    if (cfg.dataset.name == "burgers") != isinstance(model, BurgersPINN):
        raise ConfigError("dataset=burgers and model=pinn go together (the PINN reads burgers' rows "
                          "[x, t, flag, w] and returns the PDE residual)")
    k = resolve_time_scale(cfg.time_scale, model)
    optimizer = build_optimizer(cfg.optimizer, model, k)
    if cfg.loss.get("penalty") is not None and isinstance(getattr(optimizer, "base", optimizer), IEQ):
        raise ConfigError("loss.penalty has no residual form for full-Jacobian IEQ (its N × N solve would "
                          "grow by n rows); use optimizer=ieq_adaptive or a loss without a penalty")
    t = cfg.trainer
    loop_cfg = LoopConfig(epochs=t.epochs, batch_size=t.batch_size, log_every=t.log_every,
                          shuffle=t.shuffle, progress=t.progress, eval_chunk=t.eval_chunk,
                          collapse_q=t.collapse_q,
                          checkpoint_every=t.get("checkpoint_every") if t.checkpoint else None,
                          scheduler=_plain(cfg.get("scheduler")), diagnostics=_plain(cfg.get("diagnostics")))
    if (loop_cfg.batch_size or 0) > data.x_train.shape[0]:
        raise ConfigError(f"trainer.batch_size={loop_cfg.batch_size} is larger than the training set "
                          f"({data.x_train.shape[0]} samples)")
    set_threads(cfg.get("threads", "auto"), model, loop_cfg.batch_size or data.x_train.shape[0], device)
    return data, model, loss_fn, optimizer, loop_cfg


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
    if not isinstance(threads, int) or threads <= 0:
        raise ConfigError(f"threads={threads!r}; valid: auto or a positive integer")
    torch.set_num_threads(threads)


def _parallel_local_launcher() -> bool:
    try:
        target = str(HydraConfig.get().launcher.get("_target_", ""))
    except ValueError:      # not under Hydra (tests, notebooks)
        return False
    return "joblib" in target.lower() or target.endswith("LocalLauncher")


def fingerprint(resolved: dict) -> str:
    """Identifies what a run computes: a restarted job resumes or skips only its own run."""
    return _hash(_without(resolved, NOT_IDENTITY + tuple(k for k in INERT if _inert(resolved, k))))


def same_run(previous_fp: str | None, resolved: dict, recorded: dict | None = None) -> bool:
    """Whether a run directory's fingerprint is this config's. Runs of earlier versions
    hashed every key, inert ones included, and had only some of INERT's keys: any subset
    of the inert keys may be the one their config lacked. ``recorded``: the run's own
    values of FORMER_IDENTITY keys (`recorded_former_identity`), which its fingerprint may
    have hashed."""
    if previous_fp is None:
        return True
    inert = [k for k in INERT if _inert(resolved, k)]
    variants = [(resolved, NOT_IDENTITY)]
    if recorded:
        older = copy.deepcopy(resolved)
        for key, value in recorded.items():
            node, last = _node(older, key)
            node[last] = value
        variants.append((older, tuple(k for k in NOT_IDENTITY if k not in recorded)))
    return any(previous_fp == _hash(_without(config, skip + dropped))
               for config, skip in variants
               for n in range(len(inert) + 1) for dropped in itertools.combinations(inert, n))


def recorded_former_identity(run_dir: Path) -> dict:
    """FORMER_IDENTITY keys as the run in ``run_dir`` recorded them (.hydra/config.yaml)."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception:  # noqa: BLE001 - no record, or not a config: nothing to add
        return {}
    out = {}
    for key in FORMER_IDENTITY:
        node, last = _node(saved, key)
        if isinstance(node, dict) and isinstance(node.get(last), (int, float)):
            out[key] = node[last]
    return out


def only_epochs_differ(previous: dict, resolved: dict, recorded: dict | None = None) -> bool:
    """Whether the run a summary describes is ``resolved`` with another ``trainer.epochs``."""
    planned = previous.get("epochs_planned")
    if not isinstance(planned, int):
        return False
    as_planned = copy.deepcopy(resolved)
    as_planned["trainer"]["epochs"] = planned
    return same_run(previous.get("fingerprint"), as_planned, recorded)


def cannot_extend(previous: dict, resolved: dict, run_dir: Path) -> str | None:
    """Why that run cannot be trained on to ``resolved``'s ``trainer.epochs`` (None: it can).
    It can when it stopped short of that, left a checkpoint, and nothing else is stretched
    over the run's length: then training on from the checkpoint gives what a run this long
    from the start gives."""
    done = previous.get("epochs_completed")
    if previous.get("status") not in ("completed", "interrupted"):
        return f"it ended {previous.get('status')}"
    if not isinstance(done, int) or resolved["trainer"]["epochs"] <= done:
        return f"it has already trained {done} epochs"
    if not (run_dir / "checkpoint.pt").is_file():
        return "it has no checkpoint.pt to train on from"
    if stretched_over_run(resolved.get("scheduler")):
        return "its warm-up cosine schedule is stretched over trainer.epochs"
    if penalty_stretched_over_run(resolved.get("loss")):
        return "its loss penalty schedule is stretched over trainer.epochs"
    return None


def _node(d: dict, key: str) -> tuple[dict, str]:
    *parents, last = key.split(".")
    for p in parents:
        d = d.get(p, {})
    return d, last


def _inert(resolved: dict, key: str) -> bool:
    node, last = _node(resolved, key)
    return last in node and INERT[key](node[last])


def _without(resolved: dict, keys) -> dict:
    d = copy.deepcopy(resolved)
    for key in keys:
        node, last = _node(d, key)
        node.pop(last, None)
    return d


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def objective(summary: dict, which: str = "final") -> float:
    """What a job returns to a sweeper (Optuna minimises it): the final or best test relative
    error; inf for a run that did not complete (diverged, failed, interrupted), so a search
    ranks it last instead of stopping (Optuna records NaN as a failed trial)."""
    if summary.get("status") != "completed":
        return float("inf")
    value = summary.get(which, {}).get("test_rel_error")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("inf")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one job into ``run_dir``; returns its summary.

    A ``run_dir`` that already holds this run (same config): finished → skipped, its
    summary returned; unfinished with a checkpoint → resumed from it.
    """
    if replicas.requested(cfg):
        # several seeds / hyperparameter values as one batch in this process (gradflow_exp/replicas.py)
        try:
            batch = replicas.prepare(cfg, run_dir, build, fingerprint, same_run)
        except (ValueError, TypeError, hydra.errors.InstantiationException) as e:
            raise ConfigError(_short(e)) from None
        jobdir.accept(run_dir)
        if batch.built:     # each build sized the threads for one replica; the batch does all
            first = batch.built[0]
            set_threads(cfg.get("threads", "auto"), first["model"],
                        first["loop_cfg"].batch_size or first["data"].x_train.shape[0],
                        first["data"].x_train.device, copies=len(batch.built))
        return batch.run()
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # noqa: BLE001 - a bad interpolation
        raise ConfigError(_short(e)) from None
    fp = fingerprint(resolved)
    previous = read_json(run_dir / "summary.json")
    recorded = recorded_former_identity(run_dir) if previous.get("fingerprint") else {}
    extend = not same_run(previous.get("fingerprint"), resolved, recorded)
    if extend:
        if not only_epochs_differ(previous, resolved, recorded):
            inert = tuple(k for k in INERT if _inert(resolved, k))    # keys newer than the run
            changes = jobdir.changed_keys(run_dir, cfg, ignore=NOT_IDENTITY + inert + ("trainer.epochs",))
            what = f" ({'; '.join(changes)})" if changes else ""
            if any(c.startswith("device:") for c in changes):
                raise ConfigError(f"{run_dir} holds a run made on another device{what}: a run cannot move "
                                  "between devices (its random streams, SPM's included, are the device's); "
                                  "resume it on its own device, or start a new run in a new hydra.run.dir")
            raise ConfigError(f"{run_dir} already holds a run of another configuration{what}; "
                              "use a new hydra.run.dir (or hydra.sweep.dir)")
        if previous.get("status") == "diverged":
            # the longer run is this one up to the same NaN: nothing more to compute
            log.info("%s: diverged at epoch %s; a longer run diverges there too: skipping it",
                     run_dir, previous.get("epochs_completed"))
            return previous
        why = cannot_extend(previous, resolved, run_dir)
        if why:
            raise ConfigError(f"{run_dir} holds this run with trainer.epochs={previous['epochs_planned']}; "
                              f"{why}; use a new hydra.run.dir (or hydra.sweep.dir)")
        log.info("%s: %s after %d of %d epochs; training it on to %d", run_dir, previous["status"],
                 previous["epochs_completed"], previous["epochs_planned"], cfg.trainer.epochs)
    if previous.get("status") in FINISHED and not extend:
        log.info("%s: already %s; skipping it (delete its summary.json to run it again)",
                 run_dir, previous["status"])
        return previous
    try:
        data, model, loss_fn, optimizer, loop_cfg = build(cfg)
    except (ValueError, TypeError, hydra.errors.InstantiationException) as e:
        raise ConfigError(_short(e)) from None
    jobdir.accept(run_dir)
    ckpt = None
    if "fingerprint" in previous and (run_dir / "checkpoint.pt").is_file():
        ckpt = _load_checkpoint(run_dir / "checkpoint.pt")
    run_dir.mkdir(parents=True, exist_ok=True)
    for tmp in run_dir.glob(".checkpoint.pt.*"):     # left by a kill during an atomic write
        tmp.unlink(missing_ok=True)
    base = {"run_dir": str(run_dir), "name": run_name(), "fingerprint": fp,
            "device": device_name(next(model.parameters()).device), "code": code_version(),
            "code_segments": code_segments(previous, ckpt["epoch"] if ckpt else 0)}
    # Until it ends, summary.json says the run is unfinished: a killed run is never taken
    # for a complete one, and a restart knows to resume it.
    write_json(run_dir / "summary.json", {"status": "running", **base,
                                          "resumed_from_epoch": ckpt["epoch"] if ckpt else None})
    log.info("run directory: %s%s", run_dir, f" (resuming after epoch {ckpt['epoch']})" if ckpt else "")
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
        wandb_sink = WandbSink(cfg.logger, run_dir, run_name(), resolved,
                               run_id=ckpt.get("wandb_id") if ckpt else None)
        sinks.append(wandb_sink)

    def save(state):
        save_checkpoint(run_dir / "checkpoint.pt", {**state, "config": resolved, "fingerprint": fp,
                                                    "wandb_id": wandb_sink.run_id if wandb_sink else None})

    def on_finish(summary, state):
        summary.update(base)
        if state is not None and cfg.trainer.checkpoint:
            save(state)
        write_json(run_dir / "summary.json", summary)
        csv_sink.close()
        if wandb_sink is not None:
            wandb_sink.summary(summary)
            wandb_sink.finish(exit_code=0 if summary["status"] == "completed" else 1)

    # SIGTERM (kill, Slurm's scancel) ends the run after the current epoch, with a final
    # checkpoint and status 'interrupted'. Signal handlers can only be set in the main thread.
    stop = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set()) if in_main_thread else None
    try:
        summary = train(model, optimizer, loss_fn, data, loop_cfg, sinks, seed=cfg.seed, on_finish=on_finish,
                        on_checkpoint=save if cfg.trainer.checkpoint else None, resume=ckpt,
                        should_stop=stop.is_set)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    final = summary["final"]
    log.info("%s after %d epochs: train rel error %.3e, test rel error %.3e%s — %s",
             summary["status"], summary["epochs_completed"], final.get("train_rel_error", float("nan")),
             final.get("test_rel_error", float("nan")),
             f", test accuracy {final['test_accuracy']:.4f}" if "test_accuracy" in final else "",
             run_dir)
    for flag in summary["flags"]:
        log.warning(flag)
    return summary


def _load_checkpoint(path: Path) -> dict | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: unreadable checkpoint ({type(e).__name__}); "
                          "delete it to start this run afresh") from None
    if "rows" not in ckpt:      # written by an older version: nothing to resume from
        return None
    return ckpt


def _short(e: Exception) -> str:
    """Hydra wraps constructor errors; keep the innermost message."""
    while isinstance(e, hydra.errors.InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).strip().splitlines()
    return msg[-1] if msg else type(e).__name__


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """One job; returns its objective (see `objective`) for sweepers such as Optuna."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    held_run = jobdir.holds_run(run_dir)
    try:
        summary = run(cfg, run_dir)
    except ConfigError as e:
        # Bad input: one line, no traceback, nothing trained. A fresh run directory says
        # so; one that holds a run keeps its files, .hydra/ included (jobdir.settle).
        if not held_run:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "summary.json", {"status": "failed", "error": str(e), "run_dir": str(run_dir)})
        print(f"error: {e}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        return float("inf")
    except Exception as e:  # noqa: BLE001
        # summary.json already says 'failed' (written by the loop); keep the sweep going.
        log.exception("run failed: %s", e)
        if not multirun:
            sys.exit(1)
        return float("inf")
    finally:
        jobdir.settle(run_dir, held_run)
    if summary["status"] == "interrupted":
        sys.exit(128 + signal.SIGTERM)      # stop here, sweep included, as a killed process would
    return objective(summary, cfg.get("hparams_objective", "final"))


def main() -> None:
    if __name__ != "__main__":      # the console script (`python -m` ran this at import)
        sys.argv[1:] = preflight(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
