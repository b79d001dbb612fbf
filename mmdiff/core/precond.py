"""Parametrizations: wrappers that turn a raw network F into a denoiser D(x, sigma, labels).

Every wrapper computes (Karras et al. 2022, "EDM", Eq. 7)

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma), labels)

and differs only in the four scalings (EDM Table 1; k-diffusion's external.py for v). The network
never knows which one it is trained under: it takes (x, c_noise [B], labels [B] or None) and returns
a tensor shaped like x. All wrappers use c_noise = ln(sigma) / 4 (EDM), so one network architecture
serves every parametrization and every schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .schedules import append_dims


class Precond(nn.Module):
    """Base class; subclasses define :meth:`scalings`. ``sigma_data`` is the data's standard deviation.

    ``uncertainty`` > 0 adds EDM2's learned loss weighting (Karras et al. 2024, Sec. 5, "uncertainty"): a
    log-variance u(sigma) from a linear layer on ``uncertainty`` random Fourier features of c_noise, trained
    with the loss (mmdiff.core.losses.denoising_loss's ``logvar``), so that every noise level contributes
    about equally; the denoiser's output does not depend on it."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, uncertainty: int = 0):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.logvar_head = None
        if uncertainty:
            self.register_buffer("logvar_freqs", torch.randn(uncertainty))
            self.register_buffer("logvar_phases", torch.rand(uncertainty))
            self.logvar_head = nn.Linear(uncertainty, 1)

    def logvar(self, sigma: torch.Tensor) -> torch.Tensor | None:
        """EDM2's learned log-variance u(sigma) [B], or None without ``uncertainty``."""
        if self.logvar_head is None:
            return None
        c = self.c_noise(sigma.float())
        features = torch.cos(2 * math.pi * (torch.outer(c, self.logvar_freqs) + self.logvar_phases)) * math.sqrt(2)
        return self.logvar_head(features)[:, 0]

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in), each shaped like ``sigma``."""
        raise NotImplementedError

    @staticmethod
    def c_noise(sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None,
                **conditions) -> torch.Tensor:
        """x: [B, C, *spatial]; sigma: [B] (or a scalar); returns the denoised estimate, shaped like x.
        ``conditions`` (e.g. ``cond``: known frames as extra channels) go to the network as they are: they
        are not part of x, so no scaling applies to them."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.scalings(sigma))
        F_x = self.net(c_in * x, self.c_noise(sigma), labels, **conditions)
        return c_skip * x + c_out * F_x.to(x.dtype)

    def target(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The network's regression target F_target = (x0 - c_skip x) / c_out (EDM Eq. 8)."""
        c_skip, c_out, _ = (append_dims(c, x.ndim) for c in self.scalings(sigma))
        return (x0 - c_skip * x) / c_out


class EDMPrecond(Precond):
    """EDM preconditioning (Karras et al. 2022, Eq. 7 and Table 1)."""

    # The sign of c_out: +1 for EDM, -1 for v-prediction (VPrecond), the only difference between them.
    c_out_sign = 1.0

    def scalings(self, sigma):
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = self.c_out_sign * sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in


class EpsPrecond(Precond):
    """Noise prediction (Ho et al. 2020): F predicts the noise, D = x - sigma * F.

    The input is scaled to unit variance for unit-variance noise and data of std ``sigma_data``:
    with sigma_data = 1 this is exactly the VP input x_t = x / sqrt(1 + sigma^2) (EDM Table 1).
    """

    def scalings(self, sigma):
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + self.sigma_data**2).sqrt()


class X0Precond(Precond):
    """Data prediction: F predicts x0 directly, D = F."""

    def scalings(self, sigma):
        return torch.zeros_like(sigma), torch.ones_like(sigma), 1 / (sigma**2 + self.sigma_data**2).sqrt()


class VPrecond(EDMPrecond):
    """Velocity prediction (Salimans & Ho 2022): with sigma_data = 1 the target is
    v = alpha * noise - s * x0 of the VP process x_t = alpha x0 + s noise.

    It is EDM's preconditioning with c_out negated, so its target is EDM's negated: for
    x = x0 + sigma n, EDM's F_target = (x0 - c_skip x) / c_out (EDM Eq. 8) is s x0 / sigma_data - alpha n
    with alpha = sigma_data / sqrt(sigma^2 + sigma_data^2), s = sigma / sqrt(sigma^2 + sigma_data^2),
    which is -v when sigma_data = 1."""

    c_out_sign = -1.0


class FlowPrecond(Precond):
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): the straight path
    x_t = (1 - t) x0 + t n, with F predicting the velocity v = dx_t/dt = n - x0.

    In the sigma convention x_sigma = x_t / (1 - t), so sigma = t / (1 - t) and t = sigma / (1 + sigma): the
    network sees c_in x_sigma = x_t, and x0 = x_t - t v gives c_skip = c_in = 1 / (1 + sigma),
    c_out = -sigma / (1 + sigma). The regression target (EDM Eq. 8) is then n - x0, the velocity, and the
    uniform weighting 1 / c_out^2 makes the loss the flow-matching loss ||F - v||^2. ``sigma_data`` is unused:
    the path itself fixes the scales."""

    def scalings(self, sigma):
        c_in = 1 / (1 + sigma)
        return c_in, -sigma * c_in, c_in


PRECONDS = {"edm": EDMPrecond, "eps": EpsPrecond, "x0": X0Precond, "v": VPrecond, "flow": FlowPrecond}
