"""Command-line checks Hydra does not do: an unknown key gets the valid ones listed."""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
_MISSING = object()


def _groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir()}


def check_overrides(args: list[str]) -> None:
    """Exit with one clear line if a plain ``key=value`` override names no existing key."""
    plain, group_overrides = [], []
    groups = _groups()
    for a in args:
        if a.startswith("-") or "=" not in a:
            continue
        key, value = a.split("=", 1)
        if key.startswith(("+", "~", "hydra")):
            continue
        if key.lstrip("/") in groups:
            first = value.split(",")[0]
            if "(" not in first:
                group_overrides.append(f"{key}={first}")
            continue
        plain.append(key)
    if not plain:
        return
    cfg = _compose(group_overrides)
    if cfg is None:     # composition failed: Hydra itself will report the group typo
        return
    for key in plain:
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            print(f"error: {_unknown_key_message(cfg, key)}", file=sys.stderr)
            sys.exit(2)


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
