import math

import pytest
import torch

from mmdiff.core import schedules as S


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_every_schedule_is_decreasing_from_sigma_max_to_sigma_min_then_zero(name, n):
    sigmas = S.get_sigmas(name, n, 0.002, 80.0)
    assert sigmas.shape == (n + 1,) and sigmas.dtype == torch.float64
    assert sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-9)
    if n > 1 and name != "consistency":  # consistency sampling never evaluates at sigma_min (f is the identity)
        assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-9)
    if name == "consistency":  # Karras's n + 1 levels without sigma_min
        assert torch.equal(sigmas[:-1], S.karras(n + 1, 0.002, 80.0)[:n])


def test_karras_matches_eq5_by_hand():
    n, lo, hi, rho = 5, 0.002, 80.0, 7.0
    expected = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)] + [0.0]
    assert S.karras(n, lo, hi, rho).tolist() == pytest.approx(expected, rel=1e-12)


def test_log_uniform_has_equal_log_ratios():
    s = S.log_uniform(10, 0.01, 100.0)[:-1].log()
    assert torch.allclose(s.diff(), torch.full((9,), -math.log(1e4) / 9, dtype=torch.float64))


def test_vp_linear_matches_edm_table1_vp_schedule():
    # EDM Table 1: t_i = 1 + i/(N-1) (eps_s - 1), sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)
    n, beta_d, beta_min, eps_s = 18, 19.9, 0.1, 1e-3
    sig = lambda t: math.sqrt(math.exp(0.5 * beta_d * t * t + beta_min * t) - 1)  # noqa: E731
    expected = [sig(1 + i / (n - 1) * (eps_s - 1)) for i in range(n)] + [0.0]
    assert S.vp_linear(n, sig(eps_s), sig(1.0)).tolist() == pytest.approx(expected, rel=1e-9)


def test_cosine_schedule_is_uniform_in_cosine_time():
    sigmas = S.cosine(12, 0.01, 50.0)[:-1]
    t = S.cosine_sigma_inv(sigmas)
    assert torch.allclose(t.diff(), t.diff()[0].expand(11), atol=1e-12)


@pytest.mark.parametrize("fwd,inv", [(S.vp_sigma, S.vp_sigma_inv), (S.cosine_sigma, S.cosine_sigma_inv)])
def test_sigma_of_time_inverts(fwd, inv):
    t = torch.linspace(1e-3, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(inv(fwd(t)), t, atol=1e-10)


def test_ddpm_linear_alpha_bar_is_the_product_of_one_minus_beta():
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    ab, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        ab.append(prod)
    assert S.ddpm_linear_alpha_bar().tolist() == pytest.approx(ab, rel=1e-10)
    # sigma(alpha_bar) and the well-known end points of DDPM: sigma_max ~ 157.4, sigma_min ~ 0.01
    sig = S.sigma_from_alpha_bar(S.ddpm_linear_alpha_bar())
    assert sig[-1].item() == pytest.approx(math.sqrt((1 - ab[-1]) / ab[-1]), rel=1e-9)
    assert 157 < sig[-1] < 158 and sig[0].item() == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))


def test_alpha_bar_and_sigma_are_inverse_maps():
    sigma = torch.logspace(-3, 3, 20, dtype=torch.float64)
    # 1 - alpha_bar (2 roundings of u) loses 1 / sigma^2 = 1e6 at sigma = 1e-3; the sqrt halves: 2u 1e6 / 2 = 1.1e-10
    assert torch.allclose(S.sigma_from_alpha_bar(S.alpha_bar_from_sigma(sigma)), sigma, rtol=1e-9)


def test_cosine_discrete_betas_are_clipped():
    ab = S.cosine_discrete_alpha_bar(1000)
    betas = 1 - ab[1:] / ab[:-1]
    assert betas.max() <= 0.999 + 1e-12 and torch.all(ab.diff() < 0)
    # before clipping, alpha_bar follows the formula
    t = torch.tensor([0.1, 0.5], dtype=torch.float64)
    assert torch.allclose(ab[[99, 499]], S.cosine_alpha_bar(t), rtol=1e-9)  # ab[i] is alpha_bar((i + 1) / T)


def test_lognormal_training_sigma_has_the_requested_log_moments():
    g = torch.Generator().manual_seed(0)
    log_sigma = S.LogNormalSigma(-1.2, 1.2)(200_000, g).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_discrete_vp_training_sigma_draws_only_the_discrete_levels(schedule):
    noise = S.DiscreteVPSigma(schedule)
    sig = noise(5000, torch.Generator().manual_seed(0))
    assert torch.isin(sig, noise.sigmas).all()
    assert noise.sigma_min == noise.sigmas.min() and noise.sigma_max == noise.sigmas.max()


def test_append_dims_broadcasts_to_any_rank():
    s = torch.arange(3.0)
    for ndim in (2, 3, 4, 5):
        assert S.append_dims(s, ndim).shape == (3,) + (1,) * (ndim - 1)


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="unknown schedule"):
        S.get_sigmas("nope", 10, 0.1, 1.0)
    with pytest.raises(ValueError, match="at least 1 step"):
        S.karras(0, 0.1, 1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        S.karras(5, 1.0, 0.1)


# --- respaced discrete VP levels (DDPM/DDIM sampling on the training timesteps) -----------------

@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_respaced_with_every_step_visits_every_level(spacing):
    levels = S.DiscreteVPSigma("linear", T=1000).sigmas
    sigmas = S.respaced(1000, levels, spacing)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (1001,)
    assert torch.equal(sigmas, torch.cat([levels.double().flip(0), torch.zeros(1, dtype=torch.float64)]))


def test_respaced_visits_the_timesteps_of_ddim_uniform_spacing():
    levels = S.DiscreteVPSigma("linear", T=1000).sigmas.double()
    T = 1000
    # trailing: t_i = round(T (n - i) / n) - 1 (diffusers' "trailing"; Lin et al. 2024, Table 2)
    for n, by_hand in [(10, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]), (3, [999, 666, 332])]:
        assert by_hand == [round(T * (n - i) / n) - 1 for i in range(n)]
        assert S.respaced(n, levels).tolist() == levels[by_hand].tolist() + [0.0]
    # leading: reversed range(0, T, T // n) of the DDIM code (Song et al. 2021a), n of them
    for n, by_hand in [(10, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]), (3, [666, 333, 0])]:
        assert by_hand == list(range(0, T, T // n))[:n][::-1]
        assert S.respaced(n, levels, "leading").tolist() == levels[by_hand].tolist() + [0.0]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_respaced_is_strictly_decreasing_on_the_levels_then_zero(schedule, spacing):
    noise = S.DiscreteVPSigma(schedule, T=1000)
    for n in [1, 2, 7, 10, 50, 333, 999, 1000]:
        sigmas = S.respaced(n, noise.sigmas, spacing)
        assert sigmas.shape == (n + 1,) and sigmas.dtype == torch.float64 and sigmas[-1] == 0
        assert torch.all(sigmas[1:] < sigmas[:-1])
        assert torch.isin(sigmas[:-1], noise.sigmas.double()).all()
        if spacing == "trailing":  # the top training level is always the first one visited
            assert sigmas[0].item() == noise.sigma_max


def test_respaced_rejects_bad_arguments():
    levels = S.DiscreteVPSigma("linear", T=100).sigmas
    for n in (0, -3, 101):
        with pytest.raises(ValueError, match="1 to T = 100"):
            S.respaced(n, levels)
    with pytest.raises(ValueError, match="unknown spacing"):
        S.respaced(10, levels, "linspace")
