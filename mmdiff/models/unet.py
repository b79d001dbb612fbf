"""One U-Net over 1, 2 or 3 spatial dims: the image, waveform and spectrogram networks are configs of it.

The layout is ADM's (Dhariwal & Nichol 2021), itself DDPM's (Ho et al. 2020) with scale-shift
conditioning and multi-head attention:

    conv_in -> for each level: num_blocks Blocks, then down-sample (not after the last level)
            -> middle: ResBlock, Attention, ResBlock
            -> for each level, coarsest first: num_blocks + 1 Blocks, each fed the concatenation of
               the running features and one skip, then up-sample (not after the finest level)
            -> GroupNorm, SiLU, conv_out (zero-initialised: a new network outputs 0)

A Block is a ResBlock followed, at the levels in ``attn_levels``, by self-attention (ADM puts one
after every residual block of an attention resolution). The middle block has attention whenever
``attn_levels`` is non-empty: it is the cheapest place for global context, at the coarsest resolution.

The network takes the raw inputs of EDM's F (Karras et al. 2022, Eq. 7): x, c_noise = ln(sigma)/4, and
class labels; it never knows which parametrization it is trained under (mmdiff/core/precond.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (EMBEDDINGS, Block, Downsample, ResBlock, Upsample, conv_nd, group_norm, patchify, unpatchify,
                     zero_init)


class UNet(nn.Module):
    """x [B, in_channels, *spatial], c_noise [B], labels [B] or None -> [B, out_channels, *spatial].

    Level i has ``channels * channel_mult[i]`` channels; between levels i and i + 1 every spatial dim
    is divided by ``down_factors[i]``, so each spatial size must be a multiple of
    :attr:`total_downsampling` (checked at the boundary by :meth:`check_input_shape`, not in forward).

    Labels are class indices in [0, num_classes]; index ``num_classes`` is the null class of
    classifier-free guidance (Ho & Salimans 2022), and ``labels=None`` means all-null. With
    ``num_classes=0`` the network is unconditional and ignores labels.
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, out_channels: int | None = None,
                 channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2), num_blocks: int = 2,
                 attn_levels: Sequence[int] = (), head_channels: int = 32, dropout: float = 0.0,
                 num_classes: int = 0, embedding: str = "positional",
                 down_factors: Sequence[int] | int = 2, groups: int = 32, patch_size: int = 1):
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        attn_levels = sorted({int(a) for a in attn_levels})
        factors = _check_config(dims, channels, channel_mult, num_blocks, attn_levels, head_channels,
                                dropout, num_classes, embedding, down_factors, groups)
        out_channels = in_channels if out_channels is None else out_channels
        if patch_size < 1:
            raise ValueError(f"model.patch_size={patch_size}: must be >= 1")
        self.dims, self.num_classes, self.down_factors, self.patch_size = dims, num_classes, factors, patch_size
        widths = [channels * m for m in channel_mult]
        for w in widths:
            group_norm(w, groups)  # fail before building anything if a level's width does not split

        # Noise-level embedding -> MLP -> (+ class embedding) -> SiLU, computed once per forward and
        # shared by every ResBlock (ADM's time_embed + label_emb; EDM applies the SiLU once, here too).
        emb_ch = 4 * channels
        self.noise_embed = EMBEDDINGS[embedding](channels)
        self.noise_mlp = nn.Sequential(nn.Linear(channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.label_embed = nn.Embedding(num_classes + 1, emb_ch) if num_classes > 0 else None

        def block(in_ch: int, out_ch: int, level: int) -> Block:
            return Block(dims, in_ch, out_ch, emb_ch, attention=level in attn_levels,
                         head_channels=head_channels, dropout=dropout, groups=groups)

        # Down path; skip_chs records the width of every tensor pushed on the skip stack.
        # With patch_size p > 1 the network runs on p^dims-channel patches (space-to-depth, as in ViT/DiT
        # patch embeddings): p^dims times fewer positions at every level, for long waveforms or large images.
        self.conv_in = conv_nd(dims, in_channels * patch_size**dims, widths[0], 3)
        ch, skip_chs = widths[0], [widths[0]]
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(block(ch, width, level))
                ch = width
                skip_chs.append(ch)
            self.down_blocks.append(blocks)
            if level < len(factors):
                self.downsamples.append(Downsample(dims, ch, factors[level]))
                skip_chs.append(ch)

        self.middle = nn.ModuleList([
            Block(dims, ch, ch, emb_ch, attention=bool(attn_levels), head_channels=head_channels,
                  dropout=dropout, groups=groups),
            ResBlock(dims, ch, ch, emb_ch, dropout, groups),
        ])

        # Up path, coarsest level first: one more block per level than on the way down, so that every
        # skip (including conv_in's and the down-samplers') is consumed (ADM).
        self.up_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_blocks + 1):
                blocks.append(block(ch + skip_chs.pop(), widths[level], level))
                ch = widths[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(Upsample(dims, ch, factors[level - 1]))

        self.norm_out = group_norm(ch, groups)
        self.conv_out = zero_init(conv_nd(dims, ch, out_channels * patch_size**dims, 3))

    @property
    def total_downsampling(self) -> int:
        """The patch size times the down-sampling factors: every spatial size must be a multiple of it."""
        return self.patch_size * math.prod(self.down_factors)

    def check_input_shape(self, spatial: Sequence[int]) -> None:
        """Raise ValueError, with a fix, unless the network can take inputs of spatial size ``spatial``."""
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.dims:
            raise ValueError(f"model.dims={self.dims} but the data has {len(spatial)} spatial dim(s) "
                             f"(size {spatial}): choose a model for {len(spatial)}-D data")
        if min(spatial) < 1:
            raise ValueError(f"input size {_fmt(spatial)} has an empty spatial dim")
        total = self.total_downsampling
        if any(s % total for s in spatial):
            fixed = tuple(-(-s // total) * total for s in spatial)
            example = fixed[0] if len(set(fixed)) == 1 else fixed
            how = " x ".join(map(str, ([self.patch_size] if self.patch_size > 1 else []) + list(self.down_factors)))
            parts = f"{'patch ' if self.patch_size > 1 else ''}{how} over {len(self.down_factors) + 1} levels"
            raise ValueError(f"input size {_fmt(spatial)} is not divisible by {total}, the U-Net's total "
                             f"down-sampling ({parts}): use a size that "
                             f"is a multiple of {total} (e.g. {example}) or fewer levels in model.channel_mult "
                             f"(or smaller model.down_factors)")

    def embed(self, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """c_noise [B], labels [B] or None -> the conditioning vector [B, 4 * channels], after SiLU."""
        emb = self.noise_mlp(self.noise_embed(c_noise))
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((c_noise.shape[0],), self.num_classes, dtype=torch.long, device=c_noise.device)
            emb = emb + self.label_embed(labels)
        return F.silu(emb)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in_channels, *spatial]; c_noise: [B]; labels: [B] int64 or None -> [B, out_channels, *spatial]."""
        emb = self.embed(c_noise, labels).to(x.dtype)
        h = self.conv_in(patchify(x, self.patch_size))
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)
        for blk in self.middle:
            h = blk(h, emb)
        for level, blocks in enumerate(self.up_blocks):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsamples):
                h = self.upsamples[level](h)
        return unpatchify(self.conv_out(F.silu(self.norm_out(h))), self.patch_size)


def _fmt(spatial: tuple[int, ...]) -> str:
    return str(spatial[0]) if len(spatial) == 1 else str(spatial)


def _check_config(dims, channels, channel_mult, num_blocks, attn_levels, head_channels, dropout,
                  num_classes, embedding, down_factors, groups) -> list[int]:
    """Validate the constructor arguments; return the down-sampling factors, one per level transition."""
    if dims not in (1, 2, 3):
        raise ValueError(f"model.dims={dims}: the U-Net supports 1, 2 or 3 spatial dims")
    if not channel_mult:
        raise ValueError("model.channel_mult is empty: give one multiplier per level, e.g. [1, 2, 2]")
    if min(channel_mult) < 1:
        raise ValueError(f"model.channel_mult={channel_mult}: every multiplier must be >= 1")
    if channels < 2 or channels % 2:
        raise ValueError(f"model.channels={channels}: must be a positive even number (the noise embedding "
                         f"splits it into cos and sin halves)")
    if num_blocks < 1:
        raise ValueError(f"model.num_blocks={num_blocks}: need at least 1 residual block per level")
    levels = len(channel_mult)
    bad = [a for a in attn_levels if not 0 <= a < levels]
    if bad:
        raise ValueError(f"model.attn_levels contains {bad}, out of range: with {levels} level(s) in "
                         f"model.channel_mult the levels are 0..{levels - 1} (0 = full resolution)")
    if head_channels < 1:
        raise ValueError(f"model.head_channels={head_channels}: must be >= 1")
    if groups < 1:
        raise ValueError(f"model.groups={groups}: must be >= 1")
    if not 0 <= dropout < 1:
        raise ValueError(f"model.dropout={dropout}: must be in [0, 1)")
    if num_classes < 0:
        raise ValueError(f"model.num_classes={num_classes}: must be >= 0 (0 = unconditional)")
    if embedding not in EMBEDDINGS:
        raise ValueError(f"model.embedding={embedding!r}: choose one of {sorted(EMBEDDINGS)}")
    if isinstance(down_factors, int):
        factors = [down_factors] * (levels - 1)
    else:
        factors = [int(f) for f in down_factors]
        if len(factors) != levels - 1:
            raise ValueError(f"model.down_factors={factors} has {len(factors)} entries but {levels} levels "
                             f"need {levels - 1} (one per transition), or give a single int for all")
    if any(f < 1 for f in factors):
        raise ValueError(f"model.down_factors={factors}: every factor must be >= 1")
    return factors

