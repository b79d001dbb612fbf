"""Power-function EMA and post-hoc EMA reconstruction (EDM2), against closed forms and direct averages."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmdiff.core.phema import (PowerEMA, coefficients, gamma_to_sigma_rel, profile_inner_product, reconstruct,
                               sigma_rel_to_gamma)


def test_sigma_rel_and_gamma_are_inverse():
    for s in (0.01, 0.05, 0.08, 0.10, 0.2):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-12)
    # EDM2's two tracked profiles (Sec. 3.1): sigma_rel 0.05 and 0.10 are gamma of about 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    with pytest.raises(ValueError):
        sigma_rel_to_gamma(0.5)


def test_profile_inner_product_against_quadrature():
    for (ta, ga, tb, gb) in [(1.0, 3.0, 1.0, 3.0), (0.6, 6.94, 1.0, 16.97), (2e6, 16.97, 1.5e6, 6.94)]:
        lo = min(ta, tb)
        tau = np.linspace(0, lo, 400_001)
        f = (ga + 1) * tau ** ga / ta ** (ga + 1) * (gb + 1) * tau ** gb / tb ** (gb + 1)
        assert profile_inner_product(ta, ga, tb, gb) == pytest.approx(np.trapezoid(f, tau), rel=1e-6)


def trajectory(steps: int, dim: int = 3) -> list[torch.Tensor]:
    """Scripted weights theta_k after step k: smooth, with some wiggle."""
    k = torch.arange(1, steps + 1, dtype=torch.float64)[:, None]
    return list(torch.cat([torch.sin(k / 37 + d) + 0.3 * torch.cos(k / 7 * (d + 1)) for d in range(dim)], 1))


def run_ema(thetas, sigma_rels, batch=4, snapshot_every=None):
    model = nn.Linear(3, 1, bias=False).double()
    ema, snaps = None, []
    for k, theta in enumerate(thetas, start=1):
        with torch.no_grad():
            model.weight.copy_(theta[None])
        if ema is None:
            ema = PowerEMA(model, sigma_rels)
        ema.update(model, batch, k * batch)
        if snapshot_every and k % snapshot_every == 0:
            for s, avg in zip(sigma_rels, ema.averaged):
                snaps.append((k * batch, s, {n: v.clone() for n, v in avg.state_dict().items()}))
    return ema, snaps


def test_the_discrete_update_is_the_profile_integrated_over_each_step():
    """beta_k = (1 - 1/k)^(gamma + 1) makes theta_k's weight after n steps (k/n)^(gamma+1) - ((k-1)/n)^(gamma+1):
    the profile (gamma + 1) tau^gamma / t^(gamma + 1) integrated over step k exactly."""
    thetas = trajectory(50)
    ema, _ = run_ema(thetas, [0.08])
    g, n = sigma_rel_to_gamma(0.08), 50
    weights = [(k / n) ** (g + 1) - ((k - 1) / n) ** (g + 1) for k in range(1, n + 1)]
    expected = sum(w * t for w, t in zip(weights, thetas))
    assert torch.allclose(ema.averaged[0].weight[0], expected, rtol=0, atol=1e-12)


def test_post_hoc_reconstruction_matches_an_ema_tracked_directly():
    steps = 400
    thetas = trajectory(steps)
    _, snaps = run_ema(thetas, [0.05, 0.10], snapshot_every=20)
    direct, _ = run_ema(thetas, [0.08])
    states = [s for _, _, s in snaps]
    at = [(t, s) for t, s, _ in snaps]
    rebuilt = reconstruct(states, at, (steps * 4, 0.08))["weight"]
    truth = direct.averaged[0].weight
    spread = (snaps[-1][2]["weight"] - snaps[-2][2]["weight"]).abs().max()  # the 0.05 and 0.10 EMAs differ by this
    assert (rebuilt - truth).abs().max() < 0.01 * spread
    # a target that is one of the snapshots is that snapshot (to the solve's precision)
    exact = reconstruct(states, at, at[-1])["weight"]
    assert torch.allclose(exact, snaps[-1][2]["weight"], rtol=0, atol=1e-9)
    assert sum(coefficients(at, (steps * 4, 0.08))) == pytest.approx(1.0, abs=1e-12)
    assert not math.isclose(float(truth.abs().sum()), float(snaps[-1][2]["weight"].abs().sum()))
