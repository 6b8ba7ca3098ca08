"""Build a `Dataset` from the `dataset` config node."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from gradflow_exp.data import burgers, mnist, synthetic

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
    """Generate or load the data for ``cfg`` (the run's ``dataset`` node), in float64 on CPU.

    Synthetic problems depend only on ``seed`` and ``cfg``, so every method with the same
    seed sees the same samples. Inputs are z-scored with training statistics only.
    """
    name = cfg.name
    frac = float(cfg.get("train_fraction", 0.8))
    if name in synthetic.PROBLEMS:
        x, y = synthetic.generate(name, D=int(cfg.D), M=int(cfg.M), seed=seed,
                                  coef=cfg.get("coef", "uniform"), x_std=cfg.get("x_std", 0.2))
        x_tr, y_tr, x_te, y_te = _split(x, y, frac, seed)
        x_tr, x_te = _zscore(x_tr, x_te)
        return Dataset(x_tr, y_tr.unsqueeze(-1), x_te, y_te.unsqueeze(-1), "regression", 1)
    if name == "mnist":
        (x_tr, y_tr), (x_te, y_te) = mnist.load(cfg.get("root"), seed=seed, train_fraction=frac)
        x_tr, y_tr = _subsample(x_tr, y_tr, cfg.get("subsample_train"), "subsample_train", "training")
        x_te, y_te = _subsample(x_te, y_te, cfg.get("subsample_test"), "subsample_test", "test")
        if cfg.get("zscore", False):
            x_tr, x_te = _zscore(x_tr, x_te)
        return Dataset(x_tr, y_tr, x_te, y_te, "classification", 10)
    if name == "burgers":     # grids in raw (x, t): the PDE's derivatives are in those units
        x_tr, y_tr, x_te, y_te = burgers.generate(**{k: cfg[k] for k in burgers.GRID_KEYS if k in cfg})
        return Dataset(x_tr, y_tr, x_te, y_te, "regression", 1)
    raise ValueError(f"dataset.name={name!r}")    # the schema lists the choices


def _split(x, y, frac, seed):
    g = torch.Generator().manual_seed(seed + 1)   # independent of the coefficient draw
    perm = torch.randperm(x.shape[0], generator=g)
    n_train = int(round(frac * x.shape[0]))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def _zscore(x_train, x_test):
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, keepdim=True).clamp_min(1e-12)
    return (x_train - mean) / std, (x_test - mean) / std


def _subsample(x, y, n, key: str, which: str):
    """The first n rows; asking for more than there are (eval_mnist's 8000 on the 5000-digit
    offline subset) keeps them all and says so."""
    if not n:
        return x, y
    if int(n) > x.shape[0]:
        log.warning("dataset.%s=%d but there are only %d %s images; using all %d",
                    key, int(n), x.shape[0], which, x.shape[0])
    return x[: int(n)], y[: int(n)]
