"""The one entry point: compose → build → loop → sinks.

    gradflow-train experiment=fig7 trainer.epochs=100
    python -m gradflow_exp.train -m experiment=fig7 optimizer=sgd,adam seed=0,1,2
"""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import hydra
import hydra.errors
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradflow_exp.cli import CONF_DIR, check_overrides
from gradflow_exp.data import build_dataset
from gradflow_exp.losses import build_loss
from gradflow_exp.loop import LoopConfig, train
from gradflow_exp.optim import build_optimizer, resolve_time_scale
from gradflow_exp.sinks import CSVSink, WandbSink, save_checkpoint, write_json

log = logging.getLogger("gradflow_exp")

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r}; valid: {', '.join(DTYPES)}")
    dtype, device = DTYPES[cfg.dtype], resolve_device(cfg.device)
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    data_seed = cfg.dataset.get("seed", cfg.seed)
    data = build_dataset(cfg.dataset, seed=int(data_seed)).to(device, dtype)
    seed_everything(cfg.seed)
    model = hydra.utils.instantiate(cfg.model, in_dim=data.in_dim, out_dim=data.out_dim).to(device, dtype)
    loss_fn = build_loss(cfg.loss.name)
    if data.task == "classification" and loss_fn.name != "cross_entropy":
        raise ConfigError(f"loss={loss_fn.name} needs regression targets; dataset mnist needs loss=cross_entropy")
    if data.task == "regression" and loss_fn.name == "cross_entropy":
        raise ConfigError(f"loss=cross_entropy needs class labels; dataset {cfg.dataset.name} is a regression problem")
    k = resolve_time_scale(cfg.time_scale, model)
    optimizer = build_optimizer(cfg.optimizer, model, k)
    t = cfg.trainer
    loop_cfg = LoopConfig(epochs=t.epochs, batch_size=t.batch_size, log_every=t.log_every,
                          shuffle=t.shuffle, progress=t.progress, eval_chunk=t.eval_chunk,
                          collapse_q=t.collapse_q)
    if (loop_cfg.batch_size or 0) > data.x_train.shape[0]:
        raise ConfigError(f"trainer.batch_size={loop_cfg.batch_size} is larger than the training set "
                          f"({data.x_train.shape[0]} samples)")
    set_threads(cfg.get("threads", "auto"), model, loop_cfg.batch_size or data.x_train.shape[0], device)
    return data, model, loss_fn, optimizer, loop_cfg


def set_threads(threads, model, batch_size: int, device: torch.device) -> None:
    """CPU intra-op threads. 'auto': one thread when a step is small (batch × parameters
    < 1e6, e.g. fig7): there a second thread costs more in synchronisation than it saves
    (on a busy 2-core machine up to 10× per step); larger steps (fig1, fig2, mnist) use
    PyTorch's default. Parallel sweeps should set threads=1."""
    if device.type != "cpu":
        return
    if threads == "auto":
        work = batch_size * sum(p.numel() for p in model.parameters())
        if work < 1e6:
            torch.set_num_threads(1)
        return
    if not isinstance(threads, int) or threads <= 0:
        raise ConfigError(f"threads={threads!r}; valid: auto or a positive integer")
    torch.set_num_threads(threads)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one job into ``run_dir``; returns its summary."""
    try:
        data, model, loss_fn, optimizer, loop_cfg = build(cfg)
    except (ValueError, TypeError, hydra.errors.InstantiationException) as e:
        raise ConfigError(_short(e)) from None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("run directory: %s", run_dir)
    log.info("data: %d train / %d test, model: %d parameters, optimizer: %s",
             data.x_train.shape[0], data.x_test.shape[0],
             sum(p.numel() for p in model.parameters()), type(optimizer).__name__)

    csv_sink = CSVSink(run_dir / "metrics.csv")
    sinks = [csv_sink]
    wandb_sink = None
    if cfg.logger.backend == "wandb":
        wandb_sink = WandbSink(cfg.logger, run_dir, run_name(), resolved)
        sinks.append(wandb_sink)
    elif cfg.logger.backend != "none":
        raise ConfigError(f"logger.backend={cfg.logger.backend!r}; valid: wandb, none")

    def on_finish(summary, state):
        summary["run_dir"] = str(run_dir)
        summary["name"] = run_name()
        if state is not None and cfg.trainer.checkpoint:
            save_checkpoint(run_dir / "checkpoint.pt", {**state, "config": resolved})
        write_json(run_dir / "summary.json", summary)
        csv_sink.close()
        if wandb_sink is not None:
            wandb_sink.summary(summary)
            wandb_sink.finish(exit_code=0 if summary["status"] == "completed" else 1)

    summary = train(model, optimizer, loss_fn, data, loop_cfg, sinks, seed=cfg.seed, on_finish=on_finish)
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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        run(cfg, run_dir)
    except ConfigError as e:
        # Bad input: one line, no traceback, nothing trained; the run directory says so.
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "summary.json", {"status": "failed", "error": str(e), "run_dir": str(run_dir)})
        print(f"error: {e}", file=sys.stderr)
        if hc.mode != RunMode.MULTIRUN:
            sys.exit(2)
    except Exception as e:  # noqa: BLE001
        # summary.json already says 'failed' (written by the loop); keep the sweep going.
        log.exception("run failed: %s", e)
        if hc.mode != RunMode.MULTIRUN:
            sys.exit(1)


def main() -> None:
    check_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
