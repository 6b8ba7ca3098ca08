"""A `Dataset`, built from the ``dataset`` config node by its ``_target_``, as models are.

Each problem's module (synthetic.py, mnist.py, burgers.py) has a ``dataset(name, ...,
seed)`` function taking its config node's keys; conf/dataset/<name>.yaml names it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("gradflow_exp")


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str           # "regression" | "classification"
    out_dim: int

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    def to(self, device, dtype) -> Dataset:
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        return Dataset(move(self.x_train), move(self.y_train), move(self.x_test),
                       move(self.y_test), self.task, self.out_dim)


def build_dataset(cfg, seed: int) -> Dataset:
    """The ``dataset`` node's ``_target_`` (a problem's ``dataset`` function in
    gradflow_exp/data/) called with the node's keys and ``seed``: float64 on the CPU.

    Synthetic problems depend only on ``seed`` and the node, so every method with the same
    seed sees the same samples. Inputs are z-scored with training statistics only.
    """
    import hydra.errors
    import hydra.utils
    from omegaconf import OmegaConf

    if "_target_" not in cfg:
        raise ValueError(f"dataset node without _target_ ({OmegaConf.to_container(cfg)}): build it from "
                         "gradflow_exp.config.dataset_config(name, ...)")
    node = {**OmegaConf.to_container(cfg, resolve=True), "seed": seed}
    try:
        return hydra.utils.instantiate(node, _convert_="all")
    except hydra.errors.InstantiationException as e:     # the problem's own error (MNISTError, ...)
        cause = e.__cause__
        while isinstance(cause, hydra.errors.InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def split(x, y, frac, seed):
    g = torch.Generator().manual_seed(seed + 1)   # independent of the coefficient draw
    perm = torch.randperm(x.shape[0], generator=g)
    n_train = int(round(frac * x.shape[0]))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def zscore(x_train, x_test):
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, keepdim=True).clamp_min(1e-12)
    return (x_train - mean) / std, (x_test - mean) / std


def subsample(x, y, n, key: str, which: str):
    """The first n rows; asking for more than there are (eval_mnist's 8000 on the 5000-digit
    offline subset) keeps them all and says so."""
    if not n:
        return x, y
    if int(n) > x.shape[0]:
        log.warning("dataset.%s=%d but there are only %d %s images; using all %d",
                    key, int(n), x.shape[0], which, x.shape[0])
    return x[: int(n)], y[: int(n)]
