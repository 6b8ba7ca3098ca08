"""Shared plumbing of this package's optimizers: validation, scalar state, diagnostics.

Scalar state (the SAV variable r, log r, step counts, the last diagnostics) is kept as
0-d tensors in ``self.state[p0]`` where ``p0`` is the first parameter of the first group
(the *anchor*), so ``state_dict()`` / ``load_state_dict()`` round-trip it. Energies are
held in float64 whatever the parameters' dtype: `EnergyOptimizer.load_state_dict`
restores the saved dtype of every 0-d state tensor (``torch.optim.Optimizer`` would cast
it to the parameter dtype), so a resumed run continues bit-identically.

Scalar arithmetic. A step's energy bookkeeping is a dozen scalar operations. As 0-d
tensors each is a dispatched kernel, a few µs on CPU, which on the paper's small nets
costs as much as the forward pass; as Python floats (IEEE float64, as the energies need)
it is free, and reading a CPU tensor's value is no device sync. So on CPU the steps do
their scalar arithmetic in Python floats (`EnergyOptimizer._scalar`, the ``s_*`` helpers
below work on both), and on an accelerator in 0-d float64 tensors, so that a step never
waits for the device. Both paths evaluate the same formulas in float64.

torch.optim's contract. Every optimizer here is a drop-in for a torch one
(tests/optim/test_optim_contract.py runs torch's generic optimizer checks over all of them):
`EnergyOptimizer.add_param_group` lets torch build the group (generators, named
parameters) and then checks every hyperparameter (`CHECKS`), refusing a per-group value of
one that is a single number for the whole model; ``step(closure)`` or, after the user's own
``loss.backward()``, ``step(loss=loss)`` (`EnergyOptimizer._evaluate`); complex parameters
step through their real views (`EnergyOptimizer._grads`); the public attributes survive
``deepcopy`` and pickling.

Diagnostics are written during ``step`` (no host sync on accelerators) and read by
``diagnostics()``, as 0-d float64 tensors, only at logging points. Every method has a
fixed key set; before the first step all keys are NaN.

Replicas. ``replicas=R`` makes one optimizer R independent copies of itself: every
parameter carries a leading replica dimension [R, …] (R models stacked), the closure
returns the R losses [R], and every per-run scalar (the SAV variable r, ⟨g, d⟩, the
diagnostics) is a float64 vector [R]; ``lr``, ``C``, ``lam`` and ``eta`` may be given as
sequences of R values. The update code is the same code: inner products reduce over all
but the replica dimension (`dot`) and scalars broadcast along it (`mul`, `add`, `div`
and their in-place forms), so replica k follows the run of the same optimizer on its own
model, to rounding (tests/optim/test_optim_replicas.py). Shared scalars (Adam's step
count, a restart) stay 0-d.
"""
from __future__ import annotations

import functools
import inspect
import math
import types
import weakref
from itertools import chain

import torch
from torch.optim import Optimizer, optimizer as _torch_optimizer

F64 = torch.float64
RESTARTS = ("none", "epoch")
PER_REPLICA = ("lr", "C", "lam", "eta")      # hyperparameters that may differ between replicas


# --------------------------------------------------------------------------- validation
RHAT_BATCHES = ("next", "same")
SECOND_MOMENTS = ("elementwise", "scalar")


def check_lr(lr) -> float:
    lr = float(lr)
    if not lr >= 0:  # also rejects NaN; 0 is allowed, as torch.optim allows it (a warm-up from 0)
        raise ValueError(f"lr (Δt) must be non-negative, got {lr}")
    return lr


def check_C(C) -> float:
    C = float(C)
    if not C > 0:
        raise ValueError(f"C must be positive (it keeps I + C > 0), got {C}")
    return C


def check_lam(lam) -> float:
    lam = float(lam)
    if not lam >= 0:
        raise ValueError(f"lam (λ of ℒ = λI) must be non-negative, got {lam}")
    return lam


def check_eta(eta) -> float:
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    return eta


def check_betas(betas) -> tuple[float, float]:
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair of floats, got {betas!r}") from None
    for i, b in enumerate((b1, b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}] must lie in [0, 1), got {b}")
    return b1, b2


def check_eps(eps) -> float:
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    return eps


def check_time_scale(k) -> float:
    try:
        k = float(k)
    except (TypeError, ValueError):
        raise ValueError(f"time_scale must be a positive number, got {k!r}") from None
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"time_scale (K of θ' = −K∇I) must be positive, got {k}")
    return k


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; valid: {', '.join(choices)}")
    return value


def _choice(name: str, choices):
    return lambda value: check_choice(name, value, choices)


# torch.optim's hyperparameters: set in a group of a method that lacks one, it is refused
TORCH_HYPERPARAMETERS = frozenset({
    "weight_decay", "momentum", "dampening", "nesterov", "maximize", "amsgrad", "betas", "eps", "lr_decay",
    "initial_accumulator_value", "alpha", "centered", "rho", "foreach", "fused", "capturable", "decoupled_weight_decay"})


def _same_value(a, b) -> bool:
    """Equal hyperparameter values; a per-replica vector against a number or another vector
    compared entry by entry."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return bool((torch.as_tensor(a, dtype=F64).cpu() == torch.as_tensor(b, dtype=F64).cpu()).all())
        except (TypeError, RuntimeError, ValueError):
            return False
    return a == b


# every hyperparameter of this package's optimizers and its check, applied to the defaults and to
# every param group (`EnergyOptimizer._check_group`)
CHECKS = {"lr": check_lr, "C": check_C, "lam": check_lam, "eta": check_eta, "betas": check_betas,
          "eps": check_eps, "time_scale": check_time_scale, "restart": _choice("restart", RESTARTS),
          "rhat_batch": _choice("rhat_batch", RHAT_BATCHES),
          "second_moment": _choice("second_moment", SECOND_MOMENTS)}


# ----------------------------------------------------------------------- vector helpers
def dot(xs, ys, host: bool = False, replicas: int | None = None) -> torch.Tensor | float:
    """Σ_i ⟨x_i, y_i⟩ accumulated in float64: a 0-d tensor (no host sync), or with
    ``host=True`` a Python float; with ``replicas`` one sum per replica (dimension 0), [R]."""
    if replicas is not None:
        return sum(torch.linalg.vecdot(x.reshape(replicas, -1).to(F64), y.reshape(replicas, -1).to(F64))
                   for x, y in zip(xs, ys))
    if not xs:
        return 0.0 if host else torch.zeros((), dtype=F64)
    if all(x.dtype == F64 for x in xs):      # one fused dot per tensor, no temporaries
        parts = [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]
    else:   # float32 products (narrower dtypes widened first: their products are exact there)
        parts = [(_f32(x) * _f32(y)).sum(dtype=F64) for x, y in zip(xs, ys)]
    if host:
        return _fsum([p.item() for p in parts])
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (F64, torch.float32) else x.float()


def sqnorm(xs, host: bool = False) -> torch.Tensor | float:
    """Σ_i ‖x_i‖² = dot(xs, xs). On the host path one foreach kernel gives the norms and
    their squares are summed in float64. A float32 tensor's norm is accumulated in float32:
    2e-7 relative, about the rounding of a float32 gradient itself, where accumulating it in
    float64 would cost a fifth of a float32 SAV step on fig2's net (docs/speed.md)."""
    if host and xs and all(x.dtype in (F64, torch.float32) for x in xs):
        return _fsum([n * n for n in (t.item() for t in torch._foreach_norm(xs))])
    return dot(xs, xs, host)


def _fsum(values: list[float]) -> float:
    """math.fsum, but inf or nan, as a tensor sum gives, where a diverging run overflows:
    fsum raises on an intermediate overflow and on inf − inf (and x ** 2 raises past 1e154,
    hence n * n above), which would end the run 'failed' instead of 'diverged'."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        return sum(values)


def to_dtype(t, like: torch.Tensor):
    """A scalar in ``like``'s dtype and device for a foreach op (Python floats as they are)."""
    return t if isinstance(t, float) else t.to(dtype=like.dtype, device=like.device)


# ---------------------------------------- a list of tensors times a scalar (or a per-replica one)
def _store(state: dict, key: str, value) -> None:
    """state[key] = value, into the tensor kept there in place where it has value's shape,
    dtype and device (a float into a kept tensor fills it); as it is otherwise."""
    old = state.get(key)
    # not under torch.compile: Dynamo drops an in-place write to a 0-d CPU tensor it reads
    # from the state (torch 2.13; tests/optim/test_optim_compile.py); a compiled step stores
    # new tensors, as before
    if isinstance(old, torch.Tensor) and not torch.compiler.is_compiling():
        if isinstance(value, torch.Tensor):
            if old.shape == value.shape and old.dtype == value.dtype and old.device == value.device:
                old.copy_(value)
                return
        elif isinstance(value, float) and old.dtype == F64:
            old.fill_(value)
            return
    # a tensor of its own: one stored under two keys (r and its diagnostic) would be
    # written twice in place
    state[key] = value.clone() if isinstance(value, torch.Tensor) else value


def _per_replica(s) -> bool:
    return isinstance(s, torch.Tensor) and s.dim() == 1


def _along(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-replica vector [R] shaped to broadcast along ``like``'s replica dimension."""
    return s.to(dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


def mul(xs, s):
    return [x * _along(s, x) for x in xs] if _per_replica(s) else torch._foreach_mul(xs, to_dtype(s, xs[0]))


def mul_(xs, s) -> None:
    if _per_replica(s):
        for x in xs:
            x.mul_(_along(s, x))
    else:
        torch._foreach_mul_(xs, to_dtype(s, xs[0]))


def add(xs, s):
    if isinstance(s, float):
        return torch._foreach_add(xs, s)
    return [x + (_along(s, x) if _per_replica(s) else to_dtype(s, x)) for x in xs]


def add_(xs, s) -> None:
    """xs += s. A tensor s (0-d, or per replica) is added tensor by tensor: torch's foreach
    add with a tensor scalar reads it back to the host, which would stop an accelerator and
    break a torch.compile graph."""
    if isinstance(s, float):
        torch._foreach_add_(xs, s)
        return
    for x in xs:
        x.add_(_along(s, x) if _per_replica(s) else to_dtype(s, x))


def fill_(xs, s) -> None:
    """Every entry of each x set to s (a float, a 0-d tensor, or one value per replica)."""
    for x in xs:
        if _per_replica(s):
            x.copy_(_along(s, x).expand_as(x))
        else:
            x.fill_(s)


def div(xs, s):
    return [x / _along(s, x) for x in xs] if _per_replica(s) else torch._foreach_div(xs, to_dtype(s, xs[0]))


# ------------------------------------------------------- scalars: Python float or 0-d tensor
def s_sqrt(x):
    return math.sqrt(x) if isinstance(x, float) else x.sqrt()


def s_exp(x):
    """exp, overflowing to inf as a tensor's does."""
    if isinstance(x, float):
        try:
            return math.exp(x)
        except OverflowError:
            return math.inf
    return x.exp()


def s_log(x):
    """log, with log 0 = −inf for floats as for tensors."""
    if isinstance(x, float):
        return math.log(x) if x > 0 else -math.inf
    return x.log()


def s_expm1(x):
    return math.expm1(x) if isinstance(x, float) else torch.expm1(x)


def s_logaddexp(a, b):
    """log(eᵃ + eᵇ) without overflow."""
    if isinstance(a, float) and isinstance(b, float):
        hi, lo = max(a, b), min(a, b)
        return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))
    return torch.logaddexp(*_tensors(a, b))


def s_min(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return min(a, b)
    return torch.minimum(*_tensors(a, b))


def _tensors(a, b):
    """A float beside a 0-d tensor, both as float64 tensors on the tensor's device (a CUDA
    op refuses a CPU operand)."""
    dev = (a if isinstance(a, torch.Tensor) else b).device
    return torch.as_tensor(a, dtype=F64, device=dev), torch.as_tensor(b, dtype=F64, device=dev)


def s_clamp(x, lo=None, hi=None):
    if isinstance(x, float):
        return min(max(x, lo if lo is not None else x), hi if hi is not None else x)
    return x.clamp(lo, hi)


def s_ratio_if(cond_num, num, den):
    """num/den where ``cond_num`` (a bool or 0-d bool tensor) holds, else 0."""
    if isinstance(cond_num, bool):
        return num / den if cond_num else 0.0
    return torch.where(cond_num, num / torch.where(cond_num, den, 1.0), torch.zeros_like(num))


# ------------------------------------------------------------------ closures and copies
def takes_backward(closure) -> bool:
    """Whether ``closure`` can evaluate the loss without a backward pass,
    ``closure(backward=False)`` (a relaxed method's r̂^{n+1} with ``rhat_batch='same'``).
    This package's closures say so in a class attribute; any other callable is asked for
    its signature."""
    declared = getattr(closure, "takes_backward", None)
    return declared if isinstance(declared, bool) else _signature_takes_backward(closure)


def require_forward_only(closure, name: str) -> None:
    """A relaxed method with ``rhat_batch='same'`` evaluates I(θ^{n+1}) on the step's batch
    by ``closure(backward=False)``; it never calls a closure a second time for it."""
    if not takes_backward(closure):
        raise ValueError(
            f"{name} with rhat_batch='same' evaluates the loss at the new point by closure(backward=False), "
            "and this step has no closure that can (a standard closure, or loss=): use rhat_batch='next' (the "
            "default; on a full batch the same scheme) or a closure with a backward keyword, such as "
            "gradflow_exp.optim.BatchClosure")


_BY_CODE: dict[types.CodeType, bool] = {}
_BY_CLASS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.compiler.disable
def _signature_takes_backward(closure) -> bool:
    """A loop makes a new closure every step and ``inspect.signature`` costs about a tenth
    of a fig7 step, so the answer is remembered for a plain function's body and for a
    Python class with its own ``__call__``; wrapped callables (``functools.wraps``,
    ``partial``, ``lru_cache``, compiled or scripted functions), whose signature is not
    their code's, are asked every time. (Not traced by torch.compile: a guard cannot name a
    code object.)"""
    if hasattr(closure, "__wrapped__") or hasattr(closure, "__signature__"):
        return _accepts_backward(closure)
    if isinstance(closure, (types.FunctionType, types.MethodType)):
        cache, key = _BY_CODE, closure.__code__
    elif inspect.isfunction(getattr(type(closure), "__call__", None)):
        cache, key = _BY_CLASS, type(closure)
    else:
        return _accepts_backward(closure)
    if key not in cache:
        cache[key] = _accepts_backward(closure)
    return cache[key]


def _accepts_backward(closure) -> bool:
    try:
        params = inspect.signature(closure).parameters
    except (TypeError, ValueError):      # a builtin or C callable: call it plainly
        return False
    return "backward" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# ------------------------------------------------------------------------- base class
def _hooked_step(step):
    """``step`` as torch.optim.Optimizer.profile_hook_step wraps it (step pre- and post-hooks,
    global and per-instance, and the ``Optimizer.step#Class.step`` profiler scope), taking
    torch's own wrapper whenever a hook is registered or a profiler is recording, and
    otherwise calling ``step`` directly: the same observable behaviour without the cost of an
    unrecorded profiler scope."""
    full = Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks
                or torch.autograd._profiler_enabled()):
            return full(self, *args, **kwargs)
        out = step(self, *args, **kwargs)
        self._optimizer_step_code()
        return out

    return wrapper


class LeanOptimizer(Optimizer):
    """torch.optim.Optimizer whose ``step`` is wrapped by `_hooked_step` instead of torch's
    wrapper, which opens a profiler scope on every step: 20 µs on the development machine's
    CPU (a fifth of a fig7 SGD step, docs/speed.md) even when nothing records it. Base of
    every optimizer class of this package."""

    def _patch_step_function(self) -> None:
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        cls = type(self)
        step = cls.step
        if getattr(step, "lean", False):
            return
        # a torch class's step that a torch instance has wrapped already: wrap what is inside
        while getattr(step, "hooked", False) and hasattr(step, "__wrapped__"):
            step = step.__wrapped__
        cls.step = _hooked_step(step)
        cls.step.hooked = cls.step.lean = True


class EnergyOptimizer(LeanOptimizer):
    """Base of this package's optimizers (not used directly).

    Subclasses set ``diagnostic_keys`` and write ``self._set_diagnostics(...)`` in step;
    ``whole_model_keys`` names the hyperparameters that are one value for the whole
    optimizer (its auxiliary variable is one number for the whole model), which every param
    group must share.
    """

    diagnostic_keys: tuple[str, ...] = ()
    # one value for the whole optimizer, since the auxiliary variable is one number (those the
    # class has): a param group may not set another
    whole_model_keys: tuple[str, ...] = ("C", "eta", "restart", "rhat_batch")
    supports_complex = True
    # what a state dict (or a run's record) that lacks a hyperparameter ran with: the value
    # before the key existed, where that is not the constructor's default (the relaxed
    # methods evaluated r̂^{n+1} on the step's batch before rhat_batch existed)
    legacy_defaults: dict = {"rhat_batch": "same"}

    def __init__(self, params, defaults: dict, replicas: int | None = None):
        if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
            raise ValueError(f"replicas must be a positive integer (the leading dimension of every parameter), "
                             f"got {replicas!r}")
        self.replicas = replicas
        super().__init__(params, {k: self._checked(k, v) for k, v in defaults.items()})

    def __getstate__(self) -> dict:
        """torch.optim.Optimizer pickles only defaults, state and param_groups; ``replicas``
        travels too, so a deep copy or an unpickled optimizer steps. (Not every attribute: a
        scheduler keeps a wrapper of the original's ``step`` on the instance.)"""
        return {**super().__getstate__(), "replicas": self.replicas}

    # -- param groups
    def add_param_group(self, param_group: dict) -> None:
        """As torch's (which first turns a generator, a tensor or named parameters into a
        list), then every hyperparameter of the group is validated as in ``__init__``: a
        tensor ``lr`` of one element stays a tensor; with replicas, ``lr``, ``C``, ``lam``,
        ``eta`` may be R values (kept as a float64 vector [R]) and every parameter needs a
        leading dimension R. A ``whole_model_keys`` value that differs from the first
        group's is refused: the method could not honour it."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group, len(self.param_groups) - 1)
        except BaseException:
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict, index: int) -> None:
        params = group["params"]
        device = params[0].device if params else None
        for key in CHECKS:
            if key in group:
                group[key] = self._checked(key, group[key], device)
        if self.replicas is not None:
            for p in params:
                if p.dim() == 0 or p.shape[0] != self.replicas:
                    raise ValueError(f"with replicas={self.replicas} every parameter needs a leading dimension of "
                                     f"{self.replicas} (R models stacked), got shape {tuple(p.shape)}")
        if not self.supports_complex and any(p.is_complex() for p in params):
            raise ValueError(f"{type(self).__name__} does not support complex parameters")
        self._check_no_foreign_keys(group)
        if index > 0:
            self._check_whole_model(group, index)

    def _check_whole_model(self, group: dict, index: int) -> None:
        first = self.param_groups[0]
        for key in self.whole_model_keys:
            if key not in self.defaults:
                continue
            a, b = group.get(key), first.get(key)
            if not _same_value(a, b):
                raise ValueError(
                    f"{type(self).__name__}: {key} is one value for the whole optimizer (its auxiliary variable is "
                    f"one number for the whole model), but param group {index} has {key}={a!r} and group 0 "
                    f"{key}={b!r}; set {key} once, for all groups")

    def _check_no_foreign_keys(self, group: dict) -> None:
        """A torch.optim hyperparameter this method does not have (``weight_decay`` in a
        group, as one would write for SGD) is refused, not ignored; other keys (a group's
        ``name`` for a logger, a scheduler's ``initial_lr``) pass, as torch lets them."""
        foreign = sorted((group.keys() & TORCH_HYPERPARAMETERS) - self.defaults.keys())
        if foreign:
            raise ValueError(f"{type(self).__name__} has no hyperparameter {', '.join(foreign)} (its "
                             f"hyperparameters: {', '.join(k for k in self.defaults if k in CHECKS)})")

    def _check_groups_agree(self) -> None:
        """At a step: the whole-model values still agree (a loop may have written one group's)."""
        for i, group in enumerate(self.param_groups[1:], 1):
            self._check_whole_model(group, i)

    def _checked(self, key: str, value, device=None):
        """``value`` of hyperparameter ``key`` validated (`CHECKS`); R values of a
        per-replica one as a float64 vector [R] on ``device``."""
        check = CHECKS.get(key)
        if check is None:
            return value
        if key in PER_REPLICA:
            tensor = isinstance(value, torch.Tensor)
            many = isinstance(value, (list, tuple)) or (tensor and value.numel() != 1)
            if many or (tensor and self.replicas is not None and value.dim() > 0):
                values = value.reshape(-1).tolist() if tensor else list(value)
                if self.replicas is None:
                    raise ValueError(f"Tensor {key} must be 1-element" if tensor else
                                     f"{key} has {len(values)} values; one per replica needs replicas={len(values)}")
                if len(values) != self.replicas:
                    raise ValueError(f"{key} has {len(values)} values; replicas={self.replicas} needs one per replica")
                return torch.tensor([check(v) for v in values], dtype=F64, device=device)
            if tensor and key == "lr" and self.replicas is None:
                check(value)       # a tensor lr stays a tensor: a scheduler fills it in place
                return value
        return check(value)

    def _lr(self, group):
        """The group's Δt as this optimizer's scalar (a tensor lr read as one)."""
        lr = group["lr"]
        return self._scalar(lr) if isinstance(lr, torch.Tensor) and self.replicas is None else lr

    def _grads(self, group) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(the group's parameters that have a gradient, the same as real tensors, their
        gradients as real tensors): a complex parameter is updated through
        ``torch.view_as_real``, so every inner product is the real one, Σ Re(x̄ y), and
        ‖g‖² = Σ|g|². Sparse gradients are refused, as torch.optim.Adam refuses them."""
        owners, grads, complex_ = [], [], False
        for p in group["params"]:          # one pass, each gradient read once: this runs every step
            g = p.grad
            if g is not None:
                if g.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                complex_ = complex_ or p.is_complex()
                owners.append(p)
                grads.append(g)
        if not complex_:
            return owners, owners, grads
        return (owners, [torch.view_as_real(q) if q.is_complex() else q for q in owners],
                [torch.view_as_real(h) if h.is_complex() else h for h in grads])

    # -- what a step works from
    def _evaluate(self, closure, loss):
        """Run the step's closure, if any, and return (what ``step`` returns, I(θⁿ) as this
        optimizer's scalar), or None where there is nothing to step on: the closure returned
        None and left no gradient (a training step that skips its batch, as Lightning's does).

        The loss comes from ``loss=`` (the standard loop: the user's ``loss.backward()``
        has filled the gradients) or from what the closure returns; ``step(loss)``, a tensor
        in the closure's place, is read as ``loss=``."""
        if len(self.param_groups) > 1:
            self._check_groups_agree()
        if isinstance(closure, torch.Tensor) and loss is None:
            closure, loss = None, closure
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
        value = result if loss is None else loss
        if value is None:
            if closure is not None and not any(p.grad is not None for g in self.param_groups for p in g["params"]):
                return None
            said = "its closure returned None" if closure is not None else "it was given neither"
            raise ValueError(
                f"{type(self).__name__}.step() needs the loss of the step's batch ({said}): after "
                "loss.backward() call opt.step(loss=loss), or pass a closure that returns the loss")
        return (result if closure is not None else loss), self._scalar(value)

    # -- scalars (see the module docstring)
    @property
    def _host(self) -> bool:
        """Scalar arithmetic in Python floats: the parameters live on the CPU (one run) and
        torch.compile is not tracing the step (there 0-d tensors keep the scalars in the
        graph, where reading a float would break it)."""
        return (self.replicas is None and self.param_groups[0]["params"][0].is_cpu
                and not torch.compiler.is_compiling())

    def _scalar(self, x) -> torch.Tensor | float:
        """A loss, inner product or stored state value as this optimizer's scalar type:
        a Python float on CPU, a 0-d float64 tensor on its device otherwise; with replicas,
        a per-replica value (the losses) as a vector [R], a shared one 0-d."""
        device = self.param_groups[0]["params"][0].device
        if self._host:     # .item(): a loss that requires grad is read without a warning
            return x.item() if isinstance(x, torch.Tensor) else float(x)
        if isinstance(x, torch.Tensor):
            x = x.detach().to(device=device, dtype=F64)
            return x.reshape(-1) if self.replicas is not None and x.dim() >= 1 else x.reshape(())
        return torch.tensor(float(x), dtype=F64, device=device)

    def _dot(self, xs, ys):
        return dot(xs, ys, host=self._host, replicas=self.replicas)

    def _sqnorm(self, xs):
        if self.replicas is not None:
            return dot(xs, xs, replicas=self.replicas)
        return sqnorm(xs, host=self._host)

    def _numel(self, xs) -> int:
        """Entries of one run's tensors (per replica)."""
        return sum(x.numel() for x in xs) // (self.replicas or 1)

    def _get(self, state: dict, key: str, default):
        """A stored scalar (0-d float64 tensor in the state) as this optimizer's scalar; a
        tensor is a copy, so that the step's `_put` of the key leaves what was read as it was."""
        v = state.get(key)
        if v is None:
            return default
        x = self._scalar(v)
        return x.clone() if isinstance(x, torch.Tensor) else x

    @staticmethod
    def _put(state: dict, key: str, value) -> None:
        """Store a scalar. A Python float (one run on the CPU) as a fresh 0-d float64
        tensor, so that ``state_dict()`` carries it; a tensor (replicas, a GPU) into the
        stored tensor of its shape, dtype and device, in place, as torch.optim keeps its
        step counts: a step captured in a CUDA graph then replays onto the storage the
        next step reads (docs/speed.md, "CUDA graphs")."""
        if isinstance(value, float):
            state[key] = torch.scalar_tensor(value, dtype=F64)
        else:
            _store(state, key, value)

    @staticmethod
    def _axpy(params, xs, coef) -> None:
        """params += coef · xs, coef a Python float, a 0-d tensor or a per-replica vector."""
        if isinstance(coef, float):
            torch._foreach_add_(params, xs, alpha=coef)
        elif _per_replica(coef):
            for p, x in zip(params, xs):
                p.addcmul_(x, _along(coef, x))          # one pass, no [R, …] temporary
        else:
            torch._foreach_add_(params, torch._foreach_mul(xs, to_dtype(coef, xs[0])))

    # -- state helpers
    def _anchor(self) -> dict:
        """State dict of the first parameter: home of the optimizer's scalar state."""
        return self.state[self.param_groups[0]["params"][0]]

    def _group_state(self, group) -> dict:
        return self.state[group["params"][0]]

    def _set_diagnostics(self, **values) -> None:
        """Keep the last step's diagnostics (Python floats or tensors, as computed: no
        conversion op here; `diagnostics()` converts at logging points). Tensors go into
        the tensors kept before, in place, as `_put` stores them."""
        anchor = self._anchor()
        for k in self.diagnostic_keys:
            _store(anchor, "diag_" + k, values[k])

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Last step's diagnostics as 0-d float64 tensors (with replicas, vectors [R]);
        NaN for every key before the first step."""
        anchor = self._anchor()
        shape = () if self.replicas is None else (self.replicas,)
        out = {}
        for k in self.diagnostic_keys:
            v = anchor.get("diag_" + k, math.nan)
            v = v.detach().to(F64) if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=F64)
            out[k] = v.reshape(()).clone() if not shape else v.expand(shape).clone()   # not the kept tensor
        return out

    def epoch_start(self) -> None:
        """Called by the loop at each epoch start; with ``restart='epoch'`` the next step
        re-anchors the auxiliary variable to its defining value on its batch."""
        if self.param_groups[0].get("restart", "none") == "epoch":
            self._anchor()["restart_pending"] = True

    @property
    def restart_due(self) -> bool:
        """Whether the next step restarts (``epoch_start`` asked for it): a step that takes
        another path than the steps between restarts (a CUDA graph replays only those)."""
        return bool(self._anchor().get("restart_pending", False))

    def _take_restart(self) -> bool:
        return bool(self._anchor().pop("restart_pending", False))

    def _take_relaxation(self, restart: bool):
        """The relaxation budget the last step left for this one (``rhat_batch='next'``),
        or None: none was left, or a restart discards it. It stays stored (each step of
        that form stores the next), so its tensor is the same from step to step."""
        return None if restart else self._get(self._anchor(), "relax_budget", None)

    # -- checkpointing
    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but 0-d state tensors keep their saved dtype (float64 energies) and
        every state tensor is copied, so the loaded optimizer shares no storage with
        ``state_dict``. A group saved before one of the hyperparameters existed gets the
        value it ran with (``legacy_defaults``, else the default)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key in CHECKS.keys() & self.defaults.keys():
                group.setdefault(key, self.legacy_defaults.get(key, self.defaults[key]))
        id_map = dict(zip(
            chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
            chain.from_iterable(g["params"] for g in self.param_groups),
        ))
        for pid, saved in state_dict["state"].items():
            p = id_map[pid]
            st = self.state[p]
            for key, val in saved.items():
                if not isinstance(val, torch.Tensor):
                    continue
                if val.dim() == 0 and val.is_floating_point():
                    st[key] = val.detach().clone().to(device=p.device)
                elif isinstance(st.get(key), torch.Tensor):
                    st[key] = st[key].clone()
