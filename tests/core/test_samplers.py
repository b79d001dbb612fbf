"""Samplers against exact answers: the ideal denoiser of a Gaussian mixture (mmdiff.core.analytic)."""

import math

import pytest
import torch

from mmdiff.core import schedules
from mmdiff.core.analytic import GaussianMixture, rk4_in_lambda
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
    """A fine solve of the probability-flow ODE: RK4 with 3000 steps (error ~1e-12)."""
    x = start_noise(32)
    return x, rk4_in_lambda(mixture.denoise, x, SIGMA_MAX, SIGMA_MIN, 3000)


def test_the_reference_solve_agrees_with_a_fine_heun_solve(mixture, reference):
    x_T, x_ref = reference
    heun = sample_heun(mixture.denoise, x_T, schedules.karras(2048, SIGMA_MIN, SIGMA_MAX))
    assert (heun - x_ref).flatten(1).norm(dim=1).mean() < 1e-5


def fitted_order(mixture, reference, name, steps, **options):
    x_T, x_ref = reference
    errors = []
    for n in steps:
        x = SAMPLERS[name](mixture.denoise, x_T, schedules.karras(n, SIGMA_MIN, SIGMA_MAX), **options)
        errors.append((x - x_ref).flatten(1).norm(dim=1).mean().item())
    # slope of log(error) against log(steps), by least squares
    lx = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    return -slope.item(), errors


STEPS = {1: [32, 64, 128, 256], 2: [16, 32, 64, 128], 3: [32, 64, 128, 256], 4: [64, 128, 256, 512]}

VARIANTS = [(name, order, options) for name, (order, options) in sorted(ORDERS.items())] + [
    ("unipc", 3, {"variant": "bh1"}),
    ("unipc", 2, {"corrector": False}),          # the predictor alone: UniP-2
    ("unipc", 2, {"order": 1}),                  # UniP-1 (DDIM) + UniC: one order up
    ("dpmpp_2m_sde", 2, {"eta": 0.0, "solver_type": "heun"}),
    ("lms", 2, {"order": 2}),
]


@pytest.mark.parametrize("name,expected,options", VARIANTS, ids=lambda v: str(v))
def test_deterministic_samplers_converge_at_their_order(mixture, reference, name, expected, options):
    order, errors = fitted_order(mixture, reference, name, STEPS[expected], **options)
    assert errors[-1] < errors[0] / 2 ** (len(STEPS[expected]) - 1)  # converging at all
    assert expected - 0.45 < order < expected + 0.6, (order, errors)


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m(mixture):
    x, sigmas = start_noise(8), schedules.karras(12, SIGMA_MIN, SIGMA_MAX)
    assert torch.allclose(SAMPLERS["dpmpp_2m_sde"](mixture.denoise, x, sigmas, eta=0.0),
                          SAMPLERS["dpmpp_2m"](mixture.denoise, x, sigmas), rtol=1e-12, atol=1e-12)


def test_dpmpp_2m_is_lu_et_al_algorithm_2(mixture):
    """dpmpp_2m is dpmpp_2m_sde at eta = 0 (one implementation, STYLE habit 14); checked here against
    DPM-Solver++(2M) written out as Lu et al. 2022b, Algorithm 2 (alpha = 1, sigma_t = sigma, lambda =
    -log sigma): x_i = (sigma_i / sigma_{i-1}) x_{i-1} - (e^{-h_i} - 1) D_i, D_i = (1 + 1/(2 r_i)) D(x_{i-1})
    - 1/(2 r_i) D(x_{i-2}), r_i = h_{i-1} / h_i; then the last step to sigma = 0 returns D."""
    x_T, sigmas = start_noise(8), schedules.karras(12, SIGMA_MIN, SIGMA_MAX)
    s = sigmas.tolist()
    x, old, h_last = x_T, None, None
    for i in range(len(s) - 1):
        denoised = mixture.denoise(x, torch.full((8,), s[i], dtype=torch.float64))
        if s[i + 1] == 0:
            x = denoised
            break
        h = math.log(s[i]) - math.log(s[i + 1])
        if old is None:
            D = denoised
        else:
            r = h_last / h
            D = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old
        x = s[i + 1] / s[i] * x - math.expm1(-h) * D
        old, h_last = denoised, h
    # the two differ only in the order of float64 operations (|x| <= ~40 * 4 on the way down)
    assert torch.allclose(SAMPLERS["dpmpp_2m"](mixture.denoise, x_T, sigmas), x, rtol=1e-12, atol=1e-12)
    assert torch.equal(SAMPLERS["dpmpp_2m"](mixture.denoise, x_T, sigmas),
                       SAMPLERS["dpmpp_2m_sde"](mixture.denoise, x_T, sigmas, eta=0.0, solver_type="midpoint"))


def test_adaptive_meets_tighter_tolerances_with_more_evaluations(mixture, reference):
    x_T, x_ref = reference
    errors, nfes = [], []
    for rtol in [0.1, 0.01, 0.001]:
        info = {}
        x = SAMPLERS["adaptive"](mixture.denoise, x_T, schedules.karras(10, SIGMA_MIN, SIGMA_MAX), rtol=rtol,
                                 atol=rtol / 10, info=info)
        errors.append((x - x_ref).flatten(1).norm(dim=1).mean().item())
        nfes.append(info["nfe"])
        assert info["nfe"] == 2 * info["accepted"] + info["rejected"] + 1
    assert errors[0] > 5 * errors[1] > 25 * errors[2] and errors[2] < 1e-3
    assert nfes[0] < nfes[1] < nfes[2]


def test_third_order_multistep_integrates_a_quadratic_denoiser_exactly():
    """dx/dlambda = D(lambda) - x with D quadratic in lambda and independent of x: once warmed up (two
    steps), each third-order multistep step is exact (regression: with k-diffusion's -phi_3 d2 term
    the 3M step integrates only half of the quadratic part)."""
    def lam(sigma):
        return -torch.log(torch.as_tensor(sigma, dtype=torch.float64))

    def quadratic(l):
        return 0.3 + 0.5 * l - 0.2 * l**2

    def D(x, sigma):
        return quadratic(lam(sigma)).view(-1, 1) * torch.ones_like(x)

    def exact_step(x, l0, l1, n=20_000):  # e^{-h} x + int_0^h e^{-(h-u)} D(l0 + u) du, midpoint rule
        u = (torch.arange(n, dtype=torch.float64) + 0.5) * (l1 - l0) / n
        return torch.exp(-(l1 - l0)) * x + (torch.exp(-(l1 - l0 - u)) * quadratic(l0 + u)).sum() * (l1 - l0) / n

    sigmas = schedules.log_uniform(8, 0.05, 5.0)
    seen = []
    SAMPLERS["dpmpp_3m_sde"](D, torch.full((1, 1), 2.0, dtype=torch.float64), sigmas, eta=0.0, callback=seen.append)
    for i in (2, 3, 4, 5, 6):
        expected = exact_step(seen[i - 1]["x"], lam(sigmas[i]), lam(sigmas[i + 1]))
        assert seen[i]["x"].item() == pytest.approx(expected.item(), abs=1e-9)


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
    "dpm_2": {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 10.0},
    "dpmpp_2s_ancestral": {},
    "dpmpp_2m_sde": {},
    "dpmpp_3m_sde": {},
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


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"adaptive"}))  # adaptive: steps shared by the batch
def test_same_seed_same_output_and_per_sample_generators_ignore_batch_size(mixture, name):
    sigmas = schedules.karras(8, SIGMA_MIN, SIGMA_MAX)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    x = start_noise(4)
    options = STOCHASTIC.get(name, {})
    a = SAMPLERS[name](mixture.denoise, x, sigmas, generator=gens([0, 1, 2, 3]), **options)
    b = SAMPLERS[name](mixture.denoise, x, sigmas, generator=gens([0, 1, 2, 3]), **options)
    assert torch.equal(a, b)
    half = SAMPLERS[name](mixture.denoise, x[2:], sigmas, generator=gens([2, 3]), **options)
    # a batch size may round the denoiser's reductions differently (an ulp); no sampler amplifies that:
    # 8 eps of noise on every denoiser output moves these samples by < 6e-14
    assert torch.allclose(a[2:], half, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_sees_every_step(mixture, name):
    seen = []
    x = start_noise(2)
    out = SAMPLERS[name](mixture.denoise, x, schedules.karras(6, SIGMA_MIN, SIGMA_MAX), callback=seen.append)
    if name != "adaptive":  # adaptive chooses its own steps
        assert [s["i"] for s in seen] == list(range(6))
    assert seen[-1]["sigma_next"] == 0 and torch.equal(seen[-1]["x"], out)
    assert seen[0]["denoised"].shape == x.shape


def test_samplers_run_in_float32_on_any_rank():
    gm = GaussianMixture(torch.zeros(1, 1, 2, 2, 2), torch.tensor([0.5]), torch.tensor([1.0]))
    x = torch.randn(3, 1, 2, 2, 2) * 80
    for name, fn in SAMPLERS.items():
        out = fn(gm.denoise, x, schedules.karras(20, 0.002, 80.0), generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all(), name


def test_lms_coefficients_are_exact_integrals_of_the_lagrange_basis():
    import numpy as np

    from mmdiff.core.samplers.euler import lms_coefficient
    from mmdiff.core.schedules import karras
    s = karras(10, 0.01, 80.0).tolist()
    for i in range(3, 9):
        for order in (1, 2, 3, 4):
            weights = [lms_coefficient(s, i, j, order) for j in range(order)]
            assert sum(weights) == pytest.approx(s[i + 1] - s[i], rel=1e-12)  # the basis sums to 1
            for j in range(order):
                basis = np.poly1d([1.0])
                for k in range(order):
                    if k != j:
                        basis *= np.poly1d([1.0, -s[i - k]]) / (s[i - j] - s[i - k])
                exact = np.polyint(basis)(s[i + 1]) - np.polyint(basis)(s[i])
                assert weights[j] == pytest.approx(exact, rel=1e-10, abs=1e-12)


# --- consistency sampling (Song et al. 2023) ---------------------------------------------------------------

def test_one_consistency_step_with_the_exact_consistency_function_lands_on_the_ode_solution(mixture):
    """The exact consistency function maps (x, sigma) to the end of its probability-flow trajectory: here a fine
    RK4 solve of the mixture's ODE. One step of the sampler is then the reference solve itself, and more steps
    (re-noised between) stay samples of the same distribution (each lands on some trajectory's end)."""
    def f(x, sigma):
        return rk4_in_lambda(mixture.denoise, x, float(sigma[0]), SIGMA_MIN, 400)

    x = start_noise(16)
    reference = rk4_in_lambda(mixture.denoise, x, SIGMA_MAX, SIGMA_MIN, 400)
    one = SAMPLERS["consistency"](f, x, torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64))
    assert torch.equal(one, reference)
    seen = []
    gens = [torch.Generator().manual_seed(i) for i in range(16)]
    two = SAMPLERS["consistency"](f, x, torch.tensor([SIGMA_MAX, 2.0, 0.0], dtype=torch.float64), generator=gens,
                                  callback=seen.append)
    assert [float(s["sigma"]) for s in seen] == [SIGMA_MAX, 2.0]
    z = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(i), dtype=x.dtype)
                     for i in range(16)])
    assert torch.allclose(two, f(reference + 2.0 * z, torch.full((16,), 2.0, dtype=x.dtype)), rtol=0, atol=1e-12)
