"""Gradient signal-to-noise across mini-batches (docs/sources.md, the notes on stalls and adaptive methods).

At θ, with I the training loss and a batch size b:

    g_full  = ∇I(θ) on the whole training set,
    g_1..g_B  the gradients on B = ⌊n/b⌋ disjoint batches of one random permutation
              (the last n mod b samples of it are left out),
    ḡ = (1/B) Σ g_j,      noise = (1/B) Σ ‖g_j − ḡ‖²,      SNR = ‖ḡ‖² / noise.

When b divides n, ḡ = g_full exactly (every loss here is a mean over samples, plus a
sample-free penalty). noise is accumulated around g_full in one pass and corrected,
(1/B)Σ‖g_j − ḡ‖² = (1/B)Σ‖g_j − g_full‖² − ‖ḡ − g_full‖², so only a few n-vectors are held.
Full batch (B = 1): noise = 0 and SNR = inf.
"""
from __future__ import annotations

import torch
from torch.func import grad


def _flat_grad(loss, params: dict[str, torch.Tensor]) -> torch.Tensor:
    g = grad(loss)({n: p.detach() for n, p in params.items()})
    return torch.cat([g[n].reshape(-1) for n in params])


def gradient_noise(closure_for, params: dict[str, torch.Tensor], n: int, batch_size: int,
                   generator: torch.Generator) -> dict[str, float]:
    """``closure_for(idx)`` gives a `BatchClosure` on the training rows ``idx`` (None: all);
    ``generator`` draws the permutation (not the run's own: the training stream is untouched)."""
    g_full = _flat_grad(closure_for(None).functional_loss, params)
    batches = n // batch_size
    perm = torch.randperm(n, generator=generator, device=generator.device)
    g_sum = torch.zeros_like(g_full)
    norm_sum = sq_dev_sum = 0.0
    for j in range(batches):
        g = _flat_grad(closure_for(perm[j * batch_size:(j + 1) * batch_size]).functional_loss, params)
        g_sum += g
        norm_sum += float(g.norm())
        sq_dev_sum += float((g - g_full).pow(2).sum())
    g_mean = g_sum / batches
    noise = max(0.0, sq_dev_sum / batches - float((g_mean - g_full).pow(2).sum()))
    signal = float(g_mean.pow(2).sum())
    return {"grad_norm_full": float(g_full.norm()), "grad_norm_batch_mean": norm_sum / batches,
            "grad_noise": noise, "grad_snr": signal / noise if noise > 0 else float("inf")}
