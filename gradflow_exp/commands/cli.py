"""The command line around Hydra: ``resume=RUN_DIR``, and every error as one line.

Hydra parses the arguments and composes the config (glob sweeps, ``--config-dir``,
``hydra.searchpath``, ``--cfg`` all work as Hydra documents them). What it raises is
turned into one line on stderr, ``error: ...``, exit code 2 for bad input and 1 for a
fault, with a "did you mean" where Hydra knows the valid names; ``HYDRA_FULL_ERROR=1``
prints the traceback instead. Nothing here imports torch.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from gradflow_exp.config import CONF_DIR

__all__ = ["CONF_DIR"]

MULTIRUN_FLAGS = ("-m", "--multirun")
# Set by `run` for the processes a launcher starts: the user asked for tracebacks.
TRACEBACK_ENV = "GRADFLOW_TRACEBACK"


# Whether each job of this process's sweep ended without an error (gradflow_exp/train.py and
# the batched launcher's groups append): a sweep whose every job failed or was refused exits
# non-zero. Jobs that ran in other processes (joblib, submitit) are not counted.
JOB_OUTCOMES: list[bool] = []


def tracebacks_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV) == "1"


def run(task, args: list[str]) -> None:
    """``task()`` (a @hydra.main function) on ``args``: Hydra's errors become one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from gradflow_exp.config.schema import ConfigError

    debug = os.environ.get("HYDRA_FULL_ERROR") == "1"
    logging.raiseExceptions = False      # a full disk must not print a traceback per log line
    try:
        args = flags_first(expand_resume(args))
        check_arguments(args)
    except ConfigError as e:
        _exit(str(e), 2)
    saved_argv, saved_env = sys.argv[1:], {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", TRACEBACK_ENV)}
    sys.argv[1:] = args
    os.environ[TRACEBACK_ENV] = "1" if debug else "0"     # for the jobs, here and in launched processes
    os.environ["HYDRA_FULL_ERROR"] = "1"     # Hydra raises instead of printing; we print
    # hparams_search=<problem> sets hydra.mode=MULTIRUN in its file: a sweep as well
    multirun = any(a in MULTIRUN_FLAGS for a in args) or "hydra.mode=MULTIRUN" in args or any(
        a.split("=", 1)[0].lstrip("+") == "hparams_search" and a.split("=", 1)[-1] not in ("", "null") for a in args)
    JOB_OUTCOMES.clear()
    sweep_lock = None
    try:
        sweep_lock = _hold_sweep_dir(args) if multirun else None
        task()
        if multirun and JOB_OUTCOMES and not any(JOB_OUTCOMES):
            _exit(f"every job of the sweep failed or was refused ({len(JOB_OUTCOMES)} of "
                  f"{len(JOB_OUTCOMES)}); each one's error is above", 1)
    except (HydraException, OmegaConfBaseException, OSError, ValueError) as e:
        if debug:
            raise
        _exit(hydra_message(e), 2)
    except KeyboardInterrupt:
        _exit("interrupted (Ctrl-C) mid-epoch; the same command resumes from the run's last checkpoint "
              "(one every trainer.checkpoint_minutes)", 130)
    except Exception as e:  # noqa: BLE001 - a fault outside any job (a sweeper, a launcher)
        if debug:
            raise
        _exit(f"{type(e).__name__}: {_first_line(e)}", 1)
    finally:
        if sweep_lock is not None:
            sweep_lock.release()
        sys.argv[1:] = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hold_sweep_dir(args: list[str]):
    """A sweep into a named ``hydra.sweep.dir`` holds its lock while it runs: a second sweep
    on a directory in use is refused at once, in one line (a timestamped default is new)."""
    from gradflow_exp.run.rundir import Lock, RunDirError

    named = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+") == "hydra.sweep.dir"]
    if not named:
        return None
    lock = Lock(Path(named[-1]).expanduser())
    try:
        lock.acquire()
    except RunDirError as e:
        _exit(str(e).replace("hydra.run.dir", "hydra.sweep.dir"), 2)
    return lock


# Hydra's flags that take a value (``--cfg job``), and --info's optional one
VALUED = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
          "--experimental-rerun", "--shell-completion", "-sc"}
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def flags_first(args: list[str]) -> list[str]:
    """Hydra's flags (``--cfg job``, ``-cd DIR``) before the overrides: its parser takes the
    overrides as one run of positionals, so ``experiment=fig7 --cfg job x=1`` would not parse.
    The overrides keep their order."""
    flags, overrides = [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):          # an override never starts with a dash
            flags.append(a)
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and not nxt.startswith("-") and (
                    a in VALUED or (a in ("--info", "-i") and nxt in INFO_VALUES)):
                flags.append(nxt)
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags + overrides


RUN_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def check_arguments(args: list[str]) -> None:
    """Hydra's own argument parser on ``args``; its complaint as one line (not a usage page).
    An empty run or sweep directory is refused: Hydra would write the run into the current
    directory."""
    from hydra._internal.utils import get_args_parser

    from gradflow_exp.config.schema import ConfigError

    for a in args:
        key, eq, value = a.partition("=")
        if eq and key.lstrip("+~") in RUN_DIR_KEYS and not value.strip().strip("'\"").strip():
            raise ConfigError(f"{key.lstrip('+~')} is empty: a run needs a directory of its own "
                              f"(leave it out for outputs/<experiment>/..., or give a path)")

    parser = get_args_parser()

    def error(message: str):
        raise ConfigError(f"{message} (gradflow-train --help lists the flags)")

    parser.error = error
    parser.parse_args(args)


def _exit(msg: str, code: int) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def job_failed(e: BaseException, run_dir: Path) -> int:
    """A job's failure (its summary already says so): its line on stderr, the traceback in
    the job's log file (and on stderr if asked for); returns the exit code."""
    from gradflow_exp.run.rundir import error_message
    from gradflow_exp.config.schema import ConfigError

    bad_input = isinstance(e, ConfigError)
    msg = error_message(e)
    if not bad_input:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        _to_log_files(f"run failed: {msg}\n{tb}")
        if tracebacks_wanted():
            sys.stderr.write(tb)
        msg += f" (traceback in {run_dir}/summary.json; HYDRA_FULL_ERROR=1 prints it)"
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return 2 if bad_input else 1


def _to_log_files(text: str) -> None:
    """Into the job's log file (train.log), not the console."""
    record = logging.LogRecord("gradflow_exp", logging.ERROR, __file__, 0, text, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def hydra_message(e: BaseException) -> str:
    """What Hydra (or OmegaConf, or the file system) raised before a job ran, in one line."""
    from hydra.errors import InstantiationException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from gradflow_exp.config.schema import omegaconf_message, unknown_key_message

    if isinstance(e, InstantiationException) and isinstance(e.__cause__, (ValueError, TypeError)):
        return _first_line(e.__cause__)     # a plugin's own check (the launcher's settings)
    cause = e.__cause__
    if isinstance(e, MissingConfigException) or "Could not find" in str(e):
        return _missing_option(str(e))
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and "not in struct" in str(cause):
        parent = getattr(cause, "parent_node", None)
        valid = [str(k) for k in parent.keys()] if parent is not None else []
        return unknown_key_message(str(cause.full_key), valid)
    if isinstance(e, OverrideParseException):
        return f"cannot parse override '{e.override}': {_first_line(e)}"
    if isinstance(e, OmegaConfBaseException):
        return omegaconf_message(e)
    if isinstance(cause, OmegaConfBaseException):
        return f"{_first_line(e)} ({omegaconf_message(cause)})"
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return f"cannot write the output directory{where}: {e.strerror or e}"
    return _first_line(e)


def _missing_option(text: str) -> str:
    """"Could not find 'experiment/fig77'" + Hydra's list of options → one line."""
    m = re.search(r"Could not find '([^']+)'", text)
    options = re.findall(r"^\t(\S+)$", text.split("Config search path", 1)[0], flags=re.MULTILINE)
    if not m:
        return _first_line(Exception(text))
    wanted = m.group(1)
    group, _, name = wanted.rpartition("/")
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if group.startswith("hydra/sweeper"):
        hint += "; hparams_search needs the Optuna sweeper: pip install -e '.[hparams]' (scripts/setup.sh does)"
    listed = f". Available options in '{group}': {', '.join(options)}" if options else ""
    return f"Could not find '{wanted}'{hint}{listed}"


def expand_resume(args: list[str]) -> list[str]:
    """``resume=RUN_DIR`` → the run's own overrides plus ``hydra.run.dir=RUN_DIR``, i.e.
    the command that started it; the run then continues from its checkpoint. Other
    arguments (``--cfg job``, a key given again) are kept, a key given again replacing its
    saved value."""
    from gradflow_exp.run.rundir import saved_overrides
    from gradflow_exp.config.schema import ConfigError

    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    if any(a in MULTIRUN_FLAGS for a in args):
        raise ConfigError("resume=RUN_DIR continues one run; to continue a sweep, run it again with the same "
                          "hydra.sweep.dir")
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    overrides = saved_overrides(run_dir)
    rest = [a for a in args if not a.startswith(("resume=", "hydra.run.dir="))]
    keys = {_key(a) for a in rest if "=" in a and not a.startswith("-")}
    overrides = [o for o in overrides if _key(o) not in keys]
    # hydra.mode=RUN: a job of a sweep (hparams_search sets MULTIRUN) resumes as itself.
    return overrides + rest + [f"hydra.run.dir={run_dir}", "hydra.mode=RUN"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")
