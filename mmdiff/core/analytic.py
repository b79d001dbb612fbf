"""A Gaussian mixture with its exact (ideal) denoiser: ground truth for samplers, tests and benchmarks.

For data x0 ~ sum_k w_k N(mu_k, s_k^2 I) and x = x0 + sigma n, the noisy marginal is
sum_k w_k N(mu_k, (s_k^2 + sigma^2) I), and the ideal denoiser (the minimiser of the denoising loss)
is the posterior mean

    D*(x; sigma) = sum_k r_k(x) [ mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k) ],

with r_k the posterior component probabilities. The probability-flow ODE driven by D* transports
N(0, sigma_max^2 I)-ish noise to the mixture, so samplers can be checked against exact answers.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """means: [K, *shape]; stds: [K] (isotropic per component); weights: [K], summing to 1."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor):
        self.means = means
        self.stds = torch.as_tensor(stds, dtype=means.dtype)
        self.weights = torch.as_tensor(weights, dtype=means.dtype)
        if not (len(self.means) == len(self.stds) == len(self.weights)):
            raise ValueError("means, stds and weights need one entry per component")
        if not torch.allclose(self.weights.sum(), torch.ones((), dtype=means.dtype)):
            raise ValueError("weights must sum to 1")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples [n, *shape] and their component indices [n]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n,) + self.shape, generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k].view(-1, *[1] * len(self.shape)) * noise, k

    def responsibilities(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities p(k | x_sigma): [B, K]. sigma: [B]."""
        dim = math.prod(self.shape)
        var = self.stds[None] ** 2 + sigma[:, None] ** 2  # [B, K]
        sq = ((x[:, None] - self.means[None]) ** 2).flatten(2).sum(-1)  # [B, K]
        log_p = self.weights.log()[None] - 0.5 * dim * var.log() - 0.5 * sq / var
        return log_p.softmax(dim=1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The ideal denoiser E[x0 | x_sigma = x]; x: [B, *shape], sigma: [B]."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        r = self.responsibilities(x, sigma)  # [B, K]
        gain = self.stds[None] ** 2 / (self.stds[None] ** 2 + sigma[:, None] ** 2)  # [B, K]
        extra = (1,) * len(self.shape)
        per_k = self.means[None] + gain.view(*gain.shape, *extra) * (x[:, None] - self.means[None])
        return (r.view(*r.shape, *extra) * per_k).sum(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component of each clean sample: [B]."""
        return self.responsibilities(x, torch.zeros(x.shape[0], dtype=x.dtype)).argmax(1)


def rk4_in_lambda(denoiser, x: torch.Tensor, sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """A fine reference solve of the probability-flow ODE (ground truth for the samplers' orders): classic RK4
    on dx/dlambda = D(x; e^{-lambda}) - x (lambda = -log sigma), n uniform steps from sigma_max to sigma_min,
    then x = D(x, sigma_min) (the last step to sigma = 0 of every sampler)."""
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    h = (lam_end - lam) / n

    def f(x, lam):
        return denoiser(x, torch.full((x.shape[0],), math.exp(-lam), dtype=x.dtype)) - x

    for _ in range(n):
        k1 = f(x, lam)
        k2 = f(x + h / 2 * k1, lam + h / 2)
        k3 = f(x + h / 2 * k2, lam + h / 2)
        k4 = f(x + h * k3, lam + h)
        x, lam = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), lam + h
    return denoiser(x, torch.full((x.shape[0],), sigma_min, dtype=x.dtype))
