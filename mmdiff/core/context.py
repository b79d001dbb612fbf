"""Conditioning on known steps of a time axis (video frames), as extra input channels.

The known steps and a per-step mask enter the network beside the noisy input,
``cond = concat(m * x_known, m)`` with m in {0, 1} per time step (MCVD, RaMViD and flexible video diffusion
condition on frame subsets; here through channels, so the samplers never see the context: it is bound into
the denoiser like a label). Training draws a random mask per item (:func:`draw_masks`: none, a prefix, a
suffix, both ends or a random subset), so one model does unconditional generation, forward and backward
prediction from any number of steps, interpolation and window-by-window extension. The trainer adds a
little noise to the known steps (SVD's noise augmentation of its conditioning frame), which limits drift
when generated steps become the next window's context.

Everything works on tensors [B, C, *spatial] with the time axis at ``time_dim``.
"""

from __future__ import annotations

import torch

KINDS = ("none", "prefix", "suffix", "ends", "random")


def draw_masks(n: int, steps: int, probabilities: dict[str, float], generator: torch.Generator) -> torch.Tensor:
    """[n, steps] bool masks of known steps: each row one of KINDS, drawn with ``probabilities`` (normalised):
    none known; a prefix of k (forward prediction) or a suffix (backward); k at both ends (interpolation);
    each step known with probability 1/2 (infilling). k is uniform in 1..steps-1 (always leaving some unknown)."""
    weights = torch.tensor([float(probabilities.get(k, 0.0)) for k in KINDS])
    if weights.sum() <= 0:
        raise ValueError(f"context mask probabilities must not all be 0, got {probabilities}")
    kinds = torch.multinomial(weights, n, replacement=True, generator=generator)
    k = torch.randint(1, max(2, steps), (n,), generator=generator)
    t = torch.arange(steps)
    random = torch.rand(n, steps, generator=generator) < 0.5
    masks = torch.stack([
        torch.zeros(n, steps, dtype=torch.bool),
        t < k[:, None],
        t >= steps - k[:, None],
        (t < (k[:, None] + 1) // 2) | (t >= steps - k[:, None] // 2),
        random,
    ])                                                                     # [KINDS, n, steps]
    masks = masks[kinds, torch.arange(n)]
    return masks & (masks.sum(1, keepdim=True) < steps)                    # never every step known


def expand_mask(mask: torch.Tensor, like: torch.Tensor, time_dim: int) -> torch.Tensor:
    """[B, T] per-step mask -> a float mask [B, 1, *spatial] of ``like``'s rank, 1 on the known steps."""
    shape = [mask.shape[0]] + [1] * (like.ndim - 1)
    shape[time_dim] = mask.shape[1]
    return mask.to(like.dtype).view(shape).expand(mask.shape[0], 1, *like.shape[2:])


def context_input(x_known: torch.Tensor, mask: torch.Tensor, time_dim: int) -> torch.Tensor:
    """The network's extra input channels: concat(m * x_known, m), [B, C + 1, *spatial], for known steps
    ``mask`` [B, T] of ``x_known`` [B, C, *spatial] along ``time_dim``."""
    m = expand_mask(mask.to(x_known.device), x_known, time_dim)
    return torch.cat([x_known * m, m], dim=1)


def channels(data_channels: int) -> int:
    """Extra input channels of context conditioning for data with ``data_channels`` channels."""
    return data_channels + 1
