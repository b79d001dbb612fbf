"""Power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", EDM2, Sec. 3 and Appendix C).

A power-function EMA at time t (counted in samples seen) averages the weights seen at times tau <= t with the
profile p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1): recent weights count more, and the average's length is
a fixed fraction of the training so far, its relative standard deviation sigma_rel (Eq. 123). It is kept
during training by lerping with beta = (1 - dt / t)^(gamma + 1) after each step of dt samples (Eq. 127).

Post-hoc EMA: snapshots of two such averages (sigma_rel 0.05 and 0.10, say) saved at intervals span a space of
profiles; any other profile (another sigma_rel, at the end or earlier) is approximated by the least-squares
combination of the snapshots' profiles, their inner products being closed-form (Appendix C.3), and the same
combination of the snapshots' weights is the reconstructed EMA.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the profile whose relative standard deviation is ``sigma_rel`` (EDM2 Eq. 126):
    the largest real root of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s), s = sigma_rel^-2."""
    if not 0 < sigma_rel < 12 ** -0.5:
        raise ValueError(f"sigma_rel must be in (0, {12 ** -0.5:.4f}), got {sigma_rel}")
    s = sigma_rel ** -2
    return float(max(r.real for r in np.roots([1, 7, 16 - s, 12 - s]) if abs(r.imag) < 1e-9))


def gamma_to_sigma_rel(gamma: float) -> float:
    """Eq. 123: sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def profile_inner_product(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """The integral over tau of p_a(tau) p_b(tau) for the power-function profiles p(tau) = (g + 1) tau^g / t^(g + 1)
    on [0, t]: (g_a + 1)(g_b + 1) min(t_a, t_b)^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1)),
    written with the ratio of the times so that large t and gamma do not overflow."""
    lo, hi = min(t_a, t_b), max(t_a, t_b)
    g_lo, g_hi = (gamma_a, gamma_b) if t_a <= t_b else (gamma_b, gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) / ((gamma_a + gamma_b + 1) * hi) * (lo / hi) ** g_hi


def coefficients(snapshots: Sequence[tuple[float, float]], target: tuple[float, float]) -> np.ndarray:
    """Weights x (one per snapshot, summing to 1) whose combination of the snapshots' profiles is closest, in the
    L2 sense, to the ``target`` profile: solve A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_target> (EDM2
    Appendix C.3), then normalise. Snapshots and target are (t, sigma_rel)."""
    gammas = [sigma_rel_to_gamma(s) for _, s in snapshots]
    ts = [float(t) for t, _ in snapshots]
    t_out, g_out = float(target[0]), sigma_rel_to_gamma(target[1])
    A = np.array([[profile_inner_product(ti, gi, tj, gj) for tj, gj in zip(ts, gammas)] for ti, gi in zip(ts, gammas)])
    b = np.array([profile_inner_product(ti, gi, t_out, g_out) for ti, gi in zip(ts, gammas)])
    x = np.linalg.lstsq(A, b, rcond=None)[0]  # lstsq: snapshots may be nearly collinear
    return x / x.sum()


def reconstruct(states: Sequence[dict[str, torch.Tensor]], snapshots: Sequence[tuple[float, float]],
                target: tuple[float, float]) -> dict[str, torch.Tensor]:
    """The EMA of profile ``target`` (t, sigma_rel) as the combination :func:`coefficients` of the snapshots'
    weights ``states`` (state_dicts), computed in float64 and returned in each tensor's dtype."""
    x = coefficients(snapshots, target)
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for w, state in zip(x, states):
            acc += float(w) * state[key].double()
        out[key] = acc.to(first.dtype)
    return out


class PowerEMA:
    """Power-function EMAs of a model for the given ``sigma_rels`` (EDM2 Sec. 3.1), kept during training:
    ``averaged[i]`` is a frozen copy updated by :meth:`update` after every step."""

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float]):
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.averaged = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, model: nn.Module, batch_size: int, samples_seen: int) -> None:
        """After a step of ``batch_size`` samples, ``samples_seen`` counting it: beta = (1 - dt / t)^(gamma + 1)."""
        current = [p.detach() for p in model.parameters()]
        for gamma, averaged in zip(self.gammas, self.averaged):
            beta = (1 - batch_size / samples_seen) ** (gamma + 1)
            torch._foreach_lerp_(list(averaged.parameters()), current, 1 - beta)
            for b_avg, b in zip(averaged.buffers(), model.buffers()):
                b_avg.copy_(b)
