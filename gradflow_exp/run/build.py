"""Everything a run is made of, built from its config: data, model, training loss, optimizer,
the loop's settings, and the machine's threads and allocator.

Used by every run (gradflow_exp/run/batch.py builds each member of a batch with it, a single run
being a batch of one), by the benchmark and by the reproduction script. The config has passed
`gradflow_exp.config.schema` already; what only the built objects can tell (an optimizer's own
ranges, a batch larger than the data) is a ConfigError here.
"""
from __future__ import annotations

import random

import hydra
import hydra.errors
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gradflow_exp.data import build_dataset
from gradflow_exp.training.loop import LoopConfig
from gradflow_exp.losses import build_training_loss
from gradflow_exp.optim import build_optimizer, resolve_time_scale
from gradflow_exp.config.schema import ConfigError

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
                          collapse_q=t.collapse_q, cuda_graph=bool(t.get("cuda_graph", False)),
                          checkpoint_every=t.checkpoint_every if t.checkpoint else None,
                          checkpoint_minutes=t.get("checkpoint_minutes") if t.checkpoint else None,
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


def set_threads(threads, model, batch_size: int, device: torch.device) -> None:
    """CPU intra-op threads. 'auto': one thread when one run's step is small (batch ×
    parameters < 1e6, e.g. fig7), where a second thread costs more in synchronisation than
    it saves (on a busy 2-core machine up to 10× a step) — also when R such runs train as
    one replica batch, whose step is R small ones side by side; one per job under the
    joblib and submitit_local launchers, whose jobs run side by side on one machine;
    otherwise PyTorch's default (DEFAULT_THREADS)."""
    if device.type != "cpu":
        return
    if threads == "auto":
        small = batch_size * sum(p.numel() for p in model.parameters()) < 1e6 or _parallel_local_launcher()
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


def _short(e: Exception) -> str:
    """Hydra wraps constructor errors; keep the innermost message."""
    while isinstance(e, hydra.errors.InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).strip().splitlines()
    return msg[-1] if msg else type(e).__name__
