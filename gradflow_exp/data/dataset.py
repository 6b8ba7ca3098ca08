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
    x_val: torch.Tensor | None = None   # the validation split: what a sweep selects on
    y_val: torch.Tensor | None = None

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    def to(self, device, dtype) -> Dataset:
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        return Dataset(move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test),
                       self.task, self.out_dim, *(None if t is None else move(t) for t in (self.x_val, self.y_val)))

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The evaluated splits in metrics.SPLITS order: train, val (when there is one), test."""
        out = {"train": (self.x_train, self.y_train)}
        if self.x_val is not None and self.x_val.shape[0]:
            out["val"] = (self.x_val, self.y_val)
        out["test"] = (self.x_test, self.y_test)
        return out


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


def val_generator(seed: int) -> torch.Generator:
    """The validation draw's own generator. torch seeds its CPU generator with the low 32 bits
    only, so an offset seed would replay the data's stream: the seed is hashed with a tag
    instead (numpy's SeedSequence)."""
    import numpy as np

    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0x7661]).generate_state(1)[0]))


def split(x, y, frac, seed):
    g = torch.Generator().manual_seed(seed + 1)   # independent of the coefficient draw
    perm = torch.randperm(x.shape[0], generator=g)
    n_train = int(round(frac * x.shape[0]))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def zscore(x_train, *others):
    """Every set standardised with the training set's statistics."""
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, keepdim=True).clamp_min(1e-12)
    return tuple((x - mean) / std for x in (x_train, *others))


def hold_out(x, y, fraction: float, seed: int):
    """(x, y) less a seeded ``fraction`` of its rows, and those rows: the validation set held
    out of a training set (the rest keep their order)."""
    n_val = int(round(fraction * x.shape[0]))
    if not n_val:
        return x, y, x[:0], y[:0]
    perm = torch.randperm(x.shape[0], generator=val_generator(seed))
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    keep[perm[:n_val]] = False
    return x[keep], y[keep], x[perm[:n_val]], y[perm[:n_val]]


def subsample(x, y, n, key: str, which: str):
    """The first n rows; asking for more than there are (eval_mnist's 8000 on the 5000-digit
    offline subset) keeps them all and says so."""
    if not n:
        return x, y
    if int(n) > x.shape[0]:
        log.warning("dataset.%s=%d but there are only %d %s images; using all %d",
                    key, int(n), x.shape[0], which, x.shape[0])
    return x[: int(n)], y[: int(n)]
