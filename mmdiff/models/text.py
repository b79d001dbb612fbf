"""Text conditioning: a byte-level tokenizer and a small transformer text encoder trained with the denoiser.

The recipe is GLIDE's (Nichol et al. 2022, Sec. 2.3 and Appendix), scaled down: the caption's tokens go through a
transformer; its last layer's token outputs feed every attention layer of the U-Net as extra keys and values
(``layers.Attention`` with ``context_ch``), and a pooled output joins the noise-level embedding. The encoder is
trained jointly from scratch, so nothing is downloaded. Classifier-free guidance uses the empty caption as the
unconditional input (captions are dropped to "" in training); a negative prompt replaces it at sampling.

Tokens are UTF-8 bytes (0..255) plus three specials: no vocabulary to learn or to store, any text encodes, and a
checkpoint needs only ``max_length`` to tokenize at sample time. A pretrained, frozen encoder loaded from a local
folder takes this one's place with ``conditioning.encoder.path`` (mmdiff/models/pretrained_text.py); both follow
:class:`CaptionEncoder`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PAD, BOS, EOS = 256, 257, 258
VOCAB = 259


class ByteTokenizer:
    """UTF-8 bytes between BOS and EOS, padded with PAD to ``max_length`` tokens.

    A caption longer than ``max_length - 2`` bytes is cut (at a byte; EOS kept) and :meth:`encode` logs a warning
    counting the cut captions; ``strict=True`` raises ValueError instead.
    """

    def __init__(self, max_length: int):
        if int(max_length) < 3:
            raise ValueError(f"max_length={max_length}: a caption needs at least 3 tokens (BOS, a byte, EOS)")
        self.max_length = int(max_length)

    def encode(self, texts: Sequence[str], strict: bool = False) -> torch.Tensor:
        """Texts -> tokens [len(texts), max_length] int64."""
        room = self.max_length - 2
        out = torch.full((len(texts), self.max_length), PAD, dtype=torch.long)
        cut = 0
        for i, text in enumerate(texts):
            data = str(text).encode("utf-8")
            if len(data) > room:
                if strict:
                    raise ValueError(f"{text!r} is {len(data)} bytes long; at most {room} fit in {self.max_length} "
                                     "tokens")
                data, cut = data[:room], cut + 1
            out[i, 0], out[i, len(data) + 1] = BOS, EOS
            out[i, 1:len(data) + 1] = torch.tensor(list(data), dtype=torch.long)
        if cut:
            log.warning("%d of %d caption(s) were longer than %d bytes and were cut (conditioning.max_length=%d)",
                        cut, len(texts), room, self.max_length)
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Tokens [B, L] -> texts (the bytes between BOS and the first EOS or PAD; a cut multi-byte
        character is dropped)."""
        texts = []
        for row in tokens.tolist():
            data = bytearray()
            for t in row[1:]:
                if t >= 256:
                    break
                data.append(t)
            texts.append(data.decode("utf-8", errors="ignore"))
        return texts


class TextLayer(nn.Module):
    """A pre-norm transformer layer (GPT-2's order): x + attn(LN(x)), then x + MLP(LN(x)); padded keys masked."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, L, W]; keep [B, L] bool (False: a padded token, never attended to) -> [B, L, W]."""
        B, L, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj(h.transpose(1, 2).reshape(B, L, W))
        return x + self.mlp(self.norm2(x))


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The mean of the kept tokens' features: x [B, L, W], keep [B, L] bool -> [B, W] (zeros for a row keeping
    none)."""
    w = keep.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


def text_tokenizer(net: nn.Module):
    """The tokenizer of a network's text encoder, or None for a network without one: captions are tokenized by the
    encoder that reads them (the byte tokenizer, or a pretrained model's own)."""
    encoder = getattr(net, "text_encoder", None)
    return None if encoder is None else encoder.tokenizer


class CaptionEncoder(nn.Module):
    """What the U-Net conditions on: ``width`` (features per token), ``max_length`` (tokens per caption),
    ``tokenizer`` (``encode(texts) -> [N, max_length]`` int64) and ``forward(tokens [B, max_length]) -> (features
    [B, L, width], keep [B, L] bool, pooled [B, width])``, where ``keep`` is False at padded tokens (never attended
    to) and ``pooled`` is the mean of the kept tokens' features. Implemented by :class:`TextEncoder` (trained with
    the denoiser) and ``mmdiff.models.pretrained_text.PretrainedTextEncoder`` (loaded, frozen)."""

    width: int
    max_length: int

    def empty(self, batch: int, device) -> torch.Tensor:
        """The tokens of the empty caption (the unconditional input), [batch, max_length]."""
        return self.tokenizer.encode([""]).to(device).expand(batch, -1)


class TextEncoder(CaptionEncoder):
    """Tokens [B, L] -> (token features [B, L, width] after a final LayerNorm, keep mask [B, L], pooled [B, width]).

    Token and learned position embeddings, ``layers`` pre-norm transformer layers (bidirectional: the whole caption
    is known), a final LayerNorm. Padded tokens are masked as keys everywhere, so they change nothing; the pooled
    output is the mean over the kept tokens (BOS, the bytes, EOS).
    """

    def __init__(self, width: int, layers: int, heads: int, max_length: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"model.text.width={width} does not split into {heads} heads: use a multiple of heads")
        self.width, self.max_length = int(width), int(max_length)
        self.tokenizer = ByteTokenizer(max_length)
        self.token_embed = nn.Embedding(VOCAB, width)
        self.pos_embed = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.layers = nn.ModuleList(TextLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if tokens.shape[1] != self.max_length:
            raise ValueError(f"tokens have length {tokens.shape[1]}, this encoder takes {self.max_length}")
        keep = tokens != PAD
        x = self.token_embed(tokens) + self.pos_embed
        for layer in self.layers:
            x = layer(x, keep)
        x = self.norm(x)
        return x, keep, masked_mean(x, keep)
