"""A pretrained text encoder loaded from a local folder and kept frozen: ``conditioning.encoder.path``.

Imagen's finding (Saharia et al. 2022, Sec. 2.1 and 4.4) is that a large frozen language model's encoder conditions
a diffusion model better than one trained with it on the image-text pairs alone. This module puts any Hugging Face
``transformers`` encoder (BERT, T5's encoder, CLIP's text model, ...) behind the same interface as the jointly
trained :class:`mmdiff.models.text.TextEncoder`, so the U-Net does not know which one it has.

Nothing is downloaded: the folder is what ``save_pretrained`` wrote (the model and its tokenizer), loaded with
``local_files_only=True`` and without running code from it (``trust_remote_code`` stays off). ``transformers`` is
an optional dependency (``pip install mmdiff[text]``), imported only when a path is given.

Frozen, the weights belong to no optimizer, EMA or checkpoint: the model is held outside the ``nn.Module`` tree
(:class:`_Frozen`), so ``parameters()`` and ``state_dict()`` leave it out. A checkpoint records the folder
(``model.text.path`` of its config) and loading one loads the encoder from there again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from .text import CaptionEncoder, masked_mean

log = logging.getLogger(__name__)

# The token at padded positions. Never a vocabulary id, so ``keep = tokens != PAD`` is exactly the tokenizer's
# attention mask: a tokenizer's own pad id may be shared with a real token (GPT-2 pads with its end-of-text token,
# and some setups pad with [SEP]), and it may have none. The model gets ``fill_id`` there, under a zero mask.
PAD = -1


def load_pretrained(path: str) -> tuple[nn.Module, object]:
    """(model, tokenizer) saved in the folder ``path``, loaded offline; a UserError naming the fix otherwise."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"conditioning.encoder.path={path} is a Hugging Face model, which needs the transformers "
                        "library: pip install mmdiff[text] (or drop conditioning.encoder.path to train the small "
                        "byte-level encoder with the denoiser)") from None
    if not os.path.isdir(path):
        raise UserError(f"the text encoder folder {path} does not exist: set conditioning.encoder.path to a local "
                        "folder holding a Hugging Face model and its tokenizer (what save_pretrained writes; nothing "
                        "is downloaded)")
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- the folder is user input; transformers raises OSError, ValueError, ...
        reason = (str(e).strip().splitlines() or [repr(e)])[0]
        raise UserError(f"{path} holds no Hugging Face model and tokenizer that load offline ({type(e).__name__}: "
                        f"{reason}): give conditioning.encoder.path the folder that model.save_pretrained(...) and "
                        "tokenizer.save_pretrained(...) wrote") from None
    if getattr(model.config, "is_encoder_decoder", False):  # T5, BART: the encoder half reads the caption
        model = model.get_encoder()
    return model, tokenizer


def token_limit(model: nn.Module, tokenizer) -> int | None:
    """The most tokens the model takes (its position table, or what its tokenizer declares), or None if unbounded
    (relative positions; transformers' stand-in for "unset" is a huge model_max_length)."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else None


class PretrainedTokenizer:
    """A Hugging Face tokenizer behind ByteTokenizer's interface: texts -> tokens [N, max_length] int64, the
    model's own ids (special tokens included), then :data:`PAD` (-1) to ``max_length``.

    A caption of more than ``max_length`` tokens is cut by the tokenizer (its special tokens kept) and :meth:`encode`
    logs a warning counting the cut captions; ``strict=True`` raises ValueError instead.
    """

    def __init__(self, tokenizer, max_length: int):
        self.hf, self.max_length = tokenizer, int(max_length)

    def encode(self, texts: Sequence[str], strict: bool = False) -> torch.Tensor:
        texts, L = [str(t) for t in texts], self.max_length
        # cut at L + 1: a row that long was longer than L (one pass counts the cut captions, and never asks the
        # tokenizer for a sequence over the model's limit)
        ids = self.hf(texts, truncation=True, max_length=L + 1)["input_ids"]
        cut = [i for i, row in enumerate(ids) if len(row) > L]
        if cut and strict:
            raise ValueError(f"{texts[cut[0]]!r} is more than {L} tokens long")
        if cut:
            for i, row in zip(cut, self.hf([texts[i] for i in cut], truncation=True, max_length=L)["input_ids"]):
                ids[i] = row
            log.warning("%d of %d caption(s) were longer than %d tokens and were cut (conditioning.max_length=%d)",
                        len(cut), len(texts), L, L)
        out = torch.full((len(texts), L), PAD, dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out


class _Frozen:
    """Holds the pretrained model outside the ``nn.Module`` tree, so its weights are nobody's parameters: not in
    the optimizer, not in ``state_dict()`` (checkpoints, EMA, post-hoc EMA snapshots), untouched by
    ``requires_grad_`` and ``train()``. Deep copies (the EMA's) share it: frozen weights are the same in every copy,
    and a large encoder is not duplicated."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __deepcopy__(self, memo) -> _Frozen:
        return self


class PretrainedTextEncoder(CaptionEncoder):
    """Tokens [B, max_length] (from :attr:`tokenizer`) -> (the model's last hidden states [B, L, width], keep
    [B, L] = tokens != PAD, pooled [B, width] = the mean of the kept tokens' features), never trained.

    ``path``: a local folder with a Hugging Face model and its tokenizer; ``max_length``: tokens per caption
    (``conditioning.max_length``), at most what the model takes. Features at padded positions are zeros (no NaN
    from a model's fully masked rows can reach the U-Net's attention, where they have weight 0).
    """

    def __init__(self, path: str, max_length: int):
        super().__init__()
        model, tokenizer = load_pretrained(str(path))
        limit = token_limit(model, tokenizer)
        if limit is not None and int(max_length) > limit:
            raise UserError(f"conditioning.max_length={max_length} is more than the {limit} tokens the text encoder "
                            f"in {path} takes: use conditioning.max_length={limit} or less")
        self.path, self.max_length = str(path), int(max_length)
        self.width = int(model.config.hidden_size)
        self.tokenizer = PretrainedTokenizer(tokenizer, max_length)
        self.fill_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.frozen = _Frozen(model.eval().requires_grad_(False))

    def _apply(self, fn, recurse: bool = True):
        """``.to(device)``, ``.float()``, ... reach the frozen model too (it is no submodule)."""
        self.frozen.model._apply(fn)
        return super()._apply(fn, recurse)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if tokens.shape[1] != self.max_length:
            raise ValueError(f"tokens have length {tokens.shape[1]}, this encoder takes {self.max_length}")
        keep = tokens != PAD
        with torch.no_grad():
            out = self.frozen.model(input_ids=torch.where(keep, tokens, self.fill_id), attention_mask=keep.long())
        x = torch.where(keep[..., None], out.last_hidden_state, 0.0)
        return x, keep, masked_mean(x, keep)
