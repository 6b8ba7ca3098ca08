"""AEGD (Liu & Tian, "AEGD: adaptive gradient descent with energy"): element-wise SAV.

Each coordinate i carries its own energy variable r_i, r_i⁰ = √(I(θ⁰) + c). With η = lr,
c = C and time scale K (flow θ' = −K∇I)::

    v = g / (2√(I(θⁿ) + c))                     (∇√(I + c))
    r_i^{n+1} = r_iⁿ / (1 + 2ηK v_i²)
    θ^{n+1} = θⁿ − 2ηK r^{n+1} ⊙ v

For small η, r ≈ √(I + c) and the step is −ηK g: Euler on θ' = −K∇I.
Energy: every r_i is non-increasing for every η > 0 (the denominator is ≥ 1); with
``restart='epoch'`` between restarts only (the step after ``epoch_start()`` resets
r_i = √(I(θⁿ)+c) on its batch).

Diagnostics (computed lazily from the state, at logging points only): ``energy`` mean_i r_i²,
``r`` its square root, ``r_hat`` √(I(θⁿ)+c) on the last step's batch, ``q`` r/r_hat,
``eff_step`` ηK·mean_i r_i/√(I+c) (mean element-wise step along −g).
"""
from __future__ import annotations

import torch

from gradflow_exp.optim.base import F64, EnergyOptimizer, div, fill_, mul_, s_sqrt


class AEGD(EnergyOptimizer):
    """Adaptive gradient descent with energy; see the module docstring."""

    diagnostic_keys = ("energy", "r", "r_hat", "q", "eff_step")

    def __init__(self, params, lr: float = 0.1, C: float = 1.0, restart: str = "none",
                 time_scale: float = 1.0, replicas: int | None = None):
        super().__init__(params, dict(lr=lr, C=C, restart=restart, time_scale=time_scale), replicas)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One step. ``closure``: zero the grads, forward, backward, return the loss; or,
        after your own ``loss.backward()``, ``loss=loss``."""
        evaluated = self._evaluate(closure, loss)
        if evaluated is None:
            return None
        out, I = evaluated
        anchor = self._anchor()
        sqrtE = s_sqrt(I + self.param_groups[0]["C"])     # √(I(θⁿ)+c)
        restart = self._take_restart()
        for group in self.param_groups:
            owners, params, grads = self._grads(group)
            if not params:
                continue
            ek = self._lr(group) * group["time_scale"]    # ηK
            rs = []
            for p in owners:
                st = self.state[p]
                fresh = restart or "r" not in st
                if "r" not in st:                            # a restart refills it in place
                    st["r"] = torch.empty_like(p)
                r = torch.view_as_real(st["r"]) if p.is_complex() else st["r"]   # one r_i per real entry
                if fresh:
                    fill_([r], sqrtE)                        # r_i = √(I+c)
                rs.append(r)
            v = div(grads, 2 * sqrtE)                        # v = g/(2√(I+c))
            den = torch._foreach_mul(v, v)
            mul_(den, 2 * ek)
            torch._foreach_add_(den, 1.0)                    # 1 + 2ηK v²
            torch._foreach_div_(rs, den)                     # r ← r/(1 + 2ηK v²)
            torch._foreach_mul_(v, rs)
            self._axpy(params, v, -2 * ek)                   # θ ← θ − 2ηK r v
        self._put(anchor, "r_hat", sqrtE)
        return out

    def diagnostics(self):
        anchor = self._anchor()
        if "r_hat" not in anchor:
            shape = () if self.replicas is None else (self.replicas,)
            return {k: torch.full(shape, float("nan"), dtype=F64) for k in self.diagnostic_keys}
        r_hat = anchor["r_hat"]
        rows = self.replicas or 1                           # sums per replica
        sq = torch.zeros_like(r_hat)
        lin = torch.zeros_like(r_hat)
        n = 0
        for group in self.param_groups:
            for p in group["params"]:
                r = self.state[p].get("r")
                if r is not None:
                    r = torch.view_as_real(r) if r.is_complex() else r
                    flat = r.reshape(rows, -1) if self.replicas else r.reshape(-1)
                    sq = sq + flat.pow(2).sum(-1, dtype=F64)
                    lin = lin + flat.sum(-1, dtype=F64)
                    n += flat.shape[-1]
        energy = sq / n
        g0 = self.param_groups[0]
        return {"energy": energy, "r": energy.sqrt(), "r_hat": r_hat,
                "q": energy.sqrt() / r_hat,
                "eff_step": self._lr(g0) * g0["time_scale"] * (lin / n) / r_hat}
