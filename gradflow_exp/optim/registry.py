"""Build an optimizer from its config node; the loop never looks at a method's name.

An optimizer config is a Hydra node with ``_target_`` (a torch.optim class or one of
this package's) and its hyperparameters; ``conf/optimizer/<name>.yaml`` is the registry,
so ``optimizer=<name>`` selects it.

Time scaling (README, `time_scale`): with factor K the optimizer follows the flow
θ' = −K ∇I. Our energy-stable optimizers take ``time_scale=K`` themselves (their energy
bookkeeping needs it); for torch baselines K multiplies the learning rate, which is the
same thing for SGD (Euler) and SGD with momentum.
"""
from __future__ import annotations

import inspect
import logging

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf

from gradflow_exp.optim.base import PER_REPLICA, EnergyOptimizer
from gradflow_exp.optim.spm import SPM
from gradflow_exp.optim.stacked import PerReplicaLr
from gradflow_exp.optim.torch_forms import FORMS, lean_form

SHARED_KEYS = ("C", "lam", "eta", "restart")
log = logging.getLogger(__name__)


def resolve_time_scale(time_scale, model: torch.nn.Module) -> float:
    """'plain' → 1, 'particle' → the model's m/2, 'F*particle' → F·m/2, a number → itself
    (the forms gradflow_exp/config/schema.py admits)."""
    if time_scale in (None, "plain"):
        return 1.0
    if isinstance(time_scale, str) and time_scale.strip().endswith("particle"):
        factor = time_scale.split("*")[0] if "*" in time_scale else "1"
        return float(factor) * float(getattr(model, "particle_scale", 1.0))
    return float(time_scale)


def _on_cpu(model: torch.nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "cpu"


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, time_scale: float = 1.0):
    """Instantiate ``cfg`` (an optimizer node) for ``model``'s parameters.

    A ``spm`` sub-node ({J, h[, seed]}, as in ``conf/optimizer/spm_*.yaml``) asks for the
    method's SPM form (paper Alg. 1): ``SPM(opt, J, h, seed)``.
    """
    node = OmegaConf.to_container(cfg, resolve=True)
    spm = node.pop("spm", None)
    target = lean_form(hydra.utils.get_class(node["_target_"]))
    accepted = inspect.signature(target.__init__).parameters
    kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
    # Every optimizer config carries the shared keys so that one sweep
    # (optimizer=sgd,sav optimizer.C=1,100) composes for all methods; one line names those
    # this method ignores.
    ignored = {key: kwargs.pop(key) for key in SHARED_KEYS if key in kwargs and key not in accepted}
    ignored = {key: v for key, v in ignored.items() if v is not None}
    if ignored:
        log.warning("%s has no hyperparameter %s: ignored", target.__name__,
                    ", ".join(f"{k}={v}" for k, v in ignored.items()))
    if "foreach" in accepted and "foreach" not in kwargs and _on_cpu(model):
        # torch's default re-decides foreach on every step; on CPU the answer is always the
        # per-tensor loop, and deciding it costs a quarter of a small model's SGD step
        kwargs["foreach"] = False
    if "time_scale" in accepted:
        kwargs["time_scale"] = time_scale
    elif time_scale != 1.0:
        # Δt is per-particle for every method, Adam's lr included: A-Euler (Adam) must be
        # the C → ∞, λ = 0 limit of A-SAV at the same Δt, and A-SAV's step carries K
        kwargs["lr"] = kwargs["lr"] * time_scale
    opt = target(model.parameters(), **kwargs)
    if spm is not None:
        opt = SPM(opt, J=spm.get("J", 10), h=spm.get("h", 1e-4), seed=spm.get("seed"))
    return opt


# torch.optim classes whose update is element-wise (with a shared step count): over R stacked
# models they are R independent optimizers. Each is also linear in lr with an lr-free state,
# which `PerReplicaLr` (replicas that differ in lr) relies on. LAMB's trust ratio,
# full-Jacobian IEQ's batch solve and L-BFGS mix the entries of a parameter, so stacked
# replicas would not be.
# The list is written once, as the lean forms the runner builds (gradflow_exp/optim/torch_forms.py).
ELEMENTWISE = tuple(f"torch.optim.{cls.__name__}" for cls in FORMS)
NOT_REPLICABLE = ("gradflow_exp.optim.IEQ",)


def build_replica_optimizer(nodes: list[DictConfig], params: list[torch.Tensor], time_scale: float):
    """One optimizer over ``params`` (R models stacked, [R, …]) that is, for replica k, the
    optimizer ``nodes[k]`` builds for model k alone (`build_optimizer`): ours with
    ``replicas=R``, torch.optim's over the stacked tensors (`PerReplicaLr` where the lr
    differs). The nodes may differ only in Δt, C, λ, η and in SPM's seed."""
    R = len(nodes)
    plain = [OmegaConf.to_container(n, resolve=True) for n in nodes]
    spms = [node.pop("spm", None) for node in plain]
    first = plain[0]
    target_name = str(first["_target_"])
    if target_name in NOT_REPLICABLE:
        raise ValueError(f"replicas: {target_name.rsplit('.', 1)[-1]} solves a batch × batch system per step; "
                         "run it as single runs (a -m sweep)")
    target = lean_form(hydra.utils.get_class(target_name))
    ours = issubclass(target, EnergyOptimizer)
    if not ours and target_name not in ELEMENTWISE:
        raise ValueError(f"replicas: {target.__name__} is not element-wise (its update mixes the entries of a "
                         "parameter), so stacked replicas would not be independent runs; run them as a -m sweep")
    accepted = inspect.signature(target.__init__).parameters
    for node in plain:
        for key in SHARED_KEYS:
            if key in node and key not in accepted:
                node.pop(key)
    varying = {k for node in plain[1:] for k in set(node) | set(first) if node.get(k) != first.get(k)}
    if varying - set(PER_REPLICA):
        raise ValueError(f"replicas: {target.__name__} cannot take per-replica {', '.join(sorted(varying))} "
                         "(replicas may differ in the seed, lr, C, lam, eta)")
    kwargs = {k: v for k, v in first.items() if not k.startswith("_") and k not in varying}
    if "foreach" in accepted and "foreach" not in kwargs and params[0].is_cpu:
        kwargs["foreach"] = False
    if ours:
        kwargs.update({k: [node[k] for node in plain] for k in varying}, time_scale=time_scale, replicas=R)
        opt = target(params, **kwargs)
    else:
        if time_scale != 1.0 and "lr" not in varying:
            kwargs["lr"] = kwargs["lr"] * time_scale
        if not varying:     # element-wise over the stacked tensors: one op a parameter for all R
            opt = target(params, **kwargs)
            opt.replicas = R
        else:               # only lr can differ here: the shared keys were dropped above
            opt = PerReplicaLr(lambda ps, lr: target(ps, lr=lr, **kwargs), params,
                               [node["lr"] * time_scale for node in plain])
    if spms[0] is not None:
        if any({k: v for k, v in s.items() if k != "seed"} != {k: v for k, v in spms[0].items() if k != "seed"}
               for s in spms):
            raise ValueError("replicas: SPM's J and h must be the same in every replica")
        opt = SPM(opt, J=spms[0].get("J", 10), h=spms[0].get("h", 1e-4), seed=[s.get("seed") for s in spms])
    return opt
