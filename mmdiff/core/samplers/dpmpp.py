"""The DPM-Solver++ family (Lu et al. 2022b): exponential integrators in lambda = -log sigma.

Along lambda the probability-flow ODE is linear in x, dx/dlambda = D(x) - x, so a step of size h
integrates the linear part exactly,

    x(lambda + h) = e^{-h} x(lambda) + integral_0^h e^{-(h - u)} D(lambda + u) du,

and approximates only D: constant (first order, DDIM), linear from the previous step (2M), a
midpoint (2S), or quadratic from the two previous steps (3M). The SDE variants (Lu et al. 2022b,
Sec. 4; k-diffusion) add fresh noise with eta > 0 and reduce to their ODE versions at eta = 0.
"""

from __future__ import annotations

import torch

from .common import Denoiser, Generator, ancestral_step, lambda_of, prepare, randn_like, report, to_d


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                              generator: Generator = None, callback=None, eta: float = 1.0,
                              s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = 1/2) to sigma_down, then ancestral noise up to
    sigma_next as in :func:`~mmdiff.core.samplers.euler.sample_euler_ancestral`. Two evaluations per
    step; eta = 0 is the deterministic single-step second-order solver."""
    sigmas, s_in = prepare(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma * s_in, denoised) * (sigma_down - sigma)
        else:
            h = lambda_of(sigma_down) - lambda_of(sigma)
            sigma_mid = sigma * torch.exp(-h / 2)
            x_mid = (sigma_mid / sigma) * x - torch.expm1(-h / 2) * denoised
            denoised_mid = denoiser(x_mid, sigma_mid * s_in)
            x = (sigma_down / sigma) * x - torch.expm1(-h) * denoised_mid
        if sigma_next > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
        report(callback, i, x, sigma, sigma_next, denoised)
    return x


def _sde_noise(x, sigma_next, eta_h, s_noise, generator):
    """The fresh noise of an SDE step: std sigma_next * sqrt(1 - e^{-2 eta h}) (Lu et al. 2022b, Eq. 18)."""
    return randn_like(x, generator) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                        callback=None, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, Sec. 4; k-diffusion's ``sample_dpmpp_2m_sde``): the 2M step
    for the SDE with noise scale eta; ``solver_type`` "midpoint" or "heun" picks the second-order
    correction. eta = 0 with "midpoint" is DPM-Solver++(2M): :func:`sample_dpmpp_2m` calls this."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    sigmas, s_in = prepare(x, sigmas)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        if sigma_next == 0:
            x = denoised
        else:
            h = lambda_of(sigma_next) - lambda_of(sigma)
            eta_h = eta * h
            phi = -torch.expm1(-h - eta_h)  # 1 - e^{-(1 + eta) h}
            x = (sigma_next / sigma) * torch.exp(-eta_h) * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "midpoint":
                    # At eta = 0, phi = 1 - e^{-h} and this is Lu et al. 2022b's Algorithm 2 (2M):
                    # x = (sigma_next / sigma) x + phi D_r with D_r = (1 + 1/(2r)) D - 1/(2r) D_old
                    #   = (sigma_next / sigma) x + phi D + phi / (2r) (D - D_old).
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
                else:  # the exact integral of the linear extrapolation of D
                    x = x + (1 - phi / (h + eta_h)) * (1 / r) * (denoised - old_denoised)
            if eta > 0:
                x = x + _sde_noise(x, sigma_next, eta_h, s_noise, generator)
            h_last = h
        old_denoised = denoised
        report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                    callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): a second-order multistep solver that reuses the
    previous step's denoised estimate; one evaluation per step. It is :func:`sample_dpmpp_2m_sde` with
    eta = 0 and the midpoint correction (the algebra is in that function's comment); ``generator`` is unused."""
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, generator=generator, callback=callback, eta=0.0,
                               solver_type="midpoint")


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                        callback=None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (after k-diffusion's ``sample_dpmpp_3m_sde``): D is extrapolated quadratically
    from the last three denoised estimates (Lu et al. 2022b, Sec. 3.3 for the multistep idea) and the
    extrapolation is integrated exactly. eta = 0 is the deterministic third-order multistep solver;
    one evaluation per step."""
    sigmas, s_in = prepare(x, sigmas)
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        if sigma_next == 0:
            x = denoised
        else:
            h = lambda_of(sigma_next) - lambda_of(sigma)
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x - torch.expm1(-h_eta) * denoised  # e^{-h_eta} = (sigma_next / sigma) e^{-eta h}
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = torch.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                # d1 ~ h D' and d2 ~ h^2 D'' / 2, and the integral of e^{-(h-u)} u^2 / 2 over [0, h] is
                # -h^2 phi_3, so the quadratic term is -2 phi_3 d2 (with -phi_3 d2, as in k-diffusion's
                # sample_dpmpp_3m_sde, the method is second order only: tests/core/test_samplers.py)
                x = x + phi_2 * d1 - 2 * phi_3 * d2
            elif h_1 is not None:
                phi_2 = torch.expm1(-h_eta) / h_eta + 1
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if eta > 0:
                x = x + _sde_noise(x, sigma_next, eta * h, s_noise, generator)
            d_1, d_2, h_1, h_2 = denoised, d_1, h, h_1
        report(callback, i, x, sigma, sigma_next, denoised)
    return x
