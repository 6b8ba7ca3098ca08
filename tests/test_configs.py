"""Every experiment composes, with every method of its method set that is registered."""
import pytest
import torch
from omegaconf import OmegaConf

from gradflow_exp.config import CONF_DIR, optimizer_names
from gradflow_exp.data import Dataset
from gradflow_exp.run.build import build
from helpers import compose_cfg

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
OPTIMIZERS = set(optimizer_names())


def method_set(exp):
    cfg = OmegaConf.load(CONF_DIR / "experiment" / f"{exp}.yaml")
    return str(OmegaConf.select(cfg, "hydra.sweeper.params.optimizer")).split(",")


def test_required_experiments_exist():
    for name in ["fig1", "fig2", "fig7", "mnist", "eval_ex1", "eval_ex2", "eval_ex3", "eval_mnist"]:
        assert name in EXPERIMENTS


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_composes_with_its_method_set(exp, monkeypatch):
    methods = [m for m in method_set(exp) if m in OPTIMIZERS]
    assert methods, f"{exp}: no registered method in its method set"
    # Build every piece on a tiny copy of the data, so the test checks construction, not training.
    import gradflow_exp.run.build as train_mod

    def tiny_dataset(cfg, seed):
        n_in = {"mnist": 784, "burgers": 4}.get(cfg.name) or int(cfg.D)
        if cfg.name == "mnist":
            return Dataset(torch.rand(300, n_in, dtype=torch.float64), torch.randint(0, 10, (300,)),
                           torch.rand(8, n_in, dtype=torch.float64), torch.randint(0, 10, (8,)),
                           "classification", 10)
        return Dataset(torch.rand(300, n_in, dtype=torch.float64), torch.rand(300, 1, dtype=torch.float64),
                       torch.rand(8, n_in, dtype=torch.float64), torch.rand(8, 1, dtype=torch.float64),
                       "regression", 1)

    monkeypatch.setattr(train_mod, "build_dataset", tiny_dataset)
    for m in methods:
        cfg = compose_cfg([f"experiment={exp}", f"optimizer={m}"])
        if "width" in cfg.model:
            cfg.model.width = 8
        assert cfg.name == exp
        _, model, _, optimizer, loop_cfg = build(cfg)
        assert loop_cfg.epochs > 0
        assert optimizer.param_groups[0]["lr"] > 0


def test_method_tables_apply_per_method():
    # the evaluation §3.2: SGD lr 0.01 batch 256; Adam lr 0.001 batch 64
    sgd = compose_cfg(["experiment=eval_ex1", "optimizer=sgd"])
    adam = compose_cfg(["experiment=eval_ex1", "optimizer=adam"])
    assert (sgd.optimizer.lr, sgd.trainer.batch_size) == (0.01, 256)
    assert (adam.optimizer.lr, adam.trainer.batch_size) == (0.001, 64)
    # a command-line override still wins over the table
    adam2 = compose_cfg(["experiment=eval_ex1", "optimizer=adam", "optimizer.lr=0.5"])
    assert adam2.optimizer.lr == 0.5


def test_fig_settings_follow_the_spec_table():
    f1 = compose_cfg(["experiment=fig1"])
    assert (f1.dataset.D, f1.dataset.M, f1.model.width, f1.trainer.batch_size, f1.optimizer.lr) == (20, 10000, 1000, None, 0.6)
    f2 = compose_cfg(["experiment=fig2"])
    assert (f2.dataset.D, f2.model.width, f2.trainer.batch_size, f2.optimizer.lr) == (40, 1000, 64, 0.2)
    f7 = compose_cfg(["experiment=fig7"])
    assert (f7.dataset.name, f7.model.width, f7.trainer.batch_size, f7.optimizer.lr) == ("quadratic", 100, 64, 0.01)


@pytest.mark.parametrize("time_scale, K", [("plain", 1.0), ("particle", 10.0), ("0.3*particle", 3.0),
                                           ("1e-1 * particle", 1.0), ("7", 7.0)])
def test_time_scale_forms_set_the_step(time_scale, K):
    """lr = K·Δt for a torch optimizer; K = m/2 = 10 at width 20, F*particle scales it (fig2's
    default is 0.3*particle: K = 150 at its width 1000, and it stays 0.3·m/2 for another width)."""
    small = ["experiment=fig2", "dataset.M=300", "model.width=20", "optimizer=sgd", "optimizer.lr=0.5"]
    optimizer = build(compose_cfg(small + [f"time_scale={time_scale}"]))[3]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * K, rel=1e-15)
    assert compose_cfg(["experiment=fig2"]).time_scale == "0.3*particle"
