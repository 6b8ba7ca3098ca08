"""The entry point: Hydra parses and composes → the schema checks → the job trains.

    gradflow-train experiment=fig7 trainer.epochs=100
    python -m gradflow_exp.train -m experiment=fig7 optimizer=sgd,adam seed=0,1,2
    gradflow-train resume=outputs/fig7/runs/<time>        # continue a killed run

Nothing here imports torch: a bad key, value or choice is refused in about a second, and
``--help`` and shell completion are as fast. The job (`gradflow_exp.run.job`) is imported only
once the config has passed `gradflow_exp.config.schema`.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradflow_exp.commands import cli
from gradflow_exp.run import rundir
from gradflow_exp.config import schema
from gradflow_exp.commands.cli import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """One job; returns its objective (`gradflow_exp.run.job.objective`) for sweepers such as
    Optuna. Any failure ends the same way (`cli.job_failed`): summary.json 'failed' where
    the directory held no run, one line on stderr, exit 2 (bad input) or 1 (a fault); in a
    sweep the job returns inf and the others go on."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    # as typed: an override such as optimizer.lr=${oc.env:X} must not be resolved here
    job_node = OmegaConf.to_container(hc.job, resolve=False)
    record = {"overrides": OmegaConf.to_container(hc.overrides.task, resolve=False), "hydra": hc,
              "name": job_node.get("override_dirname") or "default"}
    try:
        schema.load(cfg)
        from gradflow_exp.run import job as runner  # torch: only for input that passed the schema

        summary = runner.run(cfg, run_dir, record)
    except Exception as e:  # noqa: BLE001 - every failure: one line, recorded, the sweep goes on
        if not isinstance(e, rundir.RunDirError) and not getattr(e, "recorded_in_run_dir", False):
            rundir.record_failure(run_dir, e, None, record["overrides"], record["hydra"])
        code = cli.job_failed(e, run_dir)
        if not multirun:
            sys.exit(code)
        cli.JOB_OUTCOMES.append(False)
        return float("inf")
    cli.JOB_OUTCOMES.append(True)
    if summary["status"] == "interrupted":   # stop here, sweep included, as a killed process would
        from gradflow_exp.run.batch import stopped_by

        if stopped_by == signal.SIGINT:
            print(f"interrupted (Ctrl-C) after epoch {summary.get('epochs_completed', '?')}, with a checkpoint: "
                  "the same command resumes it", file=sys.stderr)
        sys.exit(128 + (stopped_by or signal.SIGTERM))
    return runner.objective(summary, cfg.hparams_objective)


def main() -> None:
    """The console script (and ``python -m gradflow_exp.train``)."""
    cli.run(hydra_main, sys.argv[1:])


if __name__ == "__main__":
    main()
