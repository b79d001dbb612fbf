import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mmdiff.models.layers import CPU_BF16_MATMUL_TOKENS, Attention, attention
from mmdiff.models.unet import UNet

# Small enough that every test runs in well under a second on 2 CPU cores.
TINY = dict(channels=8, channel_mult=(1, 2), num_blocks=1, head_channels=8, groups=4)


def tiny(**overrides) -> UNet:
    return UNet(**{**TINY, **overrides})


def perturb(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised weights (and zero biases) random values, so that every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def run(net: UNet, spatial, batch: int = 2, labels=None, in_channels: int | None = None) -> torch.Tensor:
    x = torch.randn(batch, in_channels or net.conv_in.in_channels, *spatial)
    return net(x, torch.linspace(-2, 1.5, batch), labels)


@pytest.mark.parametrize("config, spatial", [
    (dict(dims=1), (16,)),
    (dict(dims=2), (8, 8)),
    (dict(dims=3), (4, 4, 4)),
    (dict(dims=2), (8, 16)),                                            # non-square
    (dict(dims=2, channel_mult=(1,)), (5, 7)),                          # one level: any size
    (dict(dims=2, channel_mult=(1, 2, 2, 2), attn_levels=(3,)), (8, 16)),
    (dict(dims=2, num_blocks=3, attn_levels=(0, 1)), (8, 8)),
    (dict(dims=2, num_blocks=1, attn_levels=(0,)), (4, 8)),
    (dict(dims=3, attn_levels=(0, 1)), (2, 4, 6)),                      # attention over 3-D
    (dict(dims=1, attn_levels=(1,), channel_mult=(1, 2, 2), down_factors=[4, 4]), (64,)),
    (dict(dims=1, channel_mult=(1, 1, 2), down_factors=[5, 4]), (1000,)),
    (dict(dims=1, channel_mult=(1, 2, 2), down_factors=[1, 2]), (6,)),  # factor 1: no down-sampling
    (dict(dims=2, in_channels=3, out_channels=2), (8, 8)),
    (dict(dims=2, num_classes=10, embedding="fourier", attn_levels=(1,)), (8, 8)),
])
def test_output_has_the_input_spatial_size_and_out_channels(config, spatial):
    net = perturb(tiny(**config))
    net.check_input_shape(spatial)
    out = run(net, spatial)
    out_channels = config.get("out_channels") or config.get("in_channels", 1)
    assert out.shape == (2, out_channels, *spatial)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_fresh_network_outputs_exactly_zero(dims):
    net = tiny(dims=dims, num_classes=3, attn_levels=(0, 1))
    out = run(net, (4,) * dims, labels=torch.tensor([0, 3]))
    assert (out == 0).all()


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_labels_none_is_the_null_class_and_labels_change_the_output(embedding):
    net = perturb(tiny(num_classes=10, embedding=embedding)).eval()
    x, c_noise = torch.randn(2, 1, 4, 4), torch.tensor([-1.0, 0.5])
    null = net(x, c_noise, None)
    assert torch.equal(null, net(x, c_noise, torch.tensor([10, 10])))
    assert not torch.allclose(net(x, c_noise, torch.tensor([0, 1])), net(x, c_noise, torch.tensor([2, 3])))
    assert not torch.allclose(null, net(x, c_noise, torch.tensor([0, 1])))


def test_an_unconditional_network_ignores_labels():
    net = perturb(tiny(num_classes=0))
    x, c_noise = torch.randn(2, 1, 4, 4), torch.tensor([-1.0, 0.5])
    assert torch.equal(net(x, c_noise), net(x, c_noise, torch.tensor([3, 7])))
    assert not any("label" in name for name, _ in net.named_parameters())


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_the_noise_level_changes_the_output(embedding):
    net = perturb(tiny(embedding=embedding))
    x = torch.randn(1, 1, 4, 4).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([-2.0, 1.5]))
    assert not torch.allclose(out[0], out[1])


def test_the_batch_is_processed_independently():
    net = perturb(tiny(num_classes=4, attn_levels=(0, 1))).eval()
    x, c_noise, labels = torch.randn(3, 1, 4, 8), torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([0, 4, 2])
    together = net(x, c_noise, labels)
    one_by_one = torch.cat([net(x[i:i + 1], c_noise[i:i + 1], labels[i:i + 1]) for i in range(3)])
    # not bitwise: the batch size picks other float32 kernels. Their round-off (~K u, K <= 288 terms a sum,
    # u = 6e-8, over a few layers) is ~1e-6 on outputs ~4 (vs float64: 1.2e-6), 1/10 of the tolerance
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", [
    dict(dims=2, num_classes=5, attn_levels=(0, 1), embedding="fourier"),
    dict(dims=1, num_classes=0, channel_mult=(1, 2, 2), num_blocks=2, attn_levels=(2,), down_factors=[4, 2]),
    dict(dims=3, num_classes=3, attn_levels=(1,)),
])
def test_gradients_reach_every_parameter(config):
    # DDP (find_unused_parameters=False) requires that every parameter gets a gradient.
    net = perturb(tiny(**config))
    spatial = (8,) * config["dims"]
    labels = torch.tensor([0, 1]) if config["num_classes"] else None
    run(net, spatial, labels=labels).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("spatial", [(2, 3, 5), (3, 4), (7,)])
def test_attention_matches_a_naive_float64_reference(spatial):
    torch.manual_seed(0)
    ch, heads, groups = 16, 4, 4
    attn = Attention(ch, head_channels=ch // heads, groups=groups).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
    x = torch.randn(2, ch, *spatial, dtype=torch.float64)

    # By hand: GroupNorm, then per head softmax(q k^T / sqrt(d)) v over the N flattened positions.
    B, N, d = x.shape[0], x[0, 0].numel(), ch // heads
    xg = x.reshape(B, groups, -1)
    mean, var = xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)
    h = ((xg - mean) / (var + attn.norm.eps).sqrt()).reshape(B, ch, N)
    h = h * attn.norm.weight[:, None] + attn.norm.bias[:, None]
    qkv = attn.qkv.weight @ h + attn.qkv.bias[:, None]                  # [B, 3C, N], layout [q | k | v]
    q, k, v = qkv[:, :ch], qkv[:, ch:2 * ch], qkv[:, 2 * ch:]
    out = torch.empty(B, ch, N, dtype=torch.float64)
    for i in range(heads):
        s = slice(i * d, (i + 1) * d)
        weights = torch.softmax(q[:, s].transpose(1, 2) @ k[:, s] / d**0.5, dim=-1)   # [B, N(query), N(key)]
        out[:, s] = v[:, s] @ weights.transpose(1, 2)
    expected = x + (attn.proj.weight @ out + attn.proj.bias[:, None]).reshape(x.shape)

    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tokens", [64, CPU_BF16_MATMUL_TOKENS, 2 * CPU_BF16_MATMUL_TOKENS])
def test_bf16_cpu_attention_stays_near_sdpa_accuracy(tokens):
    """In bf16 on the CPU, attention() takes plain bf16 matmuls up to CPU_BF16_MATMUL_TOKENS tokens (faster
    there than torch's fused kernel) and SDPA beyond. The plain path rounds the scores to bf16 where SDPA
    keeps them in fp32, so it may be up to ~2x further from a float64 computation (measured 1.3-1.9x),
    but no more, and within two steps of bf16's resolution (2^-7)."""
    torch.manual_seed(0)
    q64, k64, v64 = (torch.randn(2, 3, tokens, 16, dtype=torch.float64) * 1.5 for _ in range(3))
    grad = torch.randn(2, 3, tokens, 16, dtype=torch.float64)

    def run(fn, dtype):
        q, k, v = (t.to(dtype, copy=True).requires_grad_() for t in (q64, k64, v64))
        out = fn(q, k, v)
        out.backward(grad.to(dtype))
        return [t.double() for t in (out, q.grad, k.grad, v.grad)]

    exact = run(F.scaled_dot_product_attention, torch.float64)
    ours = run(attention, torch.bfloat16)
    sdpa = run(F.scaled_dot_product_attention, torch.bfloat16)
    for name, e, a, b in zip(("out", "dq", "dk", "dv"), exact, ours, sdpa):
        err_ours, err_sdpa = (a - e).norm() / e.norm(), (b - e).norm() / e.norm()
        assert err_ours < 2.2 * err_sdpa, f"{name}: {err_ours:.2e} vs SDPA bf16 {err_sdpa:.2e}"
        assert err_ours < 2 * 2**-7, f"{name}: {err_ours:.2e}"
        if tokens > CPU_BF16_MATMUL_TOKENS:
            assert torch.equal(a, b), name
    # float32 and float64 inputs go through SDPA unchanged
    q, k, v = (t.float() for t in (q64, k64, v64))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_bf16_cpu_attention_leaves_large_weight_matrices_to_the_fused_kernel(monkeypatch):
    import mmdiff.models.layers as layers
    q, k, v = (torch.randn(4, 2, 64, 16).bfloat16() for _ in range(3))
    sdpa = F.scaled_dot_product_attention(q, k, v)
    assert not torch.equal(attention(q, k, v), sdpa)                    # 4 * 2 * 64^2 weights: plain path
    monkeypatch.setattr(layers, "CPU_BF16_MATMUL_ELEMENTS", 4 * 2 * 64 * 64 - 1)
    assert torch.equal(attention(q, k, v), sdpa)
    monkeypatch.setattr(layers, "CPU_BF16_MATMUL_ELEMENTS", 2**25)
    monkeypatch.setattr(layers, "CPU_BF16_MATMUL_TOKENS", 0)
    assert torch.equal(attention(q, k, v), sdpa)


def test_attention_block_under_cpu_autocast_matches_float32():
    torch.manual_seed(0)
    attn = Attention(64, head_channels=32, groups=8)
    with torch.no_grad():
        attn.proj.weight.normal_(0, 0.1)                              # not the zero init: test the attention
    x = torch.randn(4, 64, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(x)
    high = attn(x)
    assert ((low.float() - high).norm() / (high - x).norm()) < 2e-2


def test_heads_follow_head_channels():
    assert Attention(64, head_channels=32, groups=8).heads == 2
    assert Attention(16, head_channels=32, groups=8).heads == 1


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_state_dict_round_trips_through_safetensors(tmp_path, embedding):
    torch.manual_seed(0)
    net = perturb(tiny(num_classes=3, embedding=embedding, attn_levels=(1,)))
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    torch.manual_seed(1)
    other = tiny(num_classes=3, embedding=embedding, attn_levels=(1,))
    other.load_state_dict(load_file(tmp_path / "net.safetensors"))
    x, c_noise, labels = torch.randn(2, 1, 4, 4), torch.tensor([-1.0, 0.5]), torch.tensor([0, 3])
    assert torch.equal(net(x, c_noise, labels), other(x, c_noise, labels))
    assert ("noise_embed.freqs" in net.state_dict()) == (embedding == "fourier")


def test_total_downsampling_is_the_product_of_the_factors():
    assert tiny(channel_mult=(1, 2, 2)).total_downsampling == 4
    assert tiny(dims=1, channel_mult=(1, 1, 1, 1), down_factors=[4, 4, 4]).total_downsampling == 64
    assert tiny(channel_mult=(1,)).total_downsampling == 1


def test_check_input_shape_accepts_multiples_of_the_total_downsampling():
    tiny(channel_mult=(1, 2, 2)).check_input_shape((8, 16))
    tiny(channel_mult=(1, 2, 2)).check_input_shape([4, 12])
    tiny(dims=1, channel_mult=(1, 1, 1), down_factors=[4, 4]).check_input_shape((64,))
    tiny(dims=1, channel_mult=(1, 1, 1, 1), down_factors=[2, 2, 2]).check_input_shape((1000,))


def test_check_input_shape_names_the_multiple_and_a_fix():
    net = tiny(channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"\(30, 30\) is not divisible by 4.*2 x 2 over 3 levels.*multiple of 4 "
                                         r"\(e\.g\. 32\).*model\.channel_mult"):
        net.check_input_shape((30, 30))
    with pytest.raises(ValueError, match=r"\(8, 10\).*multiple of 4 \(e\.g\. \(8, 12\)\)"):
        net.check_input_shape((8, 10))
    audio = tiny(dims=1, channel_mult=(1, 1, 1, 1), down_factors=[4, 4, 4])
    with pytest.raises(ValueError, match=r"1000 is not divisible by 64.*4 x 4 x 4.*e\.g\. 1024"):
        audio.check_input_shape((1000,))


def test_check_input_shape_rejects_the_wrong_number_of_spatial_dims():
    with pytest.raises(ValueError, match=r"model\.dims=2 but the data has 1 spatial dim\(s\)"):
        tiny(dims=2).check_input_shape((16,))
    with pytest.raises(ValueError, match=r"model\.dims=1 but the data has 3 spatial dim\(s\)"):
        tiny(dims=1).check_input_shape((4, 4, 4))


@pytest.mark.parametrize("overrides, message", [
    (dict(dims=4), r"model\.dims=4.*1, 2 or 3"),
    (dict(channel_mult=()), r"channel_mult is empty"),
    (dict(channel_mult=(1, 0)), r"channel_mult.*>= 1"),
    (dict(attn_levels=(2,)), r"attn_levels contains \[2\].*0\.\.1"),
    (dict(attn_levels=(-1,)), r"attn_levels contains \[-1\]"),
    (dict(channel_mult=(1, 2, 2), down_factors=[2]), r"down_factors=\[2\] has 1 entries.*need 2"),
    (dict(down_factors=[0]), r"down_factors=\[0\].*>= 1"),
    (dict(down_factors=0), r"down_factors=\[0\].*>= 1"),
    (dict(embedding="sinusoid"), r"embedding='sinusoid'.*fourier.*positional"),
    (dict(channels=12, groups=8), r"12 channels do not split into 8 groups"),
    (dict(channels=8, channel_mult=(1, 3), groups=16), r"24 channels do not split into 16 groups"),
    (dict(channels=7), r"channels=7.*even"),
    (dict(num_blocks=0), r"num_blocks=0"),
    (dict(num_classes=-1), r"num_classes=-1"),
    (dict(dropout=1.0), r"dropout=1\.0"),
])
def test_constructor_rejects_bad_configs_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_hydra_style_list_arguments_are_accepted():
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(dict(channel_mult=[1, 2], attn_levels=[1], down_factors=[2]))
    net = tiny(channel_mult=cfg.channel_mult, attn_levels=cfg.attn_levels, down_factors=cfg.down_factors)
    assert run(net, (4, 4)).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("shape,p", [((2, 3, 12), 4), ((2, 3, 8, 12), 2), ((1, 2, 4, 6, 8), 2)])
def test_patchify_is_space_to_depth_and_unpatchify_inverts_it(shape, p):
    from mmdiff.models.layers import patchify, unpatchify
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    y = patchify(x, p)
    d = len(shape) - 2
    assert y.shape == (shape[0], shape[1] * p**d, *[s // p for s in shape[2:]])
    assert torch.equal(unpatchify(y, p), x)
    if d == 2:  # the same as pixel_unshuffle
        assert torch.equal(y, torch.nn.functional.pixel_unshuffle(x, p))
    if d == 1:  # channel c * p + j of position i holds sample i * p + j
        assert torch.equal(y[0, 1 * p + 2, 1], x[0, 1, 1 * p + 2])


@pytest.mark.parametrize("dims,spatial", [(1, (64,)), (2, (8, 16))])
def test_patched_unet_keeps_the_shape_and_needs_the_patch_in_the_size(dims, spatial):
    net = UNet(dims=dims, in_channels=2, channels=16, channel_mult=[1, 2], groups=8, patch_size=4,
               down_factors=2, attn_levels=[1])
    assert net.total_downsampling == 8
    perturb(net)
    x = torch.randn(2, 2, *spatial)
    assert net(x, torch.randn(2)).shape == x.shape
    with pytest.raises(ValueError, match="patch 4 x 2"):
        net.check_input_shape(tuple(s + 4 for s in spatial))


@pytest.mark.parametrize("dims", [1, 2])
def test_one_and_two_d_networks_ignore_the_video_options(dims):
    torch.manual_seed(0)
    plain = perturb(tiny(dims=dims, attn_levels=(1,)))
    torch.manual_seed(0)
    told = perturb(tiny(dims=dims, attn_levels=(1,), temporal="factorized"))
    assert list(plain.state_dict()) == list(told.state_dict()) and told.temporal == "full"
    x, c_noise = torch.randn(2, 1, *(8,) * dims), torch.tensor([-1.0, 0.5])
    assert torch.equal(plain(x, c_noise), told(x, c_noise, independent=torch.tensor([True, False])))
