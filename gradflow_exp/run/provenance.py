"""Which code a run ran, for summary.json: a number is only reproducible with its code.

``code_version()``: the git commit of the gradflow_exp checkout the package was imported
from, whether its tracked code or configs had uncommitted changes, and the gradflow_exp and
torch versions. A resumed run may have been trained by several versions (fig2's long runs
were), so ``code_segments`` keeps one entry per segment with the epoch it started from.
"""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# what decides a run's numbers; untracked files are left out (outputs/, scratch)
_CODE_PATHS = ("gradflow_exp", "conf", "pyproject.toml")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    try:
        version = metadata.version("gradflow_exp")
    except metadata.PackageNotFoundError:
        version = None
    info = {"gradflow_exp": version, "torch": torch.__version__}
    # only a checkout whose top level holds this package: an install in site-packages
    # inside some other repository must not report that repository's commit
    top = _git("rev-parse", "--show-toplevel")
    if top is not None and Path(top).resolve() == ROOT:
        commit = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no", "--", *_CODE_PATHS)
        if commit:
            info["commit"] = commit
            info["dirty"] = bool(status) if status is not None else None
    return info


def code_segments(previous: dict, from_epoch: int) -> list[dict]:
    """The segments of ``previous`` (a summary.json) that ended by ``from_epoch``, and this
    one, which trains on from ``from_epoch`` (0: a fresh run)."""
    earlier = previous.get("code_segments") if from_epoch else None
    kept = [s for s in earlier if isinstance(s, dict) and s.get("from_epoch", 0) < from_epoch] \
        if isinstance(earlier, list) else []
    if from_epoch and not kept:
        kept = [{"from_epoch": 0, "commit": "unknown (written before summaries recorded code)"}]
    return kept + [{"from_epoch": from_epoch, **code_version()}]
