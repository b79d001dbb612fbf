"""The diffusion process as frames: the reverse process recorded by a sampler callback, and the
forward process x0 + sigma_i * n at increasing noise levels, for strips and notebooks."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .samplers.common import Generator, randn_like
from .schedules import append_dims


class Trajectory:
    """A sampler callback that keeps copies of ``x`` (after each step, at level ``sigma_next``) and of
    ``denoised`` (the estimate made at ``sigma``), on the CPU unless ``device`` says otherwise.

    ``frames`` = k keeps k steps, evenly spread and including the first and the last. When ``steps``
    (the number of sampler steps, len(sigmas) - 1) is known, only those k steps are copied while
    sampling; otherwise (an adaptive sampler) every step is kept and :meth:`stack` picks k of them.
    """

    def __init__(self, frames: int | None = None, steps: int | None = None, device: torch.device | str = "cpu"):
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.frames, self.device = frames, device
        self.wanted = None if frames is None or steps is None else set(spread(steps, frames).tolist())
        self.records: list[dict] = []

    def __call__(self, info: dict) -> None:
        if self.wanted is not None and info["i"] not in self.wanted:
            return
        self.records.append({
            "i": int(info["i"]),
            "sigma": float(info["sigma"]),
            "sigma_next": float(info["sigma_next"]),
            "x": info["x"].detach().to(self.device, copy=True),
            "denoised": None if info["denoised"] is None else info["denoised"].detach().to(self.device, copy=True),
        })

    def kept(self) -> list[dict]:
        """The records to show: all of them, or k evenly spread ones."""
        if self.frames is None or len(self.records) <= self.frames:
            return self.records
        return [self.records[j] for j in spread(len(self.records), self.frames).tolist()]

    def stack(self, key: str = "x") -> torch.Tensor:
        """[F, B, *shape]: ``"x"`` (the sample after each kept step) or ``"denoised"``."""
        return torch.stack([r[key] for r in self.kept()])

    def levels(self, key: str = "x") -> torch.Tensor:
        """[F] float64: the noise level of each frame of :meth:`stack` (sigma_next for x, sigma for denoised)."""
        field = "sigma_next" if key == "x" else "sigma"
        return torch.tensor([r[field] for r in self.kept()], dtype=torch.float64)


def spread(n: int, k: int) -> torch.Tensor:
    """k distinct indices in [0, n) evenly spread, 0 and n - 1 included (all n when k >= n)."""
    if k >= n:
        return torch.arange(n)
    if k == 1:
        return torch.tensor([n - 1])
    return torch.linspace(0, n - 1, k, dtype=torch.float64).round().long()


class ForwardFrames(NamedTuple):
    frames: torch.Tensor  # [F, B, *shape]
    snr: torch.Tensor     # [F]: 1 / sigma^2 (inf at sigma = 0)


def forward_process(x0: torch.Tensor, sigmas: torch.Tensor, generator: Generator = None) -> ForwardFrames:
    """The forward process as frames: x0 + sigma_i * n [F, B, *shape] for the same noise n at each level
    sigmas[i] (pass them increasing to watch the data dissolve), with the signal-to-noise ratio
    1 / sigma_i^2 of each (EDM convention: the data has scale 1 and the noise scale sigma)."""
    sigmas = torch.as_tensor(sigmas)
    n = randn_like(x0, generator)
    s = sigmas.to(device=x0.device, dtype=x0.dtype)
    frames = x0[None] + append_dims(s, x0.ndim + 1) * n[None]
    return ForwardFrames(frames, 1.0 / sigmas.double() ** 2)
