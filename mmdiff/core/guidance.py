"""Conditioning bound into a denoiser before sampling, and classifier-free guidance.

Samplers call ``denoiser(x, sigma)``; this module turns a conditional denoiser
``D(x, sigma, labels)`` into that form (STYLE habit 12: no extra_args dicts).
"""

from __future__ import annotations

import torch


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022), in data space:

        D_w(x, sigma) = D(x, sigma, null) + w * (D(x, sigma, labels) - D(x, sigma, null))

    Guidance in data space equals guidance in noise space, since eps = (x - D) / sigma is affine
    in D for fixed x and sigma. w = 1 is the conditional model (one network call), w = 0 the
    unconditional one. ``labels`` None means unconditional sampling (the null label).
    """

    def __init__(self, denoiser, labels: torch.Tensor | None, scale: float = 1.0, null_label: int | None = None):
        self.denoiser, self.labels, self.scale, self.null_label = denoiser, labels, float(scale), null_label

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.labels is None or self.scale == 1.0:
            return self.denoiser(x, sigma, self.labels)
        null = torch.full_like(self.labels, self.null_label)
        if self.scale == 0.0:
            return self.denoiser(x, sigma, null)
        cond, uncond = self.denoiser(
            torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([self.labels, null])
        ).chunk(2)
        return uncond + self.scale * (cond - uncond)


def drop_labels(labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability p (the training half of CFG)."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)
