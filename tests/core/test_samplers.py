"""Samplers against exact answers: the ideal denoiser of a Gaussian mixture (mmdiff.core.analytic)."""

import math

import pytest
import torch

from mmdiff.core import schedules
from mmdiff.core.analytic import GaussianMixture
from mmdiff.core.samplers import ORDERS, SAMPLERS, ancestral_step, sample_euler, sample_heun

SIGMA_MIN, SIGMA_MAX = 0.005, 40.0


@pytest.fixture(scope="module")
def mixture():
    # data of rank 3 ([B, 2, 3]): the samplers must not assume images
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 3, generator=g, dtype=torch.float64) * 1.5
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.4]), torch.tensor([0.5, 0.3, 0.2]))


def start_noise(n, seed=1):
    return torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SIGMA_MAX


@pytest.fixture(scope="module")
def reference(mixture):
    """A fine solve of the probability-flow ODE: Heun with 4096 steps."""
    x = start_noise(32)
    return x, sample_heun(mixture.denoise, x, schedules.karras(4096, SIGMA_MIN, SIGMA_MAX))


def fitted_order(mixture, reference, name, steps):
    x_T, x_ref = reference
    errors = []
    for n in steps:
        x = SAMPLERS[name](mixture.denoise, x_T, schedules.karras(n, SIGMA_MIN, SIGMA_MAX))
        errors.append((x - x_ref).flatten(1).norm(dim=1).mean().item())
    # slope of log(error) against log(steps), by least squares
    lx = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    return -slope.item(), errors


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_deterministic_samplers_converge_at_their_order(mixture, reference, name):
    steps = [32, 64, 128, 256] if ORDERS[name] == 1 else [16, 32, 64, 128]
    order, errors = fitted_order(mixture, reference, name, steps)
    assert errors[-1] < errors[0] / 2 ** (len(steps) - 1)  # converging at all
    assert ORDERS[name] - 0.25 < order < ORDERS[name] + 0.6, (order, errors)


def test_ddim_with_eta_zero_is_euler(mixture):
    x, sigmas = start_noise(8), schedules.karras(10, SIGMA_MIN, SIGMA_MAX)
    assert torch.allclose(SAMPLERS["ddim"](mixture.denoise, x, sigmas), sample_euler(mixture.denoise, x, sigmas),
                          rtol=1e-12, atol=1e-12)


def test_ddpm_is_hos_ancestral_sampler_on_the_discrete_vp_process(mixture):
    """Ho et al. 2020, Eq. 6-7 and Algorithm 2, written in the VP coordinates x_t = sqrt(alpha_bar) x,
    on 50 of DDPM's 1000 timesteps (respaced betas, Nichol & Dhariwal 2021)."""
    alpha_bar = schedules.ddpm_linear_alpha_bar()
    t = torch.linspace(999, 0, 50).round().long()
    ab = alpha_bar[t]
    sigmas = schedules.append_zero(schedules.sigma_from_alpha_bar(ab))
    x_T = start_noise(16) / SIGMA_MAX * sigmas[0]
    ours = SAMPLERS["ddpm"](mixture.denoise, x_T, sigmas, generator=torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    x_t = x_T * ab[0].sqrt()  # VP coordinates
    for i in range(50):
        ab_t, ab_prev = ab[i], (ab[i + 1] if i + 1 < 50 else torch.tensor(1.0, dtype=torch.float64))
        beta_t = 1 - ab_t / ab_prev
        x0_hat = mixture.denoise(x_t / ab_t.sqrt(), sigmas[i].expand(16))
        mean = (ab_prev.sqrt() * beta_t / (1 - ab_t)) * x0_hat + ((1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t)) * x_t
        var = (1 - ab_prev) / (1 - ab_t) * beta_t
        x_t = mean + (var.sqrt() * torch.randn(x_t.shape, generator=g, dtype=x_t.dtype) if i + 1 < 50 else 0)
    assert torch.allclose(ours, x_t, rtol=1e-9, atol=1e-9)


def test_ancestral_step_splits_the_variance():
    sigma, sigma_next = torch.tensor(2.0), torch.tensor(0.5)
    for eta in [0.0, 0.5, 1.0]:
        down, up = ancestral_step(sigma, sigma_next, eta)
        assert (down**2 + up**2).item() == pytest.approx(0.25)
        # DDIM's sigma_t(eta) (Song et al. 2021a, Eq. 16) in sigma coordinates
        assert up.item() == pytest.approx(eta * 0.5 * math.sqrt((4 - 0.25) / 4))


STOCHASTIC = {
    "ddpm": {},
    "euler_ancestral": {},
    "ddim": {"eta": 0.5},
    "heun": {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 10.0},
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_samplers_reproduce_the_mixture(name):
    """Component weights, means and standard deviations of 6000 samples."""
    gm = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], dtype=torch.float64),
                         torch.tensor([0.3, 0.5, 0.4]), torch.tensor([0.5, 0.3, 0.2]))
    n = 6000
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * SIGMA_MAX
    x = SAMPLERS[name](gm.denoise, x, schedules.karras(100, SIGMA_MIN, SIGMA_MAX), generator=g, **STOCHASTIC[name])
    k = gm.classify(x)
    for j in range(3):
        w = gm.weights[j].item()
        assert (k == j).float().mean().item() == pytest.approx(w, abs=4 * math.sqrt(w * (1 - w) / n) + 0.01)
        comp = x[k == j]
        assert torch.allclose(comp.mean(0), gm.means[j], atol=0.05)
        assert comp.std(0).tolist() == pytest.approx([gm.stds[j].item()] * 2, rel=0.08)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_same_output_and_per_sample_generators_ignore_batch_size(mixture, name):
    sigmas = schedules.karras(8, SIGMA_MIN, SIGMA_MAX)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    x = start_noise(4)
    options = STOCHASTIC.get(name, {})
    a = SAMPLERS[name](mixture.denoise, x, sigmas, generator=gens([0, 1, 2, 3]), **options)
    b = SAMPLERS[name](mixture.denoise, x, sigmas, generator=gens([0, 1, 2, 3]), **options)
    assert torch.equal(a, b)
    half = SAMPLERS[name](mixture.denoise, x[2:], sigmas, generator=gens([2, 3]), **options)
    assert torch.allclose(a[2:], half, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_sees_every_step(mixture, name):
    seen = []
    x = start_noise(2)
    out = SAMPLERS[name](mixture.denoise, x, schedules.karras(6, SIGMA_MIN, SIGMA_MAX), callback=seen.append)
    assert [s["i"] for s in seen] == list(range(6))
    assert seen[-1]["sigma_next"] == 0 and torch.equal(seen[-1]["x"], out)
    assert seen[0]["denoised"].shape == x.shape


def test_samplers_run_in_float32_on_any_rank():
    gm = GaussianMixture(torch.zeros(1, 1, 2, 2, 2), torch.tensor([0.5]), torch.tensor([1.0]))
    x = torch.randn(3, 1, 2, 2, 2) * 80
    for name, fn in SAMPLERS.items():
        out = fn(gm.denoise, x, schedules.karras(20, 0.002, 80.0), generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all(), name
