"""Bad input: one clear line on stderr before training starts, no traceback, and never a run
directory passed off as complete. A logging failure never costs the run."""
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import SMALL, cli, compose_cfg

# case: (arguments, text the one-line error must contain); {tmp} is a fresh directory.
CASES = {
    "unknown_experiment": (["experiment=fig99"], "Available options in 'experiment': burgers, eval_ex1"),
    "unknown_choice_in_sweep": (["-m", "optimizer=sgd,sgdd"], "Could not find 'optimizer/sgdd'"),
    "epochs_not_int": (["trainer.epochs=abc"], "trainer.epochs must be a non-negative integer, got 'abc'"),
    "lr_not_number": (["optimizer.lr=abc"], "optimizer.lr (Δt) must be a positive number, got 'abc'"),
    "lr_zero": (["optimizer.lr=0"], "optimizer.lr (Δt) must be a positive number, got 0"),
    "output_dir_in_proc": (["hydra.run.dir=/proc/gradflow_x/run"], "cannot write the output directory"),
    "output_dir_under_a_file": (["hydra.run.dir={tmp}/afile/run"], "cannot write the output directory"),
    "resume_not_a_run": (["resume={tmp}/empty"], "not a run directory (no .hydra/overrides.yaml)"),
}
# Found while building the run, after the multi-second torch import: checked in-process
# (run() raises the ConfigError that the entry point prints as one line, exit code 2, as
# test_runner's CLI cases for batch size and width show), to keep the suite fast.
BUILD_CASES = {
    # a method's own ranges: its constructor's ValueError
    "C_zero": (["optimizer=sav", "optimizer.C=0"], "C must be positive (it keeps I + C > 0), got 0.0"),
    "C_not_number": (["optimizer=sav", "optimizer.C=abc"], "optimizer.C must be a number or null"),
    "checkpoint_every_zero": (["trainer.checkpoint_every=0"], "trainer.checkpoint_every must be a positive integer"),
    "objective_unknown": (["hparams_objective=worst"], "hparams_objective='worst'; valid: final, best"),
    "eta_above_1": (["optimizer=arelsav", "optimizer.eta=1.5"], "eta must lie in [0, 1], got 1.5"),
    "lr_negative_sav": (["optimizer=sav", "optimizer.lr=-0.1"], "optimizer.lr (Δt) must be a positive number"),
    "C_negative_relsav": (["optimizer=relsav", "optimizer.C=-1"], "C must be positive"),
    "batch_larger_than_train_set": (["dataset.M=300", "trainer.batch_size=1000"],
                                    "trainer.batch_size=1000 is larger than the training set (240 samples)"),
    "width_zero": (["model.width=0"], "model.width must be a positive integer, got 0"),
    "mnist_root_without_files": (["experiment=mnist", "dataset.root={tmp}/empty"],
                                 "has no train-images-idx3-ubyte[.gz]"),
    "mnist_root_corrupt": (["experiment=mnist", "dataset.root={tmp}/corrupt"], "bad magic number"),
}
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _inputs(tmp):
    (tmp / "empty").mkdir()
    (tmp / "corrupt").mkdir()
    for f in MNIST_FILES:
        (tmp / "corrupt" / f).write_bytes(b"not an IDX file")
    (tmp / "afile").write_text("")


def _run_case(name, tmp):
    _inputs(tmp)
    args = [a.format(tmp=tmp) for a in CASES[name][0]]
    if not any(a.startswith(("hydra.run.dir=", "resume=")) for a in args):
        args.append(f"hydra.sweep.dir={tmp}/sweep" if "-m" in args else f"hydra.run.dir={tmp}/run")
    return cli(*args, "logger=none", "trainer.progress=false", cwd=tmp, timeout=300)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """Run the selected cases side by side: each is a process of its own."""
    names = [n for n in CASES if any(item.nodeid.endswith(f"[{n}]") for item in request.session.items)]
    tmps = {n: tmp_path_factory.mktemp(n) for n in names}
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(names, pool.map(lambda n: _run_case(n, tmps[n]), names)))
    return {n: (tmps[n], done[n]) for n in names}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_clear_line(case, results):
    tmp, r = results[case]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert lines and lines[-1].startswith("error: ") and CASES[case][1] in lines[-1], r.stderr
    for summary in tmp.glob("**/summary.json"):      # never passed off as complete
        assert json.loads(summary.read_text())["status"] == "failed"
    assert not list(tmp.glob("**/metrics.csv"))      # nothing trained


@pytest.mark.parametrize("case", sorted(BUILD_CASES))
def test_bad_input_found_while_building(case, tmp_path):
    from gradflow_exp.train import ConfigError, run

    _inputs(tmp_path)
    args, expected = BUILD_CASES[case]
    cfg = compose_cfg(SMALL + [a.format(tmp=tmp_path) for a in args])
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path / "run")
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()      # nothing written before the input is known good


def test_wandb_online_without_credentials_falls_back_to_offline(run_inprocess, monkeypatch, tmp_path, caplog):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with caplog.at_level(logging.WARNING):
        summary, run_dir = run_inprocess("experiment=fig7", "dataset.M=300", "trainer.epochs=2",
                                         "logger=wandb", "logger.mode=online")
    assert "falling back to offline" in caplog.text
    assert summary["status"] == "completed"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3
    assert list((run_dir / "wandb").glob("offline-run-*"))
