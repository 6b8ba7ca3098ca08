"""``hydra/launcher=slurm``: Hydra's submitit Slurm launcher, watched while it waits.

The same launcher (conf/hydra/launcher/slurm.yaml sets ``_target_`` here), but a job that
can never start (its request exceeds the partition: ``cpus_per_task: 4`` on a 2-CPU node
pends for ``PartitionConfig`` for ever) fails the sweep within a minute, naming the reason
and what the jobs asked for, and that sacct cannot answer is said once
(`slurm_watch`).
"""
from __future__ import annotations

from pathlib import Path

from hydra_plugins.gradflow_batched_launcher.slurm_watch import PendingWatch, quiet_accounting
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

ASKED = ("partition", "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min", "qos", "account", "constraint")


class WatchedSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        folder = Path(str(self.params["submitit_folder"])).parent      # <sweep dir>/.submitit/%j
        with quiet_accounting(), PendingWatch(folder, {k: self.params.get(k) for k in ASKED}):
            return super().launch(job_overrides, initial_job_idx)
