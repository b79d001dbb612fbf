"""The Vocos vocoder: lengths equal to LogMel.decode's, frame-to-sample alignment, the backbone's reach, and
its file (round trip, refusals)."""

import math

import pytest
import torch
import torchaudio
from safetensors.torch import save_file

from mmdiff.errors import UserError
from mmdiff.modalities.spectral import LogMel
from mmdiff.models.vocoder import MEL_KEYS, Vocoder, load_vocoder, mel_to_linear, save_vocoder

MEL = dict(sample_rate=8000, n_fft=256, hop_length=32, n_mels=16)
NET = dict(dim=16, intermediate_dim=32, num_layers=2, kernel_size=5)


def settings() -> dict:
    return LogMel(**MEL, pad_to=1).settings


def tiny(**net) -> Vocoder:
    torch.manual_seed(0)
    return Vocoder(settings(), **(NET | net)).eval()


@pytest.mark.parametrize("frames", [7, 16, 33])
def test_output_length_is_log_mel_decodes(frames):
    rep = LogMel(**MEL, griffin_lim_iters=2, pad_to=1)
    x = torch.randn(2, 1, MEL["n_mels"], frames) * 0.5
    with torch.no_grad():
        wave = tiny()(x)
    assert wave.shape == rep.decode(x).shape == (2, 1, MEL["hop_length"] * (frames - 1))
    assert wave.dtype == torch.float32 and torch.isfinite(wave).all()


@pytest.mark.parametrize("k", [0, 5, 10])
def test_stft_frame_k_drives_only_the_samples_around_k_times_hop(k):
    """The synthesis is a centred inverse STFT: frame k's window spans k * hop +- n_fft / 2, nothing else."""
    net, frames = tiny(), 12
    hop, half = MEL["hop_length"], MEL["n_fft"] // 2
    with torch.no_grad():
        S = net.spectrum(torch.randn(1, 1, MEL["n_mels"], frames))
        changed = S.clone()
        changed[..., k] += torch.polar(torch.ones(S.shape[1]), torch.rand(S.shape[1]) * 6.3)
        diff = (net.synthesize(changed) - net.synthesize(S))[0, 0].abs()
    where = torch.nonzero(diff > 0)[:, 0]
    assert where.min() >= max(0, k * hop - half) and where.max() < k * hop + half, (where.min(), where.max())
    assert diff[k * hop] > 1e-3  # the frame's centre (a center=False inverse would put it n_fft / 2 later)
    if k == 5:  # an interior frame reaches both ends of its window
        assert where.min() < k * hop - half + hop and where.max() > k * hop + half - hop


def test_mel_frame_k_changes_only_the_spectrum_within_the_receptive_field():
    net, frames, k = tiny(), 40, 17
    R = net.receptive_field
    assert R == (NET["num_layers"] + 1) * (NET["kernel_size"] // 2)
    x = torch.randn(1, 1, MEL["n_mels"], frames) * 0.5
    bumped = x.clone()
    bumped[..., k] += 1.0
    with torch.no_grad():
        diff = (net.spectrum(bumped) - net.spectrum(x)).abs().amax(dim=(0, 1))
    scale = net.spectrum(x).abs().max()
    moved = torch.nonzero(diff > 1e-6 * scale)[:, 0]
    assert moved.min() >= k - R and moved.max() <= k + R
    assert diff[k] > 1e-3 * scale and moved.min() < k and moved.max() > k  # it does look both ways


def test_magnitudes_are_bounded_by_the_loudest_possible_frame():
    net = tiny()
    with torch.no_grad():
        net.head.bias.fill_(50.0)  # an absurd prediction
        S = net.spectrum(torch.zeros(1, 1, MEL["n_mels"], 4))
    assert torch.allclose(S.abs(), torch.full_like(S.abs(), MEL["n_fft"] / 2), rtol=1e-5)


def test_kernel_size_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        Vocoder(settings(), dim=8, intermediate_dim=8, num_layers=1, kernel_size=4)


@pytest.mark.parametrize("level", [1e-3, 0.5, 20.0])
def test_the_skip_starts_from_the_flat_spectrum_a_log_mel_frame_describes(level):
    # |X_k| = a at every bin gives M_m = a * (the band's summed weights): the map must give back log a at every bin
    mel = settings()
    fb = torchaudio.functional.melscale_fbanks(MEL["n_fft"] // 2 + 1, 0.0, 4000.0, MEL["n_mels"], 8000)
    x = mel["scale"] * (torch.log(level * fb.sum(0)) - mel["offset"])
    W, b = mel_to_linear(mel)
    assert torch.allclose(W @ x + b, torch.full((MEL["n_fft"] // 2 + 1,), math.log(level)), atol=1e-4)
    assert torch.equal(tiny().skip.weight, W)  # where the network starts


def test_file_round_trip(tmp_path):
    net = tiny()
    path = save_vocoder(tmp_path / "vocoder.safetensors", net, settings(), steps=12, seconds=3.5, extra={"a": 1})
    loaded = load_vocoder(path)
    assert loaded.mel == settings() and set(loaded.mel) == set(MEL_KEYS)
    assert loaded.net.architecture == NET and (loaded.steps, loaded.seconds, loaded.extra) == (12, 3.5, {"a": 1})
    assert not any(p.requires_grad for p in loaded.net.parameters()) and not loaded.net.training
    x = torch.randn(1, 1, MEL["n_mels"], 9)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), net(x))
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed


def test_damaged_foreign_and_pickled_files_are_refused(tmp_path):
    good = save_vocoder(tmp_path / "vocoder.safetensors", tiny(), settings(), steps=1, seconds=1.0)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt or truncated.*mode=train_vocoder"):
        load_vocoder(cut)
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, foreign, metadata={"format": "mmdiff-checkpoint"})
    with pytest.raises(UserError, match="not an mmdiff vocoder.*vocoder=PATH"):
        load_vocoder(foreign)
    pickled = tmp_path / "vocoder.pt"
    torch.save(tiny().state_dict(), pickled)
    with pytest.raises(UserError, match="pickle-based.*never unpickles"):
        load_vocoder(pickled)
    text = tmp_path / "notes.txt"
    text.write_text("not a vocoder at all\n")
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_vocoder(text)
    with pytest.raises(UserError, match="does not exist"):
        load_vocoder(tmp_path / "missing.safetensors")


def test_weights_that_do_not_fit_the_recorded_architecture_are_refused(tmp_path):
    path = save_vocoder(tmp_path / "v.safetensors", tiny(), settings(), steps=1, seconds=1.0)
    state = tiny(dim=24).state_dict()  # other shapes under the same metadata
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=meta)
    with pytest.raises(UserError, match="damaged"):
        load_vocoder(path)
