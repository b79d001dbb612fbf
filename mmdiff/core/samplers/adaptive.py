"""An adaptive-step solver: DPM-Solver-12 in data-prediction form with error control (after Lu et al.
2022a, Sec. 4.2 and Algorithm 4, and k-diffusion's ``sample_dpm_adaptive``).

Each step from lambda to lambda + h (lambda = -log sigma) computes a first-order estimate (DDIM) and
a second-order one (DPM-Solver++(2S), midpoint); their difference estimates the local error of the
first. A step is accepted when the error, measured against ``atol + rtol * |x|`` (RMS per sample,
worst sample of the batch), is at most 1; the next h is scaled by safety * error^(-1/2).
The step sizes are shared by the batch, so here a sample does depend on the others in its batch.
"""

from __future__ import annotations

import torch

from .common import Denoiser, Generator, lambda_of, prepare, report


@torch.no_grad()
def sample_adaptive(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                    callback=None, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.1,
                    safety: float = 0.9, max_evals: int = 10_000, info: dict | None = None) -> torch.Tensor:
    """Integrate from sigmas[0] down to the smallest non-zero entry of ``sigmas`` with step sizes
    chosen for the tolerances, then step to 0 if ``sigmas`` ends in 0. Only the two end points of
    ``sigmas`` are used. ``info`` (a dict), if given, receives the number of network evaluations
    ("nfe") and of accepted and rejected steps. ``generator`` is unused."""
    sigmas, s_in = prepare(x, sigmas)
    positive = sigmas[sigmas > 0]
    lam, lam_end = lambda_of(positive[0]), lambda_of(positive[-1])
    h = torch.as_tensor(h_init, dtype=x.dtype, device=x.device)
    stats = {"nfe": 1, "accepted": 0, "rejected": 0}
    denoised = denoiser(x, positive[0] * s_in)
    i = 0
    while lam_end - lam > 1e-9 * lam_end.abs().clamp(min=1) and stats["nfe"] < max_evals:
        h = torch.minimum(h, lam_end - lam)
        sigma, sigma_next, sigma_mid = (-lam).exp(), (-(lam + h)).exp(), (-(lam + h / 2)).exp()
        x_low = (sigma_next / sigma) * x - torch.expm1(-h) * denoised
        x_mid = (sigma_mid / sigma) * x - torch.expm1(-h / 2) * denoised
        x_high = (sigma_next / sigma) * x - torch.expm1(-h) * denoiser(x_mid, sigma_mid * s_in)
        stats["nfe"] += 1
        scale = atol + rtol * torch.maximum(x_low.abs(), x.abs())
        error = ((x_high - x_low) / scale).pow(2).flatten(1).mean(1).sqrt().max()
        if error <= 1:
            x, lam = x_high, lam + h
            stats["accepted"] += 1
            new_denoised = denoiser(x, sigma_next * s_in)
            stats["nfe"] += 1
            report(callback, i, x, sigma, sigma_next, denoised)
            denoised, i = new_denoised, i + 1
        else:
            stats["rejected"] += 1
        h = h * (safety * error.clamp(min=1e-10) ** -0.5).clamp(0.2, 5.0)
    if sigmas[-1] == 0:
        x = denoised  # the final step to 0, as in every sampler here
        report(callback, i, x, positive[-1], sigmas[-1], denoised)
    if info is not None:
        info.update(stats)
    return x
