"""``hydra/launcher=batched``: a sweep's jobs that differ only in what replicas may differ in
(the seed, Δt, C, λ, η) run as one replica batch each (gradflow_exp/run/replicas.py), every
job still in its own run directory, with its own summary, W&B run and return value.

    gradflow-train -m hydra/launcher=batched experiment=fig7 optimizer=sgd,sav seed=0,1,2,3
    gradflow-train -m hydra/launcher=batched hydra.launcher.n_jobs=2 experiment=fig2 seed=0,1,2,3

Jobs that cannot join a batch (bad input, a replica job of its own, a method that does not
stack: full-Jacobian IEQ, LAMB; a plateau schedule) run as the basic launcher runs them, one
after another, and so does a group of one. ``n_jobs`` > 1 runs that many groups at once,
each in its own process (joblib), one CPU thread each.

``slurm={partition: ..., timeout_min: ..., cpus_per_task: ..., ...}`` (submitit's Slurm
parameters, named as in conf/hydra/launcher/slurm.yaml) submits one Slurm job per batch,
and one per job that runs alone, all at once; a batch that reaches its time limit or is
preempted is requeued and its replicas resume from their checkpoints.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.gradflow_batched_launcher.slurm_watch import PendingWatch, quiet_accounting
from hydra_plugins.gradflow_batched_launcher.watched_slurm import ASKED

log = logging.getLogger(__name__)


class BatchedLauncher(Launcher):
    def __init__(self, n_jobs: int = 1, max_replicas: int | None = None, slurm: dict | None = None) -> None:
        self.n_jobs = _count("n_jobs", n_jobs, also=(-1,))
        self.max_replicas = None if max_replicas is None else _count("max_replicas", max_replicas)
        if slurm is not None and not hasattr(slurm, "items"):
            raise ValueError(f"hydra.launcher.slurm={slurm!r}: a mapping of Slurm parameters, such as "
                             "{partition: cpu, timeout_min: 60}")
        self.slurm = dict(slurm) if slurm else None
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from gradflow_exp.run.sweep import Job, groups_of

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            HydraConfig.instance().set_config(cfg)
            out = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                cfg.hydra.runtime.output_dir = os.path.abspath(out)
            jobs.append(Job(idx, list(overrides), cfg))
        groups = groups_of(jobs, self.max_replicas)
        log.info("Launching %d jobs as %d groups (%s)", len(jobs), len(groups),
                 ", ".join(str(len(g)) for g in groups))
        if self.slurm:
            return self._launch_slurm(jobs, groups, initial_job_idx)
        results: dict[int, JobReturn] = {}
        batches = [g for g in groups if len(g) > 1]
        for group in groups:
            if len(group) == 1:
                (job,) = group
                log.info("\t#%d : %s", job.idx, " ".join(filter_overrides(job.overrides)))
                results[job.idx] = self._run_alone(job)
        for group, values in zip(batches, self._run_batches(batches)):
            for job, value in zip(group, values):
                results[job.idx] = _job_return(job, value) if value is not None else self._run_alone(job)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [results[initial_job_idx + i] for i in range(len(job_overrides))]

    def _launch_slurm(self, jobs, groups, initial_job_idx: int) -> list[JobReturn]:
        """One Slurm job per batch and per job that runs alone (submitit), all at once."""
        import submitit

        from gradflow_exp.run.sweep import GroupJob

        executor = submitit.AutoExecutor(folder=str(Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "%j"),
                                         cluster="slurm")
        direct = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name")
        params = {(k if k in direct else f"slurm_{k}"): v for k, v in self.slurm.items()
                  if k not in ("max_num_timeout",) and v is not None}
        executor.update_parameters(**params)
        submitted = []
        for group in groups:
            if len(group) > 1:
                submitted.append((group, executor.submit(GroupJob(), group)))
            else:
                submitted.append((group, executor.submit(_alone, self.hydra_context, self.task_function, group[0].cfg)))
        log.info("submitted %d Slurm jobs: %s", len(submitted), ", ".join(j.job_id for _, j in submitted))
        results: dict[int, JobReturn] = {}
        asked = {k: self.slurm.get(k) for k in ASKED}
        with quiet_accounting(), PendingWatch(Path(str(self.config.hydra.sweep.dir)) / ".submitit", asked):
            for group, sjob in submitted:
                out = sjob.result()
                if len(group) == 1:
                    results[group[0].idx] = out
                else:
                    for job, value in zip(group, out):
                        results[job.idx] = _job_return(job, value if value is not None else float("inf"))
        return [results[initial_job_idx + i] for i in range(len(jobs))]

    def _run_alone(self, job) -> JobReturn:
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=job.cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _run_batches(self, batches):
        from gradflow_exp.run.sweep import run_group

        for group in batches:
            log.info("\tbatch of %d: %s", len(group),
                     "; ".join(" ".join(filter_overrides(j.overrides)) for j in group))
        if self.n_jobs > 1 and len(batches) > 1:
            from joblib import Parallel, delayed

            return Parallel(n_jobs=self.n_jobs, backend="loky")(
                delayed(run_group)(group, threads=1) for group in batches)
        return [run_group(group) for group in batches]


def _count(name: str, value, also: tuple[int, ...] = ()) -> int:
    """A launcher setting that counts something: a positive integer (or one of ``also``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not (value >= 1 or value in also):
        extra = "".join(f" or {v}" for v in also)
        raise ValueError(f"hydra.launcher.{name}={value!r}: must be a positive integer{extra}")
    return value


def _alone(hydra_context, task_function, cfg) -> JobReturn:
    """A job that runs alone, in its own Slurm job: as the basic launcher runs it."""
    setup_globals()
    return run_job(hydra_context=hydra_context, task_function=task_function, config=cfg,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _job_return(job, value: float) -> JobReturn:
    ret = JobReturn()
    ret.overrides = job.overrides
    task_cfg = OmegaConf.masked_copy(job.cfg, [k for k in job.cfg if k != "hydra"])
    ret.cfg, ret.hydra_cfg = task_cfg, job.cfg
    ret.working_dir = os.getcwd()
    ret.task_name = str(job.cfg.hydra.job.name)
    ret.return_value = value
    ret.status = JobStatus.COMPLETED
    return ret
