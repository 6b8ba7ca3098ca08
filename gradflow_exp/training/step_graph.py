"""A replica batch's step captured in a CUDA graph (``trainer.cuda_graph=true``; docs/speed.md,
"CUDA graphs").

On a GPU a batch of small replicas spends its step launching some hundred small kernels;
replaying them as one CUDA graph removes that cost. A replay runs the kernels of the
captured step on the tensors they had then, so `StepGraph`:

- copies each batch into static buffers and steps on those (the step's input);
- relies on the optimizer keeping its state in place (`EnergyOptimizer._put`, torch's own
  optimizers with ``capturable=True``) and reading nothing back to the host
  (tests/optim/test_optim_no_sync.py);
- steps eagerly, on the same buffers and state, where a replay would not be that step:
  the first `WARMUP` steps (they create the state), a restart (``restart_due``: another
  path through the step), a batch of another shape (the epoch's last, short one), and an
  optimizer that draws noise (SPM: its generators would replay the capture's draws);
- captures again when a value the captured kernels hold as a constant changed (a
  scheduled Δt, a loss weight): `_key`.

Everything but the capture is the same on the CPU, where the steps run eagerly through the
buffers: tests/test_step_graph.py runs it there with a stand-in for the capture.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from gradflow_exp.optim import SPM

log = logging.getLogger("gradflow_exp")

WARMUP = 3          # eager steps before the capture (torch's CUDA graph notes: warm up first)


class CudaCapture:
    """Captures ``fn()`` into a CUDA graph on a side stream and replays it there."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device=device)

    @staticmethod
    def prepare(optimizer) -> None:
        """torch's optimizers (inside `PerReplicaLr`, or plain) keep their step count on the
        device, so that a replay reads the count it updated (``capturable=True``; before
        the first step or a loaded state, which then stays on the device)."""
        inner = getattr(optimizer, "inner", getattr(optimizer, "base", optimizer))
        for group in getattr(inner, "param_groups", []):
            if "capturable" in group:
                group["capturable"] = True

    def run(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``fn()`` eagerly on the side stream (where warm-up and replays run)."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = fn()
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def capture(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=self.stream):
            out = fn()

        def replay() -> torch.Tensor:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                graph.replay()
            torch.cuda.current_stream().wait_stream(self.stream)
            return out

        return replay


class StepGraph:
    """``step(x, y)`` (the optimizer's step on a batch; returns the losses) through static
    buffers; with ``capture`` (a `CudaCapture`, or a stand-in with its ``run`` and
    ``capture``) the steady steps are one captured graph's replays. See the module
    docstring for when a step runs eagerly instead."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], optimizer, loss_fn=None,
                 capture=None):
        self.step, self.optimizer, self.loss_fn, self.capture = step, optimizer, loss_fn, capture
        self.x = self.y = None
        self.replay, self.key = None, None
        self.eager = self.replays = 0
        self.draws = isinstance(optimizer, SPM)       # per-replica noise generators
        if capture is not None and self.draws:
            log.info("trainer.cuda_graph: SPM draws its noise from per-replica generators, which a graph "
                     "would replay unchanged; its steps run eagerly")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.x is None:
            self.x, self.y = torch.empty_like(x), torch.empty_like(y)
        if x.shape != self.x.shape or y.shape != self.y.shape:
            self.eager += 1
            return self._run(lambda: self.step(x, y))          # the short last batch, on its own tensors
        self.x.copy_(x)
        self.y.copy_(y)
        if (self.capture is None or self.draws or self.eager < WARMUP
                or getattr(self.optimizer, "restart_due", False)):
            self.eager += 1
            return self._run(lambda: self.step(self.x, self.y))
        key = self._key()
        if self.replay is None or key != self.key:
            self.replay, self.key = self.capture.capture(lambda: self.step(self.x, self.y)), key
        self.replays += 1
        return self.replay()

    def _run(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        return fn() if self.capture is None else self.capture.run(fn)

    def _key(self) -> tuple:
        """What the captured kernels hold as constants or addresses: the optimizer's
        hyperparameters (Python numbers; a tensor by its storage) and the loss's numbers."""
        def part(v):
            if isinstance(v, torch.Tensor):
                return ("tensor", v.data_ptr(), tuple(v.shape))
            if isinstance(v, (int, float, str, bool, type(None))):
                return v
            if isinstance(v, (tuple, list)):
                return tuple(part(u) for u in v)
            return type(v).__name__
        groups = tuple(tuple((k, part(v)) for k, v in sorted(g.items()) if k != "params")
                       for g in self.optimizer.param_groups)
        loss = tuple((k, v) for k, v in sorted(vars(self.loss_fn).items())
                     if isinstance(v, (int, float, bool))) if self.loss_fn is not None else ()
        return groups, loss
