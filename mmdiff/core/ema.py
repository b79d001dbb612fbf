"""Exponential moving average of weights, with the decay set as a half-life in samples seen.

EDM (Karras et al. 2022, training/training_loop.py): beta = 0.5 ** (batch_size / halflife), so
that the average keeps its meaning when the batch size changes (STYLE habit 16). An optional
ramp-up caps the half-life at ``rampup_ratio`` times the samples seen so far, so short runs
are not dominated by the random initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch_size: int, samples_seen: int, halflife_samples: float, rampup_ratio: float | None) -> float:
    halflife = float(halflife_samples)
    if rampup_ratio:
        halflife = min(halflife, samples_seen * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


class EMA:
    """Holds ``averaged``, a frozen copy of the model updated by :meth:`update`."""

    def __init__(self, model: nn.Module, halflife_samples: float = 50_000, rampup_ratio: float | None = 0.05):
        self.halflife_samples, self.rampup_ratio = halflife_samples, rampup_ratio
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, batch_size: int, samples_seen: int) -> float:
        """Blend the current weights in after a step; ``samples_seen`` counts this step's batch."""
        beta = ema_beta(batch_size, samples_seen, self.halflife_samples, self.rampup_ratio)
        avg = list(self.averaged.parameters())
        cur = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(avg, cur, 1 - beta)
        for b_avg, b in zip(self.averaged.buffers(), model.buffers()):
            b_avg.copy_(b)
        return beta
