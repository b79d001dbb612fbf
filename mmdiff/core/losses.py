"""The denoising loss and its weightings.

Every parametrization is trained with the same objective written in data space (EDM Eq. 2, 8):

    L = E_{x0, sigma, n} [ lambda(sigma) * || D(x0 + sigma n; sigma) - x0 ||^2 ]

A weighting is a callable ``(sigma [B], precond) -> lambda [B]``. Written in data space, the usual
choices are:
- uniform in the parametrization's target:  lambda = 1 / c_out^2, so that the loss equals
  || F - F_target ||^2 (plain eps-, x0- or v-MSE; for EDM preconditioning it equals EDM's lambda);
- min-SNR-gamma (Hang et al. 2023):  lambda = min(SNR, gamma) with SNR = 1 / sigma^2 (the VP
  process's alpha^2 / s^2), the same for every parametrization;
- EDM (Karras et al. 2022, Eq. 8 / Table 1):  lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
"""

from __future__ import annotations

import torch

from .precond import Precond


class UniformTarget:
    def __call__(self, sigma: torch.Tensor, precond: Precond) -> torch.Tensor:
        _, c_out, _ = precond.scalings(sigma)
        return 1 / c_out**2


class MinSNR:
    def __init__(self, gamma: float = 5.0):
        self.gamma = float(gamma)

    def __call__(self, sigma: torch.Tensor, precond: Precond) -> torch.Tensor:
        return (1 / sigma**2).clamp(max=self.gamma)


class EDMWeighting:
    def __call__(self, sigma: torch.Tensor, precond: Precond) -> torch.Tensor:
        sd = precond.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2


WEIGHTINGS = {"uniform": UniformTarget, "min_snr": MinSNR, "edm": EDMWeighting}


def denoising_loss(denoised: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor,
                   mask: torch.Tensor | None = None, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weighted squared error, averaged over all non-batch dims, or over the elements where
    ``mask`` (broadcastable to x0, 0/1) is 1, e.g. the unknown steps when others are given as context
    (RaMViD's loss on the frames to generate): returns [B].

    ``logvar`` [B]: EDM2's learned uncertainty u(sigma) (Karras et al. 2024, Eq. 21): the loss becomes
    weight * error / exp(u) + u, whose minimum over u is at u = log(weight * error): each noise level's
    expected loss is normalised to about 1 while the network learns."""
    err = (denoised.float() - x0.float()) ** 2
    if mask is None:
        loss = weight * err.flatten(1).mean(1)
    else:
        mask = mask.float().expand_as(err)
        loss = weight * (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
    return loss if logvar is None else loss / logvar.float().exp() + logvar.float()
