"""Bad input: one line on stderr (``error: ...``), exit code 2, no traceback, nothing trained,
and a fresh run directory that says ``failed``; whatever raised it (Hydra's parser and
composer, the schema, a builder, the data, the run directory). In-process: the whole
command line, Hydra included, as `gradflow-train` runs it."""
import gzip
import json
import logging
import struct
import subprocess
import sys

import numpy as np
import pytest

from helpers import SMALL, hydra_inprocess

FIG7 = ["experiment=fig7", "dataset.M=300"]

# case: (arguments, text the one line must contain); {tmp} is a fresh directory (see _inputs).
CASES = {
    # --- Hydra: parsing and composing
    "unknown_experiment": (["experiment=fig99"], "Available options in 'experiment': burgers, eval_ex1"),
    "experiment_typo": (["experiment=fig77"], "Could not find 'experiment/fig77' (did you mean 'fig7'?)"),
    "unknown_choice_in_sweep": (["-m", "optimizer=sgd,sgdd"], "Could not find 'optimizer/sgdd'"),
    "scheduler_typo": (["scheduler=cosin"], "Could not find 'scheduler/cosin' (did you mean 'cosine'?)"),
    "optimizer_typo": (["optimizer=lambb"], "Could not find 'optimizer/lambb' (did you mean 'lamb'?)"),
    "loss_typo": (["loss=mse_l3"], "Could not find 'loss/mse_l3'"),
    "key_typo": (["trainer.epochss=5"], "unknown key 'trainer.epochss' (did you mean 'trainer.epochs'?)"),
    "nested_key_typo": (["diagnostics.hesian.every=3"], "did you mean 'diagnostics.hessian'"),
    "key_of_another_optimizer": (["optimizer=adam", "optimizer.momentum=0.9"], "unknown key 'optimizer.momentum'"),
    "override_syntax": (["trainer.epochs=[1"], "cannot parse override 'trainer.epochs=[1'"),
    "interpolation_in_run_dir": (["name=${{nonexistent.key}}"], "Interpolation key 'nonexistent.key' not found"),
    "env_interpolation": (["optimizer.lr=${{oc.env:GRADFLOW_NO_SUCH_VAR}}"], "GRADFLOW_NO_SUCH_VAR"),
    "output_dir_in_proc": (["hydra.run.dir=/proc/gradflow_x/run"], "cannot write the output directory"),
    "output_dir_under_a_file": (["hydra.run.dir={tmp}/afile/run"], "cannot write the output directory"),
    "config_dir_missing": (["--config-dir={tmp}/no_such_dir"], "no_such_dir"),
    "resume_not_a_run": (["resume={tmp}/empty"], "not a run directory (no .hydra/overrides.yaml)"),
    "resume_in_a_sweep": (["-m", "resume={tmp}/empty"], "resume=RUN_DIR continues one run"),
    # --- the schema: types, ranges, finiteness, choices
    "epochs_not_int": (["trainer.epochs=abc"], "trainer.epochs must be an integer, got 'abc'"),
    "epochs_negative": (["trainer.epochs=-1"], "trainer.epochs must be ≥ 0, got -1"),
    "lr_not_number": (["optimizer.lr=abc"], "optimizer.lr (Δt) must be a number, got 'abc'"),
    "lr_zero": (["optimizer.lr=0"], "optimizer.lr (Δt) must be > 0, got 0"),
    "lr_inf": (["optimizer.lr=inf"], "optimizer.lr (Δt) must be a finite number, got inf"),
    "C_inf": (["optimizer=sav", "optimizer.C=inf"], "optimizer.C must be a finite number, got inf"),
    "C_not_number": (["optimizer=sav", "optimizer.C=abc"], "optimizer.C must be a number"),
    "time_scale_nan": (["time_scale=nan"], "time_scale must be"),
    "time_scale_inf": (["time_scale=inf"], "a finite number, got inf"),
    "time_scale_negative": (["time_scale=-2"], "time_scale must be 'plain' or 'particle' or > 0, got -2"),
    "time_scale_zero_particles": (["time_scale=0*particle"], "or F*particle with F > 0, got '0*particle'"),
    "time_scale_typo": (["time_scale=0.3*particel"], "time_scale must be"),
    "batch_size_zero": (["trainer.batch_size=0"], "trainer.batch_size must be ≥ 1, got 0"),
    "collapse_q_not_number": (["trainer.collapse_q=abc"], "trainer.collapse_q must be a number, got 'abc'"),
    "eval_chunk_zero": (["trainer.eval_chunk=0"], "trainer.eval_chunk must be ≥ 1, got 0"),
    "checkpoint_every_zero": (["trainer.checkpoint_every=0"], "trainer.checkpoint_every must be ≥ 1"),
    "log_every_bool": (["trainer.log_every=true"], "trainer.log_every must be an integer, got True"),
    "objective_unknown": (["hparams_objective=worst"], "hparams_objective must be one of 'final' or 'best'"),
    "seed_negative": (["seed=-1"], "seed must be ≥ 0, got -1"),
    "dtype_unknown": (["dtype=float16"], "dtype must be one of 'float32' or 'float64'"),
    "device_unknown": (["device=tpu"], "device must be cpu, cuda, cuda:N or auto, got 'tpu'"),
    "threads_zero": (["threads=0"], "threads must be"),
    "step_gamma": (["scheduler=step", "scheduler.gamma=2"], "scheduler.gamma must be ≤ 1, got 2"),
    "warmup_then": (["scheduler=warmup", "scheduler.then=linear"], "scheduler.then must be one of 'cosine' or"),
    "cosine_T_max": (["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max must be ≥ 1, got 0"),
    "plateau_factor": (["scheduler=plateau", "scheduler.factor=1"], "scheduler.factor must be < 1, got 1"),
    "scheduler_name": (["scheduler.name=foo"], "scheduler.name='foo'; valid: 'none', 'cosine'"),
    "penalty_schedule": (["loss=mse_l2", "loss.penalty.schedule=cosine"], "loss.penalty.schedule must be one of"),
    "penalty_weight": (["loss=mse_l2", "loss.penalty.weight=-1"], "loss.penalty.weight must be ≥ 0, got -1"),
    "penalty_steepness": (["loss=mse_l2", "loss.penalty.steepness=0"], "loss.penalty.steepness must be > 0"),
    "hessian_every": (["diagnostics.hessian.every=0"], "diagnostics.hessian.every must be ≥ 1, got 0"),
    "hessian_tol": (["diagnostics.hessian.tol=-1"], "diagnostics.hessian.tol must be ≥ 0, got -1"),
    "grad_noise_every": (["diagnostics.grad_noise.every=x"], "diagnostics.grad_noise.every must be an integer"),
    "replica_seeds_repeat": (["replicas.seeds=[0,0]"], "replicas.seeds: must be a non-empty list without repeats"),
    "replica_lr_inf": (["replicas.lr=[0.1,inf]"], "replicas.lr[1] must be a finite number, got inf"),
    "width_zero": (["model.width=0"], "model.width must be ≥ 1, got 0"),
    "init": (["model.init=xavier"], "model.init must be one of 'default', 'kaiming' or 'normal'"),
    "dataset_name": (["dataset.name=sincoss"], "dataset.name='sincoss'; valid: 'sincos', 'quadratic', 'gaussian'"),
    "activation": (["model.activation=gelu"], "model.activation must be one of 'relu', 'tanh' or 'sigmoid'"),
    "samples_too_few": (["dataset.M=1"], "dataset.M must be ≥ 2, got 1"),
    "train_fraction": (["dataset.train_fraction=1"], "dataset.train_fraction must be < 1, got 1"),
    "added_unknown_key": (["+trainer.foo=1"], "unknown key 'trainer.foo'"),
    "added_optimizer_key_nan": (["+optimizer.foo=nan"], "optimizer.foo must be a finite number, got nan"),
    "betas_nan": (["optimizer=adam", "optimizer.betas=[0.9,nan]"], "optimizer.betas[1] must be a finite number"),
    "mnist_with_mse": (["dataset=mnist"], "MNIST needs loss=cross_entropy"),
    "pinn_without_burgers": (["dataset=quadratic", "model=pinn"], "dataset=burgers and model=pinn go together"),
    "penalty_with_full_ieq": (["optimizer=ieq", "loss=mse_l2"], "use optimizer=ieq_adaptive"),
    # --- the builders: a method's own ranges, what only the data can tell
    "C_zero_sav": (["optimizer=sav", "optimizer.C=0"], "C must be positive (it keeps I + C > 0), got 0.0"),
    "eta_above_1": (["optimizer=arelsav", "optimizer.eta=1.5"], "eta must lie in [0, 1], got 1.5"),
    "C_negative_relsav": (["optimizer=relsav", "optimizer.C=-1"], "C must be positive"),
    "batch_larger_than_train_set": (["trainer.batch_size=1000"],
                                    "trainer.batch_size=1000 is larger than the training set (240 samples)"),
    "replicas_unsupported": (["optimizer=lamb", "replicas.seeds=[0,1]"], "replicas: Lamb is not element-wise"),
    "mnist_root_without_files": (["experiment=mnist", "dataset.root={tmp}/empty"], "has no train-images-idx3-ubyte[.gz]"),
    "mnist_root_corrupt": (["experiment=mnist", "dataset.root={tmp}/corrupt"], "bad magic number"),
    "mnist_bad_deflate_stream": (["experiment=mnist", "dataset.root={tmp}/deflate"], "cannot read"),
    "mnist_label_out_of_range": (["experiment=mnist", "dataset.root={tmp}/labels"], "labels must be digits 0–9"),
    "mnist_images_wrong_rank": (["experiment=mnist", "dataset.root={tmp}/rank"], "images must be N×rows×cols"),
    "mnist_empty_training_set": (["experiment=mnist", "dataset.root={tmp}/zero"], "MNIST train set in dataset.root="),
    # --- the run directory
    "summary_is_a_directory": (["hydra.run.dir={tmp}/sdir"], "summary.json is not a file"),
    "metrics_is_a_directory": (["hydra.run.dir={tmp}/mdir"], "metrics.csv is not a file"),
}
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _mnist(root, train_images, train_labels):
    root.mkdir()
    for name, a in zip(MNIST_FILES, (train_images, train_labels, np.zeros((3, 28, 28)), np.zeros(3))):
        (root / name).write_bytes(_idx(a))


def _inputs(tmp):
    (tmp / "empty").mkdir()
    (tmp / "corrupt").mkdir()
    for f in MNIST_FILES:
        (tmp / "corrupt" / f).write_bytes(b"not an IDX file")
    (tmp / "deflate").mkdir()
    for f in MNIST_FILES:
        good = gzip.compress(_idx(np.zeros((3, 28, 28) if "images" in f else 3)))
        (tmp / "deflate" / f"{f}.gz").write_bytes(good[:12] + bytes(b ^ 0xFF for b in good[12:40]) + good[40:])
    _mnist(tmp / "labels", np.zeros((4, 28, 28)), np.array([0, 1, 12, 3]))
    _mnist(tmp / "rank", np.zeros((4, 784)), np.zeros(4))
    _mnist(tmp / "zero", np.zeros((0, 28, 28)), np.zeros(0))
    (tmp / "afile").write_text("")
    (tmp / "sdir" / "summary.json").mkdir(parents=True)
    (tmp / "mdir" / "metrics.csv").mkdir(parents=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, monkeypatch, capsys):
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    args, expected = [a.format(tmp=tmp_path) for a in CASES[case][0]], CASES[case][1]
    if not any(a.startswith(("hydra.run.dir=", "resume=")) for a in args):
        args.append(f"hydra.sweep.dir={tmp_path}/sweep" if "-m" in args else f"hydra.run.dir={tmp_path}/run")
    with pytest.raises(SystemExit) as exit_:
        own_problem = any(a.startswith(("experiment=", "dataset=")) for a in args)
        hydra_inprocess(*SMALL, *([] if own_problem else FIG7), "threads=1", *args, monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    for summary in tmp_path.glob("run/**/summary.json"):      # a fresh run directory says it failed
        record = json.loads(summary.read_text())
        assert record["status"] == "failed" and record["error"] in lines[0]
    assert not [p for p in tmp_path.glob("**/metrics.csv") if p.is_file()]        # nothing trained
    assert not list(tmp_path.glob("**/checkpoint.pt"))


def test_a_sweep_job_with_bad_input_fails_alone(tmp_path, monkeypatch, capsys):
    """In a sweep, a bad value makes that job 'failed' (one line) and the others run."""
    sweep = tmp_path / "sweep"
    hydra_inprocess("-m", *SMALL, *FIG7, "trainer.epochs=1", "optimizer=sav", "optimizer.C=1,0",
                    f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and "C must be positive" in err[0]
    assert [json.loads((sweep / j / "summary.json").read_text())["status"] for j in "01"] == ["completed", "failed"]


def test_a_fault_is_one_line_with_its_traceback_in_the_summary(tmp_path, monkeypatch, capsys):
    """Not bad input but a fault while training: exit code 1, one line naming where the
    traceback is, summary.json 'failed' with it (HYDRA_FULL_ERROR=1 prints it)."""
    import gradflow_exp.training.loop as loop

    def broken(*a, **k):
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(loop, "evaluate", broken)
    with pytest.raises(SystemExit) as exit_:
        hydra_inprocess(*SMALL, *FIG7, "trainer.epochs=2", f"hydra.run.dir={tmp_path}/run", monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: RuntimeError: simulated fault (traceback in ")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "simulated fault" in summary["error"]
    assert "Traceback" in summary["traceback"] and "broken" in summary["traceback"]
    assert not list((tmp_path / "run").glob(".*.tmp-*"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(SystemExit):
        hydra_inprocess(*SMALL, *FIG7, "trainer.epochs=2", f"hydra.run.dir={tmp_path}/run2", monkeypatch=monkeypatch)
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow
def test_the_console_script_refuses_without_importing_torch(tmp_path):
    """Bad input and --help answer before torch is imported (about a second, not ten)."""
    code = ("import sys\nfrom gradflow_exp.train import main\nsys.argv = ['gradflow-train'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    for args, code_expected in ((["experiment=fig77"], 2), (["trainer.epochs=abc", f"hydra.run.dir={tmp_path}/r"], 2),
                                (["--help"], 0)):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                           timeout=120)
        assert r.stdout.strip().splitlines()[-1] in (f"exit {code_expected} False", "exit None False"), r.stdout + r.stderr


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
