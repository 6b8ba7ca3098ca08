"""Replicas: several seeds, or several values of Δt, C or λ, trained as one batch in ONE process.

    gradflow-train experiment=fig7 optimizer=sav replicas.seeds=[0,1,2]
    gradflow-train experiment=fig2 optimizer=sgd replicas.seeds=[0,1] replicas.lr=[0.1,0.2]

Why. On the paper's small nets a step is a few small matmuls plus a few hundred µs of
per-step Python and dispatch work (closure, optimizer, hooks). R single runs pay that R
times; a batch of R replicas pays it once per step for all of them.

How. Each replica is built exactly as the single run ``… seed=S`` builds it
(`gradflow_exp.train.build` on that run's config): its own data set drawn from S, its
initialisation after ``seed_everything(S)``, and, in the loop below, its own batch-order
generator seeded with S. Then the parameters are stacked along a leading replica dimension
[R, …] and every step evaluates all R losses and gradients in one call: ``torch.func.vmap``
of ``grad`` of ``functional_call`` (what autograd computes in the single run), or, for the
two-layer net with MSE, where the single run uses the hand-written gradient
(`TwoLayerNet.mse_loss_and_grad`), that closed form with the replica dimension written out
(see `loss_and_grad_fn` for why not vmap there). Logged metrics are computed by the single
run's own code (`loop.evaluate`) on each replica's model, its parameters copied in.
The updates are those of the single run with per-replica coefficients:

- SGD (no momentum): θ ← θ − Δt g.
- SAV / ResSAV (`gradflow_exp.optim.sav`): the scalar auxiliary r becomes a vector [R];
  r̃ = rⁿ/(1 + ΔtK‖g‖²/((1+λΔt)·2E)), θ ← θ − ΔtK (r̃/√E)/(1+λΔt) g, with ResSAV's reset
  and ``restart=epoch`` as there; the same diagnostics (energy, r, r̂, q, effective step).

Equality with the single runs: same formulas, data, initialisation and batches, but a
batched kernel (bmm rather than mm, a row-wise rather than a whole-tensor reduction) may sum
in another order, so trajectories agree to rounding, not bit for bit
(tests/test_replicas.py checks rtol 1e-9 over a few epochs).

Each replica writes ``<run dir>/seed_<S>[-lr_<v>…]/`` as its single run would: metrics.csv
(same columns; ``wall_time`` is the batch's shared clock), summary.json (its own status:
a replica that diverges is marked ``diverged``, its directory written, and it is frozen
while the others train on), ``.hydra/config.yaml`` (the single run's config: that seed, and
``replicas`` null, so the single run ``seed=S`` finds it its own) and a final checkpoint.pt.
``gradflow-report <run dir>`` reads them as seeds (and hyperparameter values) of a method.

Not supported, refused in one line before anything is trained: other optimizers (momentum,
Adam, RelSAV, the adaptive and exponential forms, IEQ, AEGD, SPM), a learning-rate
scheduler, diagnostics, a loss penalty, and ``resume=`` (no resumable checkpoints: running
the command again into the same directory skips the finished replicas and starts the
others from epoch 0). With ``logger=wandb`` each replica gets its own W&B run, written
when training ends (not live).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import logging
import math
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra.errors
import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig, open_dict, read_write
from torch.func import functional_call, grad_and_value, vmap
from tqdm.auto import tqdm

from gradflow_exp import schema
from gradflow_exp.loop import LoopConfig, _finite_row, _summary, evaluate, full_loss
from gradflow_exp.losses import MSELoss
from gradflow_exp.models import TwoLayerNet
from gradflow_exp.optim import SAV, ResSAV
from gradflow_exp.provenance import code_segments, code_version
from gradflow_exp.rundir import Lock, RunDir, save_checkpoint, write_json, write_record
from gradflow_exp.schema import ConfigError
from gradflow_exp.sinks import CSVSink, WandbSink, device_name

log = logging.getLogger("gradflow_exp")

HPARAMS = ("lr", "C", "lam")          # optimizer keys that may vary across replicas
SUPPORTED = "sgd (no momentum), sav, ressav"
F64 = torch.float64


def requested(resolved: dict) -> bool:
    """True when the (resolved) config asks for replicas (any list under ``replicas``)."""
    node = resolved.get("replicas") or {}
    return any(node.get(k) is not None for k in ("seeds", *HPARAMS))


# ------------------------------------------------------------------ the batched pieces
def loss_and_grad_fn(model, loss_fn):
    """(params {name: [R,…]}, x [R,N,D], y [R,N,…]) → (loss [R], grads {name: [R,…]}).

    Generic: ``torch.func.vmap`` of ``grad_and_value`` of the model's ``functional_call``
    (what autograd computes in the single run). The two-layer net with MSE (where the single
    run uses the hand-written gradient) gets the same closed form with the replica
    dimension written out (bmm instead of mm): vmap of that closed form computes the same
    numbers but its batching rules cost more than the arithmetic (fig7, R = 8, one thread:
    2.1 ms a step against 1.2 ms), which would eat most of the batch's gain."""
    if _closed_form(model, loss_fn):
        return _two_layer_mse_grad(model.scale)

    def loss(params, x, y):
        return loss_fn(functional_call(model, params, (x,)), y)

    batched = vmap(grad_and_value(loss))

    def step(params, x, y):
        grads, value = batched(params, x, y)
        return value, grads

    return step


def _two_layer_mse_grad(scale: float):
    """`TwoLayerNet.mse_loss_and_grad` over a leading replica dimension: h = Wx + b,
    e = s·a·relu(h) − y, I = mean(e²); ∂I/∂a = s(∂I/∂f)ᵀrelu(h), ∂I/∂h = s(∂I/∂f)a ⊙ [h > 0],
    ∂I/∂W = (∂I/∂h)ᵀx, ∂I/∂b = Σ ∂I/∂h (per replica, as in the single run)."""
    w_key, b_key, a_key = "hidden.weight", "hidden.bias", "out.weight"

    def step(params, x, y):
        W, b, a = params[w_key], params[b_key], params[a_key]        # [R,m,D], [R,m], [R,out,m]
        R, N = x.shape[0], x.shape[1]
        h = torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2))      # [R,N,m]
        r = h.clamp_min(0)
        e = torch.baddbmm(y.reshape(R, N, -1), r, a.transpose(1, 2), beta=-1, alpha=scale)   # f − y
        n = e[0].numel()
        flat = e.reshape(R, -1)
        loss = (flat * flat).sum(1) / n
        df = e * (2.0 * scale / n)
        dr = df * a if a.shape[1] == 1 else df @ a
        dh = torch.ops.aten.threshold_backward(dr, h, 0.0)           # relu's backward
        return loss, {w_key: dh.transpose(1, 2) @ x, b_key: dh.sum(1), a_key: df.transpose(1, 2) @ r}

    return step


def _closed_form(model, loss_fn) -> bool:
    """Where the single run's closure uses the hand-written gradient (BatchClosure._manual)."""
    return isinstance(model, TwoLayerNet) and isinstance(loss_fn, MSELoss) and model.supports_manual_grad


class SGDReplicas:
    """torch.optim.SGD without momentum, per replica: θ ← θ − lr g (lr includes K)."""

    diagnostic_keys: tuple[str, ...] = ()

    def __init__(self, optimizers, device):
        self.lr = torch.tensor([o.param_groups[0]["lr"] for o in optimizers], dtype=F64, device=device)

    def epoch_start(self) -> None:
        pass

    @torch.no_grad()
    def step(self, params, grads, loss, active) -> None:
        _axpy(params, grads, torch.where(active, -self.lr, 0.0))      # frozen replicas: 0

    def diagnostics(self) -> dict:
        return {}

    def write_state(self, i: int, optimizer) -> None:
        pass        # plain SGD keeps no state


class SAVReplicas:
    """SAV / ResSAV (optim/sav.py) with r a vector over replicas; see the module docstring."""

    diagnostic_keys = SAV.diagnostic_keys

    def __init__(self, optimizers, device):
        def vec(key):
            return torch.tensor([o.param_groups[0][key] for o in optimizers], dtype=F64, device=device)

        self.dt, self.C, self.lam, self.K = vec("lr"), vec("C"), vec("lam"), vec("time_scale")
        self.kc = self.K * (self.dt / (1 + self.lam * self.dt))   # K (I + Δtℒ)⁻¹ Δt
        self.reset = type(optimizers[0]) is ResSAV             # ResSAV: rⁿ ← r̂ⁿ every step
        self.restart = optimizers[0].param_groups[0].get("restart") == "epoch"
        self.r = None                                          # r⁰ = √(I(θ⁰)+C) at the first step
        self.pending = False
        nan = torch.full((len(optimizers),), math.nan, dtype=F64, device=device)
        self.diag = {k: nan for k in self.diagnostic_keys}    # NaN before the first step

    def epoch_start(self) -> None:
        if self.restart:
            self.pending = True

    @torch.no_grad()
    def step(self, params, grads, loss, active) -> None:
        E = loss.to(F64) + self.C
        sqrt_e = E.sqrt()                                      # r̂ⁿ
        r_prev = sqrt_e if self.r is None else self.r
        restart, self.pending = self.pending, False
        r_n = sqrt_e if (self.reset or restart) else r_prev
        flat = [g.flatten(1).to(F64) for g in grads.values()]  # ‖g‖² per replica, in float64
        gg = sum(torch.linalg.vecdot(f, f) for f in flat)
        r_tilde = r_n / (1 + self.kc * gg / (2 * E))          # (SAV-r)
        phi = r_tilde / sqrt_e
        _axpy(params, grads, torch.where(active, -self.kc * phi, 0.0))   # (SAV-θ)
        self.r = r_tilde
        self.diag = {"energy": r_tilde * r_tilde, "r": r_tilde, "r_hat": sqrt_e,
                     "q": r_prev / sqrt_e, "eff_step": phi * self.kc}

    def diagnostics(self) -> dict:
        return self.diag

    def write_state(self, i: int, optimizer) -> None:
        """Replica i's r and last diagnostics into its single-run optimizer, as that run's
        step leaves them (the checkpoint's optimizer state)."""
        anchor = optimizer.state[optimizer.param_groups[0]["params"][0]]
        if self.r is not None:
            anchor["r"] = self.r[i].detach().cpu().clone()
        for k, v in self.diag.items():
            anchor["diag_" + k] = float(v[i])


def _axpy(params, grads, coef) -> None:
    """params[name][i] += coef[i] · grads[name][i], coef a vector [R]."""
    coef = coef.to(next(iter(params.values())).dtype)
    for name, p in params.items():
        p.addcmul_(grads[name], coef.view(-1, *([1] * (p.dim() - 1))))


def replica_optimizer(optimizers, device):
    """The batched form of the replicas' (identical-class) optimizers; ValueError if none."""
    opt = optimizers[0]
    kind = type(opt)
    if kind is torch.optim.SGD:
        g = opt.param_groups[0]
        if g["momentum"] or g["weight_decay"] or g["nesterov"] or g["maximize"]:
            raise ValueError("replicas: SGD with momentum, weight decay, nesterov or maximize is not "
                             f"supported in replica mode; supported optimizers: {SUPPORTED}")
        return SGDReplicas(optimizers, device)
    if kind in (SAV, ResSAV):
        return SAVReplicas(optimizers, device)
    raise ValueError(f"replicas: optimizer {kind.__name__} is not supported in replica mode; "
                     f"supported optimizers: {SUPPORTED} (run the others as single runs or a -m sweep)")


# ----------------------------------------------------------------------- the loop
def train_replicas(models, optimizers, loss_fn, datas, cfg: LoopConfig, seeds, sinks,
                   on_finish=None, should_stop=None, names=None) -> list[dict]:
    """Train R replicas of one model as a batch; returns their summaries (as `loop.train`'s).

    ``models``/``optimizers``/``datas``: each replica's single-run objects (equal shapes);
    ``seeds``: the batch-order seed of each; ``sinks``: a list of sinks per replica.
    At its end (completed, diverged, interrupted, failed) replica i's final parameters are
    written back into ``models[i]`` (and SAV's r into ``optimizers[i]``) and
    ``on_finish(i, summary, state)`` is called, ``state`` a single-run checkpoint state
    less the global RNG states, which are the caller's (None if training raised);
    ``names`` label the replicas in log lines.
    ``cfg.scheduler``/``cfg.diagnostics`` must be off (`check_supported`).
    """
    R = len(models)
    model = models[0]
    device = datas[0].x_train.device
    with torch.no_grad():
        params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
                  for name, _ in model.named_parameters()}
    x_train, y_train = _stack([d.x_train for d in datas]), _stack([d.y_train for d in datas])
    n = x_train.shape[1]
    bs = cfg.batch_size or n
    n_batches = math.ceil(n / bs)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]   # as loop.train's
    step_fn = loss_and_grad_fn(model, loss_fn)
    opt = replica_optimizer(optimizers, device)
    rows_of = torch.arange(R, device=device).unsqueeze(1)

    t0 = time.perf_counter()
    steps = 0
    rows: list[list[dict]] = [[] for _ in range(R)]
    status = ["running"] * R
    summaries: list[dict | None] = [None] * R
    active = torch.ones(R, dtype=torch.bool, device=device)
    last_epoch = 0
    loss_sum = torch.zeros(R, dtype=x_train.dtype, device=device)

    def wall() -> float:
        return time.perf_counter() - t0

    @torch.no_grad()
    def sync(k: int) -> None:
        """Replica k's current parameters into its own model: the logged metrics are then
        computed by the single run's code (`loop.evaluate`) on the same numbers."""
        for name, p in models[k].named_parameters():
            p.copy_(params[name][k])

    def log_rows(epoch: int, train_loss, which) -> dict[int, dict]:
        diag = opt.diagnostics()
        out = {}
        for k in which:
            sync(k)
            d = datas[k]
            row = {"epoch": epoch, "step": steps, "train_loss": float(train_loss[k])}
            row.update({f"train_{key}": v
                        for key, v in evaluate(models[k], d.x_train, d.y_train, cfg.eval_chunk).items()})
            row.update({f"test_{key}": v
                        for key, v in evaluate(models[k], d.x_test, d.y_test, cfg.eval_chunk).items()})
            row["lr"] = float(optimizers[k].param_groups[0]["lr"])
            row["wall_time"] = wall()
            row.update({key: float(v[k]) for key, v in diag.items()})
            rows[k].append(row)
            for sink in sinks[k]:
                sink.log(row)
            out[k] = row
        return out

    @torch.no_grad()
    def finish(k: int, st: str, error: str | None = None) -> None:
        """Replica k ends: its parameters back into its model, its summary and state out."""
        status[k] = st
        sync(k)
        opt.write_state(k, optimizers[k])
        summary = summaries[k] = _summary(rows[k], st, error, steps, last_epoch, wall(), cfg)
        state = None if error is not None else {
            "epoch": last_epoch, "steps": steps, "status": st, "wall_time": wall(),
            "rows": [dict(r) for r in rows[k]], "model": models[k].state_dict(),
            "optimizer": optimizers[k].state_dict(), "data_rng": gens[k].get_state(), "scheduler": None}
        if on_finish is not None:
            on_finish(k, summary, state)

    initial = [full_loss(m, loss_fn, d.x_train, d.y_train, cfg.eval_chunk) for m, d in zip(models, datas)]
    log_rows(0, initial, range(R))
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train ×{R}", disable=not cfg.progress,
               dynamic_ncols=True, leave=False)
    try:
        for epoch in bar:
            opt.epoch_start()
            perm = (torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])
                    if (cfg.shuffle and bs < n) else None)
            loss_sum.zero_()
            for b in range(n_batches):
                if perm is None and bs == n:
                    xb, yb = x_train, y_train
                elif perm is None:
                    xb, yb = x_train[:, b * bs:(b + 1) * bs], y_train[:, b * bs:(b + 1) * bs]
                else:
                    idx = perm[:, b * bs:(b + 1) * bs]
                    xb, yb = x_train[rows_of, idx], y_train[rows_of, idx]
                loss, grads = step_fn(params, xb, yb)
                opt.step(params, grads, loss, active)
                loss_sum += loss
                steps += 1
            last_epoch = epoch
            live = [k for k in range(R) if status[k] == "running"]
            finite = torch.isfinite(loss_sum).tolist()          # one sync per epoch
            due = epoch % cfg.log_every == 0 or epoch == cfg.epochs
            which = [k for k in live if due or not finite[k]]
            if which:
                for k, row in log_rows(epoch, (loss_sum / n_batches).tolist(), which).items():
                    if not finite[k] or not _finite_row(row):
                        # This replica diverged: written now as its single run ends; then frozen
                        # (parameters zeroed, no more updates) so it computes on finite numbers.
                        log.warning("%s: loss is not finite at epoch %d: replica diverged (the others go on)",
                                    names[k] if names else f"replica {k}", epoch)
                        finish(k, "diverged")
                        active[k] = False
                        with torch.no_grad():
                            for p in params.values():
                                p[k].zero_()
            live = [k for k in range(R) if status[k] == "running"]
            bar.set_postfix(running=f"{len(live)}/{R}", refresh=False)
            if not live or epoch == cfg.epochs:
                break
            if should_stop is not None and should_stop():
                log.warning("stop requested (SIGTERM): replicas interrupted after epoch %d", epoch)
                for k in live:
                    finish(k, "interrupted")
                break
        for k in range(R):
            if status[k] == "running":
                finish(k, "completed")
    except BaseException as e:
        st = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        for k in range(R):
            if status[k] == "running":
                finish(k, st, error="KeyboardInterrupt" if st == "interrupted" else f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    return summaries


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[R, …]; replicas that share their data (hyperparameter replicas of one seed) share one
    copy in memory (an expanded view)."""
    first = tensors[0]
    if all(t is first or torch.equal(t, first) for t in tensors[1:]):
        return first.unsqueeze(0).expand(len(tensors), *first.shape)
    return torch.stack(tensors)


# --------------------------------------------------------------- the runner's replica mode
@dataclass
class Replica:
    seed: int
    hparams: dict                    # e.g. {"lr": 0.1}: this replica's optimizer values
    name: str                        # its directory: seed_0, seed_0-lr_0.1
    cfg: DictConfig                  # the single run's config (that seed, replicas null)
    resolved: dict = field(default_factory=dict)
    dir: Path = Path()
    overrides: list[str] = field(default_factory=list)   # the single run's command-line overrides
    cfg_name: str = ""               # those overrides joined, as Hydra names a job
    rundir: RunDir | None = None     # its directory, locked while the batch runs
    summary: dict | None = None      # set once it has ended (or was already finished)


def expand(cfg: DictConfig) -> list[Replica]:
    """The replicas a config asks for: seeds × each listed hyperparameter (a product)."""
    node = cfg.replicas
    seeds = list(node.seeds) if node.get("seeds") is not None else [cfg.seed]
    axes = [(k, list(node[k])) for k in HPARAMS if node.get(k) is not None]
    out = []
    for seed, *values in itertools.product(seeds, *(v for _, v in axes)):
        hp = {k: v for (k, _), v in zip(axes, values)}
        c = copy.deepcopy(cfg)
        with read_write(c), open_dict(c):
            c.seed = seed
            for k in ("seeds", *HPARAMS):
                c.replicas[k] = None
            for k, v in hp.items():
                c.optimizer[k] = v
        name = "-".join([f"seed_{seed}"] + [f"{k}_{v}" for k, v in hp.items()])
        out.append(Replica(seed, hp, name, c))
    return out


def check_supported(cfg: DictConfig) -> None:
    """What replica mode cannot do, refused before anything is built (ValueError, one line)."""
    sched = cfg.get("scheduler")
    if sched is not None and sched.get("name", "none") != "none":
        raise ValueError(f"replicas: scheduler={sched.name} is not supported in replica mode (only scheduler=none)")
    diag = cfg.get("diagnostics") or {}
    if any((diag.get(k) or {}).get("every") is not None for k in ("hessian", "grad_noise")):
        raise ValueError("replicas: diagnostics (diagnostics.*.every) are not supported in replica mode")
    if cfg.loss.get("penalty") is not None:
        raise ValueError("replicas: a loss penalty (loss.penalty) is not supported in replica mode")
    if cfg.optimizer.get("spm") is not None:
        raise ValueError(f"replicas: SPM is not supported in replica mode; supported optimizers: {SUPPORTED}")


def run(cfg: DictConfig, resolved: dict, run_dir: Path, record: dict, build, set_threads) -> dict:
    """A replica-mode job (``build``, ``set_threads``: gradflow_exp/job.py's, which this
    module does not import): every replica's directory locked and decided, the unfinished
    ones built and trained as one batch; returns the job's summary (`aggregate`)."""
    with Lock(run_dir), contextlib.ExitStack() as held:
        try:
            batch = prepare(cfg, run_dir, record, build, held)
        except (ValueError, TypeError, hydra.errors.InstantiationException) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(str(e).strip().splitlines()[-1]) from None
        write_record(run_dir, resolved, record.get("overrides"), record.get("hydra"))
        if batch.built:     # each build sized the threads for one replica; the batch does all
            first = batch.built[0]
            set_threads(cfg.threads, first["model"], first["loop_cfg"].batch_size or first["data"].x_train.shape[0],
                        first["data"].x_train.device, copies=len(batch.built))
        return batch.run()


class Batch:
    """A replica-mode job: validated and built by `prepare`, trained by `run`."""

    def __init__(self, cfg, run_dir, replicas, built):
        self.cfg, self.run_dir, self.replicas, self.built = cfg, run_dir, replicas, built

    def run(self) -> dict:
        todo = [rep for rep in self.replicas if rep.summary is None]
        if todo:
            self._train(todo)
        return aggregate(self.replicas)

    def _train(self, todo: list[Replica]) -> None:
        cfg, built = self.cfg, self.built
        datas, models, optimizers = ([b[k] for b in built] for k in ("data", "model", "optimizer"))
        loop_cfg = built[0]["loop_cfg"]
        if cfg.trainer.checkpoint and cfg.trainer.get("checkpoint_every"):
            log.warning("replica mode writes only the final checkpoint; trainer.checkpoint_every is ignored")
        device = datas[0].x_train.device
        sinks = []
        for rep in todo:
            (rep.dir / "checkpoint.pt").unlink(missing_ok=True)     # an unfinished earlier attempt's
            rep.rundir.accept()
            write_json(rep.dir / "summary.json", {"status": "running", **self._base(rep, device)})
            sinks.append([CSVSink(rep.dir / "metrics.csv")])
        log.info("replicas: %d in one batch (%s) under %s; data: %d train / %d test, model: %d parameters, "
                 "optimizer: %s", len(todo), ", ".join(r.name for r in todo), self.run_dir,
                 datas[0].x_train.shape[0], datas[0].x_test.shape[0],
                 sum(p.numel() for p in models[0].parameters()), type(optimizers[0]).__name__)
        rows = {}

        def on_finish(k, summary, state):
            rep = todo[k]
            summary.update(self._base(rep, device))
            rep.summary = summary
            if state is not None:
                rows[k] = state["rows"]
                if cfg.trainer.checkpoint:
                    save_checkpoint(rep.dir / "checkpoint.pt", {**state, **built[k]["rng"], "wandb_id": None},
                                    rep.resolved)
            write_json(rep.dir / "summary.json", summary)
            sinks[k][0].close()
            final = summary["final"]
            log.info("%s: %s after %d epochs: train rel error %.3e, test rel error %.3e", rep.name,
                     summary["status"], summary["epochs_completed"], final.get("train_rel_error", math.nan),
                     final.get("test_rel_error", math.nan))

        # SIGTERM ends every replica after the current epoch (status interrupted), as a single run.
        stop = threading.Event()
        in_main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set()) if in_main else None
        try:
            train_replicas(models, optimizers, built[0]["loss_fn"], datas, loop_cfg, [r.seed for r in todo],
                           sinks, on_finish=on_finish, should_stop=stop.is_set, names=[r.name for r in todo])
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            for s in sinks:
                s[0].close()
        if cfg.logger.backend == "wandb":
            # One W&B run per replica, written now from its rows: several live W&B runs in
            # one process would interleave; the files above are the record either way.
            for k, rep in enumerate(todo):
                sink = WandbSink(cfg.logger, rep.dir, rep.summary["name"], rep.resolved)
                for row in rows.get(k, []):
                    sink.log(row)
                sink.summary(rep.summary)
                sink.finish(exit_code=0 if rep.summary["status"] == "completed" else 1)

    def _base(self, rep: Replica, device) -> dict:
        names = [r.name for r in self.replicas]
        return {"run_dir": str(rep.dir), "name": rep.cfg_name,
                "device": device_name(device), "code": code_version(),
                "code_segments": code_segments({}, 0),
                "replica": {"batch_dir": str(self.run_dir), "index": names.index(rep.name), "of": len(names)}}


def prepare(cfg: DictConfig, run_dir: Path, record: dict, build, held: contextlib.ExitStack) -> Batch:
    """Validate and build every replica, its directory locked in ``held`` (ValueError,
    TypeError or ConfigError on bad input, before any file is written).

    A replica whose directory already holds its finished run is skipped (its summary kept);
    one holding an unfinished run starts again from epoch 0 (no resuming in replica mode)."""
    check_supported(cfg)
    replicas = expand(cfg)
    target = hydra.utils.get_class(cfg.optimizer._target_)
    for key in replicas[0].hparams:
        if key not in inspect.signature(target.__init__).parameters:
            raise ValueError(f"replicas.{key}: {target.__name__} has no hyperparameter {key}; "
                             "C and λ replicas need optimizer=sav or ressav")
    names = [r.name for r in replicas]
    if len(set(names)) != len(names):
        raise ValueError(f"replicas: repeated replicas {sorted({n for n in names if names.count(n) > 1})}")
    for rep in replicas:
        rep.resolved = schema.load(rep.cfg)
        rep.dir = run_dir / rep.name
        rep.overrides = _replica_overrides(record.get("overrides") or [], rep)
        rep.cfg_name = ",".join(sorted(rep.overrides)) or "default"
        rep.rundir = held.enter_context(RunDir(rep.dir, rep.resolved, rep.overrides, record.get("hydra")))
        plan = rep.rundir.decide(resume=False)
        if plan.action == "skip":
            log.info("%s: %s", rep.dir, plan.note)
            rep.summary = plan.previous
        elif plan.note:
            log.warning("%s: %s", rep.dir, plan.note)
    built = []
    for rep in (r for r in replicas if r.summary is None):
        data, model, loss_fn, optimizer, loop_cfg = build(rep.cfg)
        # the global RNGs as the single run leaves them after initialisation: training draws
        # nothing from them, so they are its checkpoint's RNG states
        rng = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
               "python_rng": random.getstate(),
               "cuda_rng": torch.cuda.get_rng_state(data.x_train.device) if data.x_train.is_cuda else None}
        built.append({"data": data, "model": model, "loss_fn": loss_fn, "optimizer": optimizer,
                      "loop_cfg": loop_cfg, "rng": rng})
        if len(built) == 1:       # refuse an unsupported optimizer before building the rest
            replica_optimizer([optimizer], data.x_train.device)
        shapes = [(n, p.shape) for n, p in model.named_parameters()]
        if shapes != [(n, p.shape) for n, p in built[0]["model"].named_parameters()] or any(
                getattr(data, k).shape != getattr(built[0]["data"], k).shape
                for k in ("x_train", "y_train", "x_test", "y_test")):
            raise ValueError("replicas: the replicas' parameters or data sets differ in shape; "
                             "replicas must share model and data sizes")
        if not all(p.requires_grad for p in model.parameters()):
            raise ValueError("replicas: every model parameter must be trainable in replica mode")
    return Batch(cfg, run_dir, replicas, built)


def aggregate(replicas: list[Replica]) -> dict:
    """The job's summary for the entry point and sweepers: status ``completed`` only when
    every replica completed (else interrupted / failed / diverged, in that order of
    precedence), final and best test_rel_error the mean over replicas."""
    summaries = {r.name: r.summary for r in replicas}
    statuses = [s.get("status") for s in summaries.values()]
    status = next((s for s in ("interrupted", "failed", "diverged") if s in statuses), "completed")

    def mean(which):
        vals = [s.get(which, {}).get("test_rel_error") for s in summaries.values()]
        vals = [v for v in vals if isinstance(v, (int, float))]
        return statistics.fmean(vals) if vals else math.nan

    return {"status": status, "final": {"test_rel_error": mean("final")},
            "best": {"test_rel_error": mean("best")}, "replicas": summaries}


def _replica_overrides(parent: list[str], rep: Replica) -> list[str]:
    """The single run's overrides: the batch's, with ``replicas.*`` (and the seed and the
    varied hyperparameters) replaced by this replica's values."""
    drop = {"seed", "replicas", *(f"optimizer.{k}" for k in rep.hparams)}
    kept = [o for o in parent
            if (key := o.split("=", 1)[0].lstrip("+~")) not in drop and not key.startswith("replicas.")]
    return kept + [f"seed={rep.seed}"] + [f"optimizer.{k}={v}" for k, v in rep.hparams.items()]
