"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1).

For a consistency model the denoiser is the consistency function f(x, sigma), which maps any point of a
probability-flow trajectory to its end at sigma = 0. One step is f(x, sigma_max); each further level of
``sigmas`` re-noises the estimate to that level with fresh noise and applies f again:
x <- f(x, sigma_i), then x <- x + sqrt(sigma_{i+1}^2 - sigma_min^2) n, where sigma_min is the smallest level
(0 here, since mmdiff's schedules end in 0: the plain re-noising x + sigma_{i+1} n). Any sigmas work, fitted
ones too (mode=fit_schedule); ``steps`` network evaluations for ``steps`` levels.
"""

from __future__ import annotations

import torch

from .common import Denoiser, Generator, prepare, randn_like, report


@torch.no_grad()
def sample_consistency(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                       callback=None) -> torch.Tensor:
    """x (noise at sigmas[0]) -> a sample: f at each level of ``sigmas`` (decreasing to 0), re-noised between."""
    sigmas, s_in = prepare(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        x = denoised + randn_like(x, generator) * sigma_next if sigma_next > 0 else denoised
        report(callback, i, x, sigma, sigma_next, denoised)
    return x
