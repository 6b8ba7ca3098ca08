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
    assert d.x_train.shape == (18, 784) and d.x_val.shape == (2, 784) and d.x_test.shape == (10, 784)
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
    assert d.x_train.shape == (3600, 784) and d.x_val.shape == (400, 784) and d.x_test.shape == (1000, 784)
    # all ten digits, roughly balanced in every split (the subset is sorted by label on disk)
    assert torch.bincount(d.y_train, minlength=10).min() > 270
    assert torch.bincount(d.y_val, minlength=10).min() > 20
    assert torch.bincount(d.y_test, minlength=10).min() > 60


def test_mnist_subsample_beyond_the_subset_warns(caplog):
    """eval_mnist asks for 8000/2000 images; the offline subset has 4000/1000: all are used,
    and the log says so instead of silently training on half."""
    cfg = dataset_config("mnist", root=None, subsample_train=8000, subsample_test=500)
    with caplog.at_level("WARNING", logger="gradflow_exp"):
        d = build_dataset(cfg, 0)
    assert d.x_train.shape[0] == 3600 and d.x_test.shape[0] == 500
    assert "subsample_train=8000 but there are only 3600 training images" in caplog.text
    assert "subsample_test" not in caplog.text


# ------------------------------------------------------------------ the validation split
@pytest.mark.parametrize("name", ["sincos", "quadratic", "gaussian"])
def test_synthetic_validation_is_a_further_draw_of_the_same_problem(name):
    """Same target function (the seed's coefficients), new inputs from its own generator,
    standardised with the training statistics; train and test exactly as without it."""
    from gradflow_exp.data.synthetic import generate, problem

    d = build_dataset(cfg(name=name, M=1000), 4)
    assert d.x_val.shape == (200, 5) and d.y_val.shape == (200, 1)      # as many as the test set
    x, _, (x_val, y_val) = generate(name, D=5, M=1000, seed=4, n_val=200)
    _, target = problem(name, 5, torch.Generator().manual_seed(4))
    assert torch.equal(target(x_val), y_val)                             # the same coefficients
    assert not any(torch.isclose(x_val[:, None, :], x[None, :, :]).all(-1).any(1))   # new points
    no_val = build_dataset(cfg(name=name, M=1000, val_size=0), 4)
    assert torch.equal(no_val.x_train, d.x_train) and torch.equal(no_val.y_test, d.y_test)
    assert no_val.x_val.shape[0] == 0 and set(no_val.splits()) == {"train", "test"}
    raw_train = x[torch.randperm(1000, generator=torch.Generator().manual_seed(5))[:800]]
    mean, std = raw_train.mean(0), raw_train.std(0)
    torch.testing.assert_close(d.x_val, (x_val - mean) / std, rtol=1e-12, atol=1e-12)
    assert list(d.splits()) == ["train", "val", "test"]
    assert build_dataset(cfg(name=name, M=1000, val_size=50), 4).x_val.shape[0] == 50
    other = build_dataset(cfg(name=name, M=1000), 5)
    assert not torch.equal(other.x_val, d.x_val)


def test_mnist_validation_is_held_out_of_the_training_digits(tmp_path):
    _fake_mnist(tmp_path, n_train=50)
    full = build_dataset(dataset_config("mnist", root=str(tmp_path), val_fraction=0.0), 0)
    d = build_dataset(dataset_config("mnist", root=str(tmp_path), val_fraction=0.2), 0)
    assert full.x_train.shape[0] == 50 and full.x_val.shape[0] == 0
    assert d.x_train.shape[0] == 40 and d.x_val.shape[0] == 10
    rows = {tuple(r.tolist()) for r in full.x_train}
    train, val = {tuple(r.tolist()) for r in d.x_train}, {tuple(r.tolist()) for r in d.x_val}
    assert train | val == rows and not train & val
    assert torch.equal(d.x_test, full.x_test)


def test_burgers_validation_is_the_exact_solution_off_the_test_grid():
    from gradflow_exp.data.burgers import exact

    d = build_dataset(dataset_config("burgers", n_x=20, n_t=6, test_x=11, test_t=5, val_points=30), 0)
    assert d.x_val.shape == (30, 4) and (d.x_val[:, 2] == 0).all() and (d.x_val[:, 3] == 1).all()
    np.testing.assert_allclose(d.y_val[:, 0].numpy(), exact(d.x_val[:, 0].numpy(), d.x_val[:, 1].numpy()))
    assert ((d.x_val[:, 0].abs() <= 1) & (d.x_val[:, 1] >= 0) & (d.x_val[:, 1] <= 1)).all()


def test_a_resumed_run_from_before_the_validation_split_writes_its_val_columns(tmp_path):
    """Its replayed rows lack val_*; the first new row widens metrics.csv's header (the old
    rows empty there) instead of dropping the validation error."""
    import pandas as pd

    from gradflow_exp.run.sinks import CSVSink

    sink = CSVSink(tmp_path / "metrics.csv")
    old = {"epoch": 0, "step": 0, "train_loss": 1.0, "train_rel_error": 1.0, "test_rel_error": 1.1, "lr": 0.1}
    sink.log(old)
    sink.log({**old, "epoch": 1, "train_loss": 0.5})
    sink.log({"epoch": 2, "step": 2, "train_loss": 0.25, "train_rel_error": 0.2, "val_rel_error": 0.21,
              "test_rel_error": 0.22, "lr": 0.1})
    sink.log({"epoch": 3, "step": 3, "train_loss": 0.2, "train_rel_error": 0.1, "val_rel_error": 0.11,
              "test_rel_error": 0.12, "lr": 0.1})
    sink.close()
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df.columns) == ["epoch", "step", "train_loss", "train_rel_error", "val_rel_error",
                                "test_rel_error", "lr"]
    assert df["val_rel_error"].isna().tolist() == [True, True, False, False]
    assert df["val_rel_error"].tolist()[2:] == [0.21, 0.11] and df["train_loss"].tolist() == [1.0, 0.5, 0.25, 0.2]


def test_a_run_from_before_the_validation_split_resumes_unless_its_training_set_changed():
    """The record lacks the new dataset keys: a synthetic or Burgers run compares equal (its
    train and test sets are unchanged); an MNIST run does not (10 % of its digits are now
    held out), and the refusal says how to continue it."""
    from gradflow_exp.run.rundir import changes, describe_changes

    for name, key, new in (("sincos", "val_size", None), ("burgers", "val_points", 2000),
                           ("mnist", "val_fraction", 0.1)):
        old = {"dataset": {"name": name, "seed": 0}, "seed": 0}
        cur = {"dataset": {"name": name, "seed": 0, key: new}, "seed": 0}
        diff = changes(old, cur)
        if name == "mnist":
            assert diff == [("dataset.val_fraction", 0.0, 0.1)]
            assert "dataset.val_fraction=0 continues it" in describe_changes(diff)
            assert changes(old, {**cur, "dataset": {**cur["dataset"], key: 0.0}}) == []
        else:
            assert diff == []
