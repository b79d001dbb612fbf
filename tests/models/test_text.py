"""The tokenizer, the text encoder, and the U-Net's cross-attention to its tokens."""

import logging

import pytest
import torch

from mmdiff.models.layers import Attention
from mmdiff.models.text import BOS, EOS, PAD, ByteTokenizer, TextEncoder
from mmdiff.models.unet import UNet

TEXT = {"width": 32, "layers": 2, "heads": 2, "max_length": 24}


def test_tokenizer_round_trip_with_specials_and_padding():
    tok = ByteTokenizer(24)
    texts = ["a thin upright four", "", "größer ☃"]
    tokens = tok.encode(texts)
    assert tokens.shape == (3, 24) and tokens.dtype == torch.long
    assert tok.decode(tokens) == texts
    assert tokens[0, 0] == BOS and tokens[0, 20] == EOS and (tokens[0, 21:] == PAD).all()
    assert tokens[1, :2].tolist() == [BOS, EOS] and (tokens[1, 2:] == PAD).all()
    assert tokens[0, 1:20].tolist() == list(b"a thin upright four")


def test_too_long_captions_are_cut_with_a_warning_or_refused(caplog):
    tok = ByteTokenizer(8)
    with caplog.at_level(logging.WARNING):
        tokens = tok.encode(["abcdefghij", "abc"])
    assert "1 of 2 caption(s) were longer than 6 bytes" in caplog.text
    assert tok.decode(tokens) == ["abcdef", "abc"] and tokens[0, -1] == EOS
    with pytest.raises(ValueError, match="at most 6 fit"):
        tok.encode(["abcdefghij"], strict=True)


def test_encoder_shapes_and_padding_changes_nothing():
    torch.manual_seed(0)
    enc = TextEncoder(**TEXT)
    tokens = enc.tokenizer.encode(["a thick seven", "one"])
    features, keep, pooled = enc(tokens)
    assert features.shape == (2, 24, 32) and pooled.shape == (2, 32)
    assert keep[1].tolist() == [True] * 5 + [False] * 19
    # what sits in the padded positions (their embedding) changes no kept token and not the pooled output
    with torch.no_grad():
        enc.token_embed.weight[PAD] += 5.0
    features2, _, pooled2 = enc(tokens)
    torch.testing.assert_close(features2[keep], features[keep])
    torch.testing.assert_close(pooled2, pooled)
    # the words do change them
    other, _, pooled3 = enc(enc.tokenizer.encode(["a thin seven", "one"]))
    assert not torch.allclose(pooled3[0], pooled[0]) and torch.allclose(pooled3[1], pooled[1], atol=1e-6)


def test_cross_attention_shapes_and_masked_tokens_have_no_weight():
    torch.manual_seed(0)
    attn = Attention(16, head_channels=8, groups=4, context_ch=12)
    torch.nn.init.normal_(attn.proj.weight)  # zero-initialised: make the layer do something
    x = torch.randn(2, 16, 4, 4)
    tokens = torch.randn(2, 5, 12)
    keep = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = attn(x, (tokens, keep))
    assert out.shape == x.shape
    assert not torch.allclose(out, attn(x)), "the text took no part"
    changed = tokens.clone()
    changed[0, 3:] = torch.randn(2, 12) * 100
    torch.testing.assert_close(attn(x, (changed, keep)), out)
    changed[0, 1] += 1.0
    assert not torch.allclose(attn(x, (changed, keep))[0], out[0])


@pytest.mark.parametrize("dims,shape,extra", [(2, (1, 8, 8), {}),
                                              (3, (1, 2, 8, 8), {"temporal": "factorized",
                                                                 "down_factors": [[1, 2, 2]]})])
def test_unet_conditions_on_tokens_and_ignores_padding(dims, shape, extra):
    torch.manual_seed(0)
    net = UNet(dims=dims, in_channels=1, channels=16, channel_mult=[1, 2], num_blocks=1, attn_levels=[1],
               head_channels=16, groups=8, text=TEXT, **extra)
    for m in net.modules():  # zero-initialised output layers: give them weights so the text can show
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.1)
    x, c = torch.randn(2, *shape), torch.tensor([0.1, -0.3])
    tokens = net.text_encoder.tokenizer.encode(["a thin upright four", "seven"])
    out = net(x, c, tokens=tokens)
    assert out.shape == x.shape
    other = net.text_encoder.tokenizer.encode(["a thick slanted four", "seven"])
    assert not torch.allclose(out, net(x, c, tokens=other))
    torch.testing.assert_close(net(x, c), net(x, c, tokens=net.text_encoder.empty(2, "cpu")))  # None: the empty caption
    with torch.no_grad():
        net.text_encoder.token_embed.weight[PAD] += 3.0
    torch.testing.assert_close(net(x, c, tokens=tokens), out)
