"""Command-line checks Hydra does not do, each ending in one line on stderr (exit code 2)
before anything is trained: unknown keys and group choices (the valid ones listed), values
of the wrong type, an output directory that cannot be written; and ``resume=RUN_DIR``.

Everything here is torch-free, so `python -m gradflow_exp.train` can reject bad input
before the multi-second torch import.
"""
from __future__ import annotations

import difflib
import math
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
_MISSING = object()
MULTIRUN_FLAGS = ("-m", "--multirun")
INSPECT_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")
OBJECTIVES = ("final", "best")
LOGGERS = ("wandb", "none")
# scheduler.name → its keys (conf/scheduler/<name>.yaml; built by gradflow_exp.schedulers)
SCHEDULERS = {"none": (), "cosine": ("T_max", "eta_min"), "step": ("step_size", "gamma"),
              "plateau": ("factor", "patience", "threshold", "min_lr"),
              "warmup": ("warmup_epochs", "start_factor", "then", "eta_min")}
WARMUP_THEN = ("cosine", "constant")
WEIGHT_SCHEDULES = ("constant", "linear", "sigmoid")
PENALTIES = ("l2",)


def _groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"}


def _options(group: str) -> list[str]:
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def preflight(args: list[str]) -> list[str]:
    """Every check before Hydra starts; returns the arguments to run (resume= expanded)."""
    if any(a in INSPECT_FLAGS for a in args):      # --help, --cfg job, ...: nothing runs
        return args
    args = expand_resume(args)
    check_overrides(args)
    check_output_dir(args)
    return args


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_overrides(args: list[str]) -> None:
    """Exit with one clear line if an override names no existing key or group option,
    or (single runs) gives a value of the wrong type."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a syntax error: Hydra reports it itself
        return
    groups = _groups()
    group_overrides, plain, single = [], [], []
    for o in parsed:
        key = o.key_or_group.lstrip("/")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() and o.is_discrete_sweep() else (
            [] if o.is_sweep_override() else [o.get_value_element_as_str()])
        if key == "replicas" and any(v != "null" and not v.startswith("{") for v in values):
            fail("replicas takes lists by key: replicas.seeds=[0,1,2] (also replicas.lr, replicas.C, replicas.lam)")
        if key in groups:
            valid = _options(key)
            for v in values:
                if v != "null" and v not in valid:
                    fail(f"Could not find '{key}/{v}'. Available options in '{key}': {', '.join(valid)}")
            if key == "hparams_search" and values != ["null"] and not _has_optuna_sweeper():
                fail("hparams_search needs the Optuna sweeper: pip install -e '.[hparams]' (scripts/setup.sh does)")
            if values:
                group_overrides.append(f"{o.input_line.split('=', 1)[0]}={values[0]}")
            continue
        if not o.is_add():
            plain.append(key)
        if not o.is_sweep_override():
            single.append(o.input_line)
    cfg = _compose(group_overrides + single)
    if cfg is None:
        # Composition failed: find the unknown key on the groups alone (else Hydra reports it).
        base = _compose(group_overrides)
        if base is None:
            return
        for key in plain:
            if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
                fail(_unknown_key_message(base, key))
        return
    for key in plain:
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            fail(_unknown_key_message(cfg, key))
    if not any(a in MULTIRUN_FLAGS for a in args):
        # A single run's config is exactly this one (a sweep's jobs check their own in build).
        try:
            validate_config(cfg)
        except ValueError as e:
            fail(str(e))


def _has_optuna_sweeper() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ImportError:
        return False


def validate_config(cfg: DictConfig) -> None:
    """Types and ranges that are the same for every method (raises ValueError, one line).
    Method-specific ranges (C > 0, η ∈ [0, 1], …) are the optimizers' own checks."""
    t = cfg.trainer
    check_trainer(t.epochs, t.log_every, t.batch_size, t.get("checkpoint_every"))
    lr = cfg.optimizer.get("lr")
    if not _is_number(lr) or not lr > 0:
        raise ValueError(f"optimizer.lr (Δt) must be a positive number, got {lr!r}")
    for key in ("C", "lam", "eta"):
        v = cfg.optimizer.get(key)
        if v is not None and not _is_number(v):
            raise ValueError(f"optimizer.{key} must be a number or null, got {v!r}")
    if cfg.logger.get("backend") not in LOGGERS:
        raise ValueError(f"logger.backend={cfg.logger.get('backend')!r}; valid: {', '.join(LOGGERS)}")
    if cfg.get("hparams_objective", "final") not in OBJECTIVES:
        raise ValueError(f"hparams_objective={cfg.hparams_objective!r}; valid: {', '.join(OBJECTIVES)}")
    check_scheduler(cfg.get("scheduler"))
    check_diagnostics(cfg.get("diagnostics"))
    check_penalty(cfg.loss.get("penalty"))
    check_replicas(cfg.get("replicas"))


def check_replicas(node) -> None:
    """The ``replicas`` node of train.yaml (gradflow_exp/replicas.py): lists or null."""
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise ValueError(f"replicas must hold lists (replicas.seeds=[0,1,2], replicas.lr=[...]), got {node!r}")
    for key in ("seeds", "lr", "C", "lam"):
        v = node.get(key)
        if v is None:
            continue
        if not isinstance(v, ListConfig) or not len(v):
            raise ValueError(f"replicas.{key} must be a non-empty list such as [0,1,2], or null, got {v!r}")
        if key == "seeds":
            for s in v:
                _check_int(s, "replicas.seeds entries", 0, "non-negative integers")
        elif not all(_is_number(x) and math.isfinite(x) for x in v):
            raise ValueError(f"replicas.{key} must be a list of numbers, got {list(v)!r}")
        if len(set(v)) != len(v):
            raise ValueError(f"replicas.{key} repeats a value: {list(v)!r}")


def check_scheduler(s) -> None:
    """The ``scheduler`` node (conf/scheduler/*.yaml); None or name none: constant lr."""
    if s is None:
        return
    name = s.get("name")
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler.name={name!r}; valid: {', '.join(SCHEDULERS)}")
    if name == "cosine":
        _check_int(s.get("T_max"), "scheduler.T_max", 1)
    if name in ("cosine", "warmup"):
        _check_number(s.get("eta_min"), "scheduler.eta_min", 0.0)
    if name == "step":
        _check_int(s.get("step_size"), "scheduler.step_size", 1)
        _check_fraction(s.get("gamma"), "scheduler.gamma")
    if name == "plateau":
        _check_fraction(s.get("factor"), "scheduler.factor", upper_open=True)
        _check_int(s.get("patience"), "scheduler.patience", 0)
        _check_number(s.get("threshold"), "scheduler.threshold", 0.0)
        _check_number(s.get("min_lr"), "scheduler.min_lr", 0.0)
    if name == "warmup":
        _check_int(s.get("warmup_epochs"), "scheduler.warmup_epochs", 1)
        _check_fraction(s.get("start_factor"), "scheduler.start_factor")
        if s.get("then") not in WARMUP_THEN:
            raise ValueError(f"scheduler.then={s.get('then')!r}; valid: {', '.join(WARMUP_THEN)}")


def check_diagnostics(d) -> None:
    """The ``diagnostics`` node of train.yaml: everything off by default."""
    if d is None:
        return
    h = d.get("hessian")
    if h is not None:
        if h.get("every") is not None:
            _check_int(h.get("every"), "diagnostics.hessian.every", 1, "a positive integer or null (off)")
        _check_int(h.get("k"), "diagnostics.hessian.k", 1)
        if h.get("samples") is not None:
            _check_int(h.get("samples"), "diagnostics.hessian.samples", 1, "a positive integer or null (all)")
        _check_number(h.get("tol"), "diagnostics.hessian.tol", 0.0)
        _check_number(h.get("grad_tol"), "diagnostics.hessian.grad_tol", 0.0)
        _check_int(h.get("maxiter"), "diagnostics.hessian.maxiter", 1)
        _check_number(h.get("lanczos_tol"), "diagnostics.hessian.lanczos_tol", 0.0)
    g = d.get("grad_noise")
    if g is not None and g.get("every") is not None:
        _check_int(g.get("every"), "diagnostics.grad_noise.every", 1, "a positive integer or null (off)")


def check_penalty(p) -> None:
    """``loss.penalty`` (conf/loss/mse_l2.yaml): a weighted R(θ) added to the data loss."""
    if p is None:
        return
    if p.get("name") not in PENALTIES:
        raise ValueError(f"loss.penalty.name={p.get('name')!r}; valid: {', '.join(PENALTIES)}")
    _check_number(p.get("weight"), "loss.penalty.weight", 0.0)
    _check_number(p.get("start_weight"), "loss.penalty.start_weight", 0.0)
    schedule = p.get("schedule")
    if schedule not in WEIGHT_SCHEDULES:
        raise ValueError(f"loss.penalty.schedule={schedule!r}; valid: {', '.join(WEIGHT_SCHEDULES)}")
    if schedule == "linear":
        _check_int(p.get("ramp_epochs"), "loss.penalty.ramp_epochs", 1)
    if schedule == "sigmoid":
        _check_int(p.get("epochs"), "loss.penalty.epochs", 1)
        _check_number(p.get("midpoint"), "loss.penalty.midpoint", 0.0)
        _check_number(p.get("steepness"), "loss.penalty.steepness", 0.0, strict=True)


def _check_number(v, name: str, minimum: float, strict: bool = False) -> None:
    if not _is_number(v) or not math.isfinite(v) or v < minimum or (strict and v == minimum):
        bound = f"> {minimum:g}" if strict else f"≥ {minimum:g}"
        raise ValueError(f"{name} must be a number {bound}, got {v!r}")


def _check_fraction(v, name: str, upper_open: bool = False) -> None:
    if not _is_number(v) or not 0 < v <= 1 or (upper_open and v == 1):
        raise ValueError(f"{name} must lie in (0, 1{')' if upper_open else ']'}, got {v!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def check_trainer(epochs, log_every, batch_size, checkpoint_every) -> None:
    """The trainer's integers (raises ValueError, one line); also `loop.LoopConfig`'s check."""
    _check_int(epochs, "trainer.epochs", 0)
    _check_int(log_every, "trainer.log_every", 1)
    if batch_size is not None:
        _check_int(batch_size, "trainer.batch_size", 0, "a positive integer or null (full batch)")
    if checkpoint_every is not None:
        _check_int(checkpoint_every, "trainer.checkpoint_every", 1, "a positive integer or null (only at the end)")


def _check_int(v, name: str, minimum: int, what: str | None = None) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        what = what or ("a non-negative integer" if minimum == 0 else "a positive integer")
        raise ValueError(f"{name} must be {what}, got {v!r}")


def check_output_dir(args: list[str]) -> None:
    """Hydra tracebacks when it cannot create the run directory: try it here first.

    Checks the literal part (up to the first ``${``) of hydra.run.dir / hydra.sweep.dir
    as given, else of the default outputs/; creating it is what Hydra would do next anyway.
    """
    given = [a for a in args if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for arg in given or ["hydra.run.dir=outputs/"]:
        key, value = arg.split("=", 1)
        literal = value.split("${", 1)[0]
        if "${" in value:   # keep the whole path components before the first interpolation
            literal = literal.rsplit("/", 1)[0] if "/" in literal else ""
        path = Path(literal or ".")
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            fail(f"cannot write the output directory {key}={value}: {e.strerror or e}")


def expand_resume(args: list[str]) -> list[str]:
    """``resume=RUN_DIR`` → the run's own overrides plus ``hydra.run.dir=RUN_DIR``, i.e.
    the command that started it; the run then continues from its checkpoint."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    if any(a in MULTIRUN_FLAGS for a in args):
        fail("resume=RUN_DIR continues one run; to continue a sweep, run it again with the same hydra.sweep.dir")
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        fail(f"resume={run_dir}: not a run directory (no .hydra/overrides.yaml)")
    try:
        overrides = [str(o) for o in OmegaConf.load(saved)]
    except Exception as e:  # noqa: BLE001
        fail(f"resume={run_dir}: cannot read {saved}: {e}")
    if any(o.split("=", 1)[0].lstrip("+~").startswith("replicas.") and not o.endswith("=null") for o in overrides):
        fail(f"resume={run_dir}: a replica batch (replicas.*) does not resume from checkpoints; run its "
             f"command again with hydra.run.dir={run_dir}: finished replicas are skipped, the others start "
             "again from epoch 0")
    rest = [a for a in args if not a.startswith(("resume=", "hydra.run.dir="))]
    # a key given again replaces the saved value instead of piling up in overrides.yaml
    given = {_override_key(a) for a in rest}
    overrides = [o for o in overrides if _override_key(o) not in given]
    # hydra.mode=RUN: a job of a sweep (hparams_search sets MULTIRUN) resumes as itself.
    return overrides + rest + [f"hydra.run.dir={run_dir}", "hydra.mode=RUN"]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _compose(overrides: list[str]) -> DictConfig | None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    except Exception:  # noqa: BLE001
        return None
    finally:
        GlobalHydra.instance().clear()


def _unknown_key_message(cfg: DictConfig, key: str) -> str:
    parts = key.split(".")
    node, depth = cfg, 0
    for depth, part in enumerate(parts):
        child = node.get(part, _MISSING) if isinstance(node, DictConfig) else _MISSING
        if not isinstance(child, DictConfig):
            break
        node = child
    parent = ".".join(parts[:depth]) or "the top level"
    valid = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(parts[depth], valid, n=1)
    hint = f" (did you mean '{'.'.join(parts[:depth] + close)}'?)" if close else ""
    return (f"unknown key '{key}'{hint}. Valid keys in {parent}: {', '.join(valid)}. "
            f"To add a new key use +{key}=...")
