import pytest
import torch

from mmdiff.core.losses import EDMWeighting, MinSNR, UniformTarget, denoising_loss
from mmdiff.core.precond import PRECONDS, EDMPrecond, EpsPrecond, VPrecond


def setup(sigma_data=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 1, 8, generator=g, dtype=torch.float64) * sigma_data
    n = torch.randn(6, 1, 8, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 50.0], dtype=torch.float64)
    F = torch.randn(6, 1, 8, generator=g, dtype=torch.float64)  # an arbitrary network output
    return x0, n, sigma, x0 + sigma.view(-1, 1, 1) * n, F


def denoised_from(p, x, sigma, F):
    c_skip, c_out, _ = (c.view(-1, 1, 1) for c in p.scalings(sigma))
    return c_skip * x + c_out * F


@pytest.mark.parametrize("name", sorted(PRECONDS))
def test_uniform_weighting_is_plain_mse_in_the_target(name):
    x0, n, sigma, x, F = setup()
    p = PRECONDS[name](None, 0.5)
    loss = denoising_loss(denoised_from(p, x, sigma, F), x0, UniformTarget()(sigma, p))
    assert torch.allclose(loss, ((F - p.target(x0, x, sigma)) ** 2).flatten(1).mean(1))


def test_min_snr_matches_hang_et_al_for_eps_and_v():
    gamma = 5.0
    x0, n, sigma, x, F = setup(sigma_data=1.0)
    snr = 1 / sigma**2
    # eps-prediction: min(SNR, gamma) / SNR * ||eps_hat - eps||^2   (Hang et al. 2023, Eq. 8)
    p = EpsPrecond(None, 1.0)
    loss = denoising_loss(denoised_from(p, x, sigma, F), x0, MinSNR(gamma)(sigma, p))
    assert torch.allclose(loss, snr.clamp(max=gamma) / snr * ((F - n) ** 2).flatten(1).mean(1))
    # v-prediction: min(SNR, gamma) / (SNR + 1) * ||v_hat - v||^2
    p = VPrecond(None, 1.0)
    loss = denoising_loss(denoised_from(p, x, sigma, F), x0, MinSNR(gamma)(sigma, p))
    v = p.target(x0, x, sigma)
    assert torch.allclose(loss, snr.clamp(max=gamma) / (snr + 1) * ((F - v) ** 2).flatten(1).mean(1))


def test_edm_weighting_is_eq8_and_equals_uniform_under_edm_preconditioning():
    sigma = torch.tensor([0.002, 0.3, 80.0], dtype=torch.float64)
    p = EDMPrecond(None, 0.5)
    lam = EDMWeighting()(sigma, p)
    assert torch.allclose(lam, (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    assert torch.allclose(lam, UniformTarget()(sigma, p))


def test_denoising_loss_is_per_sample():
    d, x0 = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    assert denoising_loss(d, x0, torch.tensor([1.0, 2.0, 3.0])).tolist() == [1.0, 2.0, 3.0]


def test_learned_uncertainty_weighting_is_edm2s_and_is_optimal_at_the_log_error():
    """EDM2 Eq. 21: loss = weight * error / exp(u) + u; for a fixed error its minimum over u is u = log(weight *
    error), where the weighted loss per noise level is 1 + u."""
    from mmdiff.core.losses import denoising_loss
    from mmdiff.core.precond import EDMPrecond
    g = torch.Generator().manual_seed(0)
    x0, d = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    w = torch.rand(5, generator=g) + 0.5
    base = denoising_loss(d, x0, w)
    u = torch.log(base).requires_grad_(True)
    loss = denoising_loss(d, x0, w, logvar=u)
    assert torch.allclose(loss, 1 + u.detach(), rtol=1e-6)
    loss.sum().backward()
    assert u.grad.abs().max() < 1e-6  # stationary: the minimum
    p = EDMPrecond(torch.nn.Identity(), uncertainty=8)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    assert p.logvar(sigma).shape == (3,) and EDMPrecond(torch.nn.Identity()).logvar(sigma) is None
    assert {n for n, _ in p.named_parameters()} == {"logvar_head.weight", "logvar_head.bias"}  # trained with the net
