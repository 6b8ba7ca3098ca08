"""Models: the paper's mean-field two-layer network and a plain MLP for MNIST."""
from __future__ import annotations

import math

import torch
from torch import nn

from gradflow_exp.data.burgers import NU
from gradflow_exp.config.schema import ACTIVATIONS


def _activation(name: str) -> nn.Module:
    """``model.activation`` (its choices: gradflow_exp/config/schema.py) → the torch.nn module."""
    return getattr(nn, ACTIVATIONS[name])()


# hidden activations (batch × width) from which the two-layer net's backward forms W's gradient
# as (df ⊙ x)ᵀM (TwoLayerNet.mse_loss_and_grad): fig2's 64 × 1000 and fig3's 256 × 1000 are
# above it, fig7's 64 × 100 below (docs/speed.md)
FACTORED_BACKWARD = 16384


def relu_backward_(grad: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """grad ⊙ [r > 0] written into ``grad`` (r = relu(h), so r > 0 exactly where h > 0):
    relu's backward as one fused kernel, without a fresh buffer."""
    if torch.is_grad_enabled() and (grad.requires_grad or r.requires_grad):   # differentiated through: no out=
        return torch.ops.aten.threshold_backward(grad, r, 0.0)
    return torch.ops.aten.threshold_backward.grad_input(grad, r, 0.0, grad_input=grad)


class TwoLayerNet(nn.Module):
    """f(x) = (1/m) Σ_k a_k σ(w_k·[x;1]) — bias absorbed into w_k, width m.

    ``init``: 'default' (PyTorch's nn.Linear init), 'kaiming' (He normal for w, a ~ N(0,1))
    or 'normal' (every entry N(0,1)); the paper does not state its choice.
    ``mean_field=False`` drops the 1/m factor (the evaluation's f = aᵀσ(Wᵀ[x;1])).
    """

    def __init__(self, in_dim: int, out_dim: int = 1, width: int = 1000,
                 activation: str = "relu", init: str = "default", mean_field: bool = True):
        super().__init__()
        self.width = width
        self.scale = 1.0 / width if mean_field else 1.0
        self.hidden = nn.Linear(in_dim, width, bias=True)   # w_k·[x;1]
        self.act = _activation(activation)
        self.out = nn.Linear(width, out_dim, bias=False)    # a_k
        self._relu = activation == "relu"
        with torch.no_grad():
            if init == "kaiming":
                nn.init.kaiming_normal_(self.hidden.weight, nonlinearity="relu")
                nn.init.zeros_(self.hidden.bias)
                nn.init.normal_(self.out.weight)
            elif init == "normal":
                for p in self.parameters():
                    nn.init.normal_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x))) * self.scale

    def _residual(self, x: torch.Tensor, y: torch.Tensor):
        """r = relu(Wx + b) and e = f − y in three kernels (one fused addmm for e). The relu
        overwrites Wx + b, which is never needed again: relu's backward masks by r > 0,
        which is h > 0 (one [N, m] buffer fewer a step, docs/speed.md)."""
        W, b, a = self._weights()
        r = torch.addmm(b, x, W.t()).clamp_min_(0)
        e = torch.addmm(y.reshape(x.shape[0], -1), r, a.t(), beta=-1, alpha=self.scale)
        return r, e

    def mse_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE on (x, y), forward only, without nn.Module call overhead (RelSAV's r̂)."""
        flat = self._residual(x, y)[1].view(-1)
        return torch.dot(flat, flat) / flat.numel()

    def mse_loss_and_grad(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE loss on (x, y) with its gradient written into ``.grad``, by hand.

        Same numbers as autograd (tests/test_models.py) at a fraction of the per-step
        overhead, which dominates for these small nets: h = Wx+b, f = s·a·relu(h),
        e = f − y, I = mean(e²); ∂I/∂f = 2e/N, ∂I/∂a = s·(∂I/∂f)ᵀ relu(h),
        ∂I/∂h = s·(∂I/∂f) a ⊙ [h > 0], ∂I/∂W = (∂I/∂h)ᵀ x, ∂I/∂b = Σ ∂I/∂h.

        With one output and a large hidden layer (N·m ≥ FACTORED_BACKWARD), ∂I/∂h = df ⊙ M,
        M = aᵀ ⊙ [h > 0] (df = s·∂I/∂f, a column), so ∂I/∂W = Mᵀ(df ⊙ x) and ∂I/∂b = Mᵀdf:
        one [N, m] pass (M) where forming ∂I/∂h takes two, and W's gradient is the matmul
        (df ⊙ x)ᵀM in its faster layout, kept as its transpose (a strided view). Below that
        size the passes cost less than the extra kernel launches (docs/speed.md).
        """
        W, b, a = self._weights()
        r, e = self._residual(x, y)
        n = e.numel()
        flat = e.view(-1)
        loss = torch.dot(flat, flat) / n
        df = e * (2.0 * self.scale / n)
        a.grad = df.t() @ r
        if a.shape[0] == 1 and r.numel() >= FACTORED_BACKWARD:
            M = torch.ops.aten.threshold_backward(a.expand_as(r), r, 0.0)
            W.grad = ((x * df).t() @ M).t()
            b.grad = M.t() @ df.view(-1)
            return loss
        # an outer product needs no matmul when there is one output
        dh = relu_backward_(df * a if a.shape[0] == 1 else df @ a, r)
        W.grad = dh.t() @ x
        b.grad = dh.sum(0)
        return loss

    def perturbed_mse(self, x: torch.Tensor, y: torch.Tensor, xi: list[torch.Tensor], h: float,
                      backward: bool = True) -> torch.Tensor | None:
        """SPM's smoothed loss I_h = (1/J) Σ_j I(θ + hξ_j) on (x, y) and, with ``backward``,
        its gradient (1/J) Σ_j ∇I(θ + hξ_j) written into ``.grad``, by hand.

        ``xi``: [J, *shape] draws for W, b, a (``_weights`` order), in θ's dtype or a narrower
        one (θ + hξ is formed in θ's dtype either way). The J perturbed hidden
        layers are ONE matmul against the stacked [J·m, D] weights; the W- and b-gradients
        sum ∂I/∂h over j before their matmul (∂(θ + hξ_j)/∂θ = I), so the backward costs
        one base backward instead of J. None for more than one output.
        """
        W, b, a = self._weights()
        if a.shape[0] != 1:
            return None
        xw, xb, xa = xi
        J, m = xw.shape[0], W.shape[0]
        Wj = torch.add(W, xw, alpha=h).reshape(J * m, -1)  # [J·m, D]
        bj = torch.add(b, xb, alpha=h).reshape(-1)         # [J·m]
        aj = torch.add(a, xa, alpha=h).reshape(J, m)       # [J, m]
        R = torch.addmm(bj, x, Wj.t()).view(-1, J, m).clamp_min_(0)   # relu(H), H overwritten: [N, J, m]
        # vecdot and the mv below read R in place; einsum permuted it into a bmm (a copy)
        e = torch.linalg.vecdot(R, aj).mul_(self.scale) - y.reshape(-1, 1)   # [N, J]
        flat = e.reshape(-1)
        loss = torch.dot(flat, flat) / flat.numel()
        if not backward:
            return loss
        df = e * (2.0 * self.scale / flat.numel())         # ∂I_h/∂f_j, [N, J]
        dH = relu_backward_(df.unsqueeze(-1) * aj, R).sum(1)   # Σ_j, [N, m]
        a.grad = (df.reshape(1, -1) @ R.reshape(-1, m))     # Σ_n Σ_j df_nj R_njk, [1, m]
        W.grad = dH.t() @ x
        b.grad = dH.sum(0)
        return loss

    def residual_gram(self, x: torch.Tensor, y: torch.Tensor):
        """Residual q = f − y, its Gram matrix G = J Jᵀ (J = ∂f/∂θ, N × n) in closed form, and
        v ↦ Jᵀv per parameter (``parameters()`` order), sharing one forward pass.

        With h = Wx̃ (x̃ = [x;1]), R = relu(h), M = [h > 0]: ∂f_i/∂a_k = s R_ik and
        ∂f_i/∂w_k = s a_k M_ik x̃_i, so G = s² (R Rᵀ + (X̃X̃ᵀ) ∘ (M diag(a²) Mᵀ)) — O(N²(m + D))
        instead of the O(N²n) of forming J (IEQ's cost at batch 64 drops ≈ 30×).
        Returns None for more than one output."""
        a = self._weights()[2]
        if a.shape[0] != 1:
            return None
        r, e = self._residual(x, y)
        q = e.reshape(-1)
        ma = (r > 0).to(r.dtype) * a               # M diag(a)
        G = (r @ r.t() + (x @ x.t() + 1) * (ma @ ma.t())) * self.scale ** 2

        def vjp(v: torch.Tensor) -> list[torch.Tensor]:
            df = v.reshape(-1, 1) * self.scale
            dh = relu_backward_(df * a, r)
            return [dh.t() @ x, dh.sum(0), df.t() @ r]

        return q, G, vjp

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W, b, a by plain dict reads: nn.Module attribute lookup costs µs each, and the
        hand-written gradient runs every step (these are the registered Parameters)."""
        hidden, out = self._modules["hidden"]._parameters, self._modules["out"]._parameters
        return hidden["weight"], hidden["bias"], out["weight"]

    @property
    def supports_manual_grad(self) -> bool:
        return self._relu and all(p.requires_grad for p in self._weights())

    @property
    def particle_scale(self) -> float:
        """K = m/2: the paper's per-particle step over the plain-gradient step (README, `time_scale`)."""
        return self.width / 2 if self.scale != 1.0 else 1.0


class MLP(nn.Module):
    """Fully connected net, e.g. 784-100-10 for the evaluation's MNIST experiment."""

    def __init__(self, in_dim: int, out_dim: int, hidden: list[int] | tuple[int, ...] = (100,),
                 activation: str = "relu", init: str = "default"):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), _activation(activation)]
            prev = h
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)
        if init != "default":
            with torch.no_grad():
                for m in self.net:
                    if isinstance(m, nn.Linear):
                        if init == "kaiming":
                            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                        else:
                            nn.init.normal_(m.weight, std=1 / math.sqrt(m.in_features))
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    particle_scale = 1.0


class BurgersPINN(nn.Module):
    """u(x, t) by a tanh MLP (Example 5: 5 hidden layers of 32), read through the row layout
    of `gradflow_exp.data.burgers`: a residual row ``[x, t, 1, w]`` returns the PDE residual
    u_t + u u_x − ν u_xx, a data row ``[x, t, 0, w]`` returns w·u(x, t).

    u_x, u_t and u_xx are carried forward through the layers by hand (a = Wz + b, s = tanh a,
    s' = 1 − s², s'' = −2 s s'; z_x ← s'·a_x, z_xx ← s''·a_x² + s'·a_xx), exact and plain
    tensor algebra, so SPM's vmap over perturbed parameters, replicas and IEQ's per-sample
    Jacobians go through it as through any model; autograd inside forward would not."""

    particle_scale = 1.0

    def __init__(self, in_dim: int, out_dim: int, hidden: list[int] | tuple[int, ...] = (32,) * 5,
                 nu: float = NU):
        super().__init__()
        if in_dim != 4 or out_dim != 1:
            raise ValueError("model=pinn needs dataset=burgers (rows [x, t, flag, w] and one output)")
        sizes = [2, *hidden, 1]
        self.nu = float(nu)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        with torch.no_grad():          # Glorot, as PINNs for tanh nets use (Raissi et al.)
            for layer in self.layers:
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        z = rows[:, :2]                                   # (x, t): ∂/∂x = e₁, ∂/∂t = e₂
        z_xx = torch.zeros_like(z)
        z_x, z_t = z_xx + z.new_tensor([1.0, 0.0]), z_xx + z.new_tensor([0.0, 1.0])
        for layer in self.layers[:-1]:
            w = layer.weight.T
            a, a_x, a_t, a_xx = layer(z), z_x @ w, z_t @ w, z_xx @ w
            s = torch.tanh(a)
            ds = 1 - s * s
            z, z_x, z_t, z_xx = s, ds * a_x, ds * a_t, -2 * s * ds * a_x * a_x + ds * a_xx
        last = self.layers[-1]
        w = last.weight.T
        u, u_x, u_t, u_xx = last(z), z_x @ w, z_t @ w, z_xx @ w
        residual = u_t + u * u_x - self.nu * u_xx
        return torch.where(rows[:, 2:3] > 0.5, residual, rows[:, 3:4] * u)
