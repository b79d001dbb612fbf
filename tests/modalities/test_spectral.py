import math

import pytest
import torch
import torch.nn.functional as F

from mmdiff.modalities.spectral import (REPRESENTATIONS, ComplexSTFT, LogMel, Waveform, framed_length,
                                        log_spectral_distance, snr_db, stft_magnitude)

SR = 8000
LENGTHS = [777, 3001, 4097, 8000]  # not multiples of the hop or of anything else


def noise(T, n=2, seed=0):
    return 0.3 * torch.randn(n, 1, T, generator=torch.Generator().manual_seed(seed))


def tone(T, f0=220.0, harmonics=4, peak=0.8, decay=None):
    """A harmonic tone [1, 1, T]: harmonics k = 1.. with amplitude 1/k, a 10 ms attack, an optional
    exponential decay (time constant in s), scaled to ``peak``."""
    t = torch.arange(T) / SR
    x = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, harmonics + 1))
    x = x * (t / 0.01).clamp(max=1) * (torch.exp(-t / decay) if decay else 1)
    return (x / x.abs().max() * peak)[None, None]


def padded(wave, T_padded):
    return F.pad(wave, (0, T_padded - wave.shape[-1]))


# --- ComplexSTFT -----------------------------------------------------------------------------------

@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("signal", ["noise", "tone"])
def test_stft_round_trip_is_exact(T, signal):
    rep = ComplexSTFT()
    wave = noise(T) if signal == "noise" else tone(T)
    out = rep.decode(rep.encode(wave))
    T_padded = rep.padded_length(T)
    assert out.shape == (wave.shape[0], 1, T_padded)
    assert (out - padded(wave, T_padded)).abs().max() < 1e-5
    assert (snr_db(padded(wave, T_padded), out) > 90).all()
    assert out[..., T:].abs().max() < 1e-5  # the padding comes back as silence


@pytest.mark.parametrize("T", LENGTHS)
def test_stft_shape_and_padded_length(T):
    rep = ComplexSTFT()
    x = rep.encode(noise(T))
    T_padded = rep.padded_length(T)
    frames = x.shape[-1]
    assert x.shape == (2, 2, 128, frames)  # F = 254 // 2 + 1 = 128
    assert frames % 16 == 0 and frames == T_padded // 64 + 1 and T_padded % 64 == 0
    assert T <= T_padded < T + 64 * 16  # the shortest such length: 16 frames fewer would not hold T


def test_padded_length_exact_values():
    assert [ComplexSTFT().padded_length(T) for T in (1, 960, 961, 8000, 8128)] == [960, 960, 1984, 8128, 8128]
    assert framed_length(1000, 128, 4) == 128 * 11  # ceil(1000 / 128) + 1 = 9 frames -> 12
    assert LogMel(SR).padded_length(8000) == 8128


def test_compression_one_is_the_scaled_plain_stft():
    wave = noise(3001)
    rep = ComplexSTFT(compression=1.0, scale=0.7)
    X = torch.stft(padded(wave, rep.padded_length(3001))[:, 0], 254, 64, window=torch.hann_window(254),
                   center=True, return_complex=True)
    assert torch.allclose(rep.encode(wave), torch.stack([X.real, X.imag], 1) * 0.7, rtol=1e-5, atol=1e-5)


def test_compression_and_scale_act_on_the_magnitude_and_keep_the_phase():
    wave = tone(4097)
    plain = ComplexSTFT(compression=1.0, scale=1.0).encode(wave)
    y = ComplexSTFT(compression=0.5, scale=3.0).encode(wave)
    X, Y = torch.complex(plain[:, 0], plain[:, 1]), torch.complex(y[:, 0], y[:, 1])
    assert torch.allclose(Y.abs(), 3.0 * X.abs().sqrt(), rtol=1e-5, atol=1e-6)
    loud = X.abs() > 1e-3
    assert torch.allclose(Y[loud] / Y[loud].abs(), X[loud] / X[loud].abs(), atol=1e-5)
    assert torch.equal(ComplexSTFT(scale=3.0).encode(wave), ComplexSTFT(scale=1.0).encode(wave) * 3.0)


@pytest.mark.parametrize("compression", [0.3, 0.5, 2.0])
def test_stft_is_safe_on_silence(compression):
    rep = ComplexSTFT(compression=compression)
    x = rep.encode(torch.zeros(1, 1, 1000))
    assert torch.equal(x, torch.zeros_like(x))
    assert torch.equal(rep.decode(x), torch.zeros(1, 1, rep.padded_length(1000)))


def test_stft_rejects_a_hop_without_an_exact_inverse():
    with pytest.raises(ValueError, match="hop_length"):
        ComplexSTFT(n_fft=254, hop_length=200)


# --- Waveform --------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", LENGTHS)
def test_waveform_round_trip_is_exact_and_pads_to_a_multiple(T):
    rep = Waveform(scale=3.0)
    wave = noise(T)
    x = rep.encode(wave)
    T_padded = math.ceil(T / 256) * 256
    assert x.shape == (2, 1, T_padded) and rep.padded_length(T) == T_padded
    assert torch.allclose(x, padded(wave, T_padded) * 3.0)
    assert torch.allclose(rep.decode(x), padded(wave, T_padded), atol=1e-7)
    assert Waveform().padded_length(512) == 512 and Waveform(pad_to=100).padded_length(101) == 200


# --- LogMel ----------------------------------------------------------------------------------------

def test_logmel_shape_and_length():
    rep = LogMel(SR)
    x = rep.encode(noise(3001))
    T_padded = rep.padded_length(3001)
    assert x.shape == (2, 1, 64, T_padded // 64 + 1) and x.shape[-1] % 16 == 0
    assert rep.decode(x).shape == (2, 1, T_padded)


def test_logmel_round_trip_of_a_harmonic_tone():
    """Griffin-Lim estimates the phase, so the waveform SNR is low (about -3 dB); the magnitudes are
    what survives: measured LSD 8.3 dB and magnitude SNR 10.2 dB on this tone (thresholds 10 and 8)."""
    rep = LogMel(SR)
    wave = tone(8000, f0=220.0)
    out = rep.decode(rep.encode(wave))[..., :8000]
    assert log_spectral_distance(wave, out).item() < 10.0
    assert snr_db(stft_magnitude(wave), stft_magnitude(out)).item() > 8.0
    # the fundamental survives: the FFT peak (1 Hz bins) lies well within the 27 Hz between mel bands at 220 Hz
    peak_hz = torch.fft.rfft(out[0, 0]).abs().argmax().item() * SR / 8000
    assert abs(peak_hz - 220.0) < 10
    assert torch.equal(out, rep.decode(rep.encode(wave))[..., :8000])  # deterministic (zero initial phase)


def test_logmel_silence_decodes_to_silence():
    rep = LogMel(SR)
    x = rep.encode(torch.zeros(1, 1, 2000))
    assert torch.allclose(x, torch.full_like(x, (math.log(1e-2) + 3.0) * 0.2))
    assert rep.decode(x).abs().max() < 1e-6
    assert torch.isfinite(rep.decode(torch.full_like(x, 1e4))).all()  # absurd model outputs stay finite


@pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values")
def test_logmel_rejects_mel_bands_without_an_inverse():
    """At 8 kHz, 512-point STFT bins (15.6 Hz apart) make at most ~100 independent mel bands."""
    for n_fft, n_mels in [(256, 128), (512, 128), (512, 110), (256, 64)]:
        with pytest.raises(ValueError, match=f"n_mels={n_mels}"):
            LogMel(SR, n_fft=n_fft, n_mels=n_mels)
    LogMel(SR, n_fft=512, n_mels=100)


# --- scale of the model space ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_model_space_std_on_synthetic_notes_is_sane(name):
    notes = torch.cat([tone(8000, f0, peak=peak, decay=0.3) for f0, peak in [(110, 0.5), (261.6, 0.7), (440, 0.95)]])
    rep = REPRESENTATIONS[name](SR) if name == "mel" else REPRESENTATIONS[name]()
    assert 0.2 < rep.encode(notes).std().item() < 1.0


# --- metrics ---------------------------------------------------------------------------------------

def test_snr_exact_values():
    ref = noise(1000)
    assert torch.allclose(snr_db(ref, 0.5 * ref), torch.full((2,), 20 * math.log10(2)), atol=1e-4)  # 6.02 dB
    assert torch.allclose(snr_db(torch.ones(3, 100), torch.full((3, 100), 1.1)), torch.full((3,), 20.0), atol=1e-4)
    assert torch.isinf(snr_db(ref, ref)).all() and snr_db(ref, ref).shape == (2,)
    assert snr_db(ref[0, 0], 0.5 * ref[0, 0]).shape == ()
    with pytest.raises(ValueError, match="shapes differ"):
        snr_db(ref, ref[..., :10])


def test_log_spectral_distance_exact_values():
    ref = noise(4000)
    assert torch.equal(log_spectral_distance(ref, ref), torch.zeros(2))
    assert torch.allclose(log_spectral_distance(ref, 2 * ref), torch.full((2,), 20 * math.log10(2)), atol=1e-3)
    assert log_spectral_distance(ref[0, 0], 2 * ref[0, 0]).shape == ()
    assert log_spectral_distance(ref[:, 0], 2 * ref[:, 0]).shape == (2,)


def test_stft_magnitude_is_in_dbfs():
    """A sine exactly on bin k: the periodic Hann window leaks nothing from -f into bin k, so the
    scaled magnitude there is the amplitude."""
    t = torch.arange(4096, dtype=torch.float64)
    sine = 0.5 * torch.sin(2 * math.pi * 40 / 512 * t)
    m = stft_magnitude(sine, 512, 128)
    assert m.shape == (257, 33)
    assert torch.allclose(m[40, 4:-4], torch.full((25,), 0.5, dtype=torch.float64), atol=1e-9)
