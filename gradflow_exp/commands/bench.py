"""``gradflow-bench``: what each method costs, against SGD and against the machine.

One process, one run: for each problem (fig1, fig2, fig7, mnist at their batch sizes) every
method's optimizer steps are timed *interleaved* with SGD's (round-robin over methods,
``--repeats`` rounds, warm-up excluded), and a method's ratio to SGD is the median over
rounds of its time over SGD's time in the same round, so load that changes between rounds
cancels. On CPU with one thread the clock is the process's CPU time, which other
processes on a shared machine do not inflate; otherwise wall time. The machine's own dense
matmul rate is measured in the same run; a problem's achieved GFLOP/s (forward + backward
of the model, SGD's step) is reported against it. Memory: the optimizer's state bytes and
the process's peak RSS (CUDA: peak allocated). Prints a table and writes JSON (``--json``).

Runner overhead (two-layer problems): an epoch of the runner's own training loop
(`gradflow_exp.training.loop.train`, SGD, metrics.csv written, the problem's ``log_every``) against
an epoch of a plain script (hand-written gradient, in-place update, nothing else), also
interleaved; the issue's bar is that the runner is not slower.

Replica batches (``--replicas R``, two-layer problems): R seeds trained as one batch in one
process (`gradflow_exp.run.replicas`) against the same R runs one after another through the
runner's loop, interleaved rounds, speedup = median over rounds of the ratio.

Own loop (``--own-loop``): the package's optimizers as a torch user steps them, on a generic
``nn.Sequential`` (fig2's sizes: 40 → 1000 → 1, ReLU, batch 64) with autograd gradients and
the standard closure (zero grads, forward, ``backward()``, return the loss), against
``torch.optim.SGD`` (torch's defaults, as a user builds it) in the same loop, interleaved.
RelSAV is timed two ways: as a user gets it (``rhat_batch='next'``: the relaxation takes
the next step's loss, no extra evaluation) and with ``rhat_batch='same'`` and a closure
that also accepts ``backward=False`` (one extra forward pass a step).

Sweeps (``--sweep-epochs E``): the README's fig7 sweep (8 jobs: SGD and Adam × two lr ×
two seeds, E epochs, one thread a process) as whole ``gradflow-train -m`` commands, through
the basic launcher, the batched one, and the batched one with ``n_jobs=2``, interleaved
rounds; wall time of each command (start-up included), speedup = median ratio to basic.

Matmul floor: each problem's step also against its forward and backward matmuls timed alone
at the step's shapes (``torch.mm`` into preallocated outputs), interleaved with the methods
so that it sees the same load; ``× floor`` is that multiple.

Targets (docs/speed.md) are ratios to SGD: SAV-type, ExpSAV, IEQ-adaptive, AEGD ≤ 1.10×,
RelSAV ≤ 1.40×, IEQ full Jacobian ≤ 2.5× (fig2, batch 64), SPM(J=10) ≤ 4× its base.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from gradflow_exp.data import Dataset, build_dataset
from gradflow_exp.losses import build_loss
from gradflow_exp.models import MLP, TwoLayerNet
from gradflow_exp.optim import build_optimizer
from gradflow_exp.config import CONF_DIR, dataset_config, optimizer_config, optimizer_names


@dataclass
class Problem:
    name: str
    batch: int | None      # None: full batch
    model: str
    D: int | None = None
    width: int | None = None
    dataset: str = "sincos"


PROBLEMS = {
    "fig1": Problem("fig1", None, "two_layer", 20, 1000),
    "fig2": Problem("fig2", 64, "two_layer", 40, 1000),
    "fig7": Problem("fig7", 64, "two_layer", 40, 100, "quadratic"),
    "fig3": Problem("fig3", 256, "two_layer", 40, 1000),     # fig3–6's shapes (M = 10 000 here: a step's cost)
    "mnist": Problem("mnist", 64, "mlp", dataset="mnist"),
}
METHODS = ["sgd", "adam", "sav", "ressav", "relsav", "asav", "aressav", "arelsav", "expsav",
           "relexpsav", "ieq_adaptive", "aegd", "ieq", "spm_sgd", "spm_sav"]
TARGETS = {"sav": 1.10, "ressav": 1.10, "expsav": 1.10, "ieq_adaptive": 1.10, "aegd": 1.10,
           "relsav": 1.30, "arelsav": 1.40, "relexpsav": 1.40, "ieq": 2.5}
# the adaptive SAVs against Adam, whose moments they share (the fair yardstick)
ADAPTIVE_TARGETS = {"asav": 1.05, "aressav": 1.05, "arelsav": None}
SPM_TARGET = 4.0           # SPM(J=10) against its base method
RUNNER_TARGET = 1.15       # the runner's further epoch against the plain script's
OWN_LOOP_TARGETS = {"sav": 1.10, "relsav": 1.40}   # docs/speed.md, on nn.Sequential with autograd
SWEEP_TARGET = 4.0         # docs/speed.md: the batched launcher against the basic one, fig7
SWEEP = ["experiment=fig7", "optimizer=sgd,adam", "optimizer.lr=0.01,0.1", "seed=0,1", "logger=none", "threads=1"]
LAUNCHERS = {"basic": ["hydra/launcher=basic"], "batched": ["hydra/launcher=batched"],
             "batched, n_jobs=2": ["hydra/launcher=batched", "hydra.launcher.n_jobs=2"]}


def clock_for(device):
    """CPU time when one CPU thread does all the work (robust to other processes); wall
    time otherwise (several threads, or an accelerator)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time, "CPU time"
    return time.perf_counter, "wall time"


def matmul_gflops(dtype, device, n=1024, repeats=5) -> float:
    clock, _ = clock_for(device)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t = clock()
        a @ b
        _sync(device)
        times.append(clock() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def model_flops(model, batch: int) -> float:
    """Forward + backward FLOPs of one step (matmuls only; backward ≈ 2× forward)."""
    fwd = sum(2 * batch * m.in_features * m.out_features for m in model.modules()
              if isinstance(m, torch.nn.Linear))
    return 3 * fwd


def matmul_ops(model, batch: int, dtype, device) -> list[tuple]:
    """The matmuls of one training step at the model's shapes, as (a, b, out) for
    ``torch.mm(a, b, out=out)``: per linear layer the forward x·Wᵀ, the weight gradient
    gᵀ·x, and (past the first layer) the input gradient g·W."""
    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    ops = []
    for i, m in enumerate(mod for mod in model.modules() if isinstance(mod, torch.nn.Linear)):
        x, W, g = randn(batch, m.in_features), randn(m.out_features, m.in_features), randn(batch, m.out_features)
        ops.append((x, W.t(), randn(batch, m.out_features)))
        # the weight gradient gᵀx, or its transpose xᵀg (the two-layer net's hidden layer:
        # TwoLayerNet.mse_loss_and_grad), whichever this machine computes faster
        ops.append(min([(g.t(), x, randn(m.out_features, m.in_features)),
                        (x.t(), g, randn(m.in_features, m.out_features))], key=lambda op: _time_mm(op, device)))
        if i > 0:
            ops.append((g, W, randn(batch, m.in_features)))
    return ops


def _time_mm(op, device, repeats: int = 9) -> float:
    clock, _ = clock_for(device)
    times = []
    for _ in range(repeats):
        t = clock()
        torch.mm(op[0], op[1], out=op[2])
        _sync(device)
        times.append(clock() - t)
    return statistics.median(times[2:])


FLOOR = "(matmul floor)"
REPO = CONF_DIR.parent


def load_tree(rev: str):
    """The package as it was at git revision ``rev``, importable beside this one: its
    ``gradflow_exp/`` and ``conf/`` exported into a temporary directory as the package
    ``gradflow_exp_<rev>`` (every ``gradflow_exp`` in its sources and configs renamed), so one
    process times the old tree's steps interleaved with the new tree's (``--against``).
    Raises ValueError where ``rev`` is not a revision of this repository."""
    import atexit
    import importlib
    import re
    import shutil
    import subprocess
    import tarfile
    import tempfile
    from io import BytesIO
    from pathlib import Path

    tag = re.sub(r"\W", "_", rev)
    try:
        blob = subprocess.run(["git", "archive", rev, "gradflow_exp", "conf"], cwd=REPO, capture_output=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ValueError(f"--against {rev!r}: not a revision of {REPO} ({getattr(e, 'stderr', b'').decode().strip() or e})")
    root = Path(tempfile.mkdtemp(prefix="gradflow_bench_"))
    atexit.register(shutil.rmtree, root, True)       # imported from until the process ends
    tarfile.open(fileobj=BytesIO(blob)).extractall(root, filter="data")
    name = f"gradflow_exp_{tag}"
    (root / "gradflow_exp").rename(root / name)
    for f in [*root.rglob("*.py"), *root.rglob("*.yaml")]:
        f.write_text(re.sub(r"\bgradflow_exp\b", name, f.read_text()))
    sys.path.insert(0, str(root))
    return importlib.import_module(name)


def _api(pkg: str):
    """What the step benchmark builds, from package ``pkg`` (this one, or a `load_tree`)."""
    import importlib
    from types import SimpleNamespace

    mod = {m: importlib.import_module(f"{pkg}.{m}") for m in ("models", "optim", "config", "losses", "training.loop")}
    return SimpleNamespace(TwoLayerNet=mod["models"].TwoLayerNet, MLP=mod["models"].MLP,
                           build_optimizer=mod["optim"].build_optimizer, optimizer_config=mod["config"].optimizer_config,
                           build_loss=mod["losses"].build_loss, OneModel=mod["training.loop"].OneModel)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_problem(p: Problem, dtype, device, seed=0) -> tuple[Dataset, callable]:
    cfg = dataset_config("mnist") if p.dataset == "mnist" else dataset_config(p.dataset, D=p.D, M=10000)
    data = build_dataset(cfg, seed).to(device, dtype)

    def make_model(api=None):
        torch.manual_seed(seed)
        mlp, two_layer = (api.MLP, api.TwoLayerNet) if api is not None else (MLP, TwoLayerNet)
        if p.model == "mlp":
            return mlp(data.in_dim, data.out_dim, hidden=[100]).to(device, dtype)
        return two_layer(data.in_dim, 1, width=p.width).to(device, dtype)

    return data, make_model


def state_bytes(opt) -> int:
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


def time_interleaved(runs: dict, run_steps, repeats: int, steps: int, device) -> dict[str, list[float]]:
    """Seconds a step of each run, ``repeats`` rounds of ``run_steps(*runs[m], steps)`` for
    every m in turn (interleaved: each round sees the same load), after a warm-up."""
    clock, _ = clock_for(device)
    times = {m: [] for m in runs}
    for m in runs:                           # warm-up (allocations, first-call overheads)
        run_steps(*runs[m], 2)
    for _ in range(repeats):
        for m in runs:
            t = clock()
            run_steps(*runs[m], steps)
            times[m].append((clock() - t) / steps)
    return times


def bench_problem(p: Problem, methods, dtype, device, repeats, steps, trees: dict | None = None) -> dict:
    """Every method's runner step, SGD's and the matmul floor interleaved; ``trees``
    (``{"@REV": package name}``, `load_tree`) adds each method as that tree runs it, named
    ``method@REV``, timed in the same rounds."""
    data, make_model = build_problem(p, dtype, device)
    n = data.x_train.shape[0]
    bs = p.batch or n
    n_batches = math.ceil(n / bs)
    gen = torch.Generator(device=device).manual_seed(0)
    perm = torch.randperm(n, generator=gen, device=device) if bs < n else None
    runs = {}
    for tag, pkg in {"": "gradflow_exp", **(trees or {})}.items():
        api = _api(pkg)
        loss_fn = api.build_loss("cross_entropy" if p.dataset == "mnist" else "mse")
        for m in methods:
            cfg = api.optimizer_config(m)
            model = make_model(api)
            cfg.lr = 1e-4              # tiny steps: timing, not training
            # the runner's own step (`OneModel.step`: a view of the epoch's gathered batches,
            # the BatchClosure, optimizer.step) and its loss accumulation, as `loop.train` runs it
            trainee = api.OneModel(model, api.build_optimizer(cfg, model), loss_fn, data)
            trainee.order([perm])
            runs[m + tag] = (trainee, [0, torch.zeros((), dtype=dtype, device=device)])

    # the step's matmuls alone, at its shapes, timed among the methods (the same load)
    runs[FLOOR] = (None, matmul_ops(runs[methods[0]][0].models[0], bs, dtype, device))

    def run_steps(trainee, where, k):
        if trainee is None:                     # the floor: `where` holds the matmuls
            for _ in range(k):
                for a, b, out in where:
                    torch.mm(a, b, out=out)
            _sync(device)
            return
        b, loss_sum = where
        for _ in range(k):
            loss_sum += trainee.step(b, bs)
            b = (b + 1) % n_batches
        where[0] = b
        _sync(device)

    times = time_interleaved(runs, run_steps, repeats, steps, device)
    sgd = statistics.median(times["sgd"])
    flops = model_flops(runs["sgd"][0].models[0], bs)
    floor = statistics.median(times[FLOOR])
    out = {"batch": bs, "steps_per_epoch": n_batches, "flops_per_step": flops, "rounds": times,
           "gflops_sgd": flops / sgd / 1e9, "floor_s": floor, "methods": {}}
    for m in [k for k in runs if k != FLOOR]:
        med = statistics.median(times[m])
        ratio = statistics.median(t / s for t, s in zip(times[m], times["sgd"]))
        out["methods"][m] = {"step_s": med, "epoch_s": med * n_batches, "ratio_sgd": ratio,
                             "ratio_floor": statistics.median(t / f for t, f in zip(times[m], times[FLOOR])),
                             "state_bytes": state_bytes(runs[m][0].optimizer)}
    return out


def plain_sgd_epoch(x, y, params, scale, lr, bs, gen):
    """The reference: an SGD epoch of the two-layer net as a plain script writes it."""
    W, b, a = params
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen, device=x.device) if bs < n else None
    for i in range(0, n, bs):
        xb, yb = (x[perm[i:i + bs]], y[perm[i:i + bs]]) if perm is not None else (x, y)
        h = torch.addmm(b, xb, W.t())
        r = h.clamp_min(0)
        e = (r @ a.t()) * scale - yb.reshape(-1, 1)
        df = e * (2 * scale / e.numel())
        dh = (df * a) * (h > 0)
        a.sub_(df.t() @ r, alpha=lr)
        W.sub_(dh.t() @ xb, alpha=lr)
        b.sub_(dh.sum(0), alpha=lr)


def bench_runner(p: Problem, dtype, device, log_every: int, epochs: int, repeats: int) -> dict:
    """Runner epoch (loop.train with a CSV sink, SGD) vs the plain script's, interleaved.

    A round trains one run of ``epochs`` and one of ``2·epochs`` through the runner and
    ``epochs`` of the plain script. ``ratio`` is the steady per-epoch cost, (T(2E) − T(E)) / E
    over the plain epoch: what every further epoch of a long run costs, its periodic
    metrics included; ``ratio_whole`` is T(E) / E over the plain epoch, which also carries
    the run's one-off cost (epoch 0's metrics, the first step's allocations);
    ``fixed_s`` is that one-off cost, 2·T(E) − T(2E)."""
    import tempfile

    from gradflow_exp.training.loop import LoopConfig, OneModel, Run, train
    from gradflow_exp.run.sinks import CSVSink

    data, make_model = build_problem(p, dtype, device)
    loss_fn = build_loss("mse")
    lr = 1e-4
    plain_params = [t.detach().clone() for t in
                    (lambda m: (m.hidden.weight, m.hidden.bias, m.out.weight))(make_model())]
    scale = make_model().scale
    gen = torch.Generator(device=device).manual_seed(0)
    clock, _ = clock_for(device)

    def runner(n: int, path: str) -> float:
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        sink = CSVSink(path)
        cfg = LoopConfig(epochs=n, batch_size=p.batch, log_every=log_every, progress=False)
        t = clock()
        train(OneModel(model, opt, loss_fn, data), cfg, [Run(seed=0, sinks=[sink])])
        _sync(device)
        t = clock() - t
        sink.close()
        return t

    one, two, plain = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats + 1):       # round 0 is warm-up
            t1 = runner(epochs, f"{tmp}/a_{rep}.csv")
            t2 = runner(2 * epochs, f"{tmp}/b_{rep}.csv")
            t = clock()
            for _ in range(epochs):
                plain_sgd_epoch(data.x_train, data.y_train, plain_params, scale, lr,
                                p.batch or data.x_train.shape[0], gen)
            _sync(device)
            if rep:
                one.append(t1)
                two.append(t2)
                plain.append((clock() - t) / epochs)
    steady = [(b - a) / epochs for a, b in zip(one, two)]
    return {"epochs": epochs, "log_every": log_every, "runner_epoch_s": statistics.median(steady),
            "plain_epoch_s": statistics.median(plain),
            "ratio": statistics.median(s / q for s, q in zip(steady, plain)),
            "ratio_whole": statistics.median(a / epochs / q for a, q in zip(one, plain)),
            "fixed_s": statistics.median(2 * a - b for a, b in zip(one, two))}


def bench_replicas(p: Problem, R: int, method: str, dtype, device, epochs: int, repeats: int,
                   lrs: list[float] | None = None) -> dict:
    """R single runs one after another (`loop.train`, metrics.csv written, the problem's
    ``log_every``) against the same R runs as one replica batch (`loop.Stacked`: seeds
    0…R−1, each with its own data, initialisation and batch order), interleaved; the
    speedup is the median over rounds of the single runs' time over the batch's time.
    ``lrs``: replica k (and its single run) steps with ``lrs[k % len(lrs)]`` (a sweep over Δt
    inside the batch) instead of one tiny lr for all."""
    import tempfile

    from gradflow_exp.training.loop import LoopConfig, OneModel, Run, Stacked, train
    from gradflow_exp.optim import build_replica_optimizer
    from gradflow_exp.run.sinks import CSVSink

    problems = [build_problem(p, dtype, device, seed=s) for s in range(R)]
    loss_fn = build_loss("mse")
    opt_cfg = optimizer_config(method)
    opt_cfg.lr = 1e-4                       # tiny steps: timing, not training
    if "restart" in opt_cfg and method == "sav":
        opt_cfg.restart = "epoch"           # as fig2 / fig7 run SAV (conf/method/fig*/sav.yaml)
    log_every = min(OmegaConf.load(CONF_DIR / "experiment" / f"{p.name}.yaml").trainer.log_every, epochs)
    cfgs = [OmegaConf.merge(opt_cfg, {"lr": lrs[k % len(lrs)]}) if lrs else opt_cfg for k in range(R)]
    cfg = LoopConfig(epochs=epochs, batch_size=p.batch, log_every=log_every, progress=False)
    clock, _ = clock_for(device)
    single_t, batch_t = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(repeats + 1):       # round 0 is warm-up
            models = [make_model() for _, make_model in problems]
            opts = [build_optimizer(cfgs[k], m) for k, m in enumerate(models)]
            sinks = [CSVSink(f"{tmp}/single_{s}.csv") for s in range(R)]
            t = clock()
            for s, ((data, _), model, opt, sink) in enumerate(zip(problems, models, opts, sinks)):
                train(OneModel(model, opt, loss_fn, data), cfg, [Run(seed=s, sinks=[sink])])
                sink.close()
            _sync(device)
            st = clock() - t
            models = [make_model() for _, make_model in problems]
            sinks = [CSVSink(f"{tmp}/replica_{s}.csv") for s in range(R)]
            t = clock()
            trainee = Stacked(models, [d for d, _ in problems], loss_fn)
            trainee.optimizer = build_replica_optimizer(cfgs, list(trainee.params.values()), 1.0)
            train(trainee, cfg, [Run(seed=s, sinks=[sink]) for s, sink in enumerate(sinks)])
            _sync(device)
            bt = clock() - t
            for sink in sinks:
                sink.close()
            if rnd:
                single_t.append(st)
                batch_t.append(bt)
    return {"R": R, "epochs": epochs, "log_every": log_every, "singles_s": statistics.median(single_t),
            "batch_s": statistics.median(batch_t),
            "speedup": statistics.median(a / b for a, b in zip(single_t, batch_t))}


def bench_own_loop(dtype, device, repeats: int, steps: int) -> dict:
    """SGD, SAV and RelSAV in a user's own loop on an ``nn.Sequential`` (see the module
    docstring): seconds a step and the median ratio to SGD over interleaved rounds."""
    from gradflow_exp.optim import SAV, RelSAV

    data, _ = build_problem(PROBLEMS["fig2"], dtype, device)
    bs, n = 64, data.x_train.shape[0]
    batches = [(data.x_train[i:i + bs], data.y_train[i:i + bs].reshape(-1, 1)) for i in range(0, n - bs + 1, bs)]

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(data.in_dim, 1000), torch.nn.ReLU(),
                                   torch.nn.Linear(1000, 1)).to(device, dtype)

    makers = {"sgd": lambda ps: torch.optim.SGD(ps, lr=1e-4),
              "sav": lambda ps: SAV(ps, lr=1e-4, C=1.0),
              "relsav": lambda ps: RelSAV(ps, lr=1e-4, C=1.0),
              "relsav, rhat_batch=same, closure(backward=False)":
                  lambda ps: RelSAV(ps, lr=1e-4, C=1.0, rhat_batch="same")}
    runs = {}
    for name, make in makers.items():
        model = make_model()
        runs[name] = (model, make(model.parameters()), name.endswith("closure(backward=False)"))

    def run_steps(model, opt, forward_only_ok, k):
        for b in range(k):
            x, y = batches[b % len(batches)]

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            def forward_only_too(backward=True):
                if backward:
                    return closure()
                with torch.no_grad():
                    return torch.nn.functional.mse_loss(model(x), y)

            opt.step(forward_only_too if forward_only_ok else closure)
        _sync(device)

    times = time_interleaved(runs, run_steps, repeats, steps, device)
    return {m: {"step_s": statistics.median(ts),
                "ratio_sgd": statistics.median(t / s for t, s in zip(ts, times["sgd"]))}
            for m, ts in times.items()}


def graph_breaks(methods, dtype, device) -> dict:
    """torch.compile's account of each method (Dynamo's ``explain``, no compiler run) on a
    5 → 16 → 1 tanh net, batch 32: its ``step`` alone after an eager backward
    (``step(loss=loss)``; a `BatchClosure` for IEQ and SPM, which evaluate the loss
    themselves), and a whole training step with the standard closure."""
    from gradflow_exp.optim.closure import BatchClosure

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(32, 5, generator=gen, device=device, dtype=dtype)
    y = torch.randn(32, 1, generator=gen, device=device, dtype=dtype)
    out = {}
    for m in methods:
        cfg = optimizer_config(m)
        functional = m.startswith("spm_") or m == "ieq"
        torch_own = str(cfg._target_).startswith("torch.optim.")
        if "rhat_batch" in cfg and not functional:
            cfg.rhat_batch = "next"     # a standard closure cannot evaluate without a backward
        counts = {}
        for what in ("step", "train_step"):
            torch._dynamo.reset()
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(device, dtype)
            opt = build_optimizer(cfg, model)

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            if functional:
                batch = BatchClosure(model, build_loss("mse"), x, y)
                fn, args = (lambda: opt.step(batch)), ()
            elif what == "train_step":
                fn, args = (lambda: opt.step(closure)), ()
            else:
                loss = closure()
                fn, args = ((lambda: opt.step()) if torch_own else (lambda l: opt.step(loss=l))), \
                    (() if torch_own else (loss,))
            e = torch._dynamo.explain(fn)(*args)
            counts[what] = {"graphs": e.graph_count, "breaks": e.graph_break_count}
        out[m] = counts
    torch._dynamo.reset()
    return out


def bench_sweep(epochs: int, repeats: int) -> dict:
    """The README's fig7 sweep as whole commands through each launcher (see the module
    docstring); seconds per command and the median speedup over the basic launcher."""
    import subprocess
    import tempfile

    times = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(repeats):
            for name, launcher in LAUNCHERS.items():
                out = f"{tmp}/{rnd}_{name.replace(', ', '_').replace('=', '')}"
                cmd = [sys.executable, "-m", "gradflow_exp.train", "-m", *launcher, *SWEEP,
                       f"trainer.epochs={epochs}", f"hydra.sweep.dir={out}"]
                t = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                times[name].append(time.perf_counter() - t)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return {name: {"wall_s": statistics.median(ts),
                   "speedup": statistics.median(b / t for b, t in zip(times["basic"], ts))}
            for name, ts in times.items()}


# A step as a multiple of its matmuls alone: fig7's shapes are too small for the matmuls to
# dominate, fig2's and fig3's are not.
FLOOR_TARGETS = {"fig7": 3.0, "fig2": 1.5, "fig3": 1.5}
FLOOR_METHODS = ("sgd", "sav", "ressav", "relsav", "asav")


def check_targets(res: dict) -> list[str]:
    lines = []
    for prob, r in res["problems"].items():
        for m in FLOOR_METHODS:
            if prob in FLOOR_TARGETS and m in r["methods"]:
                lines.append(_verdict(prob, f"{m} vs matmul floor", r["methods"][m]["ratio_floor"], FLOOR_TARGETS[prob]))
        for m, v in r["methods"].items():
            if "@" in m:             # an older tree's step (--against): compared, not judged
                continue
            target = TARGETS.get(m)
            if m == "ieq" and prob != "fig2":
                target = None
            if m.startswith("spm_"):
                base = r["methods"].get(m[4:])
                if base:
                    ratio = v["step_s"] / base["step_s"]
                    lines.append(_verdict(prob, f"{m} vs {m[4:]}", ratio, SPM_TARGET))
                continue
            if target is not None:
                lines.append(_verdict(prob, m, v["ratio_sgd"], target))
            adam = r["methods"].get("adam")
            if m in ADAPTIVE_TARGETS and adam:
                ratio = statistics.median(t / a for t, a in zip(r["rounds"][m], r["rounds"]["adam"]))
                if ADAPTIVE_TARGETS[m] is None:
                    lines.append(f"info {prob:6s} {m + ' vs adam':22s} {ratio:6.2f}× "
                                 f"(Adam itself {adam['ratio_sgd']:.2f}× SGD)")
                else:
                    lines.append(_verdict(prob, f"{m} vs adam", ratio, ADAPTIVE_TARGETS[m]))
    for prob, r in res.get("runner", {}).items():
        lines.append(_verdict(prob, "runner vs plain", r["ratio"], RUNNER_TARGET))
    for name, v in res.get("sweep", {}).items():
        if name != "basic":
            lines.append(f"{'ok  ' if v['speedup'] >= SWEEP_TARGET else 'MISS'} fig7   sweep, {name:13s} "
                         f"{v['speedup']:6.2f}× faster than basic (target ≥ {SWEEP_TARGET}×)")
    for m, v in res.get("own_loop", {}).items():
        target = OWN_LOOP_TARGETS.get(m.split(",")[0])
        if target is not None:
            lines.append(_verdict("own loop", m, v["ratio_sgd"], target))
    return lines


def _verdict(prob, what, ratio, target):
    ok = ratio <= target
    miss = "" if ok else f"  MISSED by {ratio / target:.2f}×"
    return f"{'ok  ' if ok else 'MISS'} {prob:6s} {what:22s} {ratio:6.2f}× (target ≤ {target}×){miss}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gradflow-bench", description=__doc__.split("\n\n")[1])
    ap.add_argument("--problems", default="fig1,fig2,fig7,mnist")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--runner-epochs", type=int, default=20,
                    help="epochs per timed runner / plain-script block (0: skip that comparison)")
    ap.add_argument("--replicas", type=int, default=0,
                    help="also time R seeds as one replica batch against R single runs (0: skip)")
    ap.add_argument("--replica-methods", default="sgd,sav", help="methods for --replicas (any that stacks: not ieq, "
                                                                   "lamb, or spm_*, whose closure this bench lacks)")
    ap.add_argument("--replica-epochs", type=int, default=3, help="epochs per timed --replicas block")
    ap.add_argument("--replica-lrs", default="", help="per-replica lr for --replicas, cycled (e.g. 0.01,0.1): "
                                                        "a batch whose replicas differ in Δt")
    ap.add_argument("--own-loop", action="store_true",
                    help="also time SGD, SAV, RelSAV in a user's own loop on an nn.Sequential (autograd)")
    ap.add_argument("--sweep-epochs", type=int, default=0,
                    help="also time the README's fig7 sweep through each launcher, E epochs a job (0: skip)")
    ap.add_argument("--graph-breaks", action="store_true",
                    help="torch.compile's graphs and graph breaks of each method's step (Dynamo's explain)")
    ap.add_argument("--against", default="", metavar="REV",
                    help="also time every method's step as git revision REV runs it, in the same rounds "
                         "(old tree against new in one run)")
    ap.add_argument("--json", default="bench.json")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    from gradflow_exp.run.build import reuse_freed_memory
    reuse_freed_memory()            # as a job does: the runner and the plain script alike
    dtype = getattr(torch, args.dtype)
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in optimizer_names()]
    if unknown:
        print(f"gradflow-bench: error: unknown method(s) {unknown}", file=sys.stderr)
        return 2
    if "sgd" not in methods:
        methods.insert(0, "sgd")
    rep_methods = [m.strip() for m in args.replica_methods.split(",")]
    if bad := [m for m in rep_methods if m in ("ieq", "lamb") or m.startswith("spm_")
               or m not in optimizer_names()]:
        print(f"gradflow-bench: error: --replica-methods {bad}: not a method this bench stacks", file=sys.stderr)
        return 2
    try:
        replica_lrs = [float(v) for v in args.replica_lrs.split(",")] if args.replica_lrs else None
    except ValueError:
        replica_lrs = [-1.0]
    if replica_lrs and not all(0 < v < math.inf for v in replica_lrs):
        print(f"gradflow-bench: error: --replica-lrs {args.replica_lrs!r}: positive numbers, comma-separated",
              file=sys.stderr)
        return 2
    probs = [p.strip() for p in args.problems.split(",") if p.strip()]     # "": none (e.g. --graph-breaks alone)
    if bad := [p for p in probs if p not in PROBLEMS]:
        print(f"gradflow-bench: error: unknown problem(s) {bad}; valid: {', '.join(PROBLEMS)}", file=sys.stderr)
        return 2
    trees = {}
    if args.against:
        try:
            trees = {f"@{args.against}": load_tree(args.against).__name__}
        except ValueError as e:
            print(f"gradflow-bench: error: {e}", file=sys.stderr)
            return 2
    res = {"device": str(device), "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "dtype": args.dtype,
           "matmul_gflops": {"float32": matmul_gflops(torch.float32, device),
                             "float64": matmul_gflops(torch.float64, device)},
           "problems": {}}
    peak = res["matmul_gflops"][args.dtype]
    print(f"device {res['device_name']}, {res['threads']} threads, {args.dtype}, timed by "
          f"{clock_for(device)[1]}; "
          f"dense matmul {res['matmul_gflops']['float32']:.1f} GFLOP/s (float32), "
          f"{res['matmul_gflops']['float64']:.1f} (float64)")
    for prob in probs:
        ms = [m for m in methods if not (m == "ieq" and prob in ("fig1", "mnist"))]  # IEQ: batch² solve
        r = bench_problem(PROBLEMS[prob], ms, dtype, device, args.repeats, args.steps, trees)
        r["fraction_of_matmul_peak"] = r["gflops_sgd"] / peak
        res["problems"][prob] = r
        print(f"\n{prob}: batch {r['batch']}, {r['steps_per_epoch']} steps/epoch, SGD at "
              f"{r['gflops_sgd']:.2f} GFLOP/s = {100 * r['fraction_of_matmul_peak']:.0f}% of matmul peak; "
              f"the step's matmuls alone (its floor) {1e3 * r['floor_s']:.3f} ms")
        print(f"  {'method':14s} {'ms/step':>9s} {'s/epoch':>9s} {'× SGD':>7s} {'× floor':>8s} {'state KiB':>10s}")
        for m, v in r["methods"].items():
            print(f"  {m:14s} {1e3 * v['step_s']:9.3f} {v['epoch_s']:9.3f} {v['ratio_sgd']:7.2f} "
                  f"{v['ratio_floor']:8.2f} {v['state_bytes'] / 1024:10.1f}")
        for tag in trees:
            print(f"  new tree against {tag[1:]} (median over rounds of new / old, the same rounds):")
            for m in ms:
                old, new = r["methods"][m + tag], r["methods"][m]
                print(f"    {m:14s} {1e3 * old['step_s']:9.3f} → {1e3 * new['step_s']:.3f} ms: "
                      f"{statistics.median(r['rounds'][m][i] / r['rounds'][m + tag][i] for i in range(len(r['rounds'][m]))):.2f}×; "
                      f"× floor {old['ratio_floor']:.2f} → {new['ratio_floor']:.2f}")
    if args.runner_epochs > 0:
        res["runner"] = {}
        print(f"\nrunner vs plain script (SGD epoch, {args.runner_epochs} epochs per block, "
              f"{clock_for(device)[1]}):")
        for prob in probs:
            if PROBLEMS[prob].model != "two_layer":
                continue
            log_every = OmegaConf.load(CONF_DIR / "experiment" / f"{prob}.yaml").trainer.log_every
            r = bench_runner(PROBLEMS[prob], dtype, device, min(log_every, args.runner_epochs),
                             args.runner_epochs, max(1, args.repeats // 2))
            res["runner"][prob] = r
            print(f"  {prob:6s} runner {r['runner_epoch_s']:.4f} s/epoch (log_every {r['log_every']}), "
                  f"plain {r['plain_epoch_s']:.4f} s/epoch: {r['ratio']:.2f}× a further epoch; "
                  f"{r['ratio_whole']:.2f}× over a {args.runner_epochs}-epoch run, whose one-off cost "
                  f"is {r['fixed_s']:.3f} s")
    if args.replicas > 0:
        res["replicas"] = {}
        print(f"\nreplica batch vs single runs one after another ({args.replicas} seeds, "
              f"{args.replica_epochs} epochs per block, {clock_for(device)[1]}):")
        for prob in probs:
            if PROBLEMS[prob].model != "two_layer":
                continue
            res["replicas"][prob] = {}
            for m in rep_methods:
                r = bench_replicas(PROBLEMS[prob], args.replicas, m, dtype, device, args.replica_epochs,
                                   max(1, args.repeats // 2), lrs=replica_lrs)
                res["replicas"][prob][m] = r
                print(f"  {prob:6s} {m:7s} {args.replicas} single runs {r['singles_s']:.3f} s, one batch "
                      f"{r['batch_s']:.3f} s: {r['speedup']:.2f}× faster")
    if args.own_loop:
        res["own_loop"] = bench_own_loop(dtype, device, args.repeats, args.steps)
        print(f"\nown loop: nn.Sequential {PROBLEMS['fig2'].D} → 1000 → 1, batch 64, autograd, the standard closure "
              f"({clock_for(device)[1]}):")
        for m, v in res["own_loop"].items():
            print(f"  {m:32s} {1e3 * v['step_s']:8.3f} ms/step {v['ratio_sgd']:6.2f}× SGD")
    if args.graph_breaks:
        res["graph_breaks"] = graph_breaks(methods, dtype, device)
        print("\ntorch.compile (Dynamo's explain): graphs / graph breaks")
        print(f"  {'method':14s} {'opt.step alone':>16s} {'training step':>16s}")
        for m, v in res["graph_breaks"].items():
            a, b = v["step"], v["train_step"]
            print(f"  {m:14s} {a['graphs']:>9d} / {a['breaks']:<4d} {b['graphs']:>9d} / {b['breaks']:<4d}")
    if args.sweep_epochs > 0:
        print(f"\nthe README's fig7 sweep (8 jobs, {args.sweep_epochs} epochs, one thread a process), wall time "
              "of the whole command:")
        res["sweep"] = bench_sweep(args.sweep_epochs, max(1, args.repeats // 2))
        for name, v in res["sweep"].items():
            print(f"  {name:18s} {v['wall_s']:7.2f} s  {v['speedup']:5.2f}× basic")
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        res["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    res["targets"] = check_targets(res)
    print("\ntargets (ratios measured in this run):")
    print("\n".join("  " + line for line in res["targets"]))
    print(f"\npeak RSS {res['peak_rss_mib']:.0f} MiB")
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
