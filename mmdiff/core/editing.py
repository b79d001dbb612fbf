"""Editing with a trained denoiser, for any tensor [B, C, *spatial] (images and audio alike):
SDEdit, RePaint inpainting, masks along a time axis (gaps, continuation), and noise interpolation.

Every function follows the samplers' convention (``mmdiff.core.samplers``): a denoiser
``denoiser(x, sigma)``, a decreasing ``sigmas`` ending in 0, keyword ``generator`` (one
``torch.Generator`` or one per sample) and ``callback``. ``sampler`` is a name in ``SAMPLERS`` or a
sampler function; its options follow as keywords. Noise comes from ``randn_like`` with the given
generator, so "same seed, same output" holds, independently of the batch size for per-sample
generators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .samplers import SAMPLERS
from .samplers.common import Denoiser, Generator, randn_like, report

Sampler = Callable[..., torch.Tensor]


def get_sampler(sampler: str | Sampler) -> Sampler:
    if callable(sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[sampler]


# --- SDEdit --------------------------------------------------------------------------------------

def truncate_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The last round(strength * n) steps of an n-step schedule: sigmas[n - k:], whose first entry is
    the starting level of SDEdit. strength 0 leaves [0] (no step), strength 1 the whole schedule."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    n = len(sigmas) - 1
    return sigmas[n - round(strength * n):]


@torch.no_grad()
def sdedit(denoiser: Denoiser, x_init: torch.Tensor, sigmas: torch.Tensor, *, strength: float,
           sampler: str | Sampler = "euler", generator: Generator = None, callback=None, **options) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, Algorithm 1): noise the clean ``x_init`` [B, C, *spatial] to
    sigma_start = truncate_sigmas(sigmas, strength)[0], x = x_init + sigma_start * n, then run the
    sampler on the remaining levels. strength = 0 returns ``x_init`` unchanged (no network call);
    strength = 1 starts from pure noise sigmas[0] * n, ignoring ``x_init``: it equals plain sampling
    from the same noise (the noise ``n`` is the first draw from ``generator``)."""
    sigmas = truncate_sigmas(sigmas, strength)
    if len(sigmas) == 1:
        return x_init
    noise = randn_like(x_init, generator) * sigmas[0].to(x_init)
    x = noise if strength == 1.0 else x_init + noise
    return get_sampler(sampler)(denoiser, x, sigmas, generator=generator, callback=callback, **options)


# --- inpainting ----------------------------------------------------------------------------------

@torch.no_grad()
def inpaint(denoiser: Denoiser, x_known: torch.Tensor, mask: torch.Tensor, sigmas: torch.Tensor, *,
            resample: int = 1, sampler: str | Sampler = "ddpm", generator: Generator = None, callback=None,
            **options) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1) in sigma coordinates.

    x_known: [B, C, *spatial], the data (its values outside the mask are ignored); mask: bool (or
    0/1) broadcastable to it, True where the data is known. Starting from x = sigmas[0] * n (plus
    x_known on the known part), each step sigma -> sigma_next
      1. steps the whole of x with the sampler over [sigma, sigma_next] (one step of it: single-step
         samplers exactly, multistep ones as their first-order start),
      2. replaces the known part by x_known + sigma_next * eps, the data noised to the new level,
    and is taken ``resample`` times (RePaint's U): between two takes, x jumps back to sigma by the
    forward process, x + sqrt(sigma^2 - sigma_next^2) * z (the VP step q(x_t | x_t-1) divided by
    alpha_t). U = 1 is plain replacement. The last step (to 0) is taken once and puts back x_known
    exactly: the output equals x_known on the mask, bit for bit.

    For audio a gap in time is a mask along the time axis (:func:`gap_mask`), and continuation one
    that keeps the start (:func:`continuation_input`). ``callback`` sees each step once, after its
    last take, with that take's denoised estimate.
    """
    if resample < 1:
        raise ValueError(f"resample (RePaint's U) must be >= 1, got {resample}")
    step = get_sampler(sampler)
    keep = mask if mask.dtype == torch.bool else mask > 0.5
    keep = keep.to(x_known.device)
    sigmas = sigmas.to(device=x_known.device, dtype=x_known.dtype)
    x = randn_like(x_known, generator) * sigmas[0] + torch.where(keep, x_known, torch.zeros_like(x_known))
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        takes = resample if sigma_next > 0 else 1
        for u in range(takes):
            seen = []
            unknown = step(denoiser, x, sigmas[i:i + 2], generator=generator, callback=seen.append, **options)
            known = x_known + randn_like(x_known, generator) * sigma_next if sigma_next > 0 else x_known
            x = torch.where(keep, known, unknown)
            if u + 1 < takes:
                x = x + randn_like(x, generator) * (sigma**2 - sigma_next**2).sqrt()
        report(callback, i, x, sigma, sigma_next, seen[-1]["denoised"] if seen else None)
    return x


# --- masks along a time axis (audio gaps and continuation) ---------------------------------------

def _time_mask(shape: Sequence[int], known: torch.Tensor, time_dim: int) -> torch.Tensor:
    view = [1] * len(shape)
    view[time_dim] = shape[time_dim]
    return known.view(view)


def continuation_mask(shape: Sequence[int], known: int, *, time_dim: int = -1) -> torch.Tensor:
    """A bool mask of the rank of ``shape`` (size 1 except on ``time_dim``, so it broadcasts): True on
    the first ``known`` steps of the time axis. ``known`` counts model-space time units (waveform
    samples, or spectrogram frames): converting seconds to those is the representation's business."""
    length = shape[time_dim]
    if not 0 <= known <= length:
        raise ValueError(f"known length {known} is outside the time axis of length {length}")
    return _time_mask(shape, torch.arange(length) < known, time_dim)


def gap_mask(shape: Sequence[int], start: int, stop: int, *, time_dim: int = -1) -> torch.Tensor:
    """A bool mask like :func:`continuation_mask`, True (known) outside the gap [start, stop)."""
    t = torch.arange(shape[time_dim])
    return _time_mask(shape, (t < start) | (t >= stop), time_dim)


def continuation_input(clip: torch.Tensor, length: int, *, time_dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Extend ``clip`` [B, C, *spatial] (model space) along ``time_dim`` to ``length`` steps: returns the
    zero-padded clip and the mask that keeps its original part, ready for :func:`inpaint`. The new
    length must suit the model (e.g. a multiple of the U-Net's down-sampling factor)."""
    have = clip.shape[time_dim]
    if length < have:
        raise ValueError(f"cannot extend a clip of {have} time steps to {length}, which is shorter")
    pad_shape = list(clip.shape)
    pad_shape[time_dim] = length - have
    x = torch.cat([clip, clip.new_zeros(pad_shape)], dim=time_dim)
    return x, continuation_mask(x.shape, have, time_dim=time_dim).to(clip.device)


# --- interpolation between seeds -----------------------------------------------------------------

def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985), as DDIM interpolates its noise (Song et al.
    2021a, Sec. 5.3): sin((1 - t) theta) / sin(theta) a + sin(t theta) / sin(theta) b, with theta the
    angle between a and b, each taken as one flattened vector. t: a number (result shaped like a) or
    a 1-D tensor [n] (result [n, *a.shape]). Nearly parallel vectors fall back to linear interpolation."""
    scalar = not isinstance(t, torch.Tensor)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device).reshape(-1)
    a_flat, b_flat = a.flatten(), b.flatten()
    ua, ub = a_flat / a_flat.norm(), b_flat / b_flat.norm()
    theta = 2 * torch.atan2((ua - ub).norm(), (ua + ub).norm())  # accurate near 0 and pi, unlike acos
    if theta.sin() < 1e-6:
        wa, wb = 1 - t, t
    else:
        wa, wb = ((1 - t) * theta).sin() / theta.sin(), (t * theta).sin() / theta.sin()
    out = wa.view(-1, *[1] * a.ndim) * a + wb.view(-1, *[1] * a.ndim) * b
    return out[0] if scalar else out


def interpolate_noise(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """n noise tensors [n, *a.shape] on the great circle from ``a`` to ``b`` (the noises of two seeds),
    end points included exactly. Sample them with a deterministic sampler (e.g. ddim) so that the
    images or sounds vary smoothly."""
    if n < 2:
        raise ValueError(f"interpolation needs n >= 2 points (the two end points), got {n}")
    out = slerp(a, b, torch.linspace(0, 1, n, dtype=a.dtype, device=a.device))
    out[0], out[-1] = a, b
    return out
