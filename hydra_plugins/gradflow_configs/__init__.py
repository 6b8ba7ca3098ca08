"""The SPM form of every optimizer, ``optimizer=spm_<name>`` (paper Alg. 1 around it).

Not a file each: for every ``conf/optimizer/<name>.yaml`` this registers, in Hydra's
ConfigStore, ``optimizer/spm_<name>``: that config plus an ``spm`` node (J, h, the
perturbations' seed). Hydra imports every module under ``hydra_plugins`` before it
composes, so the forms exist wherever the configs do; `gradflow_exp.config` reads them
the same way for the tools that load an optimizer's config without Hydra.
"""
from hydra.core.config_store import ConfigStore

from gradflow_exp.config import SPM_NODE, base_optimizers

for _name in base_optimizers():
    ConfigStore.instance().store(group="optimizer", name=f"spm_{_name}",
                                 node={"defaults": [_name, "_self_"], "spm": dict(SPM_NODE)})
