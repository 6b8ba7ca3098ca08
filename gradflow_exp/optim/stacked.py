"""torch.optim's optimizers over R stacked models, and a replica batch's optimizer state.

Our optimizers take ``replicas=R`` themselves (gradflow_exp/optim/base.py). torch.optim's
do not, but an element-wise one (SGD with or without momentum, Adam, AdamW, NAdam,
Adagrad, RMSprop) over one parameter group per replica, each holding that replica's slice
of the stacked parameters, *is* R independent optimizers, each doing exactly its single
run's arithmetic on tensors of its single run's shapes, with its own lr (and so its own
schedule). `Unstacked` is that: it evaluates the closure on the stacked parameters, hands
each slice its gradient, and steps the torch optimizer.

With one set of hyperparameters for all replicas (a batch of seeds) the torch optimizer
simply runs over the stacked tensors: element-wise, that is R optimizers too, at the cost of
one.

`split_state` / `stack_states` turn a batch's optimizer ``state_dict()`` into each
replica's single-run one and back, so that a replica's checkpoint is its single run's.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

from gradflow_exp.optim.spm import SPM


class Unstacked(Optimizer):
    """``make(groups)`` (a torch.optim class with its hyperparameters) over ``stacked``
    ([R, …] tensors, requires_grad False), one param group per replica: group k holds
    replica k's slices (views). ``per_replica``: {key: R values} for the groups."""

    def __init__(self, make, stacked: list[torch.Tensor], per_replica: dict | None = None):
        R = stacked[0].shape[0]
        self.stacked = stacked
        self.views = [[p[k] for p in stacked] for k in range(R)]
        groups = [{"params": views, **{key: values[k] for key, values in (per_replica or {}).items()}}
                  for k, views in enumerate(self.views)]
        inner = make(groups)
        self.__dict__["inner"] = inner
        self.replicas = R
        self.defaults = inner.defaults
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    param_groups = property(lambda self: self.inner.param_groups)
    state = property(lambda self: self.inner.state)

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure()                     # gradients of the stacked parameters
        for k, views in enumerate(self.views):
            for view, p in zip(views, self.stacked):
                view.grad = None if p.grad is None else p.grad[k]
        self.inner.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.stacked:
            p.grad = None
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"Unstacked({self.inner!r})"


def split_state(opt, state: dict, k: int) -> dict:
    """Replica k's part of a replica batch optimizer's ``state_dict()``: the state dict of
    the same optimizer over replica k's parameters alone."""
    if isinstance(opt, SPM):
        return {"base": split_state(opt.base, state["base"], k),
                "spm": {**state["spm"], "generator": state["spm"]["generator"][k]}}
    if isinstance(opt, Unstacked):
        group = state["param_groups"][k]
        renumber = {old: new for new, old in enumerate(group["params"])}
        return {"state": {renumber[i]: _clone(st) for i, st in state["state"].items() if i in renumber},
                "param_groups": [{**group, "params": list(range(len(renumber)))}]}
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
        return {"base": stack_states(opt.base, [s["base"] for s in states]),
                "spm": {**states[0]["spm"], "generator": [s["spm"]["generator"] for s in states]}}
    if isinstance(opt, Unstacked):
        out_state, groups, offset = {}, [], 0
        for s in states:
            (group,) = s["param_groups"]
            groups.append({**group, "params": [offset + i for i in group["params"]]})
            out_state.update({offset + i: _clone(st) for i, st in s["state"].items()})
            offset += len(group["params"])
        return {"state": out_state, "param_groups": groups}
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


def _clone(st: dict) -> dict:
    return {key: v.clone() if isinstance(v, torch.Tensor) else v for key, v in st.items()}
