"""Samplers: pure functions ``fn(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x``.

The convention (k-diffusion; Karras et al. 2022):
- ``denoiser(x, sigma)`` returns the denoised estimate D(x; sigma), with ``sigma`` of shape [B];
- ``sigmas`` is a decreasing 1-D tensor ending in 0 (see ``schedules``);
- ``x`` enters as noise already scaled by ``sigmas[0]`` and leaves as a sample;
- ``generator`` is a ``torch.Generator`` or a sequence of them, one per sample (the latter keeps
  "same seed, same sample" true whatever the batch size; EDM's StackedRandomGenerator);
- ``callback``, if given, is called after every step with a dict of ``i``, ``x`` (after the
  step), ``sigma``, ``sigma_next`` and ``denoised``.

The probability-flow ODE in this convention is dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 3).
Samplers are registered by name in ``SAMPLERS``; the names are what ``sampler=`` accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .schedules import append_dims

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None


# --- shared algebra ------------------------------------------------------------------------------

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


def _prepare(x: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigmas in x's dtype, and a [B] vector of ones to broadcast a scalar sigma to the batch."""
    return sigmas.to(device=x.device, dtype=x.dtype), x.new_ones([x.shape[0]])


def _report(callback, i, x, sigma, sigma_next, denoised) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


# --- samplers ------------------------------------------------------------------------------------

@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                 callback=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (EDM Eq. 3); first order. ``generator`` is unused."""
    sigmas, s_in = _prepare(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        x = x + to_d(x, sigmas[i] * s_in, denoised) * (sigmas[i + 1] - sigmas[i])
        _report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                callback=None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun's second-order method, with
    "churn" noise injected at levels in [s_tmin, s_tmax]. s_churn = 0 gives the deterministic
    Algorithm 1. The last step (to sigma = 0) is an Euler step."""
    sigmas, s_in = _prepare(x, sigmas)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        x, sigma_hat = churn(x, sigma, gamma, s_noise, generator)
        denoised = denoiser(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat * s_in, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_next = x + d * dt
            d_next = to_d(x_next, sigma_next * s_in, denoiser(x_next, sigma_next * s_in))
            x = x + (d + d_next) / 2 * dt
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                           callback=None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling: an Euler step down to sigma_down, then fresh noise up to sigma_next.

    One formula covers three classic samplers (STYLE habit 14): in sigma coordinates it *is*
    DDIM with the same eta (Song et al. 2021a, Eq. 12), which is deterministic for eta = 0 (then
    equal to Euler) and is DDPM's ancestral sampler for eta = 1 (Ho et al. 2020, Algorithm 2)."""
    sigmas, s_in = _prepare(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma * s_in, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                callback=None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021a): :func:`sample_euler_ancestral` with eta defaulting to 0."""
    return sample_euler_ancestral(denoiser, x, sigmas, generator=generator, callback=callback, eta=eta)


def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                callback=None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): :func:`sample_euler_ancestral` with eta = 1."""
    return sample_euler_ancestral(denoiser, x, sigmas, generator=generator, callback=callback, eta=1.0)


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                    callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver in
    lambda = -log sigma that reuses the previous step's denoised estimate. ``generator`` is unused."""
    sigmas, s_in = _prepare(x, sigmas)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        if sigma_next == 0:
            x = denoised  # the limit of the update below as h -> infinity
        else:
            h = sigma.log() - sigma_next.log()  # lambda_next - lambda
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised_d
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}

# Deterministic samplers and their order of convergence on the probability-flow ODE (tested).
ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp_2m": 2}
