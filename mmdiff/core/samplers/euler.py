"""Samplers that step the probability-flow ODE in sigma (EDM Eq. 3): Euler, Heun, DPM-2, LMS, and the
ancestral family (ancestral Euler = DDIM with eta = DDPM at eta = 1)."""

from __future__ import annotations

import math

import torch

from .common import Denoiser, Generator, ancestral_step, churn, prepare, randn_like, report, to_d


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                 callback=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (EDM Eq. 3); first order. ``generator`` is unused."""
    sigmas, s_in = prepare(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        x = x + to_d(x, sigmas[i] * s_in, denoised) * (sigmas[i + 1] - sigmas[i])
        report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                callback=None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun's second-order method, with
    "churn" noise injected at levels in [s_tmin, s_tmax]. s_churn = 0 gives the deterministic
    Algorithm 1. The last step (to sigma = 0) is an Euler step."""
    sigmas, s_in = prepare(x, sigmas)
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
        report(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_dpm_2(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                 callback=None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-2 in sigma (Lu et al. 2022a, Algorithm 4 with r = 1/2; k-diffusion's ``sample_dpm_2``):
    the explicit midpoint method with the midpoint at the geometric mean of the two noise levels.
    Second order, two evaluations per step (one on the last, an Euler step to 0). Churn as in Heun."""
    sigmas, s_in = prepare(x, sigmas)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        x, sigma_hat = churn(x, sigma, gamma, s_noise, generator)
        denoised = denoiser(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat * s_in, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            sigma_mid = (sigma_hat.log() + sigma_next.log()).div(2).exp()
            x_mid = x + d * (sigma_mid - sigma_hat)
            d_mid = to_d(x_mid, sigma_mid * s_in, denoiser(x_mid, sigma_mid * s_in))
            x = x + d_mid * (sigma_next - sigma_hat)
        report(callback, i, x, sigma, sigma_next, denoised)
    return x


# 4-point Gauss-Legendre rule on [-1, 1]: exact for polynomials up to degree 7 (LMS up to order 8)
_GL_NODES = (-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526)
_GL_WEIGHTS = (0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538)


def lms_coefficient(sigmas, i: int, j: int, order: int) -> float:
    """The weight of the derivative at sigmas[i - j] in the variable-step Adams-Bashforth step from
    sigmas[i] to sigmas[i + 1]: the integral over that interval of the Lagrange basis polynomial that
    is 1 at sigmas[i - j] and 0 at the other order - 1 nodes (exact: Gauss-Legendre quadrature of a
    polynomial of degree < 8, in float64). ``sigmas``: a sequence of floats (or a 1-D tensor)."""
    if order > 8:
        raise ValueError(f"lms supports order <= 8, got {order}")
    nodes = [float(sigmas[i - k]) for k in range(order)]
    a, b = float(sigmas[i]), float(sigmas[i + 1])
    half, mid = (b - a) / 2, (a + b) / 2
    total = 0.0
    for t, w in zip(_GL_NODES, _GL_WEIGHTS):
        s, basis = mid + half * t, 1.0
        for k in range(order):
            if k != j:
                basis *= (s - nodes[k]) / (nodes[j] - nodes[k])
        total += w * basis
    return total * half


@torch.no_grad()
def sample_lms(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
               callback=None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth) on the probability-flow ODE in sigma, with coefficients for
    the actual (uneven) step sizes (k-diffusion's ``sample_lms``). Order ``order`` once enough
    derivatives are stored (lower at the start); one evaluation per step."""
    if order < 1:
        raise ValueError(f"lms needs order >= 1, got {order}")
    sigmas, s_in = prepare(x, sigmas)
    levels = sigmas.detach().cpu().double().tolist()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        ds.insert(0, to_d(x, sigmas[i] * s_in, denoised))
        del ds[order:]
        if levels[i + 1] == 0:
            x = denoised  # an Euler step to 0, as in every sampler here (extrapolating the polynomial is unstable)
        else:
            for j, d in enumerate(ds):
                x = x + lms_coefficient(levels, i, j, len(ds)) * d
        report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                           callback=None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling: an Euler step down to sigma_down, then fresh noise up to sigma_next.

    One formula covers three classic samplers (STYLE habit 14): in sigma coordinates it *is*
    DDIM with the same eta (Song et al. 2021a, Eq. 12), which is deterministic for eta = 0 (then
    equal to Euler) and is DDPM's ancestral sampler for eta = 1 (Ho et al. 2020, Algorithm 2)."""
    sigmas, s_in = prepare(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma * s_in, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
        report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                callback=None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021a): :func:`sample_euler_ancestral` with eta defaulting to 0."""
    return sample_euler_ancestral(denoiser, x, sigmas, generator=generator, callback=callback, eta=eta)


def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                callback=None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): :func:`sample_euler_ancestral` with eta = 1."""
    return sample_euler_ancestral(denoiser, x, sigmas, generator=generator, callback=callback, eta=1.0)
