"""What a run is asked for: where the configs live, every optimizer's config by name, and
(`gradflow_exp.config.schema`) the type, range and choices of every key. No torch here."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# the SPM form of every optimizer, ``optimizer=spm_<name>``: its config plus this node
# (paper Alg. 1; registered for Hydra by hydra_plugins/gradflow_configs)
SPM_NODE = {"J": 10, "h": 1.0e-4, "seed": "${seed}"}


def base_optimizers() -> list[str]:
    """The optimizer configs that are files, ``conf/optimizer/<name>.yaml``."""
    return sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


def experiment_names() -> list[str]:
    """Every ``experiment=`` choice, ``conf/experiment/<name>.yaml``: the figures and problems."""
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def optimizer_names() -> list[str]:
    """Every ``optimizer=`` choice: each base and its SPM form."""
    bases = base_optimizers()
    return sorted(bases + [f"spm_{b}" for b in bases])


def optimizer_config(name: str):
    """``optimizer=<name>``'s node as the runner composes it, without Hydra (an SPM form: its
    base's config plus the ``spm`` node, perturbations seeded with 0)."""
    from omegaconf import OmegaConf

    base = name[len("spm_"):] if name.startswith("spm_") else name
    path = CONF_DIR / "optimizer" / f"{base}.yaml"
    if not path.is_file():
        raise ValueError(f"optimizer={name!r}: no such optimizer; valid: {', '.join(optimizer_names())}")
    cfg = OmegaConf.load(path)
    if base != name:
        cfg = OmegaConf.merge(cfg, {"spm": {**SPM_NODE, "seed": 0}})
    return cfg


def dataset_config(name: str, **keys):
    """``dataset=<name>``'s node without Hydra (conf/dataset/<name>.yaml), ``keys`` merged in."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "dataset" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"dataset={name!r}: no such dataset")
    cfg = OmegaConf.load(path)
    cfg.seed = 0                  # conf's ${seed}: the caller passes the data's seed
    return OmegaConf.merge(cfg, keys)
