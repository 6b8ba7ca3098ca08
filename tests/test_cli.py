"""Hydra parses the command line: what Hydra accepts, the runner accepts (glob sweeps,
--config-dir, hydra.searchpath, --cfg with resume=), and the schema's defaults are the
config files'."""
import json

import yaml
from omegaconf import OmegaConf

from helpers import SMALL, compose_cfg, hydra_inprocess

TINY = [*SMALL, "experiment=fig7", "dataset.M=200", "trainer.epochs=1", "threads=1"]


def test_glob_sweep_runs_what_it_matches(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    hydra_inprocess("-m", *TINY, "optimizer=glob(s*,exclude=[spm_*])", f"hydra.sweep.dir={sweep}",
                    monkeypatch=monkeypatch)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    chosen = {o for j in jobs for o in yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text())
              if o.startswith("optimizer=")}
    assert chosen == {"optimizer=sav", "optimizer=sgd"}
    assert all(json.loads((j / "summary.json").read_text())["status"] == "completed" for j in jobs)


def test_config_dir_and_searchpath_add_experiments(tmp_path, monkeypatch):
    """An experiment of the user's own, next to the shipped ones."""
    own = tmp_path / "myconf" / "experiment"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /dataset: quadratic\n"
                                   "name: mine\ndataset:\n  D: 5\n  M: 200\nmodel:\n  width: 10\n")
    for how in ([f"--config-dir={tmp_path / 'myconf'}"], [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"]):
        run_dir = tmp_path / f"run{len(how[0])}"
        hydra_inprocess(*how, *SMALL, "experiment=mine", "trainer.epochs=1", f"hydra.run.dir={run_dir}",
                        monkeypatch=monkeypatch)
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        assert (config["name"], config["dataset"]["D"], config["model"]["width"]) == ("mine", 5, 10)
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_cfg_job_with_resume_prints_the_command_it_would_run(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    hydra_inprocess(*TINY, "optimizer.lr=0.02", f"hydra.run.dir={run_dir}", monkeypatch=monkeypatch)
    capsys.readouterr()
    hydra_inprocess(f"resume={run_dir}", "--cfg", "job", "trainer.epochs=7", monkeypatch=monkeypatch)
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.optimizer.lr == 0.02 and printed.trainer.epochs == 7


def test_the_schema_defaults_are_the_config_files():
    """A run made before a key existed is compared at the schema's default: it must be the
    value conf/ gives the key."""
    from gradflow_exp.run.rundir import flatten
    from gradflow_exp.config.schema import defaults

    composed = flatten(OmegaConf.to_container(compose_cfg([]), resolve=True))
    assert defaults() and {k: composed[k] for k in defaults()} == defaults()


def test_flags_move_before_the_overrides_which_keep_their_order():
    from gradflow_exp.commands.cli import flags_first

    assert flags_first(["experiment=fig7", "--cfg", "job", "x=1"]) == ["--cfg", "job", "experiment=fig7", "x=1"]
    assert flags_first(["~optimizer.eta", "experiment=fig7", "-m"]) == ["-m", "~optimizer.eta", "experiment=fig7"]
    assert flags_first(["-sc", "install=bash"]) == ["-sc", "install=bash"]
    assert flags_first(["--info", "searchpath", "a=1"]) == ["--info", "searchpath", "a=1"]
    assert flags_first(["a=1", "--info", "b=2"]) == ["--info", "a=1", "b=2"]
