"""One U-Net over 1, 2 or 3 spatial dims: the image, waveform, spectrogram and video networks are configs of it.

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

Video is ``dims=3`` with time the first spatial axis, [B, C, T, H, W], in one of two forms:

- ``temporal="full"``: every layer is 3-D (3x3x3 convolutions, joint attention over T*H*W: RaMViD,
  Hoppe et al. 2022);
- ``temporal="factorized"``: VDM's factorised space-time U-Net (Ho et al. 2022): the network above runs
  in 2-D on the frames folded into the batch, [B*T, C, H, W], so its spatial layers are exactly the 2-D
  U-Net's (names and shapes: a 2-D checkpoint loads into them), and each ResBlock gains a temporal
  convolution and each attention a temporal attention, both zero-initialised (layers.TemporalConv,
  layers.TemporalAttention). ``independent`` switches them off per clip, so a video model trains on
  images too (VDM, Sec. 3).

``down_factors`` and ``patch_size`` may be given per axis (e.g. ``[[1, 2, 2]]``: keep time, halve space,
as VDM, lucidrains and diffusers do).

The network takes the raw inputs of EDM's F (Karras et al. 2022, Eq. 7): x, c_noise = ln(sigma)/4, and
class labels (plus ``cond``, extra input channels such as known frames, and ``independent``); it never
knows which parametrization it is trained under (mmdiff/core/precond.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (EMBEDDINGS, Block, Downsample, Frames, ResBlock, Upsample, conv_nd, group_norm, patchify,
                     unpatchify, zero_init)
from .pretrained_text import PretrainedTextEncoder
from .text import CaptionEncoder, TextEncoder

TEMPORAL = ("full", "factorized")
# What check_input_shape calls the axes of a video (dims=3: time is the first spatial axis).
AXIS_NAMES = {3: ("time", "height", "width")}


def text_encoder(text: dict) -> CaptionEncoder:
    """The caption encoder ``text`` describes: {path, max_length} a pretrained one loaded from ``path``, frozen;
    {width, layers, heads, max_length} one trained with the network."""
    text = dict(text)
    if text.get("path"):
        return PretrainedTextEncoder(text["path"], text["max_length"])
    text.pop("path", None)
    return TextEncoder(**text)


class UNet(nn.Module):
    """x [B, in_channels, *spatial], c_noise [B], labels [B] or None -> [B, out_channels, *spatial].

    Level i has ``channels * channel_mult[i]`` channels; between levels i and i + 1 spatial axis a is
    divided by ``down_factors[i][a]`` (``down_factors`` is an int for every axis and transition, a list of
    one int per transition, or a list of one per-axis list per transition), so each spatial size must be
    a multiple of :attr:`total_downsampling` (checked at the boundary by :meth:`check_input_shape`, not
    in forward). ``patch_size`` is an int or one int per axis.

    Labels are class indices in [0, num_classes]; index ``num_classes`` is the null class of
    classifier-free guidance (Ho & Salimans 2022), and ``labels=None`` means all-null. With
    ``num_classes=0`` the network is unconditional and ignores labels.

    ``cond_channels`` > 0 adds that many input channels, ``cond`` [B, cond_channels, *spatial], joined to
    x before conv_in (known frames and their mask, as MCVD joins its conditioning frames); zeros when
    ``cond`` is None. ``temporal`` chooses the form of a video network (dims=3; see the module
    docstring); 1-D and 2-D networks ignore it.

    ``text`` ({width, layers, heads, max_length}: mmdiff.models.text.TextEncoder) conditions on captions, GLIDE's
    way: the encoder is part of this network and trains with it; its token features are extra keys and values
    of every attention layer (``attn_levels`` and the middle block), its pooled output joins the embedding.
    ``text`` = {path, max_length} takes a pretrained encoder from that folder instead, frozen
    (mmdiff.models.pretrained_text: Imagen's choice).
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, out_channels: int | None = None,
                 channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2), num_blocks: int = 2,
                 attn_levels: Sequence[int] = (), head_channels: int = 32, dropout: float = 0.0,
                 num_classes: int = 0, embedding: str = "positional",
                 down_factors: Sequence[int] | Sequence[Sequence[int]] | int = 2, groups: int = 32,
                 patch_size: int | Sequence[int] = 1, temporal: str = "full", cond_channels: int = 0,
                 text: dict | None = None):
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        attn_levels = sorted({int(a) for a in attn_levels})
        _check_config(dims, channels, channel_mult, num_blocks, attn_levels, head_channels,
                      dropout, num_classes, embedding, groups, temporal, cond_channels)
        rs = Resampling.from_config(dims, len(channel_mult), down_factors, patch_size)
        out_channels = in_channels if out_channels is None else out_channels
        self.dims, self.num_classes, self.cond_channels = dims, num_classes, cond_channels
        self.resampling = rs
        # As configured: ints stay ints (the 1-D and 2-D networks' attributes are unchanged), per-axis tuples otherwise.
        self.down_factors = rs.factors if rs.per_axis else [f[0] for f in rs.factors]
        self.patch_size = rs.patch if rs.per_axis else rs.patch[0]
        # Factorised video: every layer below is 2-D on [B*T, C, H, W]; time is resampled by Frames-aware
        # layers only where the per-axis factors say so.
        self.factorized = dims == 3 and temporal == "factorized"
        self.temporal = temporal if dims == 3 else "full"
        conv_dims = 2 if self.factorized else dims
        self.conv_dims = conv_dims  # the rank of the convolutions (a memory format must match it)
        time_factors = [f[0] if self.factorized else 1 for f in rs.factors]

        def spatial(f: tuple[int, ...]) -> int | tuple[int, ...]:
            """A resampler's factor: the int as configured, or the per-axis tuple (time dropped when factorised)."""
            f = f[1:] if self.factorized else f
            return f if rs.per_axis else f[0]

        widths = [channels * m for m in channel_mult]
        for w in widths:
            group_norm(w, groups)  # fail before building anything if a level's width does not split

        # Noise-level embedding -> MLP -> (+ class embedding) -> SiLU, computed once per forward and
        # shared by every ResBlock (ADM's time_embed + label_emb; EDM applies the SiLU once, here too).
        emb_ch = 4 * channels
        self.noise_embed = EMBEDDINGS[embedding](channels)
        self.noise_mlp = nn.Sequential(nn.Linear(channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.label_embed = nn.Embedding(num_classes + 1, emb_ch) if num_classes > 0 else None
        # Text (GLIDE): an encoder trained with the network (or a frozen pretrained one); its pooled output joins
        # the embedding, its tokens are extra keys and values of every attention layer.
        self.text_encoder = text_encoder(text) if text else None
        self.text_pool = nn.Linear(self.text_encoder.width, emb_ch) if text else None
        context_ch = self.text_encoder.width if text else 0

        def block(in_ch: int, out_ch: int, attention: bool) -> Block:
            return Block(conv_dims, in_ch, out_ch, emb_ch, attention=attention, head_channels=head_channels,
                         dropout=dropout, groups=groups, temporal=self.factorized, context_ch=context_ch)

        # Down path; skip_chs records the width of every tensor pushed on the skip stack.
        # With a patch size p > 1 the network runs on patches (space-to-depth, as in ViT/DiT patch
        # embeddings): prod(p) times fewer positions at every level, for long waveforms, large images or videos.
        self.conv_in = conv_nd(conv_dims, (in_channels + cond_channels) * math.prod(rs.patch), widths[0], 3)
        ch, skip_chs = widths[0], [widths[0]]
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(block(ch, width, level in attn_levels))
                ch = width
                skip_chs.append(ch)
            self.down_blocks.append(blocks)
            if level < len(rs.factors):
                self.downsamples.append(Downsample(conv_dims, ch, spatial(rs.factors[level]), time_factors[level]))
                skip_chs.append(ch)

        self.middle = nn.ModuleList([
            block(ch, ch, bool(attn_levels)),
            ResBlock(conv_dims, ch, ch, emb_ch, dropout, groups, temporal=self.factorized),
        ])

        # Up path, coarsest level first: one more block per level than on the way down, so that every
        # skip (including conv_in's and the down-samplers') is consumed (ADM).
        self.up_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_blocks + 1):
                blocks.append(block(ch + skip_chs.pop(), widths[level], level in attn_levels))
                ch = widths[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(Upsample(conv_dims, ch, spatial(rs.factors[level - 1]), time_factors[level - 1]))

        self.norm_out = group_norm(ch, groups)
        self.conv_out = zero_init(conv_nd(conv_dims, ch, out_channels * math.prod(rs.patch), 3))
        # Frames can be independent (``forward(independent=...)``) only where nothing but the temporal
        # layers mixes them: a factorised network that keeps every frame.
        self.frames_can_be_independent = self.factorized and rs.totals[0] == 1

    @property
    def total_downsampling(self) -> int | tuple[int, ...]:
        """The patch size times the down-sampling factors: every spatial size must be a multiple of it.
        An int when the config gives ints, a tuple of per-axis totals when it gives factors per axis."""
        return self.resampling.total

    def check_input_shape(self, spatial: Sequence[int]) -> None:
        """Raise ValueError, with a fix, unless the network can take inputs of spatial size ``spatial``."""
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.dims:
            raise ValueError(f"model.dims={self.dims} but the data has {len(spatial)} spatial dim(s) "
                             f"(size {spatial}): choose a model for {len(spatial)}-D data")
        if min(spatial) < 1:
            raise ValueError(f"input size {_fmt(spatial)} has an empty spatial dim")
        rs, totals = self.resampling, self.resampling.totals
        bad = [a for a, (s, t) in enumerate(zip(spatial, totals)) if s % t]
        if not bad:
            return
        fixed = tuple(-(-s // t) * t for s, t in zip(spatial, totals))
        example = fixed[0] if len(set(fixed)) == 1 else fixed
        names = AXIS_NAMES.get(self.dims)
        failing = [f"axis {a}{f' ({names[a]})' if names else ''} has size {spatial[a]}, not a multiple of {totals[a]}"
                   for a in bad]
        where = "; ".join(failing) + ": " if self.dims > 1 else ""       # one axis needs no name
        if not rs.per_axis:
            total = totals[0]
            how = " x ".join(map(str, ([self.patch_size] if self.patch_size > 1 else []) + list(self.down_factors)))
            parts = f"{'patch ' if self.patch_size > 1 else ''}{how} over {len(self.down_factors) + 1} levels"
            raise ValueError(f"input size {_fmt(spatial)} is not divisible by {total}, the U-Net's total "
                             f"down-sampling ({parts}): {where}use a size that "
                             f"is a multiple of {total} (e.g. {example}) or fewer levels in model.channel_mult "
                             f"(or smaller model.down_factors)")
        factors = " x ".join(str(list(f)) for f in rs.factors)
        parts = f"patch {list(rs.patch)}{f' x {factors}' if factors else ''} over {len(rs.factors) + 1} levels"
        axes = f"axis {bad[0]}" if len(bad) == 1 else f"axes {', '.join(map(str, bad))}"
        raise ValueError(f"input size {_fmt(spatial)} is not divisible by {totals} axis by axis, the U-Net's total "
                         f"down-sampling per axis ({parts}): {where}use sizes that are multiples of {totals} "
                         f"(e.g. {example}), or a factor of 1 along {axes} in model.down_factors and "
                         f"model.patch_size, or fewer levels in model.channel_mult")

    def embed(self, c_noise: torch.Tensor, labels: torch.Tensor | None,
              text: torch.Tensor | None = None) -> torch.Tensor:
        """c_noise [B], labels [B] or None, text [B, 4 * channels] (the projected pooled caption) or None -> the
        conditioning vector [B, 4 * channels], after SiLU."""
        emb = self.noise_mlp(self.noise_embed(c_noise))
        if text is not None:
            emb = emb + text
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((c_noise.shape[0],), self.num_classes, dtype=torch.long, device=c_noise.device)
            emb = emb + self.label_embed(labels)
        return F.silu(emb)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, independent: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in_channels, *spatial]; c_noise: [B]; labels: [B] int64 or None; cond: [B, cond_channels,
        *spatial] or None (zeros); independent: [B] bool or None (all False); tokens: [B, L] int64 caption tokens
        (``text_encoder.tokenizer``'s) or None (the empty caption), for a network built with ``text``
        -> [B, out_channels, *spatial].

        ``independent[b]`` True: the temporal layers skip clip b, so its frames are independent images
        (factorised video; 1-D and 2-D networks ignore it, having no frames to mix; other video networks
        refuse it). With T = 1 the temporal layers are always skipped.
        """
        if independent is not None and self.dims == 3 and not self.frames_can_be_independent:
            raise ValueError(f"independent frames need a network in which only temporal layers mix frames: "
                             f"model.temporal=factorized with factor 1 along time in model.down_factors and "
                             f"model.patch_size (this one: temporal={self.temporal}, total down-sampling "
                             f"{self.total_downsampling}); or pass independent=None")
        context = None
        if self.text_encoder is not None:
            if tokens is None:
                tokens = self.text_encoder.empty(x.shape[0], x.device)
            features, keep, pooled = self.text_encoder(tokens)
            context = (features, keep)
        emb = self.embed(c_noise, labels, None if context is None else self.text_pool(pooled)).to(x.dtype)
        if self.cond_channels:
            if cond is None:
                cond = x.new_zeros(x.shape[0], self.cond_channels, *x.shape[2:])
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        h = patchify(x, self.resampling.patch)
        frames, e, c = None, emb, context                                 # e, c: every row of h's embedding, text

        def per_frame(frames):
            return frames.per_frame(emb), None if context is None else tuple(frames.per_frame(v) for v in context)

        if self.factorized:
            B, _, T = h.shape[:3]
            frames = Frames(B, T, None if independent is None else ~independent.bool())
            h = h.transpose(1, 2).flatten(0, 1)                           # [B*T, C, H, W]
            e, c = per_frame(frames)                                      # [B*T, emb_ch], [B*T, L, W]

        h = self.conv_in(h)
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, e, frames, c)
                skips.append(h)
            if level < len(self.downsamples):
                down = self.downsamples[level]
                h = down(h, frames)
                if down.time_factor > 1:
                    frames = frames.with_num(frames.num // down.time_factor)
                    e, c = per_frame(frames)
                skips.append(h)
        h = self.middle[0](h, e, frames, c)
        h = self.middle[1](h, e, frames)
        for level, blocks in enumerate(self.up_blocks):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), e, frames, c)
            if level < len(self.upsamples):
                up = self.upsamples[level]
                h = up(h, frames)
                if up.time_factor > 1:
                    frames = frames.with_num(frames.num * up.time_factor)
                    e, c = per_frame(frames)
        h = self.conv_out(F.silu(self.norm_out(h)))
        if frames is not None:
            h = frames.to_clips(h).transpose(1, 2).contiguous()           # [B, C, T, H, W]
        return unpatchify(h, self.resampling.patch)


@dataclass(frozen=True)
class Resampling:
    """A U-Net config's resampling, per axis: ``factors[i][a]`` divides axis a between levels i and i + 1,
    ``patch[a]`` is the patch size along axis a; ``per_axis`` says whether the config gave them per axis."""

    factors: list[tuple[int, ...]]
    patch: tuple[int, ...]
    per_axis: bool

    @property
    def totals(self) -> tuple[int, ...]:
        """Per axis: the patch size times the factors."""
        return tuple(p * math.prod(f[a] for f in self.factors) for a, p in enumerate(self.patch))

    @property
    def total(self) -> int | tuple[int, ...]:
        """What every spatial size must be a multiple of: an int, or per-axis totals for a per-axis config."""
        return self.totals if self.per_axis else self.totals[0]

    @classmethod
    def from_config(cls, dims: int, levels: int, down_factors: int | Sequence,
                    patch_size: int | Sequence[int] = 1) -> Resampling:
        """Normalise and check ``model.down_factors`` and ``model.patch_size`` (ints, or per axis) for
        ``levels`` levels of a ``dims``-D U-Net; raise ValueError naming the fix."""
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def axes(value, key: str) -> tuple[int, ...]:
            if is_int(value):
                return (int(value),) * dims
            value = [int(v) for v in value]
            if len(value) != dims:
                raise ValueError(f"{key}={value} has {len(value)} entries but model.dims={dims} needs {dims} "
                                 f"(one per axis{', time first' if dims == 3 else ''}), or give a single int")
            return tuple(value)

        per_axis = not is_int(patch_size) or (not is_int(down_factors) and not all(is_int(f) for f in down_factors))
        if is_int(down_factors):
            given = [int(down_factors)] * (levels - 1)
        else:
            given = [int(f) if is_int(f) else [int(v) for v in f] for f in down_factors]
            if len(given) != levels - 1:
                raise ValueError(f"model.down_factors={given} has {len(given)} entries but {levels} levels "
                                 f"need {levels - 1} (one per transition), or give a single int for all")
        factors = [axes(f, f"model.down_factors[{i}]") for i, f in enumerate(given)]
        if any(min(f) < 1 for f in factors):
            raise ValueError(f"model.down_factors={given}: every factor must be >= 1")
        patch = axes(patch_size, "model.patch_size")
        if min(patch) < 1:
            raise ValueError(f"model.patch_size={patch_size}: must be >= 1")
        return cls(factors, patch, per_axis)


def _fmt(spatial: tuple[int, ...]) -> str:
    return str(spatial[0]) if len(spatial) == 1 else str(spatial)


def _check_config(dims, channels, channel_mult, num_blocks, attn_levels, head_channels, dropout,
                  num_classes, embedding, groups, temporal, cond_channels) -> None:
    """Validate the constructor arguments other than the resampling (:func:`resampling`)."""
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
    if temporal not in TEMPORAL:
        raise ValueError(f"model.temporal={temporal!r}: choose one of {list(TEMPORAL)} (video networks, dims=3)")
    if not isinstance(cond_channels, int) or cond_channels < 0:
        raise ValueError(f"model.cond_channels={cond_channels!r}: must be an integer >= 0 (auto is resolved "
                         f"from the conditioning by mmdiff.build before the network is built)")
