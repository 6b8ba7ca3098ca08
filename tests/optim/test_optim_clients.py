"""Real clients of a torch optimizer: PyTorch Lightning's Trainer (automatic and manual
optimization, checkpoint resume, a skipped batch) and Hugging Face accelerate's
prepared loop, with this package's optimizers in them (the README's own-loop section)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradflow_exp.losses import MSELoss
from gradflow_exp.optim import (
    AEGD, ARelSAV, AResSAV, ASAV, SAV, SPM, BatchClosure, ExpSAV, IEQAdaptive, RelExpSAV, RelSAV, ResSAV,
)

pl = pytest.importorskip("lightning.pytorch", reason="the dev extra: pip install -e '.[dev]'")

# every class a Lightning closure can drive (IEQ and SPM need the loss as a function of θ: manual below)
CLOSURE_DRIVEN = {"SAV": (SAV, 0.05), "ResSAV": (ResSAV, 0.05), "RelSAV": (RelSAV, 0.05), "ASAV": (ASAV, 0.01),
                  "AResSAV": (AResSAV, 0.01), "ARelSAV": (ARelSAV, 0.01), "ExpSAV": (ExpSAV, 0.05),
                  "RelExpSAV": (RelExpSAV, 0.05), "IEQAdaptive": (IEQAdaptive, 0.05), "AEGD": (AEGD, 0.05)}


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return TensorDataset(x, torch.sin(x.sum(1, keepdim=True)))


def net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


class Regression(pl.LightningModule):
    def __init__(self, make, skip_batch=None):
        super().__init__()
        self.net, self.make, self.skip_batch = net(), make, skip_batch
        self.calls = 0
        self.skipped = None

    def training_step(self, batch, batch_idx):
        self.calls += 1
        if batch_idx == self.skip_batch:        # Lightning's way to skip a batch
            self.skipped = flat(self.net)
            return None
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if batch_idx == self.skip_batch:
            assert torch.equal(flat(self.net), self.skipped)     # the optimizer did not move

    def configure_optimizers(self):
        return self.make(self.net.parameters())


class Manual(Regression):
    """Manual optimization: the standard loop, ``opt.step(loss=loss)``; with ``functional``,
    a BatchClosure stepped on the wrapped optimizer (IEQ, SPM)."""

    def __init__(self, make, functional=False):
        super().__init__(make)
        self.automatic_optimization = False
        self.functional = functional

    def training_step(self, batch, batch_idx):
        self.calls += 1
        opt = self.optimizers()
        x, y = batch
        if self.functional:
            loss = opt.optimizer.step(BatchClosure(self.net, MSELoss(), x, y))
        else:
            opt.zero_grad()
            loss = nn.functional.mse_loss(self.net(x), y)
            self.manual_backward(loss)
            opt.step(loss=loss)
        self.log("train_loss", loss)


def trainer(tmp_path, epochs, **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, deterministic=True, **kw)


def loader():
    return DataLoader(data(), batch_size=16, shuffle=False)


def loss_on_data(module):
    x, y = data().tensors
    with torch.no_grad():
        return float(nn.functional.mse_loss(module.net(x), y))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["RelSAV", "ASAV", "RelExpSAV"])
def test_lightning_automatic_optimization_trains_and_calls_each_step_once(name, tmp_path):
    cls, lr = CLOSURE_DRIVEN[name]
    module = Regression(lambda ps: cls(ps, lr=lr))
    start = loss_on_data(module)
    trainer(tmp_path, 3).fit(module, loader())
    assert module.calls == 3 * 4                  # one training_step a batch, relaxed methods included
    assert loss_on_data(module) < start


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLOSURE_DRIVEN))
def test_lightning_resumes_bit_identically_from_ckpt_path(name, tmp_path):
    cls, lr = CLOSURE_DRIVEN[name]
    straight = Regression(lambda ps: cls(ps, lr=lr))
    trainer(tmp_path / "a", 4).fit(straight, loader())
    first = Regression(lambda ps: cls(ps, lr=lr))
    tr = trainer(tmp_path / "b", 2)
    tr.fit(first, loader())
    ckpt = tmp_path / "half.ckpt"
    tr.save_checkpoint(ckpt)
    resumed = Regression(lambda ps: cls(ps, lr=lr))
    trainer(tmp_path / "c", 4).fit(resumed, loader(), ckpt_path=ckpt)
    assert torch.equal(flat(resumed.net), flat(straight.net))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SAV", "RelSAV", "ARelSAV", "AEGD"])
def test_lightning_skips_a_batch_whose_training_step_returns_none(name, tmp_path):
    cls, lr = CLOSURE_DRIVEN[name]
    module = Regression(lambda ps: cls(ps, lr=lr), skip_batch=1)
    start = loss_on_data(module)
    trainer(tmp_path, 2).fit(module, loader())
    assert module.calls == 2 * 4 and loss_on_data(module) < start


@pytest.mark.slow
@pytest.mark.parametrize("name,make,functional", [
    ("RelSAV", lambda ps: RelSAV(ps, lr=0.05), False),
    ("ASAV", lambda ps: ASAV(ps, lr=0.01), False),
    ("SPM(SAV)", lambda ps: SPM(SAV(ps, lr=0.05), J=3, seed=0), True),
])
def test_lightning_manual_optimization(name, make, functional, tmp_path):
    module = Manual(make, functional)
    start = loss_on_data(module)
    tr = trainer(tmp_path, 3)
    tr.fit(module, loader())
    assert module.calls == 12 and loss_on_data(module) < start
    if not functional:
        assert tr.global_step == 12


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SAV", "RelSAV", "ARelSAV", "ExpSAV"])
def test_accelerate_prepared_loop(name):
    """accelerate's documented loop; its AcceleratedOptimizer passes only a closure to
    ``step``, so the loss goes in the closure's place: ``optimizer.step(loss)``."""
    accelerate = pytest.importorskip("accelerate", reason="the dev extra: pip install -e '.[dev]'")
    cls, lr = CLOSURE_DRIVEN[name]
    model = net()
    accelerator = accelerate.Accelerator(cpu=True)
    opt = cls(model.parameters(), lr=lr)
    model, opt, dl = accelerator.prepare(model, opt, loader())
    x, y = data().tensors
    with torch.no_grad():
        start = float(nn.functional.mse_loss(model(x), y))
    calls = 0
    for _ in range(3):
        for xb, yb in dl:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            opt.step(loss)
            calls += 1
    with torch.no_grad():
        assert float(nn.functional.mse_loss(model(x), y)) < start
    assert calls == 12 and bool(torch.isfinite(opt.optimizer.diagnostics()["energy"]))


@pytest.mark.slow
def test_the_readmes_lightning_example_runs_as_printed(tmp_path, monkeypatch):
    """README.md's Lightning example, after its standard-loop example's setup, as printed."""
    import re
    from pathlib import Path

    monkeypatch.chdir(tmp_path)                     # Lightning writes its checkpoints here
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## The optimizers, in your own training loop", 1)[1]
    first, lightning = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    ns: dict = {}
    torch.manual_seed(0)
    exec(first.split("for step in range")[0], ns)
    head, fit = lightning.split("module = Fit()")
    exec(head, ns)
    x, y = ns["x"], ns["y"]

    def loss(module):
        with torch.no_grad():
            return float(nn.functional.mse_loss(module.net(x), y))

    torch.manual_seed(5)
    start = loss(ns["Fit"]())
    torch.manual_seed(5)
    exec("module = Fit()" + fit, ns)
    assert loss(ns["module"]) < start and ns["module"].trainer.global_step == 3 * 4
