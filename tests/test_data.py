import gzip
import struct

import numpy as np
import pytest
import torch

from gradflow_exp.config import dataset_config
from gradflow_exp.data import build_dataset
from gradflow_exp.data.mnist import MNISTError, read_idx


def cfg(name="sincos", **kw):
    return dataset_config(name, **{"D": 5, "M": 500, "train_fraction": 0.8, "coef": "uniform", **kw})


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = build_dataset(cfg(), 0), build_dataset(cfg(), 0), build_dataset(cfg(), 1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)


def test_split_and_zscore_use_training_statistics():
    d = build_dataset(cfg(M=1000), 3)
    assert d.x_train.shape == (800, 5) and d.x_test.shape == (200, 5)
    assert torch.allclose(d.x_train.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d.x_train.std(0), torch.ones(5, dtype=torch.float64), atol=1e-12)
    # the test set is transformed with the training statistics, so it is not exactly standardised
    assert not torch.allclose(d.x_test.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-6)


def test_sincos_target_on_raw_x():
    # Targets are in [-2, 2] whatever the z-scoring does to x.
    d = build_dataset(cfg(), 0)
    assert d.y_train.abs().max() <= 2.0


def test_quadratic_targets_are_large():
    # mean ≈ 167 at D = 40 with c ~ U(0,1), x ~ U(0,5): E[y] = 40 · 0.5 · 25/3
    d = build_dataset(cfg(name="quadratic", D=40, M=4000), 0)
    assert 100 < d.y_train.mean() < 250


def test_gaussian_problem():
    d = build_dataset(cfg(name="gaussian", D=20, M=500, x_std=0.2), 0)
    assert ((d.y_train > 0) & (d.y_train <= 1)).all()


def _write_idx(path, arr, gz=False):
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _fake_mnist(root, n_train=20, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    _write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    _write_idx(root / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (n_train,)), gz)
    _write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    _write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (n_test,)), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    _fake_mnist(tmp_path, gz=gz)
    d = build_dataset(dataset_config("mnist", root=str(tmp_path)), 0)
    assert d.x_train.shape == (20, 784) and d.x_test.shape == (10, 784)
    assert d.y_train.dtype == torch.int64 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert d.task == "classification" and d.out_dim == 10


def test_mnist_missing_and_corrupt_files(tmp_path):
    with pytest.raises(MNISTError, match="has no train-images-idx3-ubyte"):
        build_dataset(dataset_config("mnist", root=str(tmp_path)), 0)
    _fake_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(MNISTError, match="corrupt"):
        read_idx(p)
    p.write_bytes(b"garbage!")
    with pytest.raises(MNISTError, match="magic"):
        read_idx(p)


def test_mnist_default_is_the_shipped_real_subset():
    d = build_dataset(dataset_config("mnist", root=None), 0)
    assert d.x_train.shape == (4000, 784) and d.x_test.shape == (1000, 784)
    # all ten digits, roughly balanced in both splits (the subset is sorted by label on disk)
    assert torch.bincount(d.y_train, minlength=10).min() > 300
    assert torch.bincount(d.y_test, minlength=10).min() > 60


def test_mnist_subsample_beyond_the_subset_warns(caplog):
    """eval_mnist asks for 8000/2000 images; the offline subset has 4000/1000: all are used,
    and the log says so instead of silently training on half."""
    cfg = dataset_config("mnist", root=None, subsample_train=8000, subsample_test=500)
    with caplog.at_level("WARNING", logger="gradflow_exp"):
        d = build_dataset(cfg, 0)
    assert d.x_train.shape[0] == 4000 and d.x_test.shape[0] == 500
    assert "subsample_train=8000 but there are only 4000 training images" in caplog.text
    assert "subsample_test" not in caplog.text
