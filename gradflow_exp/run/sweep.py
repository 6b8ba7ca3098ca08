"""Which jobs of a sweep may train as one replica batch, and training such a group: the
batched launcher's logic (hydra_plugins/gradflow_batched_launcher).

Jobs may share a batch when their configs differ in nothing but the keys replicas may
differ in (`REPLICA_KEYS`: the seed, Δt, C, λ, η) and their method stacks
(`gradflow_exp.optim.build_replica_optimizer`). Each job keeps its own run directory and
everything in it; the group is trained on the one run path, gradflow_exp/run/batch.py.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from gradflow_exp.config import schema
from gradflow_exp.commands.cli import JOB_OUTCOMES
from gradflow_exp.run.rundir import covered, flatten

log = logging.getLogger("gradflow_exp")

REPLICA_KEYS = ("seed", "dataset.seed", "optimizer.spm.seed", "optimizer.lr", "optimizer.C", "optimizer.lam",
                "optimizer.eta")


@dataclass
class Job:
    idx: int
    overrides: list[str]
    cfg: DictConfig          # the job's config, its hydra node included (output_dir set)

    @property
    def task_cfg(self) -> DictConfig:
        return OmegaConf.masked_copy(self.cfg, [k for k in self.cfg if k != "hydra"])

    @property
    def dir(self) -> Path:
        return Path(str(self.cfg.hydra.runtime.output_dir))


def groups_of(jobs: list[Job], max_replicas: int | None = None) -> list[list[Job]]:
    """The jobs in batches (a list of one: a job to run alone), in the sweep's order."""
    from gradflow_exp.optim.registry import ELEMENTWISE, NOT_REPLICABLE

    keyed: dict[str, list[Job]] = {}
    alone: list[list[Job]] = []
    for job in jobs:
        try:
            resolved = schema.load(job.task_cfg)
        except schema.ConfigError:
            alone.append([job])              # its own job reports the bad input
            continue
        target = str(resolved["optimizer"]["_target_"])
        stacks = target not in NOT_REPLICABLE and (target.startswith("gradflow_exp.optim.") or target in ELEMENTWISE)
        if (not stacks or any(v is not None for v in resolved["replicas"].values())
                or resolved["scheduler"]["name"] == "plateau"):
            alone.append([job])
            continue
        key = json.dumps({k: v for k, v in flatten(resolved).items() if not covered(k, REPLICA_KEYS)},
                         sort_keys=True, default=str)
        keyed.setdefault(key, []).append(job)
    groups = alone
    for members in keyed.values():
        size = max_replicas or len(members)
        groups += [members[i:i + size] for i in range(0, len(members), size)]
    return sorted(groups, key=lambda g: g[0].idx)


def run_group(jobs: list[Job], threads: int | None = None) -> list[float | None]:
    """Train ``jobs`` as one replica batch; each job's return value for the sweeper (its
    objective), or None for every job when the batch was refused (the launcher then runs
    them alone, so that each reports its own error)."""
    from hydra.core.hydra_config import HydraConfig

    from gradflow_exp.run.batch import Member, train_together
    from gradflow_exp.run.job import objective
    from gradflow_exp.run.replicas import check_supported

    reps = []
    for job in jobs:
        cfg = job.task_cfg
        if threads is not None:
            with open_dict(cfg):
                cfg.threads = threads
        node = OmegaConf.to_container(job.cfg.hydra.job, resolve=False)
        reps.append(Member(seed=int(cfg.seed), hparams=None, name=f"job {job.idx}", cfg=cfg, dir=job.dir,
                           overrides=list(job.overrides), cfg_name=node.get("override_dirname") or "default",
                           hydra=job.cfg.hydra))
    for k, rep in enumerate(reps):
        rep.in_batch = {"batch_dir": str(jobs[0].dir.parent), "index": k, "of": len(reps)}
    HydraConfig.instance().set_config(jobs[0].cfg)
    handlers = _log_files([j.dir for j in jobs])
    try:
        check_supported(reps[0].cfg, reps)
        train_together(reps[0].cfg, reps, batch_dir=jobs[0].dir.parent)
    except schema.ConfigError as e:
        log.warning("these jobs cannot train as one batch (%s); running them one by one", e)
        return [None] * len(jobs)
    except Exception as e:  # noqa: BLE001 - a fault: each run's summary says failed; the sweep goes on
        log.error("batch of %d jobs failed: %s: %s", len(jobs), type(e).__name__, e)
        JOB_OUTCOMES.extend([False] * len(jobs))
        return [math.inf] * len(jobs)
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()
    JOB_OUTCOMES.extend((r.summary or {}).get("status") not in (None, "failed") for r in reps)
    if any((r.summary or {}).get("status") == "interrupted" for r in reps):
        raise SystemExit(143)                # SIGTERM: stop the sweep, as a killed job would
    return [objective(r.summary or {}, str(r.cfg.hparams_objective)) for r in reps]


class GroupJob:
    """`run_group` as a Slurm job (submitit): at its time limit or on preemption submitit
    calls ``checkpoint`` and requeues it; the rerun resumes every replica from its checkpoint."""

    def __call__(self, jobs: list[Job]) -> list[float | None]:
        values = run_group(jobs)
        return [v if v is not None else math.inf for v in values]

    def checkpoint(self, jobs: list[Job]):
        import submitit

        return submitit.helpers.DelayedSubmission(GroupJob(), jobs)


def _log_files(dirs: list[Path]) -> list[logging.Handler]:
    """The batch's log lines into every job's train.log, as each job's own would be."""
    out = []
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        h = logging.FileHandler(d / "train.log")
        h.setFormatter(fmt)
        root.addHandler(h)
        out.append(h)
    return out
