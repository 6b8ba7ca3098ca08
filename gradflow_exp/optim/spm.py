"""SPM (paper Alg. 1): smooth any optimizer's loss by Gaussian parameter perturbations.

``SPM(base, J=10, h=1e-4)`` wraps an optimizer (ours or torch.optim's). Each step draws
ξ_1..ξ_J ~ N(0, I) (fresh, from the wrapper's own ``torch.Generator``, whose state is in
``state_dict()``), and hands the base optimizer a closure whose loss is

    I_h(θ) = (1/J) Σ_j I(θ + h ξ_j),

evaluated in ONE batched call (``torch.func.vmap`` over the J perturbations of
``closure.functional_loss``), or, where the model computes it by hand
(``closure.perturbed_mse``: the two-layer net under MSE), in closed form with one
backward for all J. ``closure()`` writes ∇I_h(θ) = (1/J) Σ_j ∇I(θ + hξ_j) into
``p.grad``; ``closure(backward=False)`` evaluates the same I_h (same ξ) without grad
(RelSAV's r̂); ``functional_residuals`` stacks the J perturbed residual vectors (scaled so
mean(q²) = I_h), so full-Jacobian IEQ also works under SPM (N becomes J·N).

Replicas: around an optimizer built with ``replicas=R`` (parameters [R, …]), ``seed`` is
a list of R seeds, one generator each, and replica k's ξ are drawn from its own generator
exactly as its single run draws them, then stacked ([J, R, …]).

The wrapper shares ``param_groups``/``state``/``defaults`` with the base optimizer, and
passes ``diagnostics``/``epoch_start`` through (absent when the base lacks them), so a
training loop can treat it as any optimizer. It subclasses ``torch.optim.Optimizer`` so
LR schedulers accept it. Its ``state_dict()`` is the base's, in torch's layout
(``state``, ``param_groups``), with one more key, ``spm`` (J, h and the generators' states);
the hooks registered on the wrapper fire around it as around any optimizer's.
"""
from __future__ import annotations

import torch
from torch.func import grad, vmap
from torch.optim import Optimizer

from gradflow_exp.optim.base import LeanOptimizer

_PASSTHROUGH = ("diagnostics", "epoch_start")


class PerturbedClosure:
    """The SPM closure for one step: the batch closure averaged over fixed perturbations."""

    takes_backward = True

    def __init__(self, closure, xi: dict[str, torch.Tensor], h: float):
        self.closure = closure
        self.xi = xi
        self.h = h

    @property
    def params(self):
        return self.closure.params

    def _perturb(self, params):
        # {name: [J, *shape]} = θ + h ξ_j for the J perturbations
        # add(alpha=h) forms θ + hξ in θ's dtype when ξ is narrower (see SPM.draw)
        return {n: torch.add(p.unsqueeze(0), self.xi[n], alpha=self.h) if n in self.xi else p
                for n, p in params.items()}

    def _split(self, params):
        pert = self._perturb(params)
        batched = {n: v for n, v in pert.items() if n in self.xi}
        fixed = {n: v for n, v in pert.items() if n not in self.xi}
        return batched, fixed

    def functional_loss(self, params):
        batched, fixed = self._split(params)
        losses = vmap(lambda b: self.closure.functional_loss({**fixed, **b}))(batched)   # [J]
        return losses.mean(0)                             # I_h = (1/J) Σ_j I(θ + hξ_j) (per replica)

    def functional_residuals(self, params):
        batched, fixed = self._split(params)
        res = vmap(lambda b: self.closure.functional_residuals({**fixed, **b}))(batched)  # [J, N]
        return res.reshape(-1)                            # mean(q²) = I_h (every N is equal)

    def __call__(self, backward: bool = True):
        fast = getattr(self.closure, "perturbed_mse", None)
        loss = fast(self.xi, self.h, backward) if fast is not None else None
        if loss is not None:          # the model's closed form: same numbers, no vmap/autograd
            return loss
        params = self.closure.params
        detached = {n: p.detach() for n, p in params.items()}
        if not backward:
            with torch.no_grad():
                return self.functional_loss(detached)
        def total(ps):
            losses = self.functional_loss(ps)         # [] (one run) or [R] (replicas)
            return losses.sum(), losses

        with torch.enable_grad():
            # ∇I_h(θ) as a function of the parameters (so stacked replicas, whose slices are an
            # optimizer's parameters, need not require grad); per replica, of its own I_h
            grads, losses = grad(total, has_aux=True)(detached)
        for n, p in params.items():
            p.grad = grads[n]
        return losses.detach()


class SPM(LeanOptimizer):
    """Wrap ``base_optimizer`` with the smoothing of paper Alg. 1 (see module docstring)."""

    def __init__(self, base_optimizer: Optimizer, J: int = 10, h: float = 1e-4,
                 seed: int | list[int] | None = None):
        if isinstance(J, bool) or not isinstance(J, int) or J < 1:
            raise ValueError(f"SPM J (number of perturbations) must be a positive integer, "
                             f"got {J!r}")
        h = float(h)
        if not h > 0:
            raise ValueError(f"SPM h (perturbation size) must be positive, got {h}")
        if isinstance(base_optimizer, SPM):
            raise ValueError("SPM cannot wrap another SPM")
        params = [p for g in base_optimizer.param_groups for p in g["params"]]
        if any(p.is_complex() for p in params):
            raise ValueError("SPM does not support complex parameters (its perturbations are real Gaussians)")
        super().__init__([{"params": params}], {})
        # from here on param_groups/state/defaults are the base's (see _shared)
        self.__dict__["base"] = base_optimizer
        self.J = J
        self.h = h
        self.replicas = getattr(base_optimizer, "replicas", None)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
        if len(seeds) != (self.replicas or 1):
            raise ValueError(f"SPM needs one seed per replica ({self.replicas or 1}), got {seed!r}")
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=params[0].device)
            g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()) if s is None else int(s))
            self.generators.append(g)
        self.last_xi: dict[str, torch.Tensor] | None = None

    @property
    def generator(self) -> torch.Generator:
        """The perturbations' generator (of replica 0 with replicas)."""
        return self.generators[0]

    def _shared(name):  # noqa: N805 — property factory used in the class body
        def get(self):
            d = self.__dict__
            return getattr(d["base"], name) if "base" in d else d["_own_" + name]

        def set_(self, value):
            d = self.__dict__
            if "base" in d:
                setattr(d["base"], name, value)
            else:
                d["_own_" + name] = value
        return property(get, set_, doc=f"The base optimizer's ``{name}`` (shared).")

    param_groups = _shared("param_groups")
    state = _shared("state")
    defaults = _shared("defaults")
    del _shared

    def __getattr__(self, name):
        # only reached when normal lookup fails: pass diagnostics/epoch_start through
        if name in _PASSTHROUGH and "base" in self.__dict__:
            return getattr(self.__dict__["base"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def draw(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ξ for one step: for each parameter (in ``params`` order) a [J, *shape] N(0,1) draw.

        Drawn in float32 for float64 parameters, and left so: J·n normals per step are SPM's
        largest cost after the J forward passes, float64 normals cost 4× as much on CPU, and
        a random direction needs no 53-bit mantissa. The perturbed θ + hξ is still formed in
        θ's dtype (``torch.add`` promotes ξ inside the kernel, so widening ξ first would
        only add a copy)."""
        def one(gen, shape):
            return {n: torch.randn((self.J, *shape(p)), generator=gen,
                                   dtype=torch.float32 if p.dtype == torch.float64 else p.dtype, device=p.device)
                    for n, p in params.items()}

        if self.replicas is None:
            return one(self.generators[0], lambda p: p.shape)
        draws = [one(g, lambda p: p.shape[1:]) for g in self.generators]     # replica k: its run's draws
        return {n: torch.stack([d[n] for d in draws], dim=1) for n in params}

    def __getstate__(self) -> dict:
        """The wrapper's own attributes and its base (torch's pickles only the shared three)."""
        return {k: self.__dict__[k] for k in ("base", "J", "h", "replicas", "generators", "last_xi")}

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One step of the base optimizer on the smoothed loss. ``closure`` must give the loss
        as a function of the parameters (`BatchClosure`): a loss value cannot be smoothed."""
        if not (hasattr(closure, "functional_loss") and hasattr(closure, "params")):
            raise TypeError("SPM needs a closure with functional_loss(params) and params, such as "
                            "gradflow_exp.optim.BatchClosure(model, loss_fn, x, y): it evaluates the loss at "
                            "J perturbed parameters")
        if not closure.params:           # every parameter frozen: nothing to perturb
            return self.base.step(closure)
        self.last_xi = self.draw(closure.params)
        return self.base.step(PerturbedClosure(closure, self.last_xi, self.h))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        if "base" in self.__dict__:
            self.base.add_param_group(param_group)
        else:  # during Optimizer.__init__
            super().add_param_group(param_group)

    @torch._disable_dynamo
    def state_dict(self) -> dict:
        """The base's state dict (torch's layout) plus ``spm``: J, h, the generators' states."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        gens = [g.get_state() for g in self.generators]
        out = {**self.base.state_dict(),
               "spm": {"J": self.J, "h": self.h, "generator": gens[0] if self.replicas is None else gens}}
        for hook in self._optimizer_state_dict_post_hooks.values():
            out = hook(self, out) or out
        return out

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict) -> None:
        """Load `state_dict` (or the layout of earlier versions, ``{'base', 'spm'}``)."""
        state_dict = dict(state_dict)         # a pre-hook may edit it: never the caller's
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        spm = state_dict["spm"]
        self.base.load_state_dict(state_dict["base"] if "base" in state_dict else
                                  {k: v for k, v in state_dict.items() if k != "spm"})
        self.J, self.h = int(spm["J"]), float(spm["h"])
        states = spm["generator"] if isinstance(spm["generator"], (list, tuple)) else [spm["generator"]]
        for g, st in zip(self.generators, states):
            g.set_state(st.clone().cpu())
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __repr__(self) -> str:
        return f"SPM(J={self.J}, h={self.h}, base={self.base!r})"
