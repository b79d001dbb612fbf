import pytest
import torch

from mmdiff.core.analytic import GaussianMixture


def test_single_gaussian_denoiser_is_the_wiener_filter():
    mu, s = torch.tensor([[1.0, -2.0]], dtype=torch.float64), 0.7
    gm = GaussianMixture(mu, torch.tensor([s]), torch.tensor([1.0]))
    x, sigma = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 3
    expected = mu + (s**2 / (s**2 + sigma**2)).view(-1, 1) * (x - mu)
    assert torch.allclose(gm.denoise(x, sigma), expected)


def test_mixture_denoiser_matches_the_posterior_mean_by_quadrature():
    # E[x0 | x] = int x0 p(x0) N(x; x0, sigma^2) dx0 / int p(x0) N(x; x0, sigma^2) dx0, on a fine grid
    gm = GaussianMixture(torch.tensor([[-1.0], [1.5]], dtype=torch.float64), torch.tensor([0.3, 0.5]), torch.tensor([0.4, 0.6]))
    grid = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
    prior = sum(w * torch.exp(-0.5 * ((grid - m) / s) ** 2) / s for m, s, w in zip(gm.means[:, 0], gm.stds, gm.weights))
    for x, sigma in [(0.2, 0.8), (-2.0, 0.1), (3.0, 5.0)]:
        lik = torch.exp(-0.5 * ((x - grid) / sigma) ** 2)
        expected = (grid * prior * lik).sum() / (prior * lik).sum()
        got = gm.denoise(torch.tensor([[x]], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64))
        assert got.item() == pytest.approx(expected.item(), abs=1e-8)


def test_sampling_reproduces_weights_and_classify_recovers_components():
    gm = GaussianMixture(torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64), torch.tensor([0.3, 0.3]),
                         torch.tensor([0.25, 0.75]))
    x, k = gm.sample(20_000, torch.Generator().manual_seed(1))
    assert (k == 1).float().mean().item() == pytest.approx(0.75, abs=0.015)
    assert torch.equal(gm.classify(x), k)


def test_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.zeros(2, 1), torch.ones(2), torch.tensor([0.3, 0.3]))
