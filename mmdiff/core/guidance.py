"""Conditioning bound into a denoiser before sampling: classifier-free guidance (with guidance rescale
and a guidance interval) and dynamic thresholding.

Samplers call ``denoiser(x, sigma)``; this module turns a conditional denoiser
``D(x, sigma, labels)`` into that form (STYLE habit 12: no extra_args dicts).
"""

from __future__ import annotations

import torch

from .schedules import append_dims


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022), in data space:

        D_w(x, sigma) = D(x, sigma, null) + w * (D(x, sigma, labels) - D(x, sigma, null))

    Guidance in data space equals guidance in noise space, since eps = (x - D) / sigma is affine
    in D for fixed x and sigma. w = 1 is the conditional model (one network call), w = 0 the
    unconditional one. ``labels`` None means unconditional sampling (the null label).

    ``rescale`` (phi; Lin et al. 2023, Sec. 3.4) pulls the guided estimate's per-sample
    standard deviation back towards the conditional estimate's:
    ``phi * D_w * std(D_cond) / std(D_w) + (1 - phi) * D_w``. It acts on the x0 estimate (the paper's
    choice; diffusers applies the same formula to eps, where the stds differ). phi = 0 is plain CFG.

    ``interval`` (sigma_lo, sigma_hi) applies guidance only for sigma in (sigma_lo, sigma_hi]
    (Kynkäänniemi et al. 2024, Sec. 3); elsewhere the result is the conditional model, one call.

    ``conditions``: other per-sample inputs of the denoiser (keyword tensors [B, ...], e.g. known video frames
    as extra channels), bound like the labels and given to both branches, except those named in
    ``null_conditions``: the unconditional branch gets those values instead. Captions are one: the conditional
    branch gets the prompt's tokens, the unconditional one the empty caption's, or a negative prompt's
    (a negative prompt *is* the unconditional branch replaced). Guidance is on the labels and those.

    ``guide``: autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"): the
    branch guided away from is this weaker denoiser (an earlier snapshot, a smaller model of the same data)
    with the same labels, instead of the null label: D_w = D_guide + w (D - D_guide). It works for
    unconditional models too; rescale and interval apply alike.
    """

    def __init__(self, denoiser, labels: torch.Tensor | None, scale: float = 1.0, null_label: int | None = None, *,
                 rescale: float = 0.0, interval: tuple[float, float] | None = None,
                 conditions: dict[str, torch.Tensor] | None = None, guide=None,
                 null_conditions: dict[str, torch.Tensor] | None = None):
        self.denoiser, self.labels, self.scale, self.null_label = denoiser, labels, float(scale), null_label
        self.rescale = float(rescale)
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        self.conditions = dict(conditions or {})
        self.null_conditions = dict(null_conditions or {})
        self.guide = guide

    def _call(self, x, sigma, labels, twice: bool = False, denoiser=None, null: bool = False):
        """One network call: the conditional branch; ``null`` the unconditional one; ``twice`` both, stacked."""
        uncond = self.conditions | self.null_conditions
        if twice:
            extra = {k: torch.cat([v, uncond[k]]) for k, v in self.conditions.items()}
        else:
            extra = uncond if null else self.conditions
        return (denoiser or self.denoiser)(x, sigma, labels, **extra)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0 or (self.labels is None and self.guide is None and not self.null_conditions):
            return self._call(x, sigma, self.labels)
        inside = None
        if self.interval is not None:
            lo, hi = self.interval
            inside = (sigma > lo) & (sigma <= hi)  # [B]
            if not inside.any():
                return self._call(x, sigma, self.labels)
        if self.guide is not None:  # two networks: two calls
            cond, uncond = self._call(x, sigma, self.labels), self._call(x, sigma, self.labels, denoiser=self.guide)
        else:
            null = None if self.labels is None else torch.full_like(self.labels, self.null_label)
            if self.scale == 0.0 and self.rescale == 0.0 and (inside is None or inside.all()):
                return self._call(x, sigma, null, null=True)
            both = None if self.labels is None else torch.cat([self.labels, null])
            cond, uncond = self._call(torch.cat([x, x]), torch.cat([sigma, sigma]), both, twice=True).chunk(2)
        guided = uncond + self.scale * (cond - uncond)
        if self.rescale != 0.0:
            guided = rescale_guidance(guided, cond, self.rescale)
        if inside is not None:
            guided = torch.where(append_dims(inside, x.ndim), guided, cond)
        return guided


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023, Sec. 3.4: x_rescaled = x_cfg * std(x_pos) / std(x_cfg), mixed in by phi.
    Standard deviations per sample, over all dims but the first. A constant guided estimate (std 0)
    is left as it is."""
    dims = list(range(1, guided.ndim))
    std_cond, std_guided = cond.std(dim=dims, keepdim=True), guided.std(dim=dims, keepdim=True)
    ratio = torch.where(std_guided > 0, std_cond / std_guided, torch.ones_like(std_guided))
    return guided * (phi * ratio + (1 - phi))


class DynamicThreshold:
    """Dynamic thresholding of the x0 estimate (Saharia et al. 2022, "Imagen", Sec. 2.3), for data in
    [-bound, bound] (pixels in model space: bound = 1):

        s = max(quantile(|D|, percentile), bound)  per sample;   D <- clip(D, -s, s) * bound / s

    A sample whose values mostly lie in [-bound, bound] is untouched; a saturated one is pulled back
    in. Wraps any denoiser, guided or not; extra arguments (labels) pass through unchanged.
    """

    def __init__(self, denoiser, percentile: float = 0.995, bound: float = 1.0):
        if not 0.0 < percentile <= 1.0:
            raise ValueError(f"percentile must be in (0, 1], got {percentile}")
        self.denoiser, self.percentile, self.bound = denoiser, float(percentile), float(bound)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *args) -> torch.Tensor:
        return dynamic_threshold(self.denoiser(x, sigma, *args), self.percentile, self.bound)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995, bound: float = 1.0) -> torch.Tensor:
    """The thresholding step of :class:`DynamicThreshold` on an estimate [B, *shape]."""
    s = quantile(x0.abs().flatten(1), percentile).clamp(min=bound)  # [B]
    s = append_dims(s, x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s * bound


def quantile(v: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile of v [B, N] with linear interpolation (numpy's default, as torch.quantile),
    through a sort: torch.quantile refuses inputs of more than 2^24 elements."""
    v = v.sort(dim=1).values
    pos = q * (v.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, v.shape[1] - 1)
    return v[:, lo] + (pos - lo) * (v[:, hi] - v[:, lo])


def drop_captions(tokens: torch.Tensor, p: float, empty: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each row of ``tokens`` [B, L] by the empty caption's tokens ``empty`` [L] with probability p (the
    training half of classifier-free guidance for captions, GLIDE's 20 %; one draw per row, on the CPU)."""
    if p <= 0:
        return tokens
    drop = (torch.rand(tokens.shape[0], generator=generator) < p).to(tokens.device)
    return torch.where(drop[:, None], empty.to(tokens.device), tokens)


def drop_labels(labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability p (the training half of CFG)."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)
