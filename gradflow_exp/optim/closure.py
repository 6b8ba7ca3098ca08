"""The closure contract between a training loop and the optimizers of this package.

Every optimizer here is stepped as ``optimizer.step(closure)``. A plain PyTorch closure
(zero grads, forward, backward, return the loss) is enough for all methods except IEQ
and SPM, which need the loss as a function of the parameters. `BatchClosure` provides
both and is what the runner passes:

- ``closure()`` / ``closure(backward=True)``: zero the grads, forward on the batch,
  backward, return the loss (a detached 0-d tensor).
- ``closure(backward=False)``: forward only, no graph (RelSAV's r̂ needs just this).
- ``closure.functional_loss(params)``: the batch loss at ``params`` (dict name → tensor),
  for ``torch.func`` transforms (grad, vmap over perturbations).
- ``closure.functional_residuals(params)``: flat residual vector r on the batch with
  ``loss == r.pow(2).mean()`` (see `gradflow_exp.losses`), for IEQ's Jacobian.
- ``closure.params``: dict of the trainable parameters, in ``model.named_parameters()`` order.

A loss with a ``penalty(params)`` (`gradflow_exp.losses.CompositeLoss`) adds it to the
batch loss in all of these, so optimizers see the composite energy.

Models that can compute the MSE gradient by hand (``supports_manual_grad``, e.g. the
paper's two-layer net) do so in ``closure()``: same numbers as autograd, a fraction of
its per-step overhead on these small networks.
"""
from __future__ import annotations

import torch
from torch.func import functional_call, grad_and_value, vmap

from gradflow_exp.losses import MSELoss
from gradflow_exp.models import FACTORED_BACKWARD, relu_backward_


class BatchClosure:
    takes_backward = True          # closure(backward=False): the loss alone, one forward pass

    def __init__(self, model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor):
        self.model = model
        self.loss_fn = loss_fn
        self.x = x
        self.y = y
        self._penalty = getattr(loss_fn, "penalty", None)
        self._manual = isinstance(loss_fn, MSELoss) and getattr(model, "supports_manual_grad", False)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def __call__(self, backward: bool = True) -> torch.Tensor:
        if not backward:
            with torch.no_grad():
                if self._manual:
                    return self.model.mse_loss(self.x, self.y)
                return self._loss(self.model(self.x))
        if self._manual:
            with torch.no_grad():
                return self.model.mse_loss_and_grad(self.x, self.y)
        params = self.params
        with torch.enable_grad():
            for p in params.values():
                p.grad = None
            loss = self._loss(self.model(self.x))
            if params:                   # a model with every parameter frozen has nothing to differentiate
                loss.backward()
        return loss.detach()

    def _loss(self, pred: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        loss = self.loss_fn(pred, self.y)
        if self._penalty is None:
            return loss
        return loss + self._penalty(self.params if params is None else params)

    def perturbed_mse(self, xi: dict[str, torch.Tensor], h: float, backward: bool = True):
        """SPM's averaged loss (and gradient) in closed form when the model provides it
        (MSE only, every parameter perturbed); None otherwise, and SPM uses vmap."""
        fast = getattr(self.model, "perturbed_mse", None)
        if not self._manual or fast is None or set(xi) != set(self.params):
            return None
        names = [n for n, _ in self.model.named_parameters()]
        with torch.no_grad():
            return fast(self.x, self.y, [xi[n] for n in names], h, backward)

    def residual_gram(self):
        """(q, G = JJᵀ, vjp) in closed form when the model provides it (MSE only, where the
        residual is f − y); None otherwise, and IEQ forms J with torch.func instead."""
        if not self._manual or not hasattr(self.model, "residual_gram"):
            return None
        return self.model.residual_gram(self.x, self.y)

    def functional_loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(functional_call(self.model, params, (self.x,)), params)

    def functional_residuals(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = functional_call(self.model, params, (self.x,))
        return self.loss_fn.residuals(pred, self.y).reshape(-1)


class ReplicaClosure:
    """`BatchClosure` for R stacked copies of one model (optimizers built with ``replicas=R``).

    ``params``: name → a leaf tensor [R, *shape] (replica k's parameters at index k);
    ``x``, ``y``: [R, batch, …] (each replica its own batch). ``closure()`` writes each
    replica's gradient into ``params[name].grad`` and returns the R losses [R];
    ``closure(backward=False)`` returns them without gradients; ``functional_loss(params)``
    is the [R] losses at other stacked parameters (SPM's perturbations). Every replica's
    loss is the model's on its own parameters and batch (``torch.func.vmap`` of
    ``functional_call``, or, for the two-layer net under MSE, its hand-written gradient
    with the replica dimension written out), so replica k computes what `BatchClosure`
    computes for model k, to rounding.
    """

    takes_backward = True

    def __init__(self, model: torch.nn.Module, loss_fn, params: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor):
        self.model, self.loss_fn, self._params, self.x, self.y = model, loss_fn, params, x, y
        self._penalty = getattr(loss_fn, "penalty", None)
        self._manual = (isinstance(loss_fn, MSELoss) and getattr(model, "supports_manual_grad", False)
                        and hasattr(model, "scale"))

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return self._params

    def _one(self, params, x, y):
        loss = self.loss_fn(functional_call(self.model, params, (x,)), y)
        return loss if self._penalty is None else loss + self._penalty(params)

    def functional_loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return vmap(self._one)(params, self.x, self.y)

    def __call__(self, backward: bool = True) -> torch.Tensor:
        params = self._params
        if self._manual:
            with torch.no_grad():
                losses, grads = two_layer_mse_grad(self.model.scale, params, self.x, self.y, backward)
        elif not backward:
            with torch.no_grad():
                return self.functional_loss({n: p.detach() for n, p in params.items()})
        else:
            with torch.enable_grad():
                grads, losses = vmap(grad_and_value(self._one))(
                    {n: p.detach() for n, p in params.items()}, self.x, self.y)
        if backward:
            for n, p in params.items():
                p.grad = grads[n]
        return losses.detach()


def two_layer_mse_grad(scale: float, params, x, y, backward: bool = True):
    """`TwoLayerNet.mse_loss_and_grad` with a leading replica dimension: h = Wx + b,
    e = s·a·relu(h) − y, I = mean(e²); ∂I/∂a = s(∂I/∂f)ᵀrelu(h), ∂I/∂h = s(∂I/∂f)a ⊙ [h > 0],
    ∂I/∂W = (∂I/∂h)ᵀx, ∂I/∂b = Σ ∂I/∂h, per replica. (vmap of the single-model closed form
    gives the same numbers, but its batching rules cost more than the arithmetic on the
    paper's small nets.) Returns (losses [R], grads or None)."""
    W, b, a = params["hidden.weight"], params["hidden.bias"], params["out.weight"]   # [R,m,D], [R,m], [R,out,m]
    R, N = x.shape[0], x.shape[1]
    r = torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2)).clamp_min_(0)   # relu(h), h overwritten: [R,N,m]
    e = torch.baddbmm(y.reshape(R, N, -1), r, a.transpose(1, 2), beta=-1, alpha=scale)   # f − y
    n = e[0].numel()
    flat = e.reshape(R, -1)
    loss = (flat * flat).sum(1) / n
    if not backward:
        return loss, None
    df = e * (2.0 * scale / n)
    dfT = df.transpose(1, 2)
    if a.shape[1] == 1 and r[0].numel() >= FACTORED_BACKWARD:   # as `TwoLayerNet.mse_loss_and_grad`
        M = torch.ops.aten.threshold_backward(a.expand_as(r), r, 0.0)
        return loss, {"hidden.weight": ((x * df).transpose(1, 2) @ M).transpose(1, 2),
                      "hidden.bias": (dfT @ M).squeeze(1), "out.weight": dfT @ r}
    dh = relu_backward_(df @ a, r)                               # relu's backward, masked by r > 0 ⇔ h > 0
    return loss, {"hidden.weight": dh.transpose(1, 2) @ x, "hidden.bias": dh.sum(1), "out.weight": dfT @ r}
