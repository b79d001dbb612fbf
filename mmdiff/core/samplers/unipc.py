"""UniPC (Zhao et al. 2023): a unified predictor-corrector of any order for the data-prediction ODE.

In lambda = -log sigma the ODE is dx/dlambda = D - x (see dpmpp.py). The predictor UniP-p
extrapolates D from the last p estimates; the corrector UniC re-solves the same step once the model
has been evaluated at the predicted point, which raises the order by one at no extra evaluation:
that evaluation is the one the next step needs anyway. B(h) is the free function of the paper's
Eq. 5-6: "bh1" B(h) = h, "bh2" B(h) = e^h - 1 (here with h -> -h, the data-prediction form).
The coefficients follow Zhao et al., Algorithms 1-2 and their reference implementation.
"""

from __future__ import annotations


import torch

from .common import Denoiser, Generator, lambda_of, prepare, report


def _coefficients(h: torch.Tensor, rks: list[torch.Tensor], order: int, variant: str):
    """R [order, order] and b [order] of the linear system for the rho's, with B(h) and h phi_1."""
    hh = -h  # data prediction integrates e^{-h}
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if variant == "bh1" else torch.expm1(hh)
    r = torch.stack(rks)
    R, b, factorial = [], [], 1
    for i in range(1, order + 1):
        R.append(r ** (i - 1))
        b.append(h_phi_k * factorial / B_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(R), torch.stack(b), B_h, h_phi_1


def _differences(history, lam_0, h, order):
    """r_k = (lambda_k - lambda_0) / h and D1_k = (D_k - D_0) / r_k for the order - 1 previous estimates."""
    d_0 = history[-1][0]
    rks, d1s = [], []
    for k in range(1, order):
        d_k, lam_k = history[-(k + 1)]
        r = (lam_k - lam_0) / h
        rks.append(r)
        d1s.append((d_k - d_0) / r)
    return rks + [torch.ones_like(h)], d1s


def _combine(rhos, d1s):
    return sum(rho * d for rho, d in zip(rhos, d1s))


def _predict(x, history, sigma, sigma_next, order, variant):
    """UniP-p: from x at sigma to sigma_next, using the last ``order`` denoised estimates."""
    d_0, lam_0 = history[-1]
    h = lambda_of(sigma_next) - lam_0
    rks, d1s = _differences(history, lam_0, h, order)
    R, b, B_h, h_phi_1 = _coefficients(h, rks, order, variant)
    x_next = (sigma_next / sigma) * x - h_phi_1 * d_0
    if order == 2:
        x_next = x_next - B_h * 0.5 * d1s[0]  # the paper's simplified rho for p = 2
    elif order > 2:
        rhos = torch.linalg.solve(R[:-1, :-1], b[:-1])
        x_next = x_next - B_h * _combine(rhos, d1s)
    return x_next


def _correct(x_last, history, d_new, sigma_last, sigma, order, variant):
    """UniC-p: redo the step x_last (sigma_last) -> sigma with the model's estimate d_new at its end."""
    d_0, lam_0 = history[-1]
    h = lambda_of(sigma) - lam_0
    rks, d1s = _differences(history, lam_0, h, order)
    R, b, B_h, h_phi_1 = _coefficients(h, rks, order, variant)
    rhos = torch.full_like(b[:1], 0.5) if order == 1 else torch.linalg.solve(R, b)
    x = (sigma / sigma_last) * x_last - h_phi_1 * d_0
    return x - B_h * (_combine(rhos[:-1], d1s) + rhos[-1] * (d_new - d_0))


@torch.no_grad()
def sample_unipc(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator = None,
                 callback=None, order: int = 2, variant: str = "bh2", corrector: bool = True,
                 lower_order_final: bool = True) -> torch.Tensor:
    """UniPC with predictor order ``order`` (warming up from 1) and the UniC corrector: order + 1 in all
    (order 3 by default), one evaluation per step. ``variant`` is "bh1" or "bh2";
    ``lower_order_final`` lowers the order of the last steps when there are fewer than 15 (as the
    reference implementation does, for stability at few steps). ``generator`` is unused."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if order < 1:
        raise ValueError(f"unipc needs order >= 1, got {order}")
    sigmas, s_in = prepare(x, sigmas)
    n = len(sigmas) - 1
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (denoised, lambda), most recent last
    x_last, last_order = None, 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        if sigma_next == 0:
            x = denoised  # the final step to 0 (a corrected x here would not be used)
            report(callback, i, x, sigma, sigma_next, denoised)
            break
        if corrector and x_last is not None:
            x = _correct(x_last, history, denoised, sigmas[i - 1], sigma, last_order, variant)
        history = (history + [(denoised, lambda_of(sigma))])[-order:]
        this_order = min(order, len(history))
        if lower_order_final and n < 15:
            this_order = min(this_order, n - 1 - i)
        x_last, last_order = x, this_order
        x = _predict(x, history, sigma, sigma_next, this_order, variant)
        report(callback, i, x, sigma, sigma_next, denoised)
    return x
