"""Shared algebra of the samplers: noise per sample, the ODE's derivative, ancestral and churn steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..schedules import append_dims

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None

def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise shaped like x; one draw per sample when ``generator`` is a sequence."""
    # Noise is drawn on the generator's device, then moved: a CPU generator gives the same numbers
    # whether the model runs on the CPU or a GPU.
    if generator is None:
        return torch.randn(x.shape, dtype=x.dtype, device=x.device)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device) for g in generator]).to(x.device)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE's derivative dx/dsigma = (x - D) / sigma (EDM Eq. 3 with sigma(t) = t)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the step sigma -> sigma_next into a deterministic step to sigma_down and fresh noise
    of std sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2. With eta = 1 this is the DDPM posterior
    (Ho et al. 2020, Eq. 7); in general it is DDIM's sigma_t(eta) (Song et al. 2021a, Eq. 16)
    divided by sqrt(alpha_bar_next)."""
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


def churn(x: torch.Tensor, sigma: torch.Tensor, gamma: float, s_noise: float, generator: Generator):
    """EDM Algorithm 2, lines 4-6: raise the noise level to sigma_hat = sigma (1 + gamma) by adding
    fresh noise of std sqrt(sigma_hat^2 - sigma^2)."""
    sigma_hat = sigma * (1 + gamma)
    if gamma > 0:
        x = x + randn_like(x, generator) * s_noise * (sigma_hat**2 - sigma**2).sqrt()
    return x, sigma_hat


def prepare(x: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigmas in x's dtype, and a [B] vector of ones to broadcast a scalar sigma to the batch."""
    return sigmas.to(device=x.device, dtype=x.dtype), x.new_ones([x.shape[0]])


def report(callback, i, x, sigma, sigma_next, denoised) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})




def lambda_of(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = -log sigma, the half log-SNR of the VP process (Lu et al. 2022): the ODE is linear in x
    along lambda, dx/dlambda = D - x, which the DPM-Solver family integrates exactly up to D."""
    return -sigma.log()
