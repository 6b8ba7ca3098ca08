"""Diagnostics at chosen epochs, for the loop's logged rows: the Hessian spectrum
(`hessian`) and the gradient signal-to-noise (`noise`). Both read the model and the
training loss through `gradflow_exp.optim.BatchClosure` (so a composite loss is
included), never change the parameters, and draw from their own generators.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gradflow_exp.diagnostics.hessian import hessian_summary
from gradflow_exp.diagnostics.noise import gradient_noise
from gradflow_exp.optim import BatchClosure

HESSIAN_KEYS = ("hess_lambda_max", "hess_lambda_min", "hess_neg_count", "hess_grad_norm",
                "stability_limit", "sharpness_ratio", "hess_verdict")
NOISE_KEYS = ("grad_norm_full", "grad_norm_batch_mean", "grad_noise", "grad_snr")


class Diagnostics:
    """``due(epoch)``: whether epoch needs a row; ``row(...)``: the columns for a logged row
    (fixed keys, NaN where a diagnostic is not due, so metrics.csv keeps one header)."""

    def __init__(self, node: dict, batch_size: int, epochs: int, seed: int):
        self.hessian = node.get("hessian") or {}
        self.noise = node.get("grad_noise") or {}
        self.hess_every = self.hessian.get("every")
        self.noise_every = self.noise.get("every")
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed

    def _on(self, every, epoch: int) -> bool:
        return bool(every) and (epoch % every == 0 or epoch == self.epochs)

    def due(self, epoch: int) -> bool:
        return self._on(self.hess_every, epoch) or self._on(self.noise_every, epoch)

    def row(self, epoch: int, model, step: float, loss_fn, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """``step``: the run's current Δt·K (the stability limit is 2/step)."""
        out = {}
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if self.hess_every:
            out.update(dict.fromkeys(HESSIAN_KEYS, math.nan))
            if self._on(self.hess_every, epoch):
                h = self.hessian
                rows = h.get("samples") or x.shape[0]
                out.update(hessian_summary(BatchClosure(model, loss_fn, x[:rows], y[:rows]).functional_loss,
                                           params, k=h["k"], tol=h["tol"], grad_tol=h["grad_tol"], step=step,
                                           seed=self.seed, maxiter=h.get("maxiter"),
                                           lanczos_tol=h.get("lanczos_tol", 0.0)))
        if self.noise_every:
            out.update(dict.fromkeys(NOISE_KEYS, math.nan))
            if self._on(self.noise_every, epoch):
                # The batches depend on (seed, epoch) alone: reproducible, and nothing to checkpoint.
                gen = torch.Generator(device=x.device).manual_seed(
                    int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
                out.update(gradient_noise(
                    lambda idx: BatchClosure(model, loss_fn, x, y) if idx is None else
                    BatchClosure(model, loss_fn, x[idx], y[idx]),
                    params, x.shape[0], self.batch_size, gen))
        return out


def build_diagnostics(node: dict | None, batch_size: int, epochs: int, seed: int) -> Diagnostics | None:
    """None when every diagnostic is off (the loop then does nothing extra)."""
    node = node or {}
    if not ((node.get("hessian") or {}).get("every") or (node.get("grad_noise") or {}).get("every")):
        return None
    return Diagnostics(node, batch_size, epochs, seed)
