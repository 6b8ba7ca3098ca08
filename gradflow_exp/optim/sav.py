"""The SAV family (paper Algs. 2–5): SAV, ResSAV, RelSAV and their adaptive forms.

One core, `_SAVCore`, three switches: ``reset`` (ResSAV: rⁿ ← r̂ⁿ every step), ``relax``
(RelSAV: relax r^{n+1} toward r̂^{n+1} after the step) and ``adaptive`` (A-*: Adam moments).

Notation (per step n, on the step's batch): I = I(θⁿ) the batch loss, g = ∇I(θⁿ),
E = I + C, r̂ⁿ = √E, K the time scale (the method follows θ' = −K∇I), ℒ = λI so that
(I + Δtℒ)⁻¹ = 1/(1 + λΔt) is a scalar — every step is O(n), no n×n matrix.

Plain (Alg. 2), with the time scale K folded into the flow::

    r^{n+1} = rⁿ / (1 + Δt K ⟨g, (I+Δtℒ)⁻¹ g⟩ / (2E))                      (SAV-r)
    θ^{n+1} = θⁿ − Δt K (r^{n+1}/√E) (I+Δtℒ)⁻¹ g                           (SAV-θ)

(SAV-r) is the linearly implicit discretisation of dr/dt = ⟨∇I, θ'⟩/(2√E) with the step
(SAV-θ) substituted: r^{n+1} − rⁿ = ⟨g, θ^{n+1} − θⁿ⟩/(2√E). Multiplying by 2r^{n+1}:

    (r^{n+1})² − (rⁿ)² + (r^{n+1} − rⁿ)² = −(1+λΔt) ‖θ^{n+1} − θⁿ‖² / (K Δt) ≤ 0,

so (r^{n+1})² ≤ (rⁿ)² for every Δt > 0, K > 0, λ ≥ 0 (paper Thm 1, time-scaled).

Adaptive (Alg. 5): m, v are Adam's moments of g (β₁, β₂, bias-corrected m̂, v̂); g is
replaced by m̂ and Δt by the element-wise step τ = Δt/(√v̂ + ε) *everywhere*, including
(I+τℒ)⁻¹ = 1/(1 + λτ). The applied step direction is therefore
d = τ ⊙ m̂ / (1 + λτ) = Δt m̂ / (√v̂ + ε + λΔt) (λ acts like extra ε),
θ^{n+1} = θⁿ − K (r^{n+1}/√E) d, and the r-update uses the inner product of the gradient estimate with that direction::

    r^{n+1} = rⁿ / (1 + K ⟨m̂, d⟩ / (2E)),     ⟨m̂, d⟩ = Σ_i τ_i m̂_i² / (1 + λτ_i) ≥ 0.

Using the raw g here, ⟨g, d⟩, would be the exact chain rule for √(I+C) but is sign
indefinite with momentum (the denominator could reach 0); with m̂ in both places the
scheme is the SAV scheme of the "gradient" m̂ in the metric diag(τ/(1+λτ)), so r is still
non-increasing for every Δt. ``second_moment='scalar'`` uses one v per group built from
‖g‖²/n (n = number of entries), so τ is a scalar; ``'elementwise'`` (default) is Adam's.

Relaxation (Alg. 4, paper's form with ξ on r̃). r̃ = r^{n+1} of (SAV-r); after updating θ,
r̂^{n+1} = √(I(θ^{n+1}) + C) on the same batch (``closure(backward=False)``: one forward,
no backward). With D = Σ_i (θ_i^{n+1} − θ_i^n)² / (K τ_i) (= ‖Δθ‖²/(KΔt) for plain SAV)::

    a = (r̃ − r̂)²,  b = 2 r̂ (r̃ − r̂),  c = r̂² − r̃² − η D
    ξ₀ = max{0, (−b − √(b² − 4ac)) / (2a)}  (ξ₀ = 0 if a = 0),  clipped to [0, 1]
    r^{n+1} = ξ₀ r̃ + (1 − ξ₀) r̂

i.e. the smallest ξ with (r^{n+1})² − r̃² ≤ η D. Since b² − 4ac = 4a(r̃² + ηD), this is, in
closed form, r^{n+1} = min(r̂, √(r̃² + ηD)) and ξ₀ = (r̂ − r^{n+1})/(r̂ − r̃) when r̂ > r̃ (else 0);
we compute it that way (no cancellation, no host sync). Guarantee: D ≤ the dissipation
(1+λτ)-weighted term above, hence (r^{n+1})² ≤ (rⁿ)² − (1 − η)D ≤ (rⁿ)² for η ∈ [0, 1].
The time scale enters D as 1/K so that this holds for every K (K = 1 is the paper's).
The evaluation (docs/sources.md) §2.4 writes the blend with ξ on r̂ and the constraint against r̂; that version
does not imply r^{n+1} ≤ rⁿ, so the paper's form is implemented.

``rhat_batch`` (the paper leaves open which batch r̂^{n+1} is evaluated on, and a user's
closure may log, draw data or count, so it is never called twice): ``'next'`` (default)
relaxes r̃^{n+1} at the start of the next step toward √(I(θ^{n+1}) + C) on the NEXT batch,
which that step computes anyway: no extra forward, RelSAV costs what SAV costs, and it
works with a standard closure and with ``step(loss=...)``. On a full batch this is the
number the paper's step evaluates, so the scheme and its trajectory are the paper's
(tests/optim/test_optim_api.py). ``'same'`` re-evaluates I(θ^{n+1}) on the step's batch by
``closure(backward=False)``, one forward pass (`BatchClosure` offers it; the runner's
configs choose it). The bound r ≤ √(r̃² + ηD), hence the energy guarantee, holds for
either r̂. With ``'next'`` the logged ``xi`` is the one applied at the step's start (to the
previous r̃), and a restart discards the pending relaxation.

Options:
``restart='epoch'``: ``epoch_start()`` (called by the loop at each epoch start) makes the
next step use rⁿ = r̂ⁿ = √(I(θⁿ)+C) on its batch. With mini-batches, vanilla SAV's r is a
single number carried across different batches; it keeps decreasing and r/√E can collapse
(training freezes). The restart bounds that drift; the energy guarantee then holds
between restarts only (r jumps to √(I+C) of the new batch at a restart).

Diagnostics (all 0-d tensors, fixed keys; ``xi`` for relaxed methods only):
``energy`` (r^{n+1})², ``r`` r^{n+1}, ``r_hat`` √(I(θⁿ)+C) on the step's batch,
``q`` rⁿ/r̂ⁿ — the r carried into the step (before any reset/restart) over its defining
value on the step's batch (paper Fig 6 plots 1 − q), ``eff_step`` the scalar step along the
(preconditioned) gradient: K Δt (r̃/√E)/(1+λΔt) for plain methods, K Δt r̃/√E for adaptive
ones (there the step is eff_step · m̂/(√v̂ + ε + λΔt)), both for the first param group;
``xi`` ξ₀.

Param groups: r is one scalar for the whole optimizer (the loss is one number); lr, lam,
time_scale, betas, eps, second_moment may differ per group and enter ⟨·,·⟩ as sums over
groups; C, eta, restart, rhat_batch are one value for all groups (a group with another is
refused, `EnergyOptimizer.whole_model_keys`). Complex parameters step through their real
views (⟨x, y⟩ = Σ Re(x̄ y)).
"""
from __future__ import annotations

import torch

from gradflow_exp.optim.base import (
    EnergyOptimizer, add, add_, mul, mul_, s_clamp, s_min, s_ratio_if, s_sqrt, require_forward_only, to_dtype,
)


class _SAVCore(EnergyOptimizer):
    """Shared SAV step; see the module docstring. Not used directly."""

    reset = False
    relax = False
    adaptive = False
    diagnostic_keys = ("energy", "r", "r_hat", "q", "eff_step")

    def __init__(self, params, *, lr, C, lam, time_scale, restart="none", eta=None,
                 rhat_batch="next", betas=None, eps=None, second_moment=None, replicas=None):
        defaults = dict(lr=lr, C=C, lam=lam, time_scale=time_scale, restart=restart)
        if self.relax:
            defaults.update(eta=eta, rhat_batch=rhat_batch)
        if self.adaptive:
            defaults.update(betas=betas, eps=eps, second_moment=second_moment)
        super().__init__(params, defaults, replicas)

    # ------------------------------------------------------------------ Adam moments
    def _buffers(self, owners, key: str) -> list[torch.Tensor]:
        """Per-parameter state tensors ``key``, created as zeros on first use (a complex
        parameter's as complex, used through its real view, as torch.optim.Adam does)."""
        out = []
        for p in owners:
            st = self.state[p]
            if key not in st:
                st[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            b = st[key]
            out.append(torch.view_as_real(b) if b.is_complex() else b)
        return out

    def _moments(self, group, owners, grads):
        """Adam's moments: the raw first moments m (m̂ = m/(1−β₁ᵗ), never formed), 1−β₁ᵗ,
        and √v̂ + ε (a list; a scalar for 'scalar')."""
        b1, b2 = group["betas"]
        eps = group["eps"]
        gst = self._group_state(group)
        t = self._get(gst, "step", 0.0) + 1
        self._put(gst, "step", t)
        bc1 = 1 - b1 ** t                                  # 1 − β₁ᵗ
        bc2 = 1 - b2 ** t
        ms = self._buffers(owners, "exp_avg")
        torch._foreach_lerp_(ms, grads, 1 - b1)            # m ← β₁ m + (1−β₁) g
        if group["second_moment"] == "elementwise":
            vs = self._buffers(owners, "exp_avg_sq")
            torch._foreach_mul_(vs, b2)                    # v ← β₂ v + (1−β₂) g²
            torch._foreach_addcmul_(vs, grads, grads, 1 - b2)
            denom = torch._foreach_sqrt(vs)                # √v̂ + ε = √v/√(1−β₂ᵗ) + ε
            torch._foreach_div_(denom, to_dtype(s_sqrt(bc2), vs[0]))
            torch._foreach_add_(denom, eps)
        else:
            n = self._numel(grads)
            v = self._get(gst, "exp_avg_sq_scalar", 0.0)
            v = b2 * v + (1 - b2) * self._sqnorm(grads) / n   # v ← β₂ v + (1−β₂) ‖g‖²/n
            self._put(gst, "exp_avg_sq_scalar", v)
            denom = s_sqrt(v / bc2) + eps
        return ms, bc1, denom

    @staticmethod
    def _relax(r_hat, r_tilde, etaD):
        """(r, ξ₀): the smallest ξ ∈ [0,1] with (ξr̃ + (1−ξ)r̂)² − r̃² ≤ ηD, i.e.
        r = min(r̂, √(r̃² + ηD)) and ξ₀ = (r̂ − r)/(r̂ − r̃) when r̂ > r̃ (else 0)."""
        r = s_min(r_hat, s_sqrt(r_tilde * r_tilde + etaD))
        gap = r_hat - r_tilde
        return r, s_clamp(s_ratio_if(gap > 0, r_hat - r, gap), 0.0, 1.0)

    # ------------------------------------------------------------------------- step
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
        E = I + C                                          # E = I(θⁿ) + C
        sqrtE = s_sqrt(E)                                  # r̂ⁿ = √(I(θⁿ)+C)
        r_prev = self._get(anchor, "r", sqrtE)             # r⁰ = √(I(θ⁰)+C)
        restart = self._take_restart()
        diag = {}
        pending = self._take_relaxation(restart)           # rhat_batch='next': ηD of the last step
        if pending is not None:
            # relax the last step's r̃ toward r̂ on THIS batch at θⁿ: no extra forward pass
            r_prev, diag["xi"] = self._relax(sqrtE, r_prev, pending)
        elif self.relax and not same_batch:
            diag["xi"] = 0.0
        r_n = sqrtE if (self.reset or restart) else r_prev  # ResSAV / restart: rⁿ ← r̂ⁿ

        total = 0.0    # Σ_groups K ⟨ĝ, d⟩
        budget = 0.0   # Σ_groups K Σ_i d_i² / τ_i  (RelSAV's D / φ²)
        plans = []     # (params, direction, coefficient): θ^{n+1} = θⁿ − coefficient·φ·direction
        for group in self.param_groups:
            owners, params, grads = self._grads(group)
            if not params:
                continue
            K, dt, lam = group["time_scale"], self._lr(group), group["lam"]
            if not self.adaptive:
                # d = Δt g/(1 + λΔt) = c g: ⟨g, d⟩ = c‖g‖², and d is never formed
                c = dt / (1 + lam * dt)
                gg = self._sqnorm(grads)
                total = total + K * c * gg                 # K ⟨g, (I+Δtℒ)⁻¹ Δt g⟩ ≥ 0
                if self.relax:                         # Σ_i (Δθ_i)²/(KΔt) = φ² K c² ‖g‖²/Δt (0 at Δt = 0)
                    budget = budget + s_ratio_if(dt > 0, K * c * c * gg, dt)
                plans.append((params, grads, K * c))
                continue
            ms, bc1, denom = self._moments(group, owners, grads)
            # d = τ (I + τℒ)⁻¹ m̂ with τ = Δt/denom:  d = Δt m̂/(denom + λΔt) = (Δt/(1−β₁ᵗ)) m/(denom + λΔt)
            if isinstance(denom, (list, tuple)):
                if isinstance(lam, float) and lam == 0:     # λ = 0: nothing to add
                    shifted = denom
                elif self.relax:    # D needs denom itself (kept exact: no add-then-subtract)
                    shifted = add(denom, lam * dt)
                else:
                    shifted = denom
                    add_(shifted, lam * dt)
                d = torch._foreach_div(ms, shifted)
                mul_(d, dt / bc1)
            else:
                d = mul(ms, dt / (bc1 * (denom + lam * dt)))
            total = total + K * self._dot(ms, d) / bc1     # K ⟨m̂, (I+τℒ)⁻¹ τ m̂⟩ ≥ 0
            if self.relax:
                # Σ_i (Δθ_i)²/(K τ_i) = φ² K Σ_i d_i² denom_i / Δt
                if isinstance(denom, (list, tuple)):
                    w = self._dot(d, torch._foreach_mul(d, denom))
                else:
                    w = self._sqnorm(d) * denom
                budget = budget + s_ratio_if(dt > 0, K * w, dt)
            plans.append((params, d, K))

        # (SAV-r): r̃^{n+1} = rⁿ / (1 + Δt K ⟨g,(I+Δtℒ)⁻¹g⟩ / (2E))
        r_tilde = r_n / (1 + total / (2 * E))
        phi = r_tilde / sqrtE                              # r̃^{n+1}/√E
        # (SAV-θ): θ^{n+1} = θⁿ − K (r̃^{n+1}/√E) d
        for params, direction, coef in plans:
            self._axpy(params, direction, -coef * phi)

        r_new = r_tilde
        if self.relax:
            etaD = g0["eta"] * phi * phi * budget           # η Σ_i Δθ_i²/(K τ_i)
            if same_batch:
                r_hat_new = s_sqrt(self._scalar(closure(backward=False)) + C)   # r̂^{n+1}, one forward
                r_new, diag["xi"] = self._relax(r_hat_new, r_tilde, etaD)
            else:
                self._put(anchor, "relax_budget", etaD)     # relaxed at the next step's start
        self._put(anchor, "r", r_new)

        K0, dt0, lam0 = g0["time_scale"], self._lr(g0), g0["lam"]
        scale0 = K0 * dt0 if self.adaptive else K0 * dt0 / (1 + lam0 * dt0)
        self._set_diagnostics(energy=r_new * r_new, r=r_new, r_hat=sqrtE, q=r_prev / sqrtE,
                              eff_step=phi * scale0, **diag)
        return out


class SAV(_SAVCore):
    """SAV (paper Alg. 2). Energy: (r^{n+1})² ≤ (rⁿ)² at every step for every Δt > 0 with
    ``restart='none'`` (along the whole run, across mini-batches); with ``restart='epoch'``
    between restarts only. r is an auxiliary variable, not the loss: with mini-batches it
    may drift far below √(I+C) (see ``q``)."""

    def __init__(self, params, lr: float = 0.2, C: float = 1.0, lam: float = 0.0,
                 restart: str = "none", time_scale: float = 1.0, replicas: int | None = None):
        super().__init__(params, lr=lr, C=C, lam=lam, restart=restart, time_scale=time_scale, replicas=replicas)


class ResSAV(_SAVCore):
    """Restarted SAV (paper Alg. 3): rⁿ ← √(I(θⁿ)+C) on the step's batch every step.

    Energy: per step only, r^{n+1} ≤ √(I(θⁿ)+C) — the step is SGD's damped by
    1/(1 + ΔtK‖g‖²/(2E(1+λΔt))); no monotone quantity across steps."""

    reset = True

    def __init__(self, params, lr: float = 0.2, C: float = 1.0, lam: float = 0.0,
                 time_scale: float = 1.0, replicas: int | None = None):
        super().__init__(params, lr=lr, C=C, lam=lam, restart="none", time_scale=time_scale, replicas=replicas)


class RelSAV(_SAVCore):
    """Relaxed SAV (paper Alg. 4, ξ on r̃). Energy: (r^{n+1})² ≤ (rⁿ)² − (1−η)D ≤ (rⁿ)² at
    every step for every Δt (restart='none'; between restarts with 'epoch'). With
    ``rhat_batch='next'`` (default) the relaxation uses the next step's loss, no extra
    forward; ``'same'``: one extra forward pass per step (``closure(backward=False)``).
    See the module docstring."""

    relax = True
    diagnostic_keys = _SAVCore.diagnostic_keys + ("xi",)

    def __init__(self, params, lr: float = 0.2, C: float = 1.0, lam: float = 0.0,
                 eta: float = 0.99, restart: str = "none", rhat_batch: str = "next",
                 time_scale: float = 1.0, replicas: int | None = None):
        super().__init__(params, lr=lr, C=C, lam=lam, eta=eta, restart=restart,
                         rhat_batch=rhat_batch, time_scale=time_scale, replicas=replicas)


class ASAV(_SAVCore):
    """Adaptive SAV (paper Alg. 5 on SAV): Adam moments, see the module docstring.
    Energy: r^{n+1} ≤ rⁿ for every Δt (with respect to the gradient estimate m̂)."""

    adaptive = True

    def __init__(self, params, lr: float = 0.01, C: float = 1.0, lam: float = 0.0,
                 betas=(0.9, 0.999), eps: float = 1e-8, second_moment: str = "elementwise",
                 restart: str = "none", time_scale: float = 1.0, replicas: int | None = None):
        super().__init__(params, lr=lr, C=C, lam=lam, betas=betas, eps=eps,
                         second_moment=second_moment, restart=restart, time_scale=time_scale, replicas=replicas)


class AResSAV(_SAVCore):
    """Adaptive restarted SAV (Alg. 5 on Alg. 3). Energy: per step, r^{n+1} ≤ √(I(θⁿ)+C)."""

    adaptive = True
    reset = True

    def __init__(self, params, lr: float = 0.01, C: float = 1.0, lam: float = 0.0,
                 betas=(0.9, 0.999), eps: float = 1e-8, second_moment: str = "elementwise",
                 time_scale: float = 1.0, replicas: int | None = None):
        super().__init__(params, lr=lr, C=C, lam=lam, betas=betas, eps=eps,
                         second_moment=second_moment, restart="none", time_scale=time_scale, replicas=replicas)


class ARelSAV(_SAVCore):
    """Adaptive relaxed SAV (Alg. 5 on Alg. 4); D uses τ = Δt/(√v̂+ε) in place of Δt.
    Energy: (r^{n+1})² ≤ (rⁿ)² − (1−η)D for every Δt (between restarts with 'epoch')."""

    adaptive = True
    relax = True
    diagnostic_keys = _SAVCore.diagnostic_keys + ("xi",)

    def __init__(self, params, lr: float = 0.01, C: float = 1.0, lam: float = 0.0,
                 eta: float = 0.99, betas=(0.9, 0.999), eps: float = 1e-8,
                 second_moment: str = "elementwise", restart: str = "none",
                 rhat_batch: str = "next", time_scale: float = 1.0, replicas: int | None = None):
        super().__init__(params, lr=lr, C=C, lam=lam, eta=eta, betas=betas, eps=eps,
                         second_moment=second_moment, restart=restart, rhat_batch=rhat_batch,
                         time_scale=time_scale, replicas=replicas)
