"""Building blocks of the U-Net, for 1, 2 or 3 spatial dims.

Tensors are [B, C, *spatial] with ``dims = len(spatial)``. Every block is written once and picks its
convolution or pooling class from a lookup by ``dims``, so the image, waveform and spectrogram U-Nets
share every line (STYLE habit 5). The architecture follows ADM (Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs on Image Synthesis"), itself built on DDPM (Ho et al. 2020); the noise
embeddings are those of EDM (Karras et al. 2022, training/networks.py).

Video in the factorised (2+1)-D form (VDM, Ho et al. 2022; diffusers' TemporalConvLayer) reuses the 2-D
blocks on the frames folded into the batch, [B*T, C, H, W], and adds the two layers that mix frames:
:class:`TemporalConv` (inside a ResBlock built with ``temporal=True``) and :class:`TemporalAttention`.
A :class:`Frames` value tells them how the batch is folded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
# Text tokens for cross-attention: (features [B, L, W], keep [B, L] bool, False at padded tokens)
Context = tuple[torch.Tensor, torch.Tensor]


def conv_nd(dims: int, in_ch: int, out_ch: int, kernel_size: int = 3) -> nn.Module:
    """A ``dims``-D convolution with 'same' padding (odd kernel sizes)."""
    return CONV[dims](in_ch, out_ch, kernel_size, padding=kernel_size // 2)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero the weights and bias, so that a residual branch ending in ``module`` starts as the
    identity and a fresh network outputs exactly 0 (DDPM/ADM's ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(ch: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with min(groups, ch) groups; raises ValueError when ``ch`` does not split evenly."""
    g = min(groups, ch)
    if ch % g:
        raise ValueError(f"GroupNorm: {ch} channels do not split into {g} groups (groups={groups}): "
                         f"choose model.channels, model.channel_mult and model.groups so that every level's "
                         f"channel count is a multiple of model.groups")
    return nn.GroupNorm(g, ch)


def _broadcast(e: torch.Tensor, dims: int) -> torch.Tensor:
    """[B, C] -> [B, C, 1, ...] (``dims`` trailing singletons), a view."""
    return e[(...,) + (None,) * dims]


def per_axis(factor: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """An int (every axis) or one int per axis -> a tuple of ``dims`` ints."""
    return (int(factor),) * dims if isinstance(factor, int) else tuple(int(f) for f in factor)


# --- frames folded into the batch (factorised video) -------------------------------------------------

@dataclass(frozen=True)
class Frames:
    """How a factorised video U-Net folds its clips into the batch: a tensor [B*T, C, H, W] holds
    ``batch`` clips of ``num`` frames, clip-major (frame t of clip b is row b*T + t).

    ``on`` [B] bool: the clips whose temporal layers act; None means all. Where it is False the temporal
    layers are the identity, so each frame is an independent image (VDM's joint image-video training,
    Ho et al. 2022, Sec. 3).
    """

    batch: int
    num: int
    on: torch.Tensor | None = None

    def with_num(self, num: int) -> Frames:
        """The same clips after resampling time to ``num`` frames."""
        return Frames(self.batch, num, self.on)

    def per_frame(self, v: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [B*T, ...]: each clip's row repeated for each of its frames (e.g. the noise embedding)."""
        return v.repeat_interleave(self.num, dim=0)

    def to_clips(self, x: torch.Tensor) -> torch.Tensor:
        """[B*T, C, *s] -> [B, T, C, *s], a view."""
        return x.view(self.batch, self.num, *x.shape[1:])

    def residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x + h, except x exactly in the clips that are off. x, h: [B*T, C, *s]."""
        if self.on is None:
            return x + h
        # torch.where, not x + on * h: exact, and no host sync on ``on`` (training never waits for the device)
        on = self.per_frame(self.on)[(...,) + (None,) * (x.ndim - 1)]
        return torch.where(on, x + h, x)


# --- noise-level embeddings: c_noise [B] -> [B, num_channels] ----------------------------------------

class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (Vaswani et al. 2017; DDPM/ADM's timestep embedding).

    EDM's ``PositionalEmbedding`` with ``endpoint=False``: frequencies (1/max_positions)^(i/half),
    i = 0..half-1, output [cos(c f), sin(c f)]. EDM feeds it c_noise = ln(sigma)/4 directly.
    """

    def __init__(self, num_channels: int, max_positions: int = 10_000):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"the noise embedding needs an even number of channels, got {num_channels}")
        half = num_channels // 2
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        # A pure function of the constructor arguments: not saved in the state_dict.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """c_noise: [B] -> [B, num_channels]."""
        x = torch.outer(c_noise.to(self.freqs.dtype), self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020), NCSN++/EDM's ``FourierEmbedding``.

    The frequencies are drawn once from N(0, scale^2) and stored as a buffer, so they are saved with
    the weights: a reloaded network sees the same features.
    """

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"the noise embedding needs an even number of channels, got {num_channels}")
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """c_noise: [B] -> [B, num_channels]."""
        x = torch.outer(c_noise.to(self.freqs.dtype), (2 * math.pi) * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


EMBEDDINGS = {"positional": PositionalEmbedding, "fourier": FourierEmbedding}


# --- residual blocks ---------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """ADM's residual block with scale-shift conditioning ("adaptive GroupNorm", Dhariwal & Nichol 2021, Sec. 3):

        h = conv(SiLU(GN(x)));  h = GN(h) * (1 + scale) + shift;  h = conv(dropout(SiLU(h)))
        out = skip(x) + h,  with (scale, shift) = Linear(emb)

    The last conv is zero-initialised, so a new block is the identity on its (projected) input.
    With ``temporal=True`` it is the (2+1)-D block of a factorised video U-Net: the block above runs on
    the frames folded into the batch ([B*T, C, H, W], ``dims=2``), then :class:`TemporalConv` mixes
    neighbouring frames (VDM, Ho et al. 2022; diffusers' TemporalConvLayer).
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, emb_ch: int, dropout: float = 0.0, groups: int = 32,
                 temporal: bool = False):
        super().__init__()
        self.dims = dims
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = conv_nd(dims, in_ch, out_ch, 3)
        self.emb_proj = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(conv_nd(dims, out_ch, out_ch, 3))
        # A 1x1 projection only where the width changes (ADM's use_conv=False skip).
        self.skip = conv_nd(dims, in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        # After the spatial layers, so that their names are the 2-D block's and a 2-D checkpoint loads into them.
        self.temporal = TemporalConv(out_ch, groups) if temporal else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: Frames | None = None) -> torch.Tensor:
        """x: [B, in_ch, *spatial]; emb: [B, emb_ch], already through SiLU -> [B, out_ch, *spatial].
        With ``temporal=True``, B is B*T and ``frames`` says how (emb then holds one row per frame)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = _broadcast(self.emb_proj(emb), self.dims).chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), scale + 1)
        h = self.conv2(self.dropout(F.silu(h)))
        h = self.skip(x) + h
        return h if self.temporal is None else self.temporal(h, frames)


class TemporalConv(nn.Module):
    """The temporal residual layer of a (2+1)-D ResBlock (diffusers' TemporalConvLayer):

        out = x + conv_t(SiLU(GN(x))),  conv_t a 3-tap convolution along time only, at every pixel

    on [B*T, C, H, W] with ``frames`` describing the fold. The norm is per frame, like the spatial
    layers': its statistics never mix frames nor depend on the clip length, so conv_t is the only thing
    here that mixes frames. Frames past the clip's ends are zeros ('same' padding). conv_t is
    zero-initialised: a new layer is the identity, so a 2-D network's weights loaded into the spatial
    layers reproduce it frame by frame. With one frame, or in clips that are off, it is the identity.
    """

    def __init__(self, ch: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.conv = zero_init(nn.Conv1d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor, frames: Frames) -> torch.Tensor:
        """x: [B*T, C, H, W] -> same shape."""
        if frames.num == 1:
            return x
        h = frames.to_clips(F.silu(self.norm(x))).flatten(3).transpose(1, 2)   # [B, C, T, H*W], a view
        # The Conv1d's kernel [C, C, 3] applied as a 3 x 1 Conv2d over [B, C, T, H*W]: the same map as the
        # Conv1d over [B*H*W, C, T], without moving every pixel into the batch and back (forward + backward
        # 1.1-1.2x faster for 16 clips of 8 frames of 8 x 8 or 4 x 4, as in conf/model/video_unet.yaml; equal
        # at 16 x 16).
        h = F.conv2d(h, self.conv.weight[..., None], self.conv.bias, padding=(1, 0))
        return frames.residual(x, h.transpose(1, 2).reshape(x.shape))


# --- attention -------------------------------------------------------------------------------------

# Up to this many tokens, bf16 attention on the CPU is faster as two plain matmuls and a softmax than
# through scaled_dot_product_attention, whose CPU kernel is slower in bf16 than in fp32 at these sizes
# (torch 2.14, AVX512-BF16, forward + backward at batch 32, 2 heads of 32): 64 tokens 0.6-0.9 vs
# 3.8-4.5 ms, 256 tokens 6-15 vs 18-21 ms; a training step of the 1.7M-parameter 32x32 U-Net of
# benchmarks/compare_throughput.py 240 vs 291 ms. From 512 tokens on the fused kernel wins, and it does
# not store the N x N weights. Set it to 0 to use the fused kernel everywhere.
CPU_BF16_MATMUL_TOKENS = 256
# The plain path keeps the [..., N, N] weights for the backward pass; above this many elements per call
# (64 MB in bf16: batch 256 with 2 heads at 256 tokens) the fused kernel, which does not, is used instead.
CPU_BF16_MATMUL_ELEMENTS = 2**25


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q, k, v of shape [..., N, d]; ``bias`` broadcasts to
    [..., N, N] (e.g. a relative-position bias [heads, N, N]) or is None.

    Everywhere but bf16 on the CPU this is ``F.scaled_dot_product_attention``. There (a bf16 model or
    ``torch.autocast("cpu", torch.bfloat16)``), up to :data:`CPU_BF16_MATMUL_TOKENS` tokens and
    :data:`CPU_BF16_MATMUL_ELEMENTS` attention weights per call, it is the textbook formula on bf16
    matmuls (fp32 accumulation), the softmax computed in fp32 internally. It rounds the scores q k^T
    to bf16 where the fused kernel keeps them in fp32, as half-precision attention without a fused
    kernel does (diffusers' AttnProcessor, ADM's QKVAttention): outputs and gradients land 1.3-1.9x
    further from a float64 computation than the fused kernel's (relative error ~1e-2 against ~5e-3,
    where bf16 itself resolves 2^-7 = 7.8e-3; tests/models/test_unet.py).
    """
    if bias is not None:
        bias = bias.to(q.dtype)  # SDPA wants its float mask in the query's dtype (bf16 under autocast)
    n = q.shape[-2]
    if (q.dtype == torch.bfloat16 and q.device.type == "cpu" and n <= CPU_BF16_MATMUL_TOKENS
            and q.shape[:-2].numel() * n * n <= CPU_BF16_MATMUL_ELEMENTS):
        w = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)                # [..., N, N]
        if bias is not None:
            w = w + bias
        return w.softmax(-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection (ADM's AttentionBlock).

    GroupNorm -> qkv -> softmax(q k^T / sqrt(d)) v per head -> proj -> + x. The spatial dims are
    flattened into N tokens, so one block serves 1, 2 and 3 dims, and the 1x1 convolutions are written
    as Linear layers on [B, N, C] (the same map): that puts each head's channels last, with stride 1,
    which lets scaled_dot_product_attention use its fused CPU kernel (2x faster than [B, C, N] at
    N = 256; see :func:`attention` for bf16 on the CPU). The qkv output channels are laid out [q | k | v], each split into ``heads`` consecutive
    groups of d = C // heads. The output projection is zero-initialised, so a new block is the identity.
    In a factorised video U-Net it runs on the frames folded into the batch: spatial attention per frame.
    """

    def __init__(self, ch: int, head_channels: int = 32, groups: int = 32, context_ch: int = 0):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        if ch % self.heads:
            raise ValueError(f"attention: {ch} channels do not split into {self.heads} heads "
                             f"(head_channels={head_channels}): choose model.head_channels dividing {ch}")
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_init(nn.Linear(ch, ch))
        # Text tokens as extra keys and values of the same attention (GLIDE's encoder_kv, Nichol et al. 2022)
        self.context_kv = nn.Linear(context_ch, 2 * ch) if context_ch else None

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        """x: [B, C, *spatial] -> same shape; ``context``: text tokens to attend to besides the positions."""
        B, C = x.shape[:2]
        h = self.norm(x.reshape(B, C, -1)).transpose(1, 2)                # [B, N, C]
        return x + self.mix(h, context=context).transpose(1, 2).reshape(x.shape)  # a view; the sum is contiguous

    def mix(self, h: torch.Tensor, bias: torch.Tensor | None = None, context: Context | None = None) -> torch.Tensor:
        """Normalised tokens h [B, N, C] -> proj(attention per head) [B, N, C]; bias [heads, N, N] or None.
        With ``context`` (a layer built with ``context_ch``), the keys and values are the N positions' followed
        by the L text tokens' (projected by ``context_kv``); padded text tokens get weight 0."""
        B, N, C = h.shape
        qkv = self.qkv(h).reshape(B, N, 3, self.heads, C // self.heads)  # [B, N, 3, heads, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                              # each [B, heads, N, d]
        if context is not None and self.context_kv is not None:
            tokens, keep = context
            L = tokens.shape[1]
            kv = self.context_kv(tokens.to(h.dtype)).reshape(B, L, 2, self.heads, C // self.heads)
            k_c, v_c = kv.permute(2, 0, 3, 1, 4)                          # each [B, heads, L, d]
            k, v = torch.cat([k, k_c], dim=2), torch.cat([v, v_c], dim=2)
            # no position bias here: only TemporalAttention has one, and it takes no text
            bias = torch.zeros(B, 1, 1, N + L, dtype=q.dtype, device=q.device)
            bias[..., N:].masked_fill_(~keep[:, None, None, :], float("-inf"))
        h = attention(q, k, v, bias)                                      # [B, heads, N, d]
        return self.proj(h.transpose(1, 2).reshape(B, N, C))


class TemporalAttention(Attention):
    """Self-attention over the T frames at each pixel (VDM's temporal attention, Ho et al. 2022, Sec. 3):
    tokens [B*H*W, T, C] from [B*T, C, H, W], with a residual connection; a frame attends to every frame
    of its clip (past and future: a denoiser sees the whole clip at once).

    Positions are relative, so a network trained on clips of one length samples clips of another (Latte's
    absolute embedding and AnimateDiff's motion_max_seq_length fix the length): a learned bias per head
    over the distance j - i from query frame i to key frame j, clipped to +-``max_distance`` (Shaw et al.
    2018; T5's relative bias, Raffel et al. 2020, buckets the distances instead, as lucidrains' VDM does):

        softmax(q_i k_j / sqrt(d) + b_h[clip(j - i)]) v_j

    The bias starts at 0 (attention by content only) and the output projection at 0 (a new layer is the
    identity). The norm is per frame, as in :class:`TemporalConv`. With one frame, or in clips that are
    off, it is the identity.
    """

    def __init__(self, ch: int, head_channels: int = 32, groups: int = 32, max_distance: int = 32):
        super().__init__(ch, head_channels, groups)
        self.max_distance = max_distance
        self.rel_bias = nn.Parameter(torch.zeros(self.heads, 2 * max_distance + 1))

    def position_bias(self, num_frames: int) -> torch.Tensor:
        """[heads, T, T]: entry (h, i, j) is b_h[clip(j - i)], a function of the distance only."""
        t = torch.arange(num_frames, device=self.rel_bias.device)
        distance = (t[None, :] - t[:, None]).clamp(-self.max_distance, self.max_distance)
        return self.rel_bias[:, distance + self.max_distance]

    def forward(self, x: torch.Tensor, frames: Frames) -> torch.Tensor:
        """x: [B*T, C, H, W] -> same shape."""
        T = frames.num
        if T == 1:
            return x
        C = x.shape[1]
        h = frames.to_clips(self.norm(x)).flatten(3)                      # [B, T, C, H*W]
        h = h.permute(0, 3, 1, 2).reshape(-1, T, C)                       # [B*H*W, T, C]
        h = self.mix(h, self.position_bias(T))
        h = h.view(frames.batch, -1, T, C).permute(0, 2, 3, 1).reshape(x.shape)
        return frames.residual(x, h)


class Block(nn.Module):
    """One step of a U-Net level: a ResBlock, followed by self-attention at attention levels (ADM).

    With ``temporal=True`` (a factorised video U-Net; ``dims=2`` on frames folded into the batch): the
    (2+1)-D ResBlock, then at attention levels spatial attention per frame followed by temporal
    attention per pixel (VDM's factorised space-time attention, Ho et al. 2022).
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, emb_ch: int, *, attention: bool,
                 head_channels: int = 32, dropout: float = 0.0, groups: int = 32, temporal: bool = False,
                 context_ch: int = 0):
        super().__init__()
        self.res = ResBlock(dims, in_ch, out_ch, emb_ch, dropout, groups, temporal=temporal)
        self.attn = Attention(out_ch, head_channels, groups, context_ch) if attention else None
        self.temporal_attn = TemporalAttention(out_ch, head_channels, groups) if attention and temporal else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: Frames | None = None,
                context: Context | None = None) -> torch.Tensor:
        """x: [B, in_ch, *spatial]; emb: [B, emb_ch] -> [B, out_ch, *spatial] (B is B*T with ``frames``);
        ``context``: text tokens for the attention (one row per row of x)."""
        x = self.res(x, emb, frames)
        if self.attn is not None:
            x = self.attn(x, context)
        if self.temporal_attn is not None:
            x = self.temporal_attn(x, frames)
        return x


# --- resampling, per axis --------------------------------------------------------------------------

def patchify(x: torch.Tensor, p: int | Sequence[int]) -> torch.Tensor:
    """Space-to-depth: [B, C, s_1, ..., s_d] -> [B, C * p_1 ... p_d, s_1 / p_1, ..., s_d / p_d]: each
    p_1 x ... x p_d patch becomes channels (pixel_unshuffle for any number of dims and a size per axis;
    the patch embedding of ViT/DiT). ``p`` is an int (every axis) or one int per axis. Channel
    c * P + (offset within the patch, row-major) holds input channel c, P = p_1 ... p_d. Lossless;
    :func:`unpatchify` inverts it exactly."""
    B, C, *s = x.shape
    d = len(s)
    p = per_axis(p, d)
    if p == (1,) * d:
        return x
    x = x.reshape(B, C, *[v for n, k in zip(s, p) for v in (n // k, k)])  # [B, C, s1/p1, p1, s2/p2, p2, ...]
    x = x.permute(0, 1, *range(3, 3 + 2 * d, 2), *range(2, 2 + 2 * d, 2))  # [B, C, p1, ..., s1/p1, ...]
    return x.reshape(B, C * math.prod(p), *[n // k for n, k in zip(s, p)])


def unpatchify(x: torch.Tensor, p: int | Sequence[int]) -> torch.Tensor:
    """Depth-to-space, the inverse of :func:`patchify`: [B, C * p_1 ... p_d, *s] -> [B, C, s_1 p_1, ...]."""
    B, Cp, *s = x.shape
    d = len(s)
    p = per_axis(p, d)
    if p == (1,) * d:
        return x
    C = Cp // math.prod(p)
    x = x.reshape(B, C, *p, *s)                                             # [B, C, p1, ..., s1, ...]
    x = x.permute(0, 1, *[v for i in range(d) for v in (2 + d + i, 2 + i)])  # [B, C, s1, p1, s2, p2, ...]
    return x.reshape(B, C, *[n * k for n, k in zip(s, p)])


class Downsample(nn.Module):
    """Average-pool by ``factor`` (an int, or one per axis: ``(1, 2)`` keeps axis 0), then a 3-tap conv:
    [B, C, *s] -> [B, C, *s/factor].

    Why pool + conv rather than ADM's stride-2 conv: it works unchanged for the large factors that
    audio needs (4, 8, ...; a k=3 strided conv would skip samples when stride > kernel), the box filter
    low-passes before decimating (less aliasing), and the conv runs at the low resolution, so it costs
    the same as a strided conv. It mirrors Upsample (nearest, then conv).

    ``time_factor`` > 1 (a factorised video U-Net, whose spatial layers see [B*T, C, H, W]) first
    averages every ``time_factor`` consecutive frames of each clip: the same box filter along time, with
    no parameters, so that the spatial part keeps the 2-D layer's names; the temporal layers that follow
    learn what mixing along time needs.
    """

    def __init__(self, dims: int, ch: int, factor: int | Sequence[int], time_factor: int = 1):
        super().__init__()
        factor = factor if isinstance(factor, int) else tuple(factor)
        self.pool = AVG_POOL[dims](factor) if max(per_axis(factor, dims)) > 1 else nn.Identity()
        self.conv = conv_nd(dims, ch, ch, 3)
        self.time_factor = time_factor

    def forward(self, x: torch.Tensor, frames: Frames | None = None) -> torch.Tensor:
        """x: [B, C, *s] -> [B, C, *s/factor]; with ``time_factor`` > 1, [B*T, ...] -> [B*T/time_factor, ...]."""
        if self.time_factor > 1:
            clips = frames.to_clips(x)
            f = self.time_factor
            x = clips.reshape(frames.batch, frames.num // f, f, *x.shape[1:]).mean(2).flatten(0, 1)
        return self.conv(self.pool(x))


class Upsample(nn.Module):
    """Nearest-neighbour up-sampling by ``factor`` (an int, or one per axis), then a 3-tap conv
    (DDPM/ADM): [B, C, *s] -> [B, C, *s*factor]. ``time_factor`` > 1 (factorised video) also repeats
    each frame ``time_factor`` times, the nearest-neighbour counterpart of :class:`Downsample`'s."""

    def __init__(self, dims: int, ch: int, factor: int | Sequence[int], time_factor: int = 1):
        super().__init__()
        self.factor = factor if isinstance(factor, int) else tuple(factor)
        self.up = max(per_axis(factor, dims)) > 1
        self.conv = conv_nd(dims, ch, ch, 3)
        self.time_factor = time_factor

    def forward(self, x: torch.Tensor, frames: Frames | None = None) -> torch.Tensor:
        """x: [B, C, *s] -> [B, C, *s*factor]; with ``time_factor`` > 1, [B*T, ...] -> [B*T*time_factor, ...]."""
        if self.up:
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        x = self.conv(x)
        if self.time_factor > 1:
            # after the conv, which acts on each frame alone: repeating then convolving gives the same, slower
            x = frames.to_clips(x).repeat_interleave(self.time_factor, dim=1).flatten(0, 1)
        return x
