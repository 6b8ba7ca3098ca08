"""``gradflow-compare --problems fig7 --methods sgd,adam,sav [--trials 20] [--epochs 100]
[--seeds 5] [--out DIR] [--launcher basic|batched|joblib|slurm] [--n-jobs N] [OVERRIDES]``

A fair, tuned benchmark (BENCHMARK.md): for each problem and method,
1. tune: random search over the method's declared space (conf/search_space/<method>.yaml),
   ``--trials`` trials of ``--epochs`` epochs on seed 0, selected on the validation split
   (``hparams_search=tune``: an Optuna study stored in the tuning directory);
2. rerun the best setting over seeds 1..``--seeds``;
3. report, per problem (gradflow_exp/report/compare.py): final and best test error with
   confidence intervals and paired tests against the best baseline, epochs and seconds to a
   validation target, the expected best validation error after 1..k trials (tuneability),
   the fraction of trials that train against Δt, seconds per epoch; a table and a figure.

Every method runs with the experiment's own settings (batch size, epochs, model), not its
per-method table (``~method``), so only what is tuned differs. Each stage is an ordinary
sweep into ``OUT/<problem>/<method>/{tune,seeds}``: the same command resumes a killed
benchmark (the study continues, finished runs are skipped). Extra ``key=value`` arguments
go to every run (e.g. ``dataset.M=2000``, ``hydra.launcher.partition=cpu``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from gradflow_exp.config import CONF_DIR, experiment_names

LAUNCHERS = ("basic", "batched", "joblib", "slurm")


class CompareError(Exception):
    """Bad input: one line, exit code 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gradflow-compare", description=__doc__.split("\n\n")[1].split("\n1.")[0])
    p.add_argument("--problems", required=True, help="experiments, comma-separated (conf/experiment/)")
    p.add_argument("--methods", required=True, help="optimizers with a search space (conf/search_space/)")
    p.add_argument("--trials", type=int, default=20, help="random-search trials per method (default 20)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the experiment's)")
    p.add_argument("--seeds", type=int, default=5, help="seeds the best setting is rerun over (default 5)")
    p.add_argument("--target", type=float, default=None,
                   help="validation rel. error for time-to-target (default: 2 × the best method's)")
    p.add_argument("--out", type=Path, default=None, help="default outputs/compare/<time>")
    p.add_argument("--launcher", choices=LAUNCHERS, default="basic")
    p.add_argument("--n-jobs", type=int, default=1, help="trials launched at once (joblib: processes)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    problems = [p for p in args.problems.split(",") if p]
    methods = [m for m in args.methods.split(",") if m]
    known_p = experiment_names()
    known_m = sorted(f.stem for f in (CONF_DIR / "search_space").glob("*.yaml"))
    for what, given, known in (("problem", problems, known_p), ("method", methods, known_m)):
        bad = [g for g in given if g not in known]
        if bad or not given:
            raise CompareError(f"unknown {what} {', '.join(bad) or '(none given)'}; valid: {', '.join(known)}")
    for name, v, least in (("--trials", args.trials, 2), ("--seeds", args.seeds, 2), ("--n-jobs", args.n_jobs, 1)):
        if v < least:
            raise CompareError(f"{name} must be at least {least} (got {v})")
    if args.epochs is not None and args.epochs < 1:
        raise CompareError(f"--epochs must be positive (got {args.epochs})")
    if any("=" not in o for o in args.overrides):
        raise CompareError(f"overrides are key=value: {[o for o in args.overrides if '=' not in o]}")
    return problems, methods


def launcher_args(launcher: str, n_jobs: int) -> list[str]:
    if launcher == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]
    return [f"hydra/launcher={launcher}"]


def tune_command(problem: str, method: str, args, out: Path) -> list[str]:
    return [sys.executable, "-m", "gradflow_exp.train", "hparams_search=tune", f"experiment={problem}",
            f"+search_space={method}", "~method", "seed=0", f"hydra.sweeper.n_trials={args.trials}",
            f"hydra.sweeper.n_jobs={args.n_jobs}", f"hydra.sweeper.study_name={problem}_{method}",
            f"hydra.sweep.dir={out}", "logger=none", "trainer.progress=false",
            *launcher_args(args.launcher, args.n_jobs), *_epochs(args), *args.overrides]


def rerun_command(problem: str, method: str, best: dict, args, out: Path) -> list[str]:
    return [sys.executable, "-m", "gradflow_exp.train", "-m", f"experiment={problem}", f"optimizer={method}",
            "~method", *(f"{k}={v!r}" for k, v in best.items() if k != "optimizer"),
            "seed=" + ",".join(str(s) for s in range(1, args.seeds + 1)), f"hydra.sweep.dir={out}",
            "logger=none", "trainer.progress=false", *launcher_args(args.launcher, args.n_jobs),
            *_epochs(args), *args.overrides]


def _epochs(args) -> list[str]:
    return [f"trainer.epochs={args.epochs}"] if args.epochs is not None else []


def best_setting(tune_dir: Path) -> tuple[dict, float]:
    """The study's best trial (its objective: final validation error), from its results file."""
    import math

    import yaml

    path = tune_dir / "optimization_results.yaml"
    if not path.is_file():
        return {}, math.nan
    res = yaml.safe_load(path.read_text()) or {}
    return dict(res.get("best_params") or {}), float(res.get("best_value", math.nan))


def run(cmd: list[str], what: str) -> None:
    print(f"gradflow-compare: {what}", flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise SystemExit(code)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        problems, methods = check(args)
    except CompareError as e:
        print(f"gradflow-compare: error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("outputs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    start = time.perf_counter()
    for problem in problems:
        for method in methods:
            base = out / problem / method
            run(tune_command(problem, method, args, base / "tune"),
                f"{problem} / {method}: tuning, {args.trials} trials on seed 0 → {base / 'tune'}")
            best, value = best_setting(base / "tune")
            if not best or not value < float("inf"):
                print(f"gradflow-compare: {problem} / {method}: no trial trained; not rerun", flush=True)
                continue
            shown = ", ".join(f"{k}={v:.4g}" for k, v in best.items() if isinstance(v, float))
            run(rerun_command(problem, method, best, args, base / "seeds"),
                f"{problem} / {method}: best on validation {shown} (val {value:.3g}); seeds 1–{args.seeds}")
    from gradflow_exp.report.compare import write

    text = write(out, problems, methods, args.trials, args.target)
    print(text)
    print(f"gradflow-compare: {len(problems)} problem(s) × {len(methods)} method(s) in "
          f"{time.perf_counter() - start:.0f} s; report in {out / 'report'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
