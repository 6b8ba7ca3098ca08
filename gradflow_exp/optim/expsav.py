"""Exponential SAV: ExpSAV and RelExpSAV, one consistent scheme kept in log space.

The evaluation (docs/sources.md) is inconsistent here: §2.2.4 defines r = C·exp(L) but updates
r^{n+1} = rⁿ/(1 + ΔtS/rⁿ), §2.5.2 derives r^{n+1} = (rⁿ)²/(rⁿ + ΔtS) and then
r^{n+1} = rⁿ/(1 + ΔtS), none of which is the chain rule of its own definition
(d exp(L)/dt = exp(L)·dL/dt), and C·exp(L) overflows for L ≳ 700.

Scheme (E-SAV form, temperature C > 0 — named C like every method's constant):

    r = exp(I(θ)/C),  so  dr/dt = (r/C) ⟨∇I, θ'⟩,  and the flow θ' = −K (r/exp(I/C)) ∇I
    is θ' = −K∇I (the ratio is 1 in exact arithmetic). With g = ∇I(θⁿ), r̂ⁿ = exp(Iⁿ/C),
    ρⁿ = rⁿ/r̂ⁿ, u = (I+Δtℒ)⁻¹ g = g/(1+λΔt), S = ⟨g, u⟩ ≥ 0:

    θ^{n+1} = θⁿ − Δt K (r^{n+1}/r̂ⁿ) u                                         (E-θ)
    r^{n+1} − rⁿ = (rⁿ/C) ⟨g, θ^{n+1} − θⁿ⟩          [chain rule, r explicit]   (E-r)
            ⇔  r^{n+1} = rⁿ / (1 + Δt K ρⁿ S / C)

Both equations are linear in r^{n+1} (like SAV), so the step is explicit and O(n).

Energy (proof of r^{n+1} ≤ rⁿ, every Δt > 0, K > 0, λ ≥ 0, any batch): Δt, K, C > 0,
ρⁿ = rⁿ/r̂ⁿ > 0 and S = ‖g‖²/(1+λΔt) ≥ 0, so the denominator of (E-r) is ≥ 1 and
r^{n+1} ≤ rⁿ, with equality iff g = 0. In the loss units used for ``energy``,
C·log r^{n+1} = C·log rⁿ − C·log(1 + ΔtKρⁿS/C) ≤ C·log rⁿ.

Small Δt: ρ = 1 + O(Δt) and r^{n+1}/r̂ⁿ → 1, so (E-θ) is the Euler step of θ' = −K∇I.

Floating range: only s = log r is stored (float64). With ℓ = sⁿ − Iⁿ/C = log ρⁿ and
a = ΔtKS/C:  s^{n+1} = sⁿ − log(1 + a e^ℓ) = sⁿ − logaddexp(0, log a + ℓ), and the step
factor r^{n+1}/r̂ⁿ = 1/(e^{−ℓ} + a) = exp(−logaddexp(−ℓ, log a)). Nothing is exponentiated
except a difference, so losses of 1e3 and beyond stay finite (r = e^{1000} is never formed).
Since the factor is ≤ 1/a, even a stale r ≫ r̂ gives ⟨g, Δθ⟩ ≥ −C: the linearised loss
drops by at most C per step. ρ depends on exp((s − I)/C): choose C on the scale of the
batch-to-batch loss noise.

RelExpSAV (relaxation in log space, paper form: ξ on r̃). ŝ = I(θ^{n+1})/C is, with
``rhat_batch='next'`` (default), the next step's loss at θ^{n+1} on its batch: the relaxation
is applied at the start of that step, no extra forward pass, and on a full batch this is the
same number, hence the same scheme; with ``'same'``, the step's own batch, evaluated by
``closure(backward=False)`` (one forward; the closure is never called twice).
r^{n+1} = ξ₀ r̃ + (1−ξ₀) r̂ with ξ₀ the smallest ξ ∈ [0,1] such that

    log r^{n+1} ≤ s̃ + η (sⁿ − s̃)      (give back at most a fraction η of this step's decrease)

which gives, in closed form, s^{n+1} = min(ŝ, s̃ + η(sⁿ − s̃)) and
ξ₀ = expm1(s^{n+1} − ŝ)/expm1(s̃ − ŝ) when ŝ > s̃ (else 0). Energy: s^{n+1} − sⁿ ≤
−(1−η) log(1 + ΔtKρⁿS/C) ≤ 0, whichever batch ŝ is on. (The evaluation's §2.4/Thm 2.6 uses r − r̂ ≤ η‖Δθ‖/Δt, which mixes
units and does not imply r^{n+1} ≤ rⁿ.)

``restart='epoch'``: the step after ``epoch_start()`` uses sⁿ = Iⁿ/C (ρ = 1); the
guarantee then holds between restarts.

Diagnostics: ``energy`` C·log r^{n+1} (equals I when r is consistent), ``q`` ρⁿ = rⁿ/r̂ⁿ (the
carried r over its defining value, before any restart), ``eff_step`` ΔtK(r^{n+1}/r̂ⁿ)/(1+λΔt)
(first group), ``xi`` ξ₀ (RelExpSAV).
"""
from __future__ import annotations

import torch

from gradflow_exp.optim.base import (
    EnergyOptimizer, require_forward_only, s_clamp, s_exp, s_expm1, s_log, s_logaddexp, s_min, s_ratio_if,
)


class ExpSAV(EnergyOptimizer):
    """Exponential SAV, r = exp(I/C), stored as log r; r^{n+1} ≤ rⁿ for every Δt
    (restart='none': along the whole run; 'epoch': between restarts). See module docstring."""

    relax = False
    diagnostic_keys = ("energy", "q", "eff_step")

    def __init__(self, params, lr: float = 0.2, C: float = 1.0, lam: float = 0.0,
                 restart: str = "none", time_scale: float = 1.0, replicas: int | None = None):
        self._setup(params, lr, C, lam, restart, time_scale, replicas)

    def _setup(self, params, lr, C, lam, restart, time_scale, replicas, **extra):
        defaults = dict(lr=lr, C=C, lam=lam, restart=restart, time_scale=time_scale, **extra)
        EnergyOptimizer.__init__(self, params, defaults, replicas)

    @staticmethod
    def _relax(s_hat, s_tilde, gain):
        """(log r, ξ₀): log r = min(ŝ, s̃ + gain), ξ₀ = expm1(log r − ŝ)/expm1(s̃ − ŝ) when ŝ > s̃ (else 0)."""
        s_new = s_min(s_hat, s_tilde + gain)
        return s_new, s_clamp(s_ratio_if(s_hat > s_tilde, s_expm1(s_new - s_hat), s_expm1(s_tilde - s_hat)), 0.0, 1.0)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One step. ``closure``: zero the grads, forward, backward, return the loss; or,
        after your own ``loss.backward()``, ``loss=loss``."""
        g0 = self.param_groups[0]
        same_batch = self.relax and g0["rhat_batch"] == "same"
        if same_batch:
            require_forward_only(closure, type(self).__name__)
        evaluated = self._evaluate(closure, loss)
        if evaluated is None:
            return None
        out, I = evaluated
        C = g0["C"]
        anchor = self._anchor()
        s_hat = I / C                                     # log r̂ⁿ = Iⁿ/C
        s_prev = self._get(anchor, "log_r", s_hat)        # log r⁰ = I(θ⁰)/C
        restart = self._take_restart()
        diag = {}
        pending = self._take_relaxation(restart)          # rhat_batch='next': η(sⁿ − s̃) of the last step
        if pending is not None:
            # relax the last step's s̃ toward ŝ on THIS batch at θⁿ: no extra forward pass
            s_prev, diag["xi"] = self._relax(s_hat, s_prev, pending)
        elif self.relax and not same_batch:
            diag["xi"] = 0.0
        s_n = s_hat if restart else s_prev

        a = 0.0                                    # a = Δt K ⟨g,(I+Δtℒ)⁻¹g⟩ / C
        plans = []
        for group in self.param_groups:
            _, params, grads = self._grads(group)
            if not params:
                continue
            K, dt, lam = group["time_scale"], self._lr(group), group["lam"]
            c = dt * K / (1 + lam * dt)            # θ moves along −c·(r^{n+1}/r̂ⁿ)·g
            a = a + c * self._sqnorm(grads) / C
            plans.append((params, grads, c))

        ell = s_n - s_hat                                 # ℓ = log ρⁿ = log(rⁿ/r̂ⁿ)
        log_a = s_log(a)                                  # −inf when g = 0
        # (E-r): s^{n+1} = sⁿ − log(1 + a ρⁿ)
        s_tilde = s_n - s_logaddexp(0.0, log_a + ell)
        # (E-θ): factor r^{n+1}/r̂ⁿ = exp(s^{n+1} − Iⁿ/C) = 1/(1/ρⁿ + a)
        # (clamped at e^700 only so that a zero gradient with a stale r ≫ r̂ gives 0·finite;
        # for g ≠ 0 the factor is ≤ 1/a anyway)
        factor = s_exp(s_clamp(-s_logaddexp(-ell, log_a), hi=700.0))
        for params, grads, c in plans:
            self._axpy(params, grads, -c * factor)        # θ^{n+1} = θⁿ − ΔtK (r^{n+1}/r̂ⁿ) u

        s_new = s_tilde
        if self.relax:
            gain = g0["eta"] * (s_n - s_tilde)            # give back at most η of this step's decrease
            if same_batch:
                s_hat_new = self._scalar(closure(backward=False)) / C    # log r̂^{n+1}, one forward
                s_new, diag["xi"] = self._relax(s_hat_new, s_tilde, gain)
            else:
                self._put(anchor, "relax_budget", gain)   # relaxed at the next step's start
        self._put(anchor, "log_r", s_new)

        K0, dt0, lam0 = g0["time_scale"], self._lr(g0), g0["lam"]
        self._set_diagnostics(energy=C * s_new, q=s_exp(s_prev - s_hat),
                              eff_step=factor * (K0 * dt0 / (1 + lam0 * dt0)), **diag)
        return out


class RelExpSAV(ExpSAV):
    """Relaxed ExpSAV: log r^{n+1} = min(I(θ^{n+1})/C, s̃ + η(sⁿ − s̃)); r^{n+1} ≤ rⁿ for every
    Δt. ``rhat_batch='next'`` (default) takes I(θ^{n+1}) from the next step's loss; ``'same'``
    evaluates it on the step's batch, one extra forward pass. See module docstring."""

    relax = True
    diagnostic_keys = ExpSAV.diagnostic_keys + ("xi",)

    def __init__(self, params, lr: float = 0.2, C: float = 1.0, lam: float = 0.0,
                 eta: float = 0.99, restart: str = "none", rhat_batch: str = "next",
                 time_scale: float = 1.0, replicas: int | None = None):
        self._setup(params, lr, C, lam, restart, time_scale, replicas, eta=eta, rhat_batch=rhat_batch)
