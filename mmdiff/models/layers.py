"""Building blocks of the U-Net, for 1, 2 or 3 spatial dims.

Tensors are [B, C, *spatial] with ``dims = len(spatial)``. Every block is written once and picks its
convolution or pooling class from a lookup by ``dims``, so the image, waveform and spectrogram U-Nets
share every line (STYLE habit 5). The architecture follows ADM (Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs on Image Synthesis"), itself built on DDPM (Ho et al. 2020); the noise
embeddings are those of EDM (Karras et al. 2022, training/networks.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


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


# --- residual block and attention ------------------------------------------------------------------

class ResBlock(nn.Module):
    """ADM's residual block with scale-shift conditioning ("adaptive GroupNorm", Dhariwal & Nichol 2021, Sec. 3):

        h = conv(SiLU(GN(x)));  h = GN(h) * (1 + scale) + shift;  h = conv(dropout(SiLU(h)))
        out = skip(x) + h,  with (scale, shift) = Linear(emb)

    The last conv is zero-initialised, so a new block is the identity on its (projected) input.
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, emb_ch: int, dropout: float = 0.0, groups: int = 32):
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

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [B, in_ch, *spatial]; emb: [B, emb_ch], already through SiLU -> [B, out_ch, *spatial]."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = _broadcast(self.emb_proj(emb), self.dims).chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), scale + 1)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape [..., N, d].

    Everywhere but bf16 on the CPU this is ``F.scaled_dot_product_attention``. There (a bf16 model or
    ``torch.autocast("cpu", torch.bfloat16)``), up to :data:`CPU_BF16_MATMUL_TOKENS` tokens and
    :data:`CPU_BF16_MATMUL_ELEMENTS` attention weights per call, it is the textbook formula on bf16
    matmuls (fp32 accumulation), the softmax computed in fp32 internally. It rounds the scores q k^T
    to bf16 where the fused kernel keeps them in fp32, as half-precision attention without a fused
    kernel does (diffusers' AttnProcessor, ADM's QKVAttention): outputs and gradients land 1.3-1.9x
    further from a float64 computation than the fused kernel's (relative error ~1e-2 against ~5e-3,
    where bf16 itself resolves 2^-7 = 7.8e-3; tests/models/test_unet.py).
    """
    n = q.shape[-2]
    if (q.dtype == torch.bfloat16 and q.device.type == "cpu" and n <= CPU_BF16_MATMUL_TOKENS
            and q.shape[:-2].numel() * n * n <= CPU_BF16_MATMUL_ELEMENTS):
        w = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)                # [..., N, N]
        return w.softmax(-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection (ADM's AttentionBlock).

    GroupNorm -> qkv -> softmax(q k^T / sqrt(d)) v per head -> proj -> + x. The spatial dims are
    flattened into N tokens, so one block serves 1, 2 and 3 dims, and the 1x1 convolutions are written
    as Linear layers on [B, N, C] (the same map): that puts each head's channels last, with stride 1,
    which lets scaled_dot_product_attention use its fused CPU kernel (2x faster than [B, C, N] at
    N = 256; see :func:`attention` for bf16 on the CPU). The qkv output channels are laid out [q | k | v], each split into ``heads`` consecutive
    groups of d = C // heads. The output projection is zero-initialised, so a new block is the identity.
    """

    def __init__(self, ch: int, head_channels: int = 32, groups: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        if ch % self.heads:
            raise ValueError(f"attention: {ch} channels do not split into {self.heads} heads "
                             f"(head_channels={head_channels}): choose model.head_channels dividing {ch}")
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_init(nn.Linear(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, *spatial] -> same shape."""
        B, C = x.shape[:2]
        h = self.norm(x.reshape(B, C, -1)).transpose(1, 2)                # [B, N, C]
        qkv = self.qkv(h).reshape(B, -1, 3, self.heads, C // self.heads)  # [B, N, 3, heads, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                              # each [B, heads, N, d]
        h = attention(q, k, v)                                            # [B, heads, N, d]
        h = self.proj(h.transpose(1, 2).reshape(B, -1, C))                # [B, N, C]
        return x + h.transpose(1, 2).reshape(x.shape)                     # a view; the sum is contiguous


class Block(nn.Module):
    """One step of a U-Net level: a ResBlock, followed by self-attention at attention levels (ADM)."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, emb_ch: int, *, attention: bool,
                 head_channels: int = 32, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.res = ResBlock(dims, in_ch, out_ch, emb_ch, dropout, groups)
        self.attn = Attention(out_ch, head_channels, groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [B, in_ch, *spatial]; emb: [B, emb_ch] -> [B, out_ch, *spatial]."""
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


# --- resampling ------------------------------------------------------------------------------------

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Space-to-depth: [B, C, s_1, ..., s_d] -> [B, C * p^d, s_1 / p, ..., s_d / p]: each p x ... x p
    patch becomes channels (pixel_unshuffle for any number of dims; the patch embedding of ViT/DiT).
    Lossless; :func:`unpatchify` inverts it exactly."""
    if p == 1:
        return x
    B, C, *s = x.shape
    d = len(s)
    x = x.reshape(B, C, *[v for n in s for v in (n // p, p)])            # [B, C, s1/p, p, s2/p, p, ...]
    x = x.permute(0, 1, *range(3, 3 + 2 * d, 2), *range(2, 2 + 2 * d, 2))  # [B, C, p, ..., s1/p, ...]
    return x.reshape(B, C * p**d, *[n // p for n in s])


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Depth-to-space, the inverse of :func:`patchify`: [B, C * p^d, *s] -> [B, C, *(s * p)]."""
    if p == 1:
        return x
    B, Cp, *s = x.shape
    d = len(s)
    x = x.reshape(B, Cp // p**d, *[p] * d, *s)                              # [B, C, p, ..., s1, ...]
    x = x.permute(0, 1, *[v for i in range(d) for v in (2 + d + i, 2 + i)])  # [B, C, s1, p, s2, p, ...]
    return x.reshape(B, Cp // p**d, *[n * p for n in s])


class Downsample(nn.Module):
    """Average-pool by ``factor`` along every spatial dim, then a 3-tap conv: [B, C, *s] -> [B, C, *s/factor].

    Why pool + conv rather than ADM's stride-2 conv: it works unchanged for the large factors that
    audio needs (4, 8, ...; a k=3 strided conv would skip samples when stride > kernel), the box filter
    low-passes before decimating (less aliasing), and the conv runs at the low resolution, so it costs
    the same as a strided conv. It mirrors Upsample (nearest, then conv).
    """

    def __init__(self, dims: int, ch: int, factor: int):
        super().__init__()
        self.pool = AVG_POOL[dims](factor) if factor > 1 else nn.Identity()
        self.conv = conv_nd(dims, ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Upsample(nn.Module):
    """Nearest-neighbour up-sampling by ``factor``, then a 3-tap conv (DDPM/ADM): [B, C, *s] -> [B, C, *s*factor]."""

    def __init__(self, dims: int, ch: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = conv_nd(dims, ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor > 1:
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.conv(x)
