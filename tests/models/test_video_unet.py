"""The U-Net on video [B, C, T, H, W]: per-axis resampling, the factorised (2+1)-D form (VDM), independent
frames, relative temporal positions, conditioning channels, and that the 1-D/2-D networks did not change."""

import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mmdiff.build import total_downsampling
from mmdiff.models.layers import (Downsample, Frames, ResBlock, TemporalAttention, TemporalConv, Upsample, patchify,
                                  unpatchify)
from mmdiff.models.unet import UNet

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
TINY = dict(channels=8, channel_mult=(1, 2), num_blocks=1, head_channels=8, groups=4)
VIDEO = dict(TINY, dims=3, temporal="factorized", down_factors=[[1, 2, 2]], attn_levels=(1,))


def perturb(net: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random values for the zero-initialised weights (temporal layers, output projections), as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return net


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def temporal_keys(net: torch.nn.Module) -> set[str]:
    return {k for k in net.state_dict() if ".temporal." in k or ".temporal_attn." in k}


# --- per-axis down-sampling and patches -----------------------------------------------------------------

@pytest.mark.parametrize("temporal", ["factorized", "full"])
def test_per_axis_factors_give_the_hand_computed_intermediate_shapes(temporal):
    # [2, 1, 4, 8, 8] with factors [[1, 2, 2]]: level 0 at 4 x 8 x 8 (8 channels), level 1 at 4 x 4 x 4 (16);
    # the factorised net holds the 4 frames of each clip in the batch, [2 * 4, C, H, W].
    net = UNet(**{**VIDEO, "temporal": temporal})
    shapes = []
    for module in (net.conv_in, net.down_blocks[0][0], net.downsamples[0], net.down_blocks[1][0], net.middle[1],
                   net.upsamples[0], net.up_blocks[1][1]):
        module.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    out = net(torch.randn(2, 1, 4, 8, 8), torch.zeros(2))
    assert out.shape == (2, 1, 4, 8, 8)
    fine, coarse = (8, 8, 8), (16, 4, 4)
    if temporal == "factorized":
        expected = [(8, *fine)] * 2 + [(8, 8, 4, 4), (8, *coarse), (8, *coarse), (8, 16, 8, 8), (8, *fine)]
    else:
        expected = [(2, 8, 4, 8, 8)] * 2 + [(2, 8, 4, 4, 4), (2, 16, 4, 4, 4), (2, 16, 4, 4, 4), (2, 16, 4, 8, 8),
                                           (2, 8, 4, 8, 8)]
    assert shapes == expected


def test_total_downsampling_is_per_axis_only_for_per_axis_configs():
    assert UNet(**VIDEO).total_downsampling == (1, 2, 2)
    three = dict(VIDEO, channel_mult=(1, 2, 2))
    assert UNet(**{**three, "down_factors": [[1, 2, 2], [2, 2, 2]], "patch_size": [1, 2, 2]}).total_downsampling == (2, 8, 8)
    assert UNet(**{**three, "down_factors": [2, [1, 2, 2]]}).total_downsampling == (2, 4, 4)   # an int: every axis
    assert UNet(**{**three, "down_factors": 2, "patch_size": [1, 4, 4]}).total_downsampling == (4, 16, 16)
    # ints stay ints, also for video and also when the per-axis values happen to be equal
    assert UNet(**{**VIDEO, "down_factors": 2}).total_downsampling == 2
    assert UNet(**{**TINY, "dims": 2, "down_factors": [[2, 2]]}).total_downsampling == (2, 2)


def test_build_total_downsampling_agrees_with_the_network_and_stays_an_int_for_the_existing_configs():
    for name in ("unet1d", "unet2d", "spec_unet"):  # audio pads its time axis to this multiple: must stay an int
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert type(total_downsampling(cfg)) is int
    cfg = OmegaConf.load(CONF / "video_unet.yaml")
    assert total_downsampling(cfg) == (1, 4, 4)                        # an OmegaConf node: nested ListConfigs
    cfg.down_factors = [[2, 2, 2]]
    assert total_downsampling(cfg) == (2, 4, 4)
    net_cfg = dict(VIDEO, down_factors=[[1, 2, 2]], patch_size=[1, 2, 2])
    assert total_downsampling(net_cfg) == UNet(**net_cfg).total_downsampling == (1, 4, 4)


def test_check_input_shape_names_the_failing_axis_and_a_fix():
    net = UNet(**{**VIDEO, "channel_mult": (1, 2, 2), "down_factors": [[1, 2, 2], [2, 2, 2]]})
    net.check_input_shape((6, 16, 16))
    with pytest.raises(ValueError, match=r"\(5, 16, 16\) is not divisible by \(2, 4, 4\).*axis 0 \(time\) has size 5, "
                                         r"not a multiple of 2.*e\.g\. \(6, 16, 16\).*factor of 1 along axis 0"):
        net.check_input_shape((5, 16, 16))
    with pytest.raises(ValueError, match=r"axis 1 \(height\) has size 10.*axis 2 \(width\) has size 6.*"
                                         r"\(2, 12, 8\).*along axes 1, 2"):
        net.check_input_shape((2, 10, 6))
    # an int config names the axis too
    with pytest.raises(ValueError, match=r"axis 1 has size 9, not a multiple of 2.*\(e\.g\. \(8, 10\)\)"):
        UNet(**{**TINY, "dims": 2}).check_input_shape((8, 9))


@pytest.mark.parametrize("overrides, message", [
    (dict(down_factors=[[1, 2]]), r"down_factors\[0\]=\[1, 2\] has 2 entries but model\.dims=3 needs 3.*time first"),
    (dict(down_factors=[[1, 2, 0]]), r"down_factors=\[\[1, 2, 0\]\].*>= 1"),
    (dict(patch_size=[1, 2]), r"patch_size=\[1, 2\] has 2 entries"),
    (dict(patch_size=[1, 0, 2]), r"patch_size=\[1, 0, 2\].*>= 1"),
    (dict(temporal="2+1d"), r"temporal='2\+1d'.*full.*factorized"),
    (dict(cond_channels="auto"), r"cond_channels='auto'.*resolved"),
    (dict(cond_channels=-1), r"cond_channels=-1"),
])
def test_constructor_rejects_bad_video_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet(**{**VIDEO, **overrides})


@pytest.mark.parametrize("shape, p", [((2, 3, 4, 6, 8), (1, 2, 2)), ((1, 2, 4, 6, 8), (2, 3, 4)), ((2, 1, 6, 8), (3, 1)),
                                      ((1, 2, 12), (4,))])
def test_patchify_per_axis_is_space_to_depth_and_unpatchify_inverts_it_exactly(shape, p):
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    y = patchify(x, p)
    assert y.shape == (shape[0], shape[1] * math.prod(p), *[s // k for s, k in zip(shape[2:], p)])
    assert torch.equal(unpatchify(y, p), x)
    if p == (1, 2, 2):  # frame by frame, the 2-D patches: pixel_unshuffle of every frame
        frames = x.transpose(1, 2).flatten(0, 1)                                   # [B*T, C, H, W]
        expected = F.pixel_unshuffle(frames, 2).view(shape[0], shape[2], -1, 3, 4).transpose(1, 2)
        assert torch.equal(y, expected)
    if p == (2, 3, 4):  # channel c * 24 + (i * 12 + j * 4 + k) holds x[c, 2 t + i, 3 h + j, 4 w + k]
        assert torch.equal(y[0, 1 * 24 + 1 * 12 + 2 * 4 + 3, 1, 1, 0], x[0, 1, 2 + 1, 3 + 2, 3])


def test_downsample_and_upsample_act_per_axis():
    x = torch.randn(2, 3, 4, 6, 8)
    down, up = Downsample(3, 3, (1, 2, 2)), Upsample(3, 3, (1, 2, 2))
    for m in (down, up):  # the conv as the identity, to see the resampling itself
        with torch.no_grad():
            m.conv.weight.zero_()
            m.conv.bias.zero_()
            m.conv.weight[range(3), range(3), 1, 1, 1] = 1
    pooled = x.view(2, 3, 4, 3, 2, 4, 2).mean((4, 6))                   # 2x2 boxes in space, time kept
    torch.testing.assert_close(down(x), pooled, rtol=0, atol=1e-6)
    assert torch.equal(up(pooled), pooled.repeat_interleave(2, 3).repeat_interleave(2, 4))
    # factorised video: time resampled on clips folded into the batch, without parameters
    frames = Frames(batch=2, num=4)
    folded = x.transpose(1, 2).flatten(0, 1)                             # [8, C, H, W]
    down_t, up_t = Downsample(2, 3, 1, time_factor=2), Upsample(2, 3, 1, time_factor=2)
    for m in (down_t, up_t):
        with torch.no_grad():
            m.conv.weight.zero_()
            m.conv.bias.zero_()
            m.conv.weight[range(3), range(3), 1, 1] = 1
    halved = down_t(folded, frames)                                      # frames (0, 1) and (2, 3) averaged
    torch.testing.assert_close(halved.view(2, 2, 3, 6, 8), x.transpose(1, 2).reshape(2, 2, 2, 3, 6, 8).mean(2),
                               rtol=0, atol=1e-6)
    assert torch.equal(up_t(halved, frames.with_num(2)), halved.view(2, 2, 3, 6, 8).repeat_interleave(2, 1).flatten(0, 1))


def test_full_3d_network_works_with_per_axis_factors_and_every_parameter_learns():
    net = perturb(UNet(**{**VIDEO, "temporal": "full", "patch_size": [1, 2, 2], "num_classes": 3}))
    assert net.total_downsampling == (1, 4, 4) and net.conv_in.weight.shape == (8, 4, 3, 3, 3)
    x = torch.randn(2, 1, 3, 8, 8)
    out = net(x, torch.tensor([-1.0, 0.5]), torch.tensor([0, 2]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()] == []


def test_factorised_network_with_time_downsampling_and_time_patches():
    net = perturb(UNet(**{**VIDEO, "channel_mult": (1, 2, 2), "down_factors": [[2, 2, 2], [1, 2, 2]],
                          "patch_size": [2, 1, 1]}))
    assert net.total_downsampling == (4, 4, 4)
    x = torch.randn(2, 1, 8, 4, 4)
    out = net(x, torch.zeros(2))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()] == []
    with pytest.raises(ValueError, match="independent frames need.*factor 1 along time"):
        net(x, torch.zeros(2), independent=torch.tensor([True, False]))


# --- the (2+1)-D layers --------------------------------------------------------------------------------

def test_temporal_conv_moves_a_single_pixel_as_its_hand_set_kernel_says():
    # One channel (one group), 2 clips of 4 frames of 3 x 3 with a single lit pixel moving one step right
    # per frame. A kernel (1, 0, 0) along time puts at frame t the normalised frame t - 1: out_t = x_t +
    # SiLU(GN(x_{t-1})), and at frame 0 only x_0 (frames past the ends are zeros).
    B, T, H, W = 2, 4, 3, 4
    x = torch.zeros(B, T, 1, H, W)
    for t in range(T):
        x[:, t, 0, 1, t] = 1.0
    layer = TemporalConv(1, groups=1)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([[[1.0, 0.0, 0.0]]]))
    out = layer(x.flatten(0, 1), Frames(B, T)).view(B, T, 1, H, W)

    n = H * W                                                            # GN of a frame with one 1 among n pixels
    mean, var = 1 / n, 1 / n - 1 / n**2
    lit, dark = (1 - mean) / math.sqrt(var + layer.norm.eps), -mean / math.sqrt(var + layer.norm.eps)
    silu = lambda v: v / (1 + math.exp(-v))                              # noqa: E731
    expected = x.clone()
    for t in range(1, T):
        expected[:, t] += silu(dark)
        expected[:, t, 0, 1, t - 1] += silu(lit) - silu(dark)           # the trace of the previous frame's pixel
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_temporal_conv_is_a_conv1d_over_time_at_every_pixel():
    torch.manual_seed(0)
    B, T, C, H, W = 2, 5, 8, 3, 4
    layer = perturb(TemporalConv(C, groups=4), scale=0.5)
    x = torch.randn(B * T, C, H, W)
    h = F.silu(layer.norm(x)).view(B, T, C, H, W).permute(0, 3, 4, 2, 1).reshape(B * H * W, C, T)
    reference = layer.conv(h).view(B, H, W, C, T).permute(0, 4, 3, 1, 2).reshape(B * T, C, H, W)
    torch.testing.assert_close(layer(x, Frames(B, T)), x + reference, rtol=1e-5, atol=1e-5)


def test_a_new_temporal_layer_is_the_identity():
    x = torch.randn(2 * 6, 8, 4, 4)
    frames = Frames(2, 6)
    assert torch.equal(TemporalConv(8, groups=4)(x, frames), x)
    assert torch.equal(TemporalAttention(8, head_channels=4, groups=4)(x, frames), x)
    # and so a new factorised network is the 2-D network frame by frame, whatever the clip length
    net2d = randomize(UNet(**{**TINY, "dims": 2, "attn_levels": (1,)}))
    video = UNet(**VIDEO)
    video.load_state_dict(net2d.state_dict(), strict=False)
    clips = torch.randn(2, 1, 6, 8, 8)
    c_noise = torch.tensor([-1.0, 0.5])
    per_frame = net2d(clips.transpose(1, 2).flatten(0, 1), c_noise.repeat_interleave(6))
    torch.testing.assert_close(video(clips, c_noise), per_frame.view(2, 6, 1, 8, 8).transpose(1, 2), rtol=0, atol=1e-6)


def test_a_2d_unet_loads_into_the_spatial_layers_and_one_frame_is_the_image_path():
    config = dict(TINY, attn_levels=(1,), num_classes=3, patch_size=2, embedding="fourier")
    net2d = randomize(UNet(dims=2, **config))
    video = UNet(**{**config, "dims": 3, "temporal": "factorized", "down_factors": [[1, 2, 2]], "patch_size": [1, 2, 2]})
    result = video.load_state_dict(net2d.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == temporal_keys(video) != set()
    perturb(video, seed=1)                                               # trained-like temporal weights: skipped at T = 1
    x, c_noise, labels = torch.randn(3, 1, 8, 8), torch.tensor([-1.0, 0.0, 1.2]), torch.tensor([0, 3, 2])
    image = net2d(x, c_noise, labels)
    frame = video(x[:, :, None], c_noise, labels)
    assert frame.shape == (3, 1, 1, 8, 8)
    # the same 2-D operations on the same tensors: equal up to float32 round-off (here bit for bit)
    torch.testing.assert_close(frame[:, :, 0], image, rtol=1e-6, atol=1e-6)
    assert image.abs().max() > 0.1


def test_independent_clips_keep_their_frames_apart_and_the_others_mix_them():
    net = randomize(UNet(**VIDEO, num_classes=3)).eval()
    x = torch.randn(2, 1, 4, 8, 8)
    c_noise, labels = torch.tensor([-0.5, 0.3]), torch.tensor([1, 2])
    independent = torch.tensor([True, False])
    out = net(x, c_noise, labels, independent=independent)
    x2 = x.clone()
    x2[:, :, 0] += torch.randn(2, 1, 8, 8)                               # perturb frame 0 of both clips
    out2 = net(x2, c_noise, labels, independent=independent)
    assert not torch.equal(out[0, :, 0], out2[0, :, 0])
    assert torch.equal(out[0, :, 1:], out2[0, :, 1:])                    # independent: frames 1.. untouched, exactly
    assert (out[1, :, 1:] - out2[1, :, 1:]).abs().amax((0, 2, 3)).min() > 1e-3   # mixed: every later frame moves
    # all False is the same as None, and an independent clip is its frames as images (T = 1 each)
    assert torch.equal(net(x, c_noise, labels, independent=torch.tensor([False, False])), net(x, c_noise, labels))
    frames = x[:1].transpose(1, 2).reshape(4, 1, 1, 8, 8)
    one_by_one = net(frames, c_noise[:1].expand(4), labels[:1].expand(4)).reshape(1, 4, 1, 8, 8).transpose(1, 2)
    torch.testing.assert_close(out[:1], one_by_one, rtol=1e-5, atol=1e-6)


def test_independent_is_refused_where_other_layers_mix_frames():
    x = torch.randn(2, 1, 4, 8, 8)
    full = UNet(**{**VIDEO, "temporal": "full"})
    assert not full.frames_can_be_independent and UNet(**VIDEO).frames_can_be_independent
    with pytest.raises(ValueError, match="independent frames need.*temporal=factorized"):
        full(x, torch.zeros(2), independent=torch.tensor([True, False]))
    assert full(x, torch.zeros(2)).shape == x.shape
    # 1-D and 2-D networks have no frames to mix: independent changes nothing
    net2d = perturb(UNet(**{**TINY, "dims": 2}))
    y = torch.randn(2, 1, 4, 4)
    assert torch.equal(net2d(y, torch.zeros(2), independent=torch.tensor([True, False])), net2d(y, torch.zeros(2)))


def test_gradients_reach_every_parameter_of_a_factorised_network():
    net = perturb(UNet(**VIDEO, num_classes=3, cond_channels=2))
    x, cond = torch.randn(3, 1, 4, 8, 8), torch.randn(3, 2, 4, 8, 8)
    out = net(x, torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([0, 1, 3]), cond, torch.tensor([False, True, False]))
    out.square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()] == []


# --- relative positions ----------------------------------------------------------------------------

def test_the_temporal_bias_depends_only_on_the_clipped_distance():
    attn = TemporalAttention(8, head_channels=4, groups=4, max_distance=3)
    with torch.no_grad():
        attn.rel_bias.normal_()
    for T in (5, 12):
        bias = attn.position_bias(T)
        assert bias.shape == (2, T, T)
        for i in range(T):
            for j in range(T):
                assert torch.equal(bias[:, i, j], attn.rel_bias[:, max(-3, min(3, j - i)) + 3])


def test_temporal_attention_is_equivariant_to_shifting_the_clip():
    # A bias of -1e4 beyond distance 1 makes the attention local (exp underflows to exactly 0 in float32);
    # a circular shift keeps every frame's neighbours and the per-frame norm. With relative positions,
    # frame i of the clip and frame i + s of the clip shifted by s then give the same output, at any length;
    # absolute positions would not.
    torch.manual_seed(0)
    attn = perturb(TemporalAttention(8, head_channels=4, groups=4, max_distance=4), scale=0.5)
    with torch.no_grad():
        attn.rel_bias.normal_()
        attn.rel_bias[:, [0, 1, 2, 6, 7, 8]] = -1e4                      # |j - i| >= 2
    for T, s in ((8, 2), (12, 5)):
        x = torch.randn(2, T, 8, 3, 3)
        out = attn(x.flatten(0, 1), Frames(2, T)).view(x.shape)
        shifted = attn(x.roll(s, 1).flatten(0, 1), Frames(2, T)).view(x.shape)
        inner = range(1, T - 1 - s)                                      # whose neighbours did not wrap around
        torch.testing.assert_close(shifted[:, [i + s for i in inner]], out[:, list(inner)], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, x, atol=1e-3)                     # the layer did something


def test_a_network_runs_on_clip_lengths_it_was_not_built_for():
    net = perturb(UNet(**VIDEO))
    for T in (1, 3, 8, 12):
        x = torch.randn(2, 1, T, 8, 8)
        out = net(x, torch.zeros(2))
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_factorised_network_under_cpu_bf16_autocast_stays_near_float32():
    torch.manual_seed(0)
    net = perturb(UNet(**VIDEO), scale=0.1)
    x, c_noise = torch.randn(2, 1, 6, 8, 8), torch.tensor([-1.0, 0.5])
    high = net(x, c_noise)
    seen = []
    net.down_blocks[1][0].temporal_attn.qkv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, c_noise)
    assert seen == [torch.bfloat16]                                      # the temporal attention ran in bf16
    assert (low.float() - high).norm() / high.norm() < 3e-2


# --- conditioning channels -------------------------------------------------------------------------

@pytest.mark.parametrize("config, spatial", [
    (dict(TINY, dims=1), (8,)),
    (dict(TINY, dims=2, patch_size=2), (8, 8)),
    (VIDEO, (3, 8, 8)),
    (dict(VIDEO, temporal="full", patch_size=[1, 2, 2]), (3, 8, 8)),
])
def test_cond_channels_widen_conv_in_and_none_is_zeros(config, spatial):
    net = perturb(UNet(**config, in_channels=2, cond_channels=3))
    patch = math.prod(net.resampling.patch)
    assert net.conv_in.in_channels == (2 + 3) * patch
    assert UNet(**config, in_channels=2).conv_in.in_channels == 2 * patch
    x, c_noise = torch.randn(2, 2, *spatial), torch.tensor([-1.0, 0.5])
    zeros = net(x, c_noise, cond=torch.zeros(2, 3, *spatial))
    assert zeros.shape == x.shape
    assert torch.equal(net(x, c_noise), zeros)
    assert not torch.allclose(net(x, c_noise, cond=torch.randn(2, 3, *spatial)), zeros)


# --- the configs, and the networks that existed before video --------------------------------------------

@pytest.mark.parametrize("name, temporal", [("video_unet", "factorized"), ("video_unet_3d", "full")])
def test_the_video_configs_build_a_network_for_8_frames_of_16x16(name, temporal):
    from hydra.utils import instantiate
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.cond_channels == "auto" and cfg.dims == 3 and cfg.temporal == temporal
    cfg.in_channels, cfg.num_classes, cfg.cond_channels = 1, 10, 2
    net = instantiate(cfg)
    net.check_input_shape((8, 16, 16))
    params = sum(p.numel() for p in net.parameters())
    assert (0.8e6 < params < 1.6e6) if temporal == "factorized" else params > 2e6
    assert net(torch.randn(2, 1, 8, 16, 16), torch.zeros(2), cond=torch.zeros(2, 2, 8, 16, 16)).shape == (2, 1, 8, 16, 16)


# (number of state_dict entries, sha256 of "key [shape]" lines) of each network as built by the code before
# video (git show a95f0b3:mmdiff/models/unet.py): a change breaks every checkpoint trained before it.
BEFORE_VIDEO = [
    (dict(dims=1, in_channels=1, num_classes=10, channels=64, channel_mult=[1, 2, 2], num_blocks=2, attn_levels=[2],
          head_channels=32, embedding="positional", down_factors=[4, 4], patch_size=16, groups=8),  # unet1d.yaml
     245, "08454960e3daa4fd"),
    (dict(dims=2, in_channels=1, num_classes=10, channels=32, channel_mult=[1, 2], num_blocks=2, attn_levels=[1],
          head_channels=32, embedding="positional", down_factors=2, groups=8, patch_size=1),         # unet2d.yaml
     185, "43c2a4f0003c1683"),
    (dict(dims=2, in_channels=2, num_classes=10, channels=32, channel_mult=[1, 2, 2], num_blocks=2, attn_levels=[2],
          head_channels=32, embedding="positional", down_factors=2, patch_size=4, groups=8),         # spec_unet.yaml
     245, "f2a0d568ae95aaff"),
    (dict(TINY, dims=3, attn_levels=(1,), num_classes=3), 129, "80537f15edef9c19"),                 # full 3-D
    (dict(TINY, dims=2, attn_levels=(0, 1), embedding="fourier", patch_size=2, in_channels=3), 147, "d523a4f4de5c92f0"),
]


@pytest.mark.parametrize("config, count, digest", BEFORE_VIDEO)
def test_the_networks_from_before_video_keep_their_state_dict_keys_and_shapes(config, count, digest):
    state = UNet(**config).state_dict()
    text = "\n".join(f"{k} {list(v.shape)}" for k, v in state.items())
    assert (len(state), hashlib.sha256(text.encode()).hexdigest()[:16]) == (count, digest)
    assert not temporal_keys(UNet(**config))


def test_a_temporal_resblock_is_the_2d_block_then_the_temporal_conv():
    torch.manual_seed(0)
    block = perturb(ResBlock(2, 4, 8, 16, groups=4, temporal=True))
    plain = ResBlock(2, 4, 8, 16, groups=4)
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("temporal.")})
    x, emb, frames = torch.randn(6, 4, 3, 3), torch.randn(6, 16), Frames(2, 3)
    assert torch.equal(block(x, emb, frames), block.temporal(plain(x, emb), frames))
