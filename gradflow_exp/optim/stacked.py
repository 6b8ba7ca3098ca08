"""torch.optim's optimizers over R stacked models, and a replica batch's optimizer state.

Our optimizers take ``replicas=R`` themselves (gradflow_exp/optim/base.py). torch.optim's
do not, but an element-wise one (SGD with or without momentum, Adam, AdamW, NAdam,
Adagrad, RMSprop) over the stacked [R, …] tensors *is* R independent optimizers at the
cost of one: each entry is updated from its own gradient and state only.

Replicas that differ in lr (Δt): every one of these updates is linear in lr,
θ⁺ = θ + lr·u(θ, g, state), and its state does not depend on lr. `PerReplicaLr` runs the
torch optimizer once over the stacked tensors with the replicas' largest lr, L, and then
moves replica k to θ + (lr_k/L)(θ⁺ − θ): its own step, to rounding (the difference
θ⁺ − θ is exact where the step is small against θ; replica k's result differs from its
single run's by a rounding of θ a step). A sweep over lr thus costs one optimizer step,
not R.

`split_state` / `stack_states` turn a batch's optimizer ``state_dict()`` into each
replica's single-run one and back, so that a replica's checkpoint is its single run's.
"""
from __future__ import annotations

import torch

from gradflow_exp.optim.base import F64, LeanOptimizer, _along
from gradflow_exp.optim.spm import SPM


class PerReplicaLr(LeanOptimizer):
    """``make(params, lr)`` (a torch.optim class with its other hyperparameters) over
    ``stacked`` ([R, …] tensors), replica k stepping with ``lrs[k]``: see the module
    docstring. ``param_groups[0]["lr"]`` is the vector [R] of the replicas' lr, as in our
    optimizers with ``replicas=R``. A replica whose step overflows holds nan where its single
    run would hold inf (the loop calls both diverged); a replica's L·u overflows before its
    lr_k·u only within a factor L/lr_k of the dtype's largest number."""

    def __init__(self, make, stacked: list[torch.Tensor], lrs: list[float]):
        self.unit = max(lrs)
        self.inner = inner = make(stacked, self.unit)
        self.stacked, self.replicas, self.defaults = stacked, len(lrs), inner.defaults
        group = {k: v for k, v in inner.param_groups[0].items() if k != "lr"}
        self.param_groups = [{**group, "lr": torch.tensor(lrs, dtype=F64, device=stacked[0].device)}]
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    state = property(lambda self: self.inner.state)

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure()                      # gradients of the stacked parameters
        before = [p.clone() for p in self.stacked]
        self.inner.step()                         # θ⁺ = θ + L·u
        weight = self.param_groups[0]["lr"] / self.unit
        for p, old in zip(self.stacked, before):
            torch.lerp(old, p, _along(weight, p), out=p)   # θ + (lr_k/L)(θ⁺ − θ)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        out = self.inner.state_dict()
        (group,) = out["param_groups"]
        mine = {k: v.clone() if isinstance(v, torch.Tensor) else v
                for k, v in self.param_groups[0].items() if k != "params"}
        out["param_groups"] = [{**group, **mine}]
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        (group,) = state_dict["param_groups"]
        lr = torch.as_tensor(group["lr"], dtype=F64).to(self.stacked[0].device).expand(self.replicas).clone()
        self.inner.load_state_dict({"state": state_dict["state"], "param_groups": [
            {k: v for k, v in group.items() if k != "initial_lr"} | {"lr": self.unit}]})
        self.param_groups[0].update({k: v for k, v in group.items() if k not in ("params", "lr")}, lr=lr)

    def __repr__(self) -> str:
        return f"PerReplicaLr({self.inner!r})"


def split_state(opt, state: dict, k: int) -> dict:
    """Replica k's part of a replica batch optimizer's ``state_dict()``: the state dict of
    the same optimizer over replica k's parameters alone."""
    if isinstance(opt, SPM):
        return {**split_state(opt.base, state, k), "spm": {**state["spm"], "generator": state["spm"]["generator"][k]}}
    R = opt.replicas

    def part(v):     # per-replica: [R, …]; shared: 0-d
        if isinstance(v, torch.Tensor):
            return v[k].clone() if v.dim() >= 1 and v.shape[0] == R else v.clone()
        return v

    return {"state": {i: {key: part(v) for key, v in st.items()} for i, st in state["state"].items()},
            "param_groups": [{key: (float(v[k]) if isinstance(v, torch.Tensor) and v.dim() == 1 else v)
                              for key, v in g.items()} for g in state["param_groups"]]}


def stack_states(opt, states: list[dict]) -> dict:
    """The inverse of `split_state`: the replicas' single-run state dicts → the batch's."""
    if isinstance(opt, SPM):
        states = [s if "base" not in s else {**s["base"], "spm": s["spm"]} for s in states]   # earlier layout
        return {**stack_states(opt.base, states), "spm": {**states[0]["spm"],
                                                         "generator": [s["spm"]["generator"] for s in states]}}
    first = states[0]

    def joint(values):
        v0 = values[0]
        if isinstance(v0, torch.Tensor):
            if v0.dim() == 0 and all(torch.equal(v, v0) for v in values[1:]):
                return v0.clone()                # shared (a step count), or equal by chance: broadcasts
            return torch.stack(list(values))
        if isinstance(v0, float) and any(v != v0 for v in values[1:]):
            return torch.tensor(values, dtype=torch.float64)
        return v0

    return {"state": {i: {key: joint([s["state"][i][key] for s in states]) for key in st}
                      for i, st in first["state"].items()},
            "param_groups": [{key: joint([s["param_groups"][g][key] for s in states]) if key != "params" else v
                              for key, v in group.items()} for g, group in enumerate(first["param_groups"])]}
