"""What a sweep on Slurm is told while it waits: a job that can never start, and that sacct
cannot answer, once.

A Slurm job whose request the partition can never meet (more CPUs than its nodes have, a
time limit over the partition's, an unknown QOS) waits in PENDING with a reason such as
``PartitionConfig`` for ever, and submitit waits with it. `PendingWatch` polls ``squeue``
for the sweep's jobs while the launcher waits; a job pending for one of `NEVER_STARTS`
twice in a row is reported (the reason and what the jobs asked for), every job of the
sweep is cancelled, and the wait ends with that error (exit 1). Where ``sacct`` has no
accounting storage (a one-node cluster), submitit printed its error and a warning at every
poll: `quiet_accounting` says it once.
"""
from __future__ import annotations

import _thread
import contextlib
import logging
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# squeue's pending reasons that no wait resolves (the job's request exceeds what the
# partition, QOS or account allows); ``Resources``, ``Priority``, ``BeginTime`` pass
NEVER_STARTS = frozenset({
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidQOS", "InvalidAccount",
    "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob", "QOSMaxWallDurationPerJobLimit", "QOSMaxNodePerJobLimit",
    "AssocMaxCpuPerJobLimit", "AssocMaxWallDurationPerJobLimit", "AssocMaxNodesPerJobLimit",
    "DependencyNeverSatisfied",
})


class CannotStart(RuntimeError):
    """A job of the sweep can never start on this cluster (the sweep was cancelled)."""


class PendingWatch:
    """``with PendingWatch(submitit_dir, asked): <wait for the jobs>``: raises `CannotStart`
    in place of the wait when a job submitted under ``submitit_dir`` can never start."""

    def __init__(self, submitit_dir: Path, asked: dict, every: float = 5.0):
        self.dir, self.asked, self.every = Path(submitit_dir), asked, every
        self.error: str | None = None
        self._done = threading.Event()
        self._seen: dict[str, str] = {}          # job → the fatal reason seen at the last poll

    def __enter__(self) -> PendingWatch:
        self._thread = threading.Thread(target=self._watch, name="slurm-pending-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._done.set()
        self._thread.join(timeout=self.every + 5)
        if self.error is not None and (exc_type is None or issubclass(exc_type, (KeyboardInterrupt, Exception))):
            raise CannotStart(self.error) from None
        return False

    def job_ids(self) -> list[str]:
        """The sweep's Slurm jobs: submitit names a job's folder after its id (``123`` or an
        array task's ``123_4``)."""
        if not self.dir.is_dir():
            return []
        return sorted({p.name.split("_")[0] for p in self.dir.iterdir() if p.is_dir() and p.name[:1].isdigit()})

    def _watch(self) -> None:
        while not self._done.wait(self.every):
            ids = self.job_ids()
            if not ids:
                continue
            try:
                out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(ids)], capture_output=True,
                                     text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            fatal = {}
            for line in out.splitlines():
                job, state, reason = (line.split("|") + ["", ""])[:3]
                if state == "PENDING" and reason in NEVER_STARTS:
                    fatal[job] = reason
            stuck = {j: r for j, r in fatal.items() if self._seen.get(j) == r}     # twice in a row
            self._seen = fatal
            if stuck:
                job, reason = sorted(stuck.items())[0]
                job = job.split("_")[0]                  # an array's pending tasks: 17_[0-7%8]
                asked = ", ".join(f"{k}={v}" for k, v in self.asked.items() if v is not None)
                self.error = (f"Slurm job {job} can never start: it is pending for {reason} (it asks {asked}; "
                              "`sinfo -o '%P %c %m %l'` shows what each partition has). The sweep's Slurm jobs "
                              f"{', '.join(ids)} are cancelled; change the hydra.launcher settings and run it again")
                subprocess.run(["scancel", *ids], capture_output=True)
                _thread.interrupt_main()         # end the launcher's wait: __exit__ raises the error
                return


@contextlib.contextmanager
def quiet_accounting():
    """While the sweep waits: where ``sacct`` cannot answer (no accounting storage, as on a
    one-node cluster), submitit's poll of it is turned off — it printed sacct's error and a
    warning at every poll, and the job states come from submitit's result files anyway —
    and that is said once."""
    try:
        probe = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=20)
        reason = None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["exit status"])[0]
    except (OSError, subprocess.SubprocessError) as e:
        reason = str(e)
    if reason is None:
        yield
        return
    from submitit.slurm import slurm

    log.warning("sacct cannot answer here (%s): the sweep follows its jobs through their result files", reason)
    original = slurm.SlurmInfoWatcher._make_command
    slurm.SlurmInfoWatcher._make_command = lambda self: None
    try:
        yield
    finally:
        slurm.SlurmInfoWatcher._make_command = original
