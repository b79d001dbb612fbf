"""Editing against exact answers: SDEdit and RePaint on Gaussian mixtures (mmdiff.core.analytic), masks
along a time axis, and slerp."""

import math

import pytest
import torch

from mmdiff.core import schedules
from mmdiff.core.analytic import GaussianMixture
from mmdiff.core.editing import (continuation_input, continuation_mask, gap_mask, inpaint, interpolate_noise, sdedit,
                                 slerp, truncate_sigmas)
from mmdiff.core.samplers import SAMPLERS

SIGMA_MIN, SIGMA_MAX = 0.005, 40.0


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], dtype=torch.float64),
                           torch.tensor([0.3, 0.5, 0.4]), torch.tensor([0.5, 0.3, 0.2]))


class Counting:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoiser(x, sigma)


def assert_is_the_mixture(gm, x):
    n = len(x)
    k = gm.classify(x)
    for j in range(len(gm.weights)):
        w = gm.weights[j].item()
        assert (k == j).float().mean().item() == pytest.approx(w, abs=4 * math.sqrt(w * (1 - w) / n) + 0.01)
        assert torch.allclose(x[k == j].mean(0), gm.means[j], atol=0.08)


# --- SDEdit --------------------------------------------------------------------------------------

def test_truncate_sigmas_keeps_the_last_strength_fraction_of_the_steps():
    sigmas = schedules.karras(10, SIGMA_MIN, SIGMA_MAX)
    assert torch.equal(truncate_sigmas(sigmas, 1.0), sigmas)
    assert torch.equal(truncate_sigmas(sigmas, 0.3), sigmas[7:])
    assert torch.equal(truncate_sigmas(sigmas, 0.0), sigmas[10:])
    with pytest.raises(ValueError, match="strength"):
        truncate_sigmas(sigmas, 1.5)


def test_sdedit_strength_zero_returns_the_input(mixture):
    d, x = Counting(mixture.denoise), torch.randn(5, 2, dtype=torch.float64)
    out = sdedit(d, x, schedules.karras(10, SIGMA_MIN, SIGMA_MAX), strength=0.0, generator=gens(range(5)))
    assert torch.equal(out, x) and d.calls == 0


def test_sdedit_strength_one_ignores_the_input_and_is_plain_sampling(mixture):
    sigmas = schedules.karras(12, SIGMA_MIN, SIGMA_MAX)
    a = sdedit(mixture.denoise, torch.zeros(4, 2, dtype=torch.float64), sigmas, strength=1.0, sampler="ddpm",
               generator=gens(range(4)))
    b = sdedit(mixture.denoise, torch.full((4, 2), 7.0, dtype=torch.float64), sigmas, strength=1.0, sampler="ddpm",
               generator=gens(range(4)))
    assert torch.equal(a, b)
    # the noise is drawn as sample.generate draws it: sigmas[0] * randn(shape) from sample i's generator
    g = gens(range(4))
    x_T = torch.stack([torch.randn(2, generator=gi, dtype=torch.float64) for gi in g]) * sigmas[0]
    assert torch.equal(a, SAMPLERS["ddpm"](mixture.denoise, x_T, sigmas, generator=g))


def test_sdedit_strength_one_samples_the_mixture(mixture):
    x_init = torch.full((3000, 2), 5.0, dtype=torch.float64)
    out = sdedit(mixture.denoise, x_init, schedules.karras(60, SIGMA_MIN, SIGMA_MAX), strength=1.0,
                 sampler="dpmpp_2m", generator=torch.Generator().manual_seed(0))
    assert_is_the_mixture(mixture, out)


def test_sdedit_follows_the_ode_from_the_noised_input():
    """Data N(mu, s^2 I): the probability-flow ODE from sigma to 0 is x -> mu + s / sqrt(s^2 + sigma^2) (x - mu),
    so SDEdit with a deterministic sampler maps x_init to mu + a (x_init + sigma_start n - mu) exactly, up to
    the sampler's error, with n the first draw of each sample's generator."""
    mu, s = torch.tensor([[1.0, -2.0]], dtype=torch.float64), 0.5
    gauss = GaussianMixture(mu, torch.tensor([s]), torch.tensor([1.0]))
    sigmas = schedules.karras(64, SIGMA_MIN, SIGMA_MAX)
    x_init = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    for strength in [0.25, 0.5, 0.8]:
        sigma_start = truncate_sigmas(sigmas, strength)[0]
        out = sdedit(gauss.denoise, x_init, sigmas, strength=strength, sampler="unipc", generator=gens(range(3)))
        n = torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in gens(range(3))])
        a = s / math.sqrt(s**2 + sigma_start**2)
        assert torch.allclose(out, mu + a * (x_init + sigma_start * n - mu), atol=1e-3)


def test_sdedit_same_seed_same_output_whatever_the_batch(mixture):
    sigmas, x = schedules.karras(10, SIGMA_MIN, SIGMA_MAX), torch.randn(4, 2, dtype=torch.float64)
    a = sdedit(mixture.denoise, x, sigmas, strength=0.6, sampler="euler_ancestral", generator=gens([0, 1, 2, 3]))
    b = sdedit(mixture.denoise, x, sigmas, strength=0.6, sampler="euler_ancestral", generator=gens([0, 1, 2, 3]))
    half = sdedit(mixture.denoise, x[2:], sigmas, strength=0.6, sampler="euler_ancestral", generator=gens([2, 3]))
    # a batch size may round the denoiser's reductions differently (an ulp); the sampler carries that along
    # without growth (8 eps of noise on every denoiser output moves these samples by < 1e-14)
    assert torch.equal(a, b) and torch.allclose(a[2:], half, rtol=1e-12, atol=1e-12)


def test_unknown_sampler_names_the_choices(mixture):
    with pytest.raises(ValueError, match="euler_ancestral"):
        sdedit(mixture.denoise, torch.zeros(1, 2), schedules.karras(4, 0.01, 1.0), strength=0.5, sampler="nope")


# --- RePaint -------------------------------------------------------------------------------------

def test_inpainting_keeps_the_known_region_exactly_on_images(mixture):
    gm = GaussianMixture(torch.zeros(1, 2, 4, 4, dtype=torch.float64), torch.tensor([0.5]), torch.tensor([1.0]))
    known = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True  # the top half is known
    out = inpaint(gm.denoise, known, mask, schedules.karras(8, SIGMA_MIN, SIGMA_MAX), resample=3,
                  generator=gens(range(3)))
    assert torch.equal(out[..., :2, :], known[..., :2, :])
    assert not torch.allclose(out[..., 2:, :], known[..., 2:, :])


@pytest.mark.parametrize("sampler", ["ddpm", "euler", "dpmpp_2s_ancestral"])
def test_inpainting_fills_a_gap_in_time_keeping_the_rest(sampler):
    """Audio: [B, C, T]; a float 0/1 mask works like a bool one."""
    gm = GaussianMixture(torch.zeros(1, 1, 16, dtype=torch.float64), torch.tensor([0.5]), torch.tensor([1.0]))
    clip = torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = gap_mask(clip.shape, 5, 9).to(torch.float64)
    out = inpaint(gm.denoise, clip, mask, schedules.karras(6, SIGMA_MIN, SIGMA_MAX), resample=2, sampler=sampler,
                  generator=gens([0, 1]))
    assert torch.equal(out[..., :5], clip[..., :5]) and torch.equal(out[..., 9:], clip[..., 9:])
    assert not torch.allclose(out[..., 5:9], clip[..., 5:9])


def conditional_of_y(gm, c):
    """Exact mean and std of the second coordinate given the first = c, for isotropic components."""
    post = (gm.weights.log() - gm.stds.log() - 0.5 * (c - gm.means[:, 0]) ** 2 / gm.stds**2).softmax(0)
    mean = (post * gm.means[:, 1]).sum()
    var = (post * (gm.stds**2 + gm.means[:, 1] ** 2)).sum() - mean**2
    return mean.item(), var.sqrt().item()


def test_repaint_samples_the_exact_conditional_and_replacement_alone_does_not():
    """Two overlapping components; the first coordinate is known (c = 0.8), which makes the second one's
    conditional mean 0.57 where its prior mean is 0. RePaint's resampling (U = 10) lands on the exact
    conditional mean within sampling error; plain replacement (U = 1) keeps most of the prior, the
    failure that motivated RePaint (Lugmayr et al. 2022, Sec. 4.2). (RePaint is not exact in general: the
    std comes out a few percent low here, from the ancestral step's variance with 30 steps.)"""
    gm = GaussianMixture(torch.tensor([[-0.6, -0.6], [0.6, 0.6]], dtype=torch.float64), torch.tensor([0.5, 0.5]),
                         torch.tensor([0.5, 0.5]))
    n, c = 1000, 0.8
    mean, std = conditional_of_y(gm, c)
    known = torch.tensor([[c, 0.0]], dtype=torch.float64).expand(n, 2)
    mask = torch.tensor([True, False])
    sigmas = schedules.karras(30, 0.01, 3.0)
    out = inpaint(gm.denoise, known, mask, sigmas, resample=10, generator=torch.Generator().manual_seed(0))
    y = out[:, 1]
    assert torch.equal(out[:, 0], known[:, 0])
    assert y.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(n))
    assert y.std().item() == pytest.approx(std, rel=0.12)
    plain = inpaint(gm.denoise, known, mask, sigmas, resample=1, generator=torch.Generator().manual_seed(0))
    assert mean - plain[:, 1].mean().item() > 0.15


def test_inpainting_same_seed_same_output_whatever_the_batch(mixture):
    sigmas = schedules.karras(6, SIGMA_MIN, SIGMA_MAX)
    known, mask = torch.randn(4, 2, dtype=torch.float64), torch.tensor([True, False])
    a = inpaint(mixture.denoise, known, mask, sigmas, resample=3, generator=gens([0, 1, 2, 3]))
    b = inpaint(mixture.denoise, known, mask, sigmas, resample=3, generator=gens([0, 1, 2, 3]))
    half = inpaint(mixture.denoise, known[2:], mask, sigmas, resample=3, generator=gens([2, 3]))
    assert torch.equal(a, b) and torch.allclose(a[2:], half, rtol=1e-12, atol=1e-12)


def test_inpainting_reports_each_step_once_and_counts_its_calls(mixture):
    d, seen = Counting(mixture.denoise), []
    known, mask = torch.randn(2, 2, dtype=torch.float64), torch.tensor([False, True])
    out = inpaint(d, known, mask, schedules.karras(5, SIGMA_MIN, SIGMA_MAX), resample=4, sampler="euler",
                  generator=gens([0, 1]), callback=seen.append)
    assert [s["i"] for s in seen] == list(range(5)) and torch.equal(seen[-1]["x"], out)
    assert d.calls == 4 * 4 + 1  # U takes of each step but the last, which is taken once


def test_nothing_known_is_plain_sampling_from_the_same_noise(mixture):
    sigmas = schedules.karras(8, SIGMA_MIN, SIGMA_MAX)
    known = torch.randn(3, 2, dtype=torch.float64)
    out = inpaint(mixture.denoise, known, torch.tensor([False, False]), sigmas, sampler="euler",
                  generator=gens(range(3)))
    x_T = torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in gens(range(3))]) * sigmas[0]
    assert torch.allclose(out, SAMPLERS["euler"](mixture.denoise, x_T, sigmas), rtol=1e-12, atol=1e-12)


# --- masks along time ----------------------------------------------------------------------------

def test_continuation_input_pads_the_clip_and_keeps_its_start():
    clip = torch.randn(2, 1, 6)
    x, mask = continuation_input(clip, 10)
    assert x.shape == (2, 1, 10) and torch.equal(x[..., :6], clip) and not x[..., 6:].any()
    assert mask.shape == (1, 1, 10) and mask.dtype == torch.bool
    assert mask[0, 0].tolist() == [True] * 6 + [False] * 4


def test_continuation_of_a_spectrogram_along_its_frame_axis():
    spec = torch.randn(1, 2, 8, 5)  # [B, C, mel bins, frames]
    x, mask = continuation_input(spec, 7, time_dim=-1)
    assert x.shape == (1, 2, 8, 7) and mask.shape == (1, 1, 1, 7)
    assert torch.equal(continuation_mask((1, 2, 8, 7), 5), mask)
    x, mask = continuation_input(spec, 12, time_dim=2)  # another layout: time on dim 2
    assert x.shape == (1, 2, 12, 5) and mask.shape == (1, 1, 12, 1) and mask.sum() == 8


def test_continuation_generates_the_rest_and_keeps_the_clip():
    gm = GaussianMixture(torch.zeros(1, 1, 12, dtype=torch.float64), torch.tensor([0.5]), torch.tensor([1.0]))
    clip = torch.randn(2, 1, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, mask = continuation_input(clip, 12)
    out = inpaint(gm.denoise, x, mask, schedules.karras(6, SIGMA_MIN, SIGMA_MAX), generator=gens([0, 1]))
    assert torch.equal(out[..., :5], clip) and out[..., 5:].abs().min() > 0


def test_time_masks():
    assert gap_mask((1, 1, 6), 2, 4).flatten().tolist() == [True, True, False, False, True, True]
    assert continuation_mask((3, 6), 0).flatten().tolist() == [False] * 6
    with pytest.raises(ValueError, match="shorter"):
        continuation_input(torch.zeros(1, 1, 6), 4)
    with pytest.raises(ValueError, match="outside"):
        continuation_mask((1, 1, 6), 7)


# --- slerp ---------------------------------------------------------------------------------------

def test_slerp_end_points_are_exact():
    a, b = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)).unbind(0)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    out = interpolate_noise(a, b, 5)
    assert out.shape == (5, 3, 4) and torch.equal(out[0], a) and torch.equal(out[-1], b)


def test_slerp_of_orthogonal_unit_vectors_at_half_is_their_normalised_sum():
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # ~10 roundings of values <= 1 (norms, atan2 and two sines good to 1 ulp in libm, not correctly
    # rounded; the products, the sum and 1 / sqrt 2): a few eps; atol=1e-16 (< 1 ulp of 0.7) held by luck
    tol = 8 * torch.finfo(torch.float64).eps
    assert torch.allclose(slerp(a, b, 0.5), (a + b) / math.sqrt(2), rtol=0, atol=tol)
    u = torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)  # orthogonal to b too
    assert torch.allclose(slerp(u, b, 0.5), (u + b) / math.sqrt(2), rtol=0, atol=tol)


def test_slerp_moves_unit_vectors_along_the_great_circle_at_constant_speed():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 8, generator=g, dtype=torch.float64).unbind(0)
    a, b = a / a.norm(), b / b.norm()
    theta = torch.arccos(a @ b)
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    path = slerp(a, b, t)
    assert torch.allclose(path.norm(dim=1), torch.ones(9, dtype=torch.float64), atol=1e-14)
    # arccos(1 - d) ~ sqrt(2 d): the round-off d <= (D + 3) u = 1.2e-15 of a.a at t = 0 gives 5e-8 < 1e-7
    assert torch.allclose(torch.arccos((path @ a).clamp(-1, 1)), t * theta, atol=1e-7)


def test_slerp_of_parallel_vectors_falls_back_to_linear():
    a = torch.tensor([0.6, 0.8])
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)


def test_interpolating_two_seeds_ends_on_their_samples(mixture):
    """The end points of the interpolation sample exactly what the two seeds give alone."""
    sigmas = schedules.karras(8, SIGMA_MIN, SIGMA_MAX)
    a, b = (torch.randn(2, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in (3, 4))
    noise = interpolate_noise(a, b, 4) * sigmas[0]
    out = SAMPLERS["ddim"](mixture.denoise, noise, sigmas)
    alone = SAMPLERS["ddim"](mixture.denoise, torch.stack([a, b]) * sigmas[0], sigmas)
    assert torch.allclose(out[[0, -1]], alone, rtol=1e-12, atol=1e-12)
