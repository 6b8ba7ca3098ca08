"""The type of every config key, checked once on the resolved config before a job writes
anything (`validate`); the choice lists live here and nowhere else.

Why pydantic (v2): one declaration gives the type, the range, finiteness (``nan`` and
``inf`` are refused wherever a finite number is meant) and the choices of each key, and its
errors carry the key's path, so a bad value is one line naming it. Hydra's structured
configs check types only, and plain dataclasses would need the checks written by hand; both
would also need every config file to name its schema. It imports no torch, so bad input is
refused before the multi-second torch import, and wandb already depends on it.

Ranges that belong to one method (C > 0 for SAV, η ∈ [0, 1], betas) are checked by that
optimizer's constructor, as torch.optim's own do; here an optimizer's hyperparameters are
only typed and finite. Data-dependent limits (a batch larger than the training set, MNIST
files) are checked where the data are read.
"""
from __future__ import annotations

import difflib
import functools
import math
import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

# ------------------------------------------------------------------ choice lists
DTYPES = ("float32", "float64")
TIME_SCALES = ("plain", "particle")
# time_scale=F*particle: F (> 0) times the model's per-particle scale K = m/2 (fig2's 0.3*particle)
PARTICLE_MULTIPLE = r"^\s*(0*[1-9][0-9]*(\.[0-9]*)?|0*\.0*[1-9][0-9]*)([eE][-+]?[0-9]+)?\s*\*\s*particle\s*$"
DEVICE = r"^(cpu|cuda|cuda:\d+|auto)$"
_PATTERNS = {DEVICE: "cpu, cuda, cuda:N or auto", PARTICLE_MULTIPLE: "F*particle with F > 0"}
OBJECTIVES = ("final", "best")
SYNTHETIC_PROBLEMS = ("sincos", "quadratic", "gaussian")
COEFS = ("uniform", "normal")
ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}    # name → torch.nn class
INITS = ("default", "kaiming", "normal")
LOSSES = ("mse", "rel_error", "rel_norm", "cross_entropy")
WEIGHT_SCHEDULES = ("constant", "linear", "sigmoid")
WARMUP_THEN = ("cosine", "constant")
RESTARTS = ("none", "epoch")
WANDB_MODES = ("offline", "online", "disabled")
IEQ_TARGET = "gradflow_exp.optim.IEQ"      # full-Jacobian IEQ: no residual form with a penalty


class ConfigError(ValueError):
    """Bad input, found before anything trains: one line on stderr, exit code 2."""


# ------------------------------------------------------------------ value types
# Every count is below 2³¹ (a size, an epoch count, a width): beyond it a value would pass
# here and fail later in torch, numpy or a file format without naming its key.
INT_MAX = 2 ** 31 - 1
Int0 = Annotated[int, Field(strict=True, ge=0, le=INT_MAX)]
Int1 = Annotated[int, Field(strict=True, ge=1, le=INT_MAX)]
Int2 = Annotated[int, Field(strict=True, ge=2, le=INT_MAX)]
Seed = Annotated[int, Field(strict=True, ge=0, lt=2 ** 32)]     # numpy's seeds are 32-bit
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(allow_inf_nan=False, gt=0)]
NonNegative = Annotated[float, Field(allow_inf_nan=False, ge=0)]
Fraction = Annotated[float, Field(allow_inf_nan=False, gt=0, le=1)]      # (0, 1]
OpenFraction = Annotated[float, Field(allow_inf_nan=False, gt=0, lt=1)]  # (0, 1)


class Node(BaseModel):
    """A config node: these keys only, each of its type (a bool is not a number)."""
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _tagged(key: str, models: dict[str, type[Node]]):
    """A node whose keys depend on its ``key`` (scheduler.name, dataset.name, ...)."""
    def tag(v):
        return v.get(key) if isinstance(v, dict) else getattr(v, key, None)

    tag.__name__ = key          # pydantic names the discriminator in its error: "name()"
    members = [Annotated[m, Tag(t)] for t, m in models.items()]
    return Annotated[functools.reduce(operator.or_, members), Discriminator(tag)]


# ------------------------------------------------------------------ dataset
# A dataset is built by its _target_ (gradflow_exp/data/*.py), as a model is; the name picks
# the node's keys. A record from before _target_ existed is compared without it (rundir.MAY_DIFFER).
class Synthetic(Node):
    target: Literal["gradflow_exp.data.synthetic.dataset"] = Field("gradflow_exp.data.synthetic.dataset",
                                                                   alias="_target_")
    name: Literal["sincos", "quadratic", "gaussian"]
    D: Int1
    M: Int2
    train_fraction: OpenFraction
    coef: Literal[COEFS]
    x_std: Positive = 0.2
    val_size: Int0 | None = None     # rows of the validation draw; None: as many as the test set
    seed: Seed


class MNIST(Node):
    target: Literal["gradflow_exp.data.mnist.dataset"] = Field("gradflow_exp.data.mnist.dataset", alias="_target_")
    name: Literal["mnist"]
    root: str | None
    train_fraction: OpenFraction
    subsample_train: Int1 | None
    subsample_test: Int1 | None
    zscore: bool
    val_fraction: Annotated[float, Field(allow_inf_nan=False, ge=0, lt=1)] = 0.1
    seed: Seed


class Burgers(Node):
    target: Literal["gradflow_exp.data.burgers.dataset"] = Field("gradflow_exp.data.burgers.dataset",
                                                                 alias="_target_")
    name: Literal["burgers"]
    n_x: Int2
    n_t: Int2
    test_x: Int2
    test_t: Int2
    boundary_weight: Positive | None
    val_points: Int0 = 2000


DATASETS = {**{p: Synthetic for p in SYNTHETIC_PROBLEMS}, "mnist": MNIST, "burgers": Burgers}
Dataset = _tagged("name", DATASETS)
# What a run recorded before a dataset key existed computed with, where that is not the key's
# default (rundir.default_of): a validation draw changes no training set, but MNIST's held-out
# digits do, so an older MNIST run resumes only with dataset.val_fraction=0.
DATASET_LEGACY = {"val_fraction": 0.0}


def dataset_default(key: str, name: str | None, legacy: bool = True) -> Any:
    """``dataset.<key>``'s value when a config of problem ``name`` lacks it (KeyError: none)."""
    if legacy and key in DATASET_LEGACY:
        return DATASET_LEGACY[key]
    field = DATASETS[name].model_fields[key] if name in DATASETS and key in DATASETS[name].model_fields else None
    if field is None or field.is_required():
        raise KeyError(key)
    return field.get_default(call_default_factory=True)


# ------------------------------------------------------------------ model
class TwoLayer(Node):
    target: Literal["gradflow_exp.models.TwoLayerNet"] = Field(alias="_target_")
    width: Int1
    activation: Literal[tuple(ACTIVATIONS)]
    init: Literal[INITS]
    mean_field: bool


class MLP(Node):
    target: Literal["gradflow_exp.models.MLP"] = Field(alias="_target_")
    hidden: list[Int1]
    activation: Literal[tuple(ACTIVATIONS)]
    init: Literal[INITS]


class PINN(Node):
    target: Literal["gradflow_exp.models.BurgersPINN"] = Field(alias="_target_")
    hidden: list[Int1]
    nu: Positive


Model = _tagged("_target_", {"gradflow_exp.models.TwoLayerNet": TwoLayer, "gradflow_exp.models.MLP": MLP,
                             "gradflow_exp.models.BurgersPINN": PINN})


# ------------------------------------------------------------------ optimizer
class SPMNode(Node):
    J: Int1
    h: Positive
    seed: Seed | None = None


class Optimizer(Node):
    """The keys every method's file shares (so one sweep composes for all), and the typed
    hyperparameters of conf/optimizer/; other keys (``+optimizer.foo=1``) go to the
    constructor, which says what it accepts. Every number in this node must be finite."""
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    target: str = Field(alias="_target_")
    lr: Positive
    C: Finite | None
    lam: Finite | None
    eta: Finite | None
    restart: Literal[RESTARTS] | None
    spm: SPMNode | None = None
    betas: Annotated[list[Finite], Field(min_length=2, max_length=2)] | None = None
    eps: Finite | None = None
    momentum: Finite | None = None
    nesterov: bool | None = None
    weight_decay: Finite | None = None
    alpha: Finite | None = None
    second_moment: Literal["elementwise", "scalar"] | None = None
    rhat_batch: Literal["same", "next"] | None = None

    @model_validator(mode="after")
    def _extras_finite(self):
        for key, value in (self.model_extra or {}).items():
            _finite_numbers(f"optimizer.{key}", value)
        return self


def _finite_numbers(key: str, value) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{key} must be a finite number, got {value!r}")


# ------------------------------------------------------------------ loss, scheduler, logger
class Penalty(Node):
    name: Literal["l2"]
    weight: NonNegative
    schedule: Literal[WEIGHT_SCHEDULES]
    start_weight: NonNegative
    ramp_epochs: Int1 | None        # null: the run's trainer.epochs
    epochs: Int1 | None
    midpoint: NonNegative
    steepness: Positive


class Loss(Node):
    name: Literal[LOSSES]
    penalty: Penalty | None = None


class NoSchedule(Node):
    name: Literal["none"]


class Cosine(Node):
    name: Literal["cosine"]
    T_max: Int1
    eta_min: NonNegative


class Step(Node):
    name: Literal["step"]
    step_size: Int1
    gamma: Fraction


class Plateau(Node):
    name: Literal["plateau"]
    factor: OpenFraction
    patience: Int0
    threshold: NonNegative
    min_lr: NonNegative


class Warmup(Node):
    name: Literal["warmup"]
    warmup_epochs: Int1
    start_factor: Fraction
    then: Literal[WARMUP_THEN]
    eta_min: NonNegative


SCHEDULERS = {"none": NoSchedule, "cosine": Cosine, "step": Step, "plateau": Plateau, "warmup": Warmup}
Scheduler = _tagged("name", SCHEDULERS)


class WandbLogger(Node):
    backend: Literal["wandb"]
    mode: Literal[WANDB_MODES]
    project: str
    entity: str | None
    group: str | None
    tags: list[str]
    job_type: str


class NoLogger(Node):
    backend: Literal["none"]
    job_type: str = "train"


Logger = _tagged("backend", {"wandb": WandbLogger, "none": NoLogger})


# ------------------------------------------------------------------ trainer, diagnostics, replicas
class Trainer(Node):
    epochs: Int0
    batch_size: Int1 | None          # null: full batch
    log_every: Int1
    shuffle: bool
    progress: bool
    eval_chunk: Int1
    collapse_q: Annotated[float, Field(allow_inf_nan=False, ge=0, le=1)]
    checkpoint: bool
    checkpoint_every: Int1 | None    # null: only at the end
    checkpoint_minutes: Positive | None = 10.0    # and at least every this many minutes (null: no clock)
    cuda_graph: bool = False         # a replica batch's steady steps replayed from a CUDA graph


# Nodes added after runs existed carry defaults: a run made before a key existed is
# compared at that key's default (the behaviour it had), gradflow_exp/run/rundir.py.
class Hessian(Node):
    every: Int1 | None = None
    k: Int1 = 1
    samples: Int1 | None = None
    tol: NonNegative = 1.0e-6
    grad_tol: NonNegative = 1.0e-3
    maxiter: Int1 = 1000
    lanczos_tol: NonNegative = 1.0e-8


class GradNoise(Node):
    every: Int1 | None = None


class Diagnostics(Node):
    hessian: Hessian = Hessian()
    grad_noise: GradNoise = GradNoise()


class Replicas(Node):
    seeds: list[Seed] | None = None
    lr: list[Positive] | None = None
    C: list[Finite] | None = None
    lam: list[Finite] | None = None

    @field_validator("seeds", "lr", "C", "lam")
    @classmethod
    def _distinct(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"must be a non-empty list without repeats, such as [0,1,2], or null; got {v!r}")
        return v


# ------------------------------------------------------------------ the whole config
class Config(Node):
    name: str
    seed: Seed
    dtype: Literal[DTYPES]
    device: Annotated[str, Field(pattern=DEVICE)]
    threads: Literal["auto"] | Int1
    time_scale: Literal[TIME_SCALES] | Positive | Annotated[str, Field(pattern=PARTICLE_MULTIPLE)]
    hparams_objective: Literal[OBJECTIVES]
    references: list[str]
    replicas: Replicas = Replicas()
    diagnostics: Diagnostics = Diagnostics()
    dataset: Dataset
    model: Model
    optimizer: Optimizer
    loss: Loss
    scheduler: Scheduler = NoSchedule(name="none")
    logger: Logger
    trainer: Trainer

    @model_validator(mode="after")
    def _combinations(self):
        classify = isinstance(self.dataset, MNIST)
        if classify != (self.loss.name == "cross_entropy"):
            raise ValueError(f"loss={self.loss.name} with dataset={self.dataset.name}: MNIST needs "
                             "loss=cross_entropy, the regression problems a regression loss")
        if isinstance(self.dataset, Burgers) != isinstance(self.model, PINN):
            raise ValueError("dataset=burgers and model=pinn go together (the PINN reads burgers' rows "
                             "[x, t, flag, w] and returns the PDE residual)")
        if self.loss.penalty is not None and self.optimizer.target == IEQ_TARGET:
            raise ValueError("loss.penalty has no residual form for full-Jacobian IEQ (its N × N solve would "
                             "grow by n rows); use optimizer=ieq_adaptive or a loss without a penalty")
        return self


@functools.cache
def defaults() -> dict[str, Any]:
    """Dotted key → the schema's default, for the keys that have one."""
    out: dict[str, Any] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = prefix + (field.alias or name)
            if field.is_required():
                continue
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                out.update(_flat(value.model_dump(by_alias=True), key + "."))
            else:
                out[key] = value

    walk(Config, "")
    return out


def _flat(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load(cfg) -> dict:
    """The job's config (a DictConfig) resolved and checked: the dict every later step reads."""
    from omegaconf import OmegaConf

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve
        raise ConfigError(omegaconf_message(e)) from None
    validate(resolved)
    return resolved


def omegaconf_message(e: Exception) -> str:
    """An OmegaConf error in one line, naming the key it is about."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    key = getattr(e, "full_key", None)
    first = lines[0] if lines else type(e).__name__
    return f"{key}: {first}" if key else first


def validate(resolved: dict) -> None:
    """Raise ConfigError (one line, every bad key named) unless ``resolved`` (the job's
    config, interpolations resolved) fits the schema."""
    try:
        Config.model_validate(resolved)
    except ValidationError as e:
        raise ConfigError(describe(e, resolved)) from None


# ------------------------------------------------------------------ one-line messages
_LABELS = {"optimizer.lr": "optimizer.lr (Δt)", "optimizer.lam": "optimizer.lam (λ)"}


def describe(e: ValidationError, data: dict, limit: int = 3) -> str:
    """pydantic's errors → 'key must be …, got …' per key (union alternatives joined by 'or')."""
    by_key: dict[str, list[dict]] = {}
    for err in e.errors():
        by_key.setdefault(_key(err, data), []).append(err)
    unknown = {key for key, errs in by_key.items() if any(err["type"] == "extra_forbidden" for err in errs)}
    parts = [_message(key, errs, data, unknown) for key, errs in by_key.items()]
    more = f"; … {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def _key(err: dict, data) -> str:
    """The dotted config key of an error: its location's items that are keys (or list
    indices) of the config, union tags dropped; a missing key is the last item."""
    parts, node = [], data
    for item in err["loc"]:
        if isinstance(node, dict) and item in node:
            parts.append(str(item))
            node = node[item]
        elif isinstance(node, (list, tuple)) and isinstance(item, int) and item < len(node):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
            node = node[item]
    if err["type"] == "missing":
        parts.append(str(err["loc"][-1]))
    return ".".join(parts)


def _lookup(data, key: str):
    node = data
    for part in key.replace("[", ".[").split("."):
        if part.startswith("["):
            node = node[int(part[1:-1])] if isinstance(node, (list, tuple)) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def _message(key: str, errs: list[dict], data, unknown: set[str]) -> str:
    kinds = {err["type"] for err in errs}
    if "extra_forbidden" in kinds:
        parent, _, last = key.rpartition(".")
        given = (_lookup(data, parent) if parent else data) or {}
        valid = [k for k in given if (f"{parent}.{k}" if parent else k) not in unknown]
        return unknown_key_message(key, _schema_keys(parent) or valid)
    if "missing" in kinds:
        return f"{key} is missing (add it with +{key}=...)"
    if kinds <= {"value_error", "assertion_error"}:
        msg = errs[0]["msg"].removeprefix("Value error, ")
        return msg if not key else (msg if msg.startswith(key) else f"{key}: {msg}")
    if "union_tag_invalid" in kinds:
        err = next(e for e in errs if e["type"] == "union_tag_invalid")
        tags = err["ctx"]["expected_tags"]
        field = err["ctx"]["discriminator"].strip("'").removesuffix("()")
        return f"{key}.{field}={err['ctx']['tag']!r}; valid: {tags}" if key else f"{field}: valid {tags}"
    if "union_tag_not_found" in kinds:
        return f"{key} must be a config node, got {_lookup(data, key)!r}"
    wants = []
    for err in errs:
        w = _want(err)
        if w not in wants:
            wants.append(w)
    if len(wants) > 1:          # a union: "'plain' or 'particle' or a finite number"
        # a number given where a patterned string is one alternative: say the other ones
        wants = [w.removeprefix("one of ") for w in wants if w != "a string"] or wants
    return f"{_LABELS.get(key, key)} must be {' or '.join(wants)}, got {_lookup(data, key)!r}"


def _want(err: dict) -> str:
    t, ctx = err["type"], err.get("ctx") or {}
    bounds = {"greater_than": "> {gt}", "greater_than_equal": "≥ {ge}", "less_than": "< {lt}",
              "less_than_equal": "≤ {le}"}
    if t in bounds:
        return  bounds[t].format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()})
    if t == "finite_number":
        return "a finite number"
    if t in ("int_type", "int_parsing", "int_from_float"):
        return "an integer"
    if t in ("float_type", "float_parsing"):
        return "a number"
    if t == "bool_type":
        return "true or false"
    if t == "string_type":
        return "a string"
    if t == "none_required":
        return "null"
    if t == "literal_error":
        return "one of " + ctx["expected"]
    if t in ("list_type", "tuple_type"):
        return "a list"
    if t in ("too_short", "too_long"):
        return err["msg"].lower().replace("input should", "a list that should")
    if t == "string_pattern_mismatch":
        return _PATTERNS.get(ctx.get("pattern"), err["msg"])
    return err["msg"][0].lower() + err["msg"][1:]


def _schema_keys(path: str) -> list[str]:
    """The keys the schema knows under a dotted path ('' = the top level); [] if unknown."""
    model: Any = Config
    for part in [p for p in path.split(".") if p]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def unknown_key_message(key: str, valid: list[str]) -> str:
    """'unknown key …' with the closest valid key, the valid ones, and how to add one."""
    parent, _, last = key.rpartition(".")
    close = difflib.get_close_matches(last, [v for v in valid if v != last], n=1)
    hint = f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""
    listed = f" Valid keys in {parent or 'the top level'}: {', '.join(sorted(valid))}." if valid else ""
    return f"unknown key '{key}'{hint}.{listed} To add a new key use +{key}=..."
