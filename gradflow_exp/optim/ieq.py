"""IEQ (invariant energy quadratization): full-Jacobian IEQ and its O(n) adaptive form.

The loss is quadratic in the residual: I = mean(q²) = ‖q‖²/N with q the flat residual
vector on the batch (``closure.functional_residuals``, N = batch × outputs), so
∇I = (2/N) Jᵀq with J = ∂q/∂θ (N × n). With time scale K the flow is θ' = −K∇I, hence
q' = J θ' = −K (2/N) J Jᵀ q.

IEQ (the evaluation §2.2.5 A, docs/sources.md), scaled so that small Δt follows θ' = −K∇I::

    q^{n+1} = (I_N + Δt K (2/N) J Jᵀ)⁻¹ qⁿ          (N × N Cholesky solve, never n × n)
    θ^{n+1} = θⁿ − Δt K (2/N) Jᵀ q^{n+1}

qⁿ is the *fresh* residual of θⁿ on the step's batch: with mini-batches the samples change,
so a carried q would belong to other samples. The step is then a Levenberg–Marquardt
step, θ^{n+1} − θⁿ = −Jᵀ(JJᵀ + μI)⁻¹qⁿ with μ = N/(2ΔtK). Energy guarantee — per step:
A = Δt K (2/N) J Jᵀ is positive semi-definite, so ‖(I + A)⁻¹‖ ≤ 1 and the quadratic energy
mean((q^{n+1})²) ≤ mean((qⁿ)²) = I(θⁿ) on the batch for every Δt > 0. q^{n+1} is the
residual of the model *linearised* at θⁿ after the step (q + JΔθ = q^{n+1}); it bounds the
linearised loss, not I(θ^{n+1}) itself. Cost: J is N × n (``torch.func.jacrev``),
the solve O(N³), forming JJᵀ O(N²n).

IEQ adaptive (the evaluation §2.2.5 B), same scaling: replacing (2/N)JJᵀ by its Rayleigh
quotient along qⁿ, qᵀ(2/N)JJᵀq/‖q‖² = ‖∇I‖²/(2I) (because ‖Jᵀq‖² = (N/2)²‖∇I‖² and
‖q‖² = N·I), gives::

    α = 1 / (1 + Δt K ‖∇I‖² / (2I + ε)),   q^{n+1} = α qⁿ,   θ^{n+1} = θⁿ − Δt K α ∇I

— the seed's formula with its L = ½‖q‖² (so ‖q‖² = 2L) replaced by I. It needs only the
loss and its gradient (any closure), costs O(n), and coincides with ResSAV for C = ε/2,
λ = 0. Guarantee, per step: mean((q^{n+1})²) = α² I(θⁿ) ≤ I(θⁿ).

Diagnostics. IEQ: ``energy`` mean((q^{n+1})²), ``q`` ‖q^{n+1}‖/‖qⁿ‖ (modified over actual,
as r/r̂ for SAV), ``eff_step`` ⟨θⁿ − θ^{n+1}, ∇I⟩/‖∇I‖² (the step along −∇I; → ΔtK as Δt → 0).
IEQAdaptive: ``energy`` α² I(θⁿ), ``q`` α, ``eff_step`` ΔtKα (first group).
"""
from __future__ import annotations

import torch
from torch.func import jacrev

from gradflow_exp.optim.base import F64, EnergyOptimizer, dot

NARROW = (torch.bfloat16, torch.float16)


def _add_scaled(A: torch.Tensor, B: torch.Tensor, c) -> torch.Tensor:
    """A += c·B, c a float or a 0-d tensor (a tensor lr): as ``alpha`` a tensor would be read
    back to the host."""
    return A.add_(B, alpha=c) if isinstance(c, float) else A.add_(B * c)


def _solve_dtype(dtype: torch.dtype) -> torch.dtype:
    """The N × N solve runs in float32 for half-precision parameters (no half Cholesky)."""
    return torch.float32 if dtype in NARROW else dtype


class IEQ(EnergyOptimizer):
    """Full-Jacobian IEQ; needs ``closure.functional_residuals`` and ``closure.params``
    (`BatchClosure`). Energy: per step, mean((q^{n+1})²) ≤ I(θⁿ) on the batch, every Δt."""

    diagnostic_keys = ("energy", "q", "eff_step")
    supports_complex = False

    def __init__(self, params, lr: float = 0.2, time_scale: float = 1.0):
        super().__init__(params, dict(lr=lr, time_scale=time_scale))

    @staticmethod
    def _solve(A: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        L, _ = torch.linalg.cholesky_ex(A)
        return torch.cholesky_solve(q.unsqueeze(1), L).squeeze(1)   # q^{n+1} = A⁻¹ qⁿ

    def _jacobian_step(self, residuals, named):
        """The step with J formed by ``torch.func.jacrev`` (any model, any param groups).
        A frozen parameter (``requires_grad=False``) is not trained, as torch.optim's
        optimizers skip a parameter without a gradient."""
        name_of = {id(p): n for n, p in named.items()}
        groups = []
        for group in self.param_groups:
            try:
                trained = [p for p in group["params"] if p.requires_grad]
                names = [name_of[id(p)] for p in trained]
            except KeyError:
                raise ValueError("IEQ: an optimized parameter is not in closure.params") from None
            if names:
                groups.append((group, trained, names))
        train = {n: named[n].detach() for _, _, names in groups for n in names}
        fixed = {n: p.detach() for n, p in named.items() if n not in train}

        def res(tp):
            q = residuals({**fixed, **tp})
            return q, q.detach()

        if not train:
            q = residuals(fixed).detach()
            return q, q, None, None
        with torch.enable_grad():
            jac, q = jacrev(res, has_aux=True)(train)     # J: dict name → [N, *shape]
        N = q.numel()
        work = _solve_dtype(q.dtype)
        q = q.to(work)
        A = torch.eye(N, dtype=work, device=q.device)
        blocks = []
        for group, trained, names in groups:
            Jg = torch.cat([jac[n].reshape(N, -1) for n in names], dim=1).to(work)   # N × n_g
            c = self._lr(group) * group["time_scale"] * 2.0 / N                    # Δt K (2/N)
            if isinstance(c, float):
                A.addmm_(Jg, Jg.T, alpha=c)               # A = I + Δt K (2/N) J Jᵀ
            else:
                _add_scaled(A, Jg @ Jg.T, c)
            blocks.append((trained, Jg, c))
        q_new = self._solve(A, q)

        along = torch.zeros((), dtype=F64, device=q.device)   # ⟨θⁿ − θ^{n+1}, ∇I⟩
        gnorm2 = torch.zeros((), dtype=F64, device=q.device)  # ‖∇I‖²
        for trained, Jg, c in blocks:
            delta = c * (Jg.T @ q_new)                    # θⁿ − θ^{n+1} = Δt K (2/N) Jᵀ q^{n+1}
            grad = (2.0 / N) * (Jg.T @ q)                 # ∇I = (2/N) Jᵀ qⁿ
            along = along + dot([delta], [grad])
            gnorm2 = gnorm2 + dot([grad], [grad])
            offset = 0
            for p in trained:
                k = p.numel()
                p.sub_(delta[offset:offset + k].view_as(p))
                offset += k
        return q, q_new, along, gnorm2

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One step; ``closure`` must give the residuals as a function of the parameters
        (`BatchClosure`): IEQ forms their Jacobian, which a loss value cannot give."""
        residuals = getattr(closure, "functional_residuals", None)
        named = getattr(closure, "params", None)
        if residuals is None or named is None:
            raise TypeError("IEQ needs a closure with functional_residuals(params) and params, such as "
                            "gradflow_exp.optim.BatchClosure(model, loss_fn, x, y): it forms the residuals' Jacobian")
        group0 = self.param_groups[0]
        gram = getattr(closure, "residual_gram", None)
        same_params = (len(self.param_groups) == 1
                       and [id(p) for p in group0["params"]] == [id(p) for p in named.values()])
        fast = gram() if (gram is not None and same_params) else None
        if fast is not None:
            # The model's closed-form JJᵀ and Jᵀv: the same step, without forming J.
            q, G, vjp = fast
            N = q.numel()
            work = _solve_dtype(q.dtype)
            c = self._lr(group0) * group0["time_scale"] * 2.0 / N                # Δt K (2/N)
            A = _add_scaled(torch.eye(N, dtype=work, device=q.device), G.to(work), c)   # I + Δt K (2/N) J Jᵀ
            q_new = self._solve(A, q.to(work))            # kept in the solve's dtype for the diagnostics
            deltas = [c * t for t in vjp(q_new.to(q.dtype))]   # θⁿ − θ^{n+1} = Δt K (2/N) Jᵀ q^{n+1}
            grads = [(2.0 / N) * t for t in vjp(q)]       # ∇I = (2/N) Jᵀ qⁿ
            along, gnorm2 = dot(deltas, grads), dot(grads, grads)
            for p, d in zip(group0["params"], deltas):
                p.sub_(d.view_as(p))
        else:
            q, q_new, along, gnorm2 = self._jacobian_step(residuals, named)
            if along is None:                             # nothing to train: no step
                return q.pow(2).mean()

        N = q.numel()
        loss = q.pow(2).mean()
        qn2, qnew2 = dot([q], [q]), dot([q_new], [q_new])
        self._set_diagnostics(
            energy=qnew2 / N,
            q=(qnew2 / qn2).sqrt(),
            eff_step=along / gnorm2,
        )
        return loss


class IEQAdaptive(EnergyOptimizer):
    """O(n) IEQ: α = 1/(1 + ΔtK‖∇I‖²/(2I + ε)), θ ← θ − ΔtKα∇I. Any closure works.
    Energy: per step, α² I(θⁿ) ≤ I(θⁿ) on the batch, every Δt."""

    diagnostic_keys = ("energy", "q", "eff_step")
    whole_model_keys = ("eps",)         # α is one number for the whole model

    def __init__(self, params, lr: float = 0.2, eps: float = 1e-8, time_scale: float = 1.0,
                 replicas: int | None = None):
        super().__init__(params, dict(lr=lr, eps=eps, time_scale=time_scale), replicas)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One step. ``closure``: zero the grads, forward, backward, return the loss; or,
        after your own ``loss.backward()``, ``loss=loss``."""
        evaluated = self._evaluate(closure, loss)
        if evaluated is None:
            return None
        out, I = evaluated
        eps = self.param_groups[0]["eps"]
        total = 0.0                                # Σ_groups Δt K ‖∇I‖²
        plans = []
        for group in self.param_groups:
            _, params, grads = self._grads(group)
            if not params:
                continue
            kdt = self._lr(group) * group["time_scale"]
            total = total + kdt * self._sqnorm(grads)
            plans.append((params, grads, kdt))
        alpha = 1.0 / (1.0 + total / (2.0 * I + eps))    # α = 1/(1 + ΔtK‖∇I‖²/(2I+ε))
        for params, grads, kdt in plans:
            self._axpy(params, grads, -kdt * alpha)
        g0 = self.param_groups[0]
        self._set_diagnostics(energy=alpha * alpha * I, q=alpha,
                              eff_step=alpha * (self._lr(g0) * g0["time_scale"]))
        return out
