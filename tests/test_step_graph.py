"""trainer.cuda_graph (gradflow_exp/training/step_graph.py) on the CPU: everything but the
capture. A stand-in for the CUDA graph replays by running the captured step again, and
checks first what a real replay relies on: that the step reads the storage it read when
it was captured (the static batch buffers, the parameters, every optimizer state tensor)."""
import pandas as pd
import pytest
import torch

import gradflow_exp.training.loop as loop
from helpers import hydra_inprocess

TINY = ["experiment=fig7", "dataset.M=330", "trainer.batch_size=64", "trainer.epochs=5", "trainer.log_every=1",
        "logger=none", "trainer.progress=false", "threads=1", "replicas.seeds=[0,1,2]"]


def _storage(graph) -> dict:
    trainee_state = graph.optimizer.state
    out = {("x",): graph.x.data_ptr(), ("y",): graph.y.data_ptr()}
    for i, (p, st) in enumerate(trainee_state.items()):
        out[(i, "param")] = p.data_ptr()
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                out[(i, k)] = v.data_ptr()
    return out


class Rerun:
    """A CUDA graph's stand-in: ``capture`` records the storage the step reads and returns a
    replay that checks it is still that storage, runs the step again and writes its result
    into the one output tensor, as a replay overwrites the capture's output."""

    def __init__(self):
        self.graph, self.runs, self.captures, self.replays = None, 0, 0, 0

    def run(self, fn):
        self.runs += 1
        return fn()

    def capture(self, fn):
        self.captures += 1
        seen, out = _storage(self.graph), []

        def replay():
            assert _storage(self.graph) == seen, "a replay would read storage the step no longer uses"
            self.replays += 1
            result = fn()
            if not out:
                out.append(result)
            return out[0].copy_(result)
        return replay


def _run(tmp_path, name, monkeypatch, *args, capture=None):
    made = []
    if capture is not None:
        real = loop.Stacked.use_graph

        def use_graph(self, _capture=None):
            real(self, capture)
            capture.graph = self.graph
            made.append(self.graph)
        monkeypatch.setattr(loop.Stacked, "use_graph", use_graph)
    hydra_inprocess(*TINY, *args, f"hydra.run.dir={tmp_path / name}", monkeypatch=monkeypatch)
    monkeypatch.undo()
    return made


def _rows(run_dir):
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=["wall_time"])


@pytest.mark.parametrize("method", [
    ["optimizer=sav", "optimizer.restart=epoch"],
    ["optimizer=relsav", "optimizer.restart=epoch"],
    ["optimizer=asav"],
    ["optimizer=adam"],
    ["optimizer=momentum", "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5"],
], ids=lambda m: " ".join(m))
def test_the_graph_path_trains_the_batch_as_the_plain_step_does(tmp_path, monkeypatch, method):
    """Every logged number of each replica equal to the plain step's. 5 epochs of 5 steps
    (264 training rows: 4 batches of 64 and one of 8): the first 3 steps (warm-up), each
    epoch's short batch and each later restart run eagerly, the rest are replays of one
    capture, or of a new one after a scheduled Δt changed."""
    _run(tmp_path, "plain", monkeypatch, *method)
    capture = Rerun()
    (graph,) = _run(tmp_path, "graph", monkeypatch, *method, "trainer.cuda_graph=true", capture=capture)
    for k in range(3):
        pd.testing.assert_frame_equal(_rows(tmp_path / "plain" / f"seed_{k}"),
                                      _rows(tmp_path / "graph" / f"seed_{k}"), check_exact=True)
    restarts = 4 if "optimizer.restart=epoch" in method else 0
    assert graph.eager == capture.runs == 3 + 5 + restarts
    assert graph.replays == capture.replays == 25 - graph.eager
    assert capture.captures == (3 if "scheduler=step" in method else 1)     # Δt halves after epochs 2 and 4


def test_spm_steps_eagerly_through_the_buffers(tmp_path, monkeypatch):
    _run(tmp_path, "plain", monkeypatch, "optimizer=spm_sgd")
    capture = Rerun()
    (graph,) = _run(tmp_path, "graph", monkeypatch, "optimizer=spm_sgd", "trainer.cuda_graph=true", capture=capture)
    assert graph.eager == 25 and capture.captures == 0
    for k in range(3):
        pd.testing.assert_frame_equal(_rows(tmp_path / "plain" / f"seed_{k}"),
                                      _rows(tmp_path / "graph" / f"seed_{k}"), check_exact=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", [["optimizer=sav", "optimizer.restart=epoch"], ["optimizer=relsav"], ["optimizer=adam"]],
                         ids=lambda m: " ".join(m))
def test_on_cuda_the_captured_step_trains_as_the_plain_one(tmp_path, monkeypatch, method):
    """The capture itself: a replica batch on the GPU, its steady steps replayed from a CUDA
    graph, logs what the eager steps log."""
    made = []
    real = loop.Stacked.use_graph

    def use_graph(self, capture=None):
        real(self, capture)
        made.append(self.graph)
    hydra_inprocess(*TINY, *method, "device=cuda", f"hydra.run.dir={tmp_path / 'plain'}", monkeypatch=monkeypatch)
    monkeypatch.setattr(loop.Stacked, "use_graph", use_graph)
    hydra_inprocess(*TINY, *method, "device=cuda", "trainer.cuda_graph=true", f"hydra.run.dir={tmp_path / 'graph'}",
                    monkeypatch=monkeypatch)
    (graph,) = made
    assert graph.replays > 0
    for k in range(3):
        pd.testing.assert_frame_equal(_rows(tmp_path / "plain" / f"seed_{k}"), _rows(tmp_path / "graph" / f"seed_{k}"),
                                      check_exact=False, rtol=1e-12, atol=0)
