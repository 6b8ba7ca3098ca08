"""Shared plumbing of this package's optimizers: validation, scalar state, diagnostics.

Scalar state (the SAV variable r, log r, step counts, the last diagnostics) is kept as
0-d tensors in ``self.state[p0]`` where ``p0`` is the first parameter of the first group
(the *anchor*), so ``state_dict()`` / ``load_state_dict()`` round-trip it. Energies are
held in float64 whatever the parameters' dtype: `EnergyOptimizer.load_state_dict`
restores the saved dtype of every 0-d state tensor (``torch.optim.Optimizer`` would cast
it to the parameter dtype), so a resumed run continues bit-identically.

Diagnostics are 0-d tensors written during ``step`` (no ``.item()``, no host sync) and
read by ``diagnostics()`` only at logging points. Every method has a fixed key set; before
the first step all keys are NaN.
"""
from __future__ import annotations

import math
from itertools import chain

import torch
from torch.optim import Optimizer

F64 = torch.float64
RESTARTS = ("none", "epoch")


# --------------------------------------------------------------------------- validation
def check_lr(lr) -> float:
    lr = float(lr)
    if not lr > 0:  # also rejects NaN
        raise ValueError(f"lr (Δt) must be positive, got {lr}")
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


def require_closure(closure, name: str):
    if closure is None:
        raise ValueError(
            f"{name}.step() needs a closure: it evaluates the loss (and, for some methods, "
            "the loss again after the update); pass e.g. gradflow_exp.optim.BatchClosure"
        )
    return closure


def as_f64(loss) -> torch.Tensor:
    """The closure's loss as a detached 0-d float64 tensor."""
    if isinstance(loss, torch.Tensor):
        return loss.detach().to(F64).reshape(())
    return torch.tensor(float(loss), dtype=F64)


# ----------------------------------------------------------------------- vector helpers
def grads_of(group) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params = [p for p in group["params"] if p.grad is not None]
    return params, [p.grad for p in params]


def dot(xs, ys) -> torch.Tensor:
    """Σ_i ⟨x_i, y_i⟩ accumulated in float64 (0-d tensor, no host sync)."""
    if not xs:
        return torch.zeros((), dtype=F64)
    if xs[0].dtype == F64:      # one fused dot per tensor, no temporaries
        parts = [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]
    else:
        parts = [(x * y).sum(dtype=F64) for x, y in zip(xs, ys)]
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def to_dtype(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=like.dtype, device=like.device)


# ------------------------------------------------------------------------- base class
class EnergyOptimizer(Optimizer):
    """Base of this package's optimizers (not used directly).

    Subclasses set ``diagnostic_keys`` and write ``self._set_diagnostics(...)`` in step.
    """

    diagnostic_keys: tuple[str, ...] = ()

    _CHECKS = {"lr": check_lr, "C": check_C, "lam": check_lam, "eta": check_eta,
               "betas": check_betas, "eps": check_eps, "time_scale": check_time_scale}

    def add_param_group(self, param_group: dict) -> None:
        """As torch's, with the same hyperparameter validation as ``__init__``."""
        for key, check in self._CHECKS.items():
            if key in param_group:
                param_group[key] = check(param_group[key])
        super().add_param_group(param_group)

    def _loss_and_grad(self, closure) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate the closure (grads into ``p.grad``): the loss as returned, and I(θⁿ) as
        a 0-d float64 tensor for the energy bookkeeping."""
        require_closure(closure, type(self).__name__)
        with torch.enable_grad():
            loss = closure()
        return loss, as_f64(loss)

    # -- state helpers
    def _anchor(self) -> dict:
        """State dict of the first parameter: home of the optimizer's scalar state."""
        return self.state[self.param_groups[0]["params"][0]]

    def _group_state(self, group) -> dict:
        return self.state[group["params"][0]]

    def _set_diagnostics(self, **values: torch.Tensor) -> None:
        anchor = self._anchor()
        for k in self.diagnostic_keys:
            v = values[k]       # steps compute these as 0-d float64 already: no conversion op
            if v.dtype != F64 or v.dim() != 0 or v.requires_grad:
                v = v.detach().to(F64).reshape(())
            anchor["diag_" + k] = v

    def diagnostics(self) -> dict[str, float | torch.Tensor]:
        """Last step's diagnostics (0-d tensors); NaN for every key before the first step."""
        anchor = self._anchor()
        return {k: anchor.get("diag_" + k, float("nan")) for k in self.diagnostic_keys}

    def epoch_start(self) -> None:
        """Called by the loop at each epoch start; with ``restart='epoch'`` the next step
        re-anchors the auxiliary variable to its defining value on its batch."""
        if self.param_groups[0].get("restart", "none") == "epoch":
            self._anchor()["restart_pending"] = True

    def _take_restart(self) -> bool:
        return bool(self._anchor().pop("restart_pending", False))

    # -- checkpointing
    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but 0-d state tensors keep their saved dtype (float64 energies) and
        every state tensor is copied, so the loaded optimizer shares no storage with
        ``state_dict``."""
        super().load_state_dict(state_dict)
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
