"""Flags for a run that ended without NaN but failed or froze (summary.json's ``flags``):
computed from the logged rows by the training loop at the end of a run, and again by
gradflow-report from metrics.csv, so runs written before a flag existed get it too."""
from __future__ import annotations

import math

COLLAPSE_Q = 0.01    # trainer.collapse_q's default: q = r/r̂ below it is a collapsed auxiliary variable

# A run whose q sits above collapse_q can still be frozen (fig6's RelSAV at λ = 4: q = 0.013,
# train error 0.3052 → 0.3046 over 10 epochs). Runs that train have either q near 1 or, with
# SAV's restart=epoch, q ≈ 0.05–0.2 at epoch ends while the error keeps falling, so a low q
# counts as stalled only together with no progress.
STALL_Q = 0.1
STALL_GAIN = 0.01


def _train_curve(rows) -> list[tuple[int, float]]:
    """(epoch, train error) at the logged epochs, finite values only."""
    key = "train_rel_error" if any("train_rel_error" in r for r in rows) else "train_loss"
    return [(r["epoch"], r[key]) for r in rows if key in r and math.isfinite(r[key])]


def _no_progress(pts: list[tuple[int, float]]) -> bool:
    """The train error at the end of ``pts`` (`_train_curve`) is within STALL_GAIN of its
    value at the run's midpoint."""
    if len(pts) < 3:
        return False
    end_epoch, end = pts[-1]
    mid = next(v for e, v in pts if e >= end_epoch / 2)
    return end >= (1 - STALL_GAIN) * mid


def run_flags(rows, collapse_q: float) -> list[str]:
    """``kind: why`` lines for what the logged rows (dicts, one per logged epoch; a key
    absent where it was not measured) say went wrong."""
    flags = []
    curve = _train_curve(rows)
    q = rows[-1].get("q") if rows else None
    if q is not None and math.isfinite(q) and q < collapse_q:
        flags.append(f"aux_collapsed: q = r/r̂ = {q:.3g} < {collapse_q} at the end "
                     "(the auxiliary variable no longer tracks the loss; steps are tiny)")
    elif q is not None and math.isfinite(q) and q < STALL_Q and _no_progress(curve):
        flags.append(f"stalled: q = r/r̂ = {q:.3g} at the end and the train error fell by less "
                     f"than {STALL_GAIN:.0%} over the second half of the run (r has shrunk the steps: frozen, or at a floor)")
    if len(curve) >= 2 and curve[0][0] == 0 and curve[-1][1] > curve[0][1]:
        # finite, so not `diverged`, but the method failed: fig10's Adam at a per-particle
        # lr of 5000 ends at a train error of 1e10
        flags.append(f"blown_up: the train error ended at {curve[-1][1]:.3g}, above its "
                     f"{curve[0][1]:.3g} at the start")
    return flags
