"""The diffusion vocoder (mmdiff.models.diffusion_vocoder, train_vocoder.kind=diffusion): each log-mel frame drives
its own hop of samples, the core's denoising loss learns, decoding is deterministic and survives the file, the
fitted schedule is stored in it, and mode=sample decodes through it."""

import csv
import math

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from mmdiff.cli import run
from mmdiff.core.losses import EDMWeighting
from mmdiff.core.schedules import LogNormalSigma, karras
from mmdiff.errors import UserError
from mmdiff.model import Model
from mmdiff.modalities.audio import AudioModality
from mmdiff.modalities.spectral import stft_magnitude
from mmdiff.models.diffusion_vocoder import DiffusionVocoder, MelConditionedUNet, SpectralShaping
from mmdiff.models.vocoder import load_vocoder, save_vocoder
from mmdiff.tasks.train import train
from mmdiff.tasks.train_vocoder import DenoisingObjective

from .conftest import compose_config
from .test_vocoder import AUDIO, VOCODER, sample

NET = {"channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [], "head_channels": 16, "groups": 8,
       "patch_size": 4, "down_factors": [2]}
DIFFUSION = ["train_vocoder.kind=diffusion", "train_vocoder.diffusion.net.channels=16",
             "train_vocoder.diffusion.net.channel_mult=[1,2]", "train_vocoder.diffusion.net.down_factors=[4]",
             "train_vocoder.diffusion.net.head_channels=16", "train_vocoder.diffusion.steps=3",
             "train_vocoder.diffusion.stft_weight=0.5", "train_vocoder.diffusion.fit.n=2",
             "train_vocoder.diffusion.fit.held_out=2", "train_vocoder.diffusion.fit.reference_steps=8",
             "train_vocoder.diffusion.fit.sweeps=1", "train_vocoder.diffusion.fit.iters=2"]


def tiny_vocoder(seed: int = 0) -> DiffusionVocoder:
    torch.manual_seed(0)
    decoding = {"sampler": "dpmpp_2m", "options": {}, "seed": seed, "sigmas": karras(3, 0.002, 10.0).tolist()}
    vocoder = DiffusionVocoder(clip_and_modality()[0].decoder_settings(), net=NET, precond="edm", sigma_data=0.5, shaping_floor_db=-80,
                               decoding=decoding)
    with torch.no_grad():  # the U-Net's output layer starts at zero: give it something to say
        torch.nn.init.normal_(vocoder.denoiser.net.unet.conv_out.weight, std=0.1)
    return vocoder.eval().requires_grad_(False)


def test_each_mel_frame_drives_its_own_hop_of_samples():
    hop, n_mels, frames = 10, 8, 6
    net = MelConditionedUNet(n_mels, hop, **NET)
    seen = []
    net.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["cond"]), with_kwargs=True)
    mel = torch.randn(2, 1, n_mels, frames)
    x = torch.randn(2, 1, hop * (frames - 1))           # 50 samples: padded to 56 for the U-Net (total 8)
    assert net(x, torch.zeros(2), None, mel=mel).shape == x.shape
    cond = seen[-1]
    assert cond.shape == (2, n_mels, 56)
    for k in range(frames):                             # sample k * hop, the frame's centre, takes frame k
        assert torch.equal(cond[..., min(k * hop, 55)], mel[:, 0, :, k])
    for k in range(frames):
        bumped = mel.clone()
        bumped[:, :, :, k] += 1.0
        net(x, torch.zeros(2), None, mel=bumped)
        changed = (seen[-1] != cond).any(1).any(0).nonzero()[:, 0].tolist()
        first, last = max(0, k * hop - hop // 2), k * hop + hop // 2 - 1
        if k == frames - 1:
            last = 55                                   # the last frame goes on over the padding
        assert changed == list(range(first, last + 1)), k


def clip_and_modality():
    """A log-mel audio modality (8 kHz, hop 32, 32 mels) and a decaying two-harmonic note [1, 1, 32 * 63] for it."""
    m = AudioModality(sample_rate=8000, representation="mel", spectrogram="mel", pad_to=1,
                      options={"mel": {"n_fft": 256, "hop_length": 32, "n_mels": 32}})
    t = torch.arange(32 * 63) / 8000
    clip = (0.5 * torch.sin(2 * math.pi * 330 * t) + 0.2 * torch.sin(2 * math.pi * 660 * t)) * torch.exp(-t / 0.15)
    return m, clip[None, None]


def test_the_denoising_objective_overfits_one_clip():
    m, clip = clip_and_modality()
    torch.manual_seed(0)
    vocoder = DiffusionVocoder(m.decoder_settings(), net=NET | {"patch_size": 8, "down_factors": [4]},
                               precond="edm", sigma_data=0.5, shaping_floor_db=-80,
                               decoding={"sampler": "euler", "options": {}, "seed": 0, "sigmas": [1.0, 0.0]})

    def objective(seed: int, stft_weight: float = 0.5) -> DenoisingObjective:
        return DenoisingObjective(m, LogNormalSigma(math.log(0.3), 0.0), EDMWeighting(),
                                  [(128, 32, 128), (256, 64, 256)], stft_weight, torch.Generator().manual_seed(seed))

    batch = clip.expand(4, -1, -1)
    first = objective(1)(vocoder, batch)                # the same levels and noises before and after
    training = objective(0)
    opt = torch.optim.AdamW(vocoder.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(100):
        losses = training(vocoder, batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    last = objective(1)(vocoder, batch)
    assert first["stft"] > 0 and first["loss"] > first["denoising"]  # the STFT term is on and counted
    assert last["denoising"] < first["denoising"] / 2 and last["stft"] < first["stft"] / 1.2, (first, last)
    assert objective(1, 0.0)(vocoder, batch)["stft"] == 0  # off at weight 0


def test_shaped_noise_takes_the_spectrum_the_log_mel_describes():
    m, clip = clip_and_modality()
    x = m.encode(clip)
    T = 32 * (x.shape[-1] - 1)
    shaping = SpectralShaping(m.decoder_settings(), -80.0)
    w = F.pad(clip, (0, T - clip.shape[-1]))
    assert (shaping.shape(shaping.whiten(w, x), x) - w).norm() < 0.1 * w.norm()  # S^-1 undoes S, up to frame overlaps
    white = torch.randn(1, 1, T, generator=torch.Generator().manual_seed(0))
    for noise, ratio in ((white, (1e-1, 1e1)), (shaping.shape(white, x), (0, 1e-4))):
        power = stft_magnitude(noise[0, 0], 256, 32).square().mean(1)             # [129 bins]: 31.25 Hz apart
        harmonics, above_2_khz = power[[10, 11, 21, 22]].mean(), power[64:].mean()  # 330 and 660 Hz
        assert ratio[0] < above_2_khz / harmonics < ratio[1], (above_2_khz, harmonics)


def test_decoding_is_deterministic_and_survives_the_file(tmp_path):
    vocoder, (m, clip) = tiny_vocoder(), clip_and_modality()
    mel = m.encode(torch.cat([clip, 0.3 * clip, clip.roll(500, -1)]))[..., :8]
    wave = vocoder(mel)
    assert wave.shape == (3, 1, 32 * 7)                 # LogMel.decode's length, hop * (F - 1)
    assert torch.equal(vocoder(mel), wave)              # the same log-mel, the same waveform
    # whatever batch it is decoded in (up to float32 round-off, which batched convolutions may order differently)
    assert torch.allclose(vocoder(mel[1:2]), wave[1:2], rtol=1e-5, atol=1e-5 * float(wave.abs().max()))
    assert not torch.allclose(tiny_vocoder(seed=1)(mel), wave)       # the noise comes from the seed
    vocoder.decoding["sigmas"] = [10.0, 0.5, 0.01, 0.0]  # as a fit leaves them
    wave = vocoder(mel)
    path = save_vocoder(tmp_path / "vocoder.safetensors", vocoder, m.decoder_settings(), 7, 1.5, {"note": 1})
    found = load_vocoder(path)
    assert found.kind == "diffusion" and found.steps == 7 and found.extra == {"note": 1}
    assert found.net.decoding == vocoder.decoding and found.net.architecture == vocoder.architecture
    assert torch.equal(found.net(mel), wave)


def test_the_fitted_schedule_is_no_worse_and_keeps_its_ends():
    vocoder = tiny_vocoder()
    m, clip = clip_and_modality()
    mel, start = m.encode(torch.cat([clip, 0.5 * clip]))[..., :8], list(vocoder.decoding["sigmas"])
    result = vocoder.fit_schedule(mel, mel.flip(-1), floor=0.002, reference_steps=8, sweeps=1, iters=3)
    assert result.error[1] <= result.error[0] and result.held_out is not None
    assert vocoder.decoding["sigmas"] == result.sigmas.tolist() != start
    assert vocoder.decoding["sigmas"][0] == start[0] and vocoder.decoding["sigmas"][-1] == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny generator on two timbres of notes, and a diffusion vocoder trained for its data by mode=train_vocoder."""
    root = tmp_path_factory.mktemp("diffusion_vocoder")
    ckpt = train(compose_config(AUDIO), root / "run")
    path = run(compose_config(AUDIO + VOCODER + DIFFUSION), root / "vocoder")
    return ckpt, path, root


def test_train_vocoder_writes_a_diffusion_vocoder_with_its_fitted_schedule(trained):
    ckpt, path, root = trained
    vocoder = load_vocoder(path)
    assert vocoder.kind == "diffusion" and vocoder.steps == 3
    assert vocoder.mel == Model.from_checkpoint(ckpt).modality.decoder_settings()
    fit = vocoder.extra["fit"]
    assert vocoder.net.decoding["sigmas"] == fit["sigmas"] and len(fit["sigmas"]) == 4 and fit["evaluations"] > 0
    assert fit["error"][1] <= fit["error"][0] and fit["start"] == karras(3, 0.002, 10.0).tolist()
    assert set(vocoder.extra["held_out"]["vocoder"]) == {"multires_stft", "lsd_db"}
    with open(root / "vocoder" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["stft"]) > 0 for r in rows)
    assert all(float(r["loss"]) > float(r["denoising"]) for r in rows)


def test_sampling_decodes_with_the_diffusion_vocoder(trained, tmp_path):
    ckpt, path, _ = trained
    sample(ckpt, tmp_path / "gl")
    sample(ckpt, tmp_path / "a", f"vocoder={path}")
    sample(ckpt, tmp_path / "b", f"vocoder={path}")
    frames = Model.from_checkpoint(ckpt).shape[-1]
    for i in range(2):
        gl, rate = sf.read(tmp_path / "gl" / f"sample_{i:05d}.wav")
        a, _ = sf.read(tmp_path / "a" / f"sample_{i:05d}.wav")
        b, _ = sf.read(tmp_path / "b" / f"sample_{i:05d}.wav")
        assert rate == 8000 and len(gl) == len(a) == 64 * (frames - 1)
        assert not (gl == a).all() and (a == b).all()    # the vocoder's, and the same each time


def test_a_bad_kind_or_sampler_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="train_vocoder.kind=wavenet is unknown: use one of vocos, diffusion"):
        run(compose_config(AUDIO + VOCODER + ["train_vocoder.kind=wavenet"]), tmp_path)
    with pytest.raises(UserError, match="train_vocoder.diffusion.sampler=nope is unknown: use one of .*dpmpp_2m"):
        run(compose_config(AUDIO + VOCODER + DIFFUSION + ["train_vocoder.diffusion.sampler=nope"]), tmp_path)
    with pytest.raises(UserError, match="schedule=fitted: sampler 'euler_ancestral' has no deterministic form"):
        run(compose_config(AUDIO + VOCODER + DIFFUSION + ["train_vocoder.diffusion.sampler=euler_ancestral"]), tmp_path)
    with pytest.raises(UserError, match="train_vocoder.diffusion.net does not describe a U-Net"):
        run(compose_config(AUDIO + VOCODER + DIFFUSION + ["train_vocoder.diffusion.net.channels=15"]), tmp_path)
