"""A run directory: what it holds, who may write it, and whether a job may take it.

    RUN_DIR/summary.json      status (running until the run ends), final and best metrics
    RUN_DIR/metrics.csv       one row per logged epoch
    RUN_DIR/checkpoint.pt     the run's config, a SHA-256 of its payload, then the payload
    RUN_DIR/.hydra/           config.yaml (resolved: what the run computes), overrides.yaml, hydra.yaml
    RUN_DIR/.lock             held (flock) by the process that trains here

One process at a time: `RunDir` takes an OS lock on ``.lock`` for the life of the job (the
kernel drops it with the process, so a SIGKILL leaves no stale lock); a second process, or
``resume=`` of a run still training, is refused naming the holder's PID.

Whether a job may take a directory (`RunDir.decide`) is decided by comparing the run's
recorded config with the job's, key by key, except the keys in `MAY_DIFFER` (they change
what a run writes or reports, not what it computes). A key missing from an older run's
record is compared at its default (gradflow_exp/config/schema.py; for an optimizer hyperparameter,
its constructor's). The same config: a finished run is skipped, an unfinished one resumes
from its checkpoint. Only ``trainer.epochs`` larger: the run is trained on from its
checkpoint. Anything else: refused in one line naming the keys, and nothing is written
(the record is written only when a job is accepted, `RunDir.accept`).

A checkpoint proves whose it is: its header holds the run's config and the SHA-256 of its
payload; resuming checks both, and refuses a checkpoint of another run or a corrupt one.

Imports no torch at module level (gradflow-report and the command line use this module).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import inspect
import io
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gradflow_exp.config.schema import DATASET_LEGACY, ConfigError, dataset_default, defaults

log = logging.getLogger("gradflow_exp")

# Keys that change how a run is logged, checkpointed or reported, not what it computes: a
# run may be resumed or extended with other values of these (gradflow-report, too, does not
# tell methods apart by them). A key covers its sub-keys ("logger": logger.mode, ...).
# trainer.eval_chunk changes the order of a metric's sums only, so its last bits.
MAY_DIFFER = ("trainer.progress", "trainer.checkpoint", "trainer.checkpoint_every", "trainer.checkpoint_minutes",
              "trainer.collapse_q", "trainer.cuda_graph",
              "trainer.eval_chunk", "threads", "hparams_objective", "logger", "references",
              "dataset._target_")      # the function dataset.name picks (older records lack it)
EPOCHS = "trainer.epochs"
FINISHED = ("completed", "diverged")          # a job with this status is not run again
RECORD = ".hydra"
LOCK = ".lock"
RUN_FILES = ("summary.json", "metrics.csv", "checkpoint.pt")
# a batch member's checkpoint before the last (gradflow_exp/run/batch.py): a batch killed while its
# members write theirs resumes all of them from the epoch they share
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
TMP = ".tmp-"                                 # atomic writes: .<name>.tmp-XXXX, then a rename
_MISSING = object()


class RunDirError(ConfigError):
    """A directory this job may not take (held by another process, another run's, a
    checkpoint that is not this run's): one line, and nothing in the directory changes."""


# ------------------------------------------------------------------ files
def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it into place:
    a reader never sees half a file; a failed write leaves no temp file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    data = json.dumps(obj, indent=2, default=_jsonable, allow_nan=True).encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing or unreadable."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _jsonable(x):
    if hasattr(x, "tolist"):            # a tensor or a numpy value
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def flatten(d, prefix: str = "") -> dict:
    """Nested config → {"optimizer.lr": 0.1, ...}; lists are kept as values."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(flatten(v, key + "."))
            else:
                out[key] = v
    return out


def covered(key: str, prefixes) -> bool:
    """Whether ``key`` is one of ``prefixes`` or below one (at a dot)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def holds_run(path: Path) -> bool:
    """A run (or a replica batch's runs) already lives in ``path``: its results, or a
    summary that says it ran. A job that failed on bad input leaves neither."""
    path = Path(path)
    if any((path / f).exists() for f in ("metrics.csv", "checkpoint.pt")):
        return True
    status = read_json(path / "summary.json").get("status")
    if status is not None and status != "failed":
        return True
    # a replica batch's directory: its replicas' runs, one level down
    return path.is_dir() and any(holds_run(sub) for sub in path.iterdir()
                                 if sub.is_dir() and (sub / "summary.json").is_file())


def remove_temp_files(path: Path) -> None:
    """Temp files of atomic writes cut short by a kill (older versions: .checkpoint.pt.XXXX)."""
    for name in RUN_FILES:
        for tmp in Path(path).glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)


def saved_config(path: Path) -> dict | None:
    """The run's recorded config (.hydra/config.yaml), interpolations resolved (runs of earlier
    versions recorded them unresolved); None when there is no record."""
    from omegaconf import OmegaConf

    file = Path(path) / RECORD / "config.yaml"
    if not file.is_file():
        return None
    try:
        cfg = OmegaConf.load(file)
    except Exception as e:  # noqa: BLE001 - not YAML: not a record we can compare
        raise RunDirError(f"{file}: unreadable record of the run ({type(e).__name__}); "
                          "use a new hydra.run.dir") from None
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${now:} in an old record: compare it as written
        return OmegaConf.to_container(cfg, resolve=False)


def saved_overrides(path: Path) -> list[str]:
    """The command-line overrides that started the run (.hydra/overrides.yaml)."""
    from omegaconf import OmegaConf

    file = Path(path) / RECORD / "overrides.yaml"
    if not file.is_file():
        raise ConfigError(f"resume={path}: not a run directory (no {RECORD}/overrides.yaml)")
    try:
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(file), resolve=False)]
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"resume={path}: cannot read {file}: {type(e).__name__}") from None


def write_record(path: Path, config: dict | None, overrides: list[str] | None = None, hydra=None) -> None:
    """``.hydra/``: the resolved config, and (under Hydra) the overrides and the hydra node
    (HydraConfig's, as Hydra itself would write hydra.yaml)."""
    import yaml
    from omegaconf import OmegaConf

    record = Path(path) / RECORD
    record.mkdir(parents=True, exist_ok=True)
    files = {}
    if config is not None:
        files["config.yaml"] = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    if overrides is not None:
        files["overrides.yaml"] = yaml.safe_dump(list(overrides), allow_unicode=True)
    if hydra is not None:
        files["hydra.yaml"] = OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra}))
    for name, text in files.items():
        atomic_write_bytes(record / name, lambda f, text=text.encode(): f.write(text))


# ------------------------------------------------------------------ comparing configs
def changes(saved: dict, new: dict, skip=MAY_DIFFER) -> list[tuple[str, object, object]]:
    """(key, recorded, now) where two resolved configs differ, outside ``skip``; a key one
    side lacks is taken at its default (`default_of`: for the record, what its run ran
    with before the key existed)."""
    old, cur = flatten(saved), flatten(new)
    out = []
    for key in sorted(old.keys() | cur.keys()):
        if covered(key, skip):
            continue
        a = old.get(key, _MISSING)
        b = cur.get(key, _MISSING)
        a = default_of(key, saved) if a is _MISSING else a
        b = default_of(key, new, legacy=False) if b is _MISSING else b
        if a != b:
            out.append((key, a, b))
    return out


def default_of(key: str, config: dict, legacy: bool = True):
    """A key's value when a config lacks it: the schema's default (a dataset key: its
    problem's, or what runs before the key computed with), or, for an optimizer
    hyperparameter, what that optimizer ran with before the key existed (its
    ``legacy_defaults``; a recorded config, ``legacy``) or else its constructor's default
    (else missing)."""
    table = defaults()
    if key in table:
        return table[key]
    if key.startswith("dataset.") and key.count(".") == 1:
        try:
            return dataset_default(key.split(".")[1], (config.get("dataset") or {}).get("name"), legacy)
        except KeyError:
            return _MISSING
    target = (config.get("optimizer") or {}).get("_target_")
    if key.startswith("optimizer.") and key.count(".") == 1 and target:
        name = key.split(".")[1]
        try:
            import hydra.utils

            cls = hydra.utils.get_class(target)
            param = inspect.signature(cls.__init__).parameters.get(name)
        except Exception:  # noqa: BLE001 - an unknown class: no default
            cls, param = None, None
        before = getattr(cls, "legacy_defaults", {}) if legacy else {}
        if name in before and param is not None:
            return before[name]
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return _MISSING


def describe_changes(diff, limit: int = 6) -> str:
    def show(v):
        return "<unset>" if v is _MISSING else v

    parts = [f"{k}: {show(a)} → {show(b)}" for k, a, b in diff[:limit]]
    if len(diff) > limit:
        parts.append(f"… {len(diff) - limit} more")
    if any(k == "dataset.val_fraction" and a == DATASET_LEGACY["val_fraction"] for k, a, _ in diff):
        parts.append("a run from before the validation split: dataset.val_fraction=0 continues it")
    return "; ".join(parts)


# ------------------------------------------------------------------ checkpoints
MAGIC = b"gradflow_exp checkpoint 2\n"


def save_checkpoint(path: Path, state: dict, config: dict, keep_previous: bool = False) -> None:
    """Header (the run's config, the epoch, SHA-256 and size of the payload) + payload
    (torch.save). ``keep_previous``: the checkpoint it replaces stays as PREVIOUS_CHECKPOINT
    (renamed once the new one is complete, so one of the two is always whole)."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = json.dumps({"config": config, "epoch": state.get("epoch"), "bytes": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest()}, default=_jsonable, allow_nan=True)

    def write(f):
        f.write(MAGIC)
        f.write(header.encode() + b"\n")
        f.write(payload)

    path = Path(path)
    if keep_previous and path.is_file():
        fresh = path.with_name(path.name + ".new")
        atomic_write_bytes(fresh, write)
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
        os.replace(fresh, path)
    else:
        atomic_write_bytes(path, write)


def checkpoint_header(path: Path) -> dict:
    """The header of a checkpoint (no payload read); RunDirError if it is not one."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        if head != MAGIC:
            return {"legacy": True} if head.startswith(b"PK") else {}
        try:
            return json.loads(f.readline())
        except ValueError:
            return {}


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(header, state) of a checkpoint whose payload matches its checksum; RunDirError otherwise."""
    import torch

    path = Path(path)
    afresh = f"delete it (and {path.parent}'s metrics.csv and summary.json) to start this run afresh"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RunDirError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    if raw.startswith(b"PK"):         # written by an earlier version: a bare torch.save, no checksum
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise RunDirError(f"{path}: unreadable checkpoint ({type(e).__name__}); {afresh}") from None
        log.warning("%s was written by an earlier version, without a checksum: its integrity is not checked", path)
        return {"config": state.get("config"), "epoch": state.get("epoch"), "legacy": True}, state
    end = raw.find(b"\n", len(MAGIC))
    try:
        if not raw.startswith(MAGIC) or end < 0:
            raise ValueError("no header")
        header = json.loads(raw[len(MAGIC):end])
        payload = raw[end + 1:]
    except ValueError:
        raise RunDirError(f"{path} is not a gradflow_exp checkpoint (or its header is corrupt); {afresh}") from None
    if len(payload) != header.get("bytes") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise RunDirError(f"{path} fails its checksum (the file is corrupt or truncated); {afresh}")
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    return header, state


def load_checkpoint(path: Path, resolved: dict) -> dict:
    """The checkpoint's state, after checking its checksum and that it is this run's
    (its config equals ``resolved`` outside MAY_DIFFER and trainer.epochs)."""
    header, state = read_checkpoint(path)
    diff = changes(header.get("config") or {}, resolved, MAY_DIFFER + (EPOCHS,))
    if diff:
        raise RunDirError(f"{path} is another run's checkpoint ({describe_changes(diff)}); never resumed: delete "
                          f"it (and {Path(path).parent}'s metrics.csv and summary.json) to start this run afresh")
    if "rows" not in state:
        raise RunDirError(f"{path} holds no rows to resume from; delete it to start this run afresh")
    if state["epoch"] > resolved["trainer"]["epochs"]:
        raise RunDirError(f"{path} is at epoch {state['epoch']}, past trainer.epochs={resolved['trainer']['epochs']}")
    return state


# ------------------------------------------------------------------ the lock
class Lock:
    """flock(2) on DIR/.lock for as long as it is held; the file names the holder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write the run directory {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by process {holder.get('pid', '?')}"
                              f"{' on ' + holder['host'] if holder.get('host') else ''}"
                              f" (since {holder.get('since', '?')}): wait for it to end, or use a new "
                              "hydra.run.dir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                os.close(fd)
                raise
            log.warning("%s: this file system has no locks (%s); nothing stops a second process here",
                        self.path, e.strerror)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        except OSError:
            pass                    # a full disk: the lock holds all the same

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------ the decision
@dataclass
class Plan:
    action: str                      # "new" | "resume" | "skip"
    previous: dict = field(default_factory=dict)     # the directory's summary.json
    checkpoint: dict | None = None   # "resume": the verified state to continue from
    note: str = ""                   # why, for the log


class RunDir:
    """The job's hold on its directory: ``with RunDir(path, config) as rd: plan = rd.decide()``.

    ``config``: the job's resolved config; ``overrides``/``hydra``: what Hydra records of the
    command. On an exception inside the block, a directory that held no run (or the run this
    job had started) says ``failed`` with the error; a refusal (RunDirError) writes nothing.
    """

    def __init__(self, path: Path, config: dict, overrides: list[str] | None = None, hydra: dict | None = None):
        self.path = Path(path)
        self.config, self.overrides, self.hydra = config, overrides, hydra
        self.lock = Lock(self.path)
        self.held = False
        self.accepted = False

    def __enter__(self) -> RunDir:
        self.lock.acquire()
        self.held = holds_run(self.path)
        remove_temp_files(self.path)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if isinstance(exc, Exception) and not isinstance(exc, RunDirError):
                record_failure(self.path, exc, self.config, self.overrides, self.hydra,
                               fresh=not self.held and not self.accepted, started=self.accepted)
                exc.recorded_in_run_dir = True      # the entry point need not record it again
        finally:
            remove_temp_files(self.path)
            self.lock.release()

    def decide(self, resume: bool = True) -> Plan:
        """What this job does here (see the module docstring); RunDirError to refuse.
        ``resume=False``: an unfinished run starts again from epoch 0 (replica mode)."""
        for name in RUN_FILES:
            if (self.path / name).exists() and not (self.path / name).is_file():
                raise RunDirError(f"{self.path / name} is not a file; this is not a run directory of "
                                  "gradflow_exp: use a new hydra.run.dir")
        if not self.held:
            return Plan("new")
        previous = read_json(self.path / "summary.json")
        if (self.path / "summary.json").exists() and not previous:
            raise RunDirError(f"{self.path / 'summary.json'} is unreadable; use a new hydra.run.dir")
        saved = saved_config(self.path)
        if saved is None:
            raise RunDirError(f"{self.path} holds a run's files but no record of its config "
                              f"({RECORD}/config.yaml); use a new hydra.run.dir")
        diff = changes(saved, self.config)
        other = [d for d in diff if d[0] != EPOCHS]
        if other:
            what = describe_changes(other)
            if any(k == "device" for k, _, _ in other):
                raise RunDirError(f"{self.path} holds a run made on another device ({what}): a run cannot move "
                                  "between devices (its random streams, SPM's included, are the device's); "
                                  "resume it on its own device, or start a new run in a new hydra.run.dir")
            raise RunDirError(f"{self.path} already holds a run of another configuration ({what}); "
                              "use a new hydra.run.dir (or hydra.sweep.dir)")
        status = previous.get("status")
        ckpt = self.path / "checkpoint.pt"
        if not ckpt.is_file():                  # killed between a batch's two renames
            for other in (self.path / "checkpoint.pt.new", self.path / PREVIOUS_CHECKPOINT):
                if other.is_file():
                    os.replace(other, ckpt)
                    break
        if not diff:
            if status in FINISHED:
                return Plan("skip", previous, note=f"already {status}; skipping it (delete its summary.json "
                                                   "to run it again)")
            if resume and ckpt.is_file():
                state = load_checkpoint(ckpt, self.config)
                return Plan("resume", previous, state, note=f"unfinished ({status}): resuming after epoch {state['epoch']}")
            return Plan("new", previous, note=f"unfinished ({status}) and {'not resumed' if not resume else 'no checkpoint'}:"
                                              " starting again from epoch 0")
        planned, wanted = saved["trainer"]["epochs"], self.config["trainer"]["epochs"]
        if status == "diverged":     # the longer run is this one up to the same NaN
            return Plan("skip", previous, note=f"diverged at epoch {previous.get('epochs_completed')}; a longer "
                                               "run diverges there too: skipping it")
        if not ckpt.is_file() and status not in ("completed", "interrupted"):
            return Plan("new", previous, note=f"unfinished ({status}) and no checkpoint: starting again from "
                                              f"epoch 0 with trainer.epochs={wanted}")
        done = previous.get("epochs_completed")
        if ckpt.is_file() and done is None:
            done = checkpoint_header(ckpt).get("epoch")
        why = _cannot_extend(status, done, wanted, ckpt.is_file(), self.config, resume)
        if why:
            raise RunDirError(f"{self.path} holds this run with trainer.epochs={planned}; {why}; "
                              "use a new hydra.run.dir (or hydra.sweep.dir)")
        state = load_checkpoint(ckpt, self.config)
        return Plan("resume", previous, state, note=f"{status} after {done} of {planned} epochs: resuming after epoch "
                                                    f"{state['epoch']}, training it on to {wanted}")

    def previous_checkpoint(self) -> dict | None:
        """The verified state of PREVIOUS_CHECKPOINT, or None where there is none."""
        path = self.path / PREVIOUS_CHECKPOINT
        return load_checkpoint(path, self.config) if path.is_file() else None

    def accept(self) -> None:
        """This job is the directory's run now: its command becomes the record."""
        write_record(self.path, self.config, self.overrides, self.hydra)
        self.accepted = True


def _cannot_extend(status, done, wanted, has_checkpoint: bool, config: dict, resume: bool) -> str | None:
    """Why a run cannot be trained on to ``wanted`` epochs (None: it can). It can when it
    stopped short of that, left a checkpoint, and nothing is stretched over the run's
    length: training on from the checkpoint then gives what a run this long from the start gives."""
    from gradflow_exp.losses import penalty_stretched_over_run
    from gradflow_exp.training.schedulers import stretched_over_run

    if status not in ("completed", "interrupted", "running"):
        return f"it ended {status}"
    if not isinstance(done, int) or wanted <= done:
        return f"it has already trained {done} epochs"
    if not has_checkpoint or not resume:
        return "it has no checkpoint.pt to train on from" if resume else "replica mode does not train runs on"
    if stretched_over_run(config.get("scheduler")):
        return "its warm-up cosine schedule is stretched over trainer.epochs"
    if penalty_stretched_over_run(config.get("loss")):
        return "its loss penalty schedule is stretched over trainer.epochs"
    return None


# ------------------------------------------------------------------ failures
def error_message(exc: BaseException) -> str:
    """One line: a ConfigError's message, else 'Type: first line'."""
    if isinstance(exc, ConfigError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def record_failure(path: Path, exc: BaseException, config: dict | None = None, overrides=None, hydra=None,
                   fresh: bool | None = None, started: bool = False) -> bool:
    """summary.json 'failed' with the error (and, for a fault, the traceback), best effort
    (a full disk may refuse even that): in a directory that held no run (``fresh``, by
    default `holds_run`), with the command's record, or over the run this job had
    ``started``. Returns whether it wrote."""
    import traceback

    path = Path(path)
    if fresh is None:
        fresh = not holds_run(path)
    if not (fresh or started):
        return False
    summary = read_json(path / "summary.json") if started else {}
    if summary.get("status") not in (None, "running", "failed"):
        return False                 # the loop ended it (interrupted, ...): its summary stands
    summary.update({"status": "failed", "error": error_message(exc), "run_dir": str(path)})
    if not isinstance(exc, ConfigError):
        summary["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        path.mkdir(parents=True, exist_ok=True)
        if fresh:
            write_record(path, config, overrides, hydra)
        write_json(path / "summary.json", summary)
    except OSError as e:
        log.warning("%s: could not record the failure (%s)", path, e.strerror or e)
        return False
    finally:
        remove_temp_files(path)
        for tmp in (path / RECORD).glob(f".*{TMP}*"):
            tmp.unlink(missing_ok=True)
    return True
