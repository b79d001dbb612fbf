"""Audio representations: waveforms [N, 1, T] in [-1, 1] <-> model space [N, C, *spatial], and the
round-trip metrics (SNR, log-spectral distance) that measure them.

- ``Waveform``: the samples themselves, scaled; exact.
- ``ComplexSTFT``: real and imaginary parts of a magnitude-compressed STFT; exact up to float error.
- ``LogMel``: a log-mel spectrogram, inverted by least squares and Griffin-Lim, or by a learned vocoder
  (mmdiff.models.vocoder); lossy (phase is estimated).

Every representation zero-pads the waveform at the end to ``padded_length(T)`` so that the model
space halves cleanly in the U-Net, and ``decode`` returns that padded length T'.
Model-space scales are chosen for a standard deviation of about 0.5 (the diffusion's sigma_data) on
FSDD speech and on the built-in notes dataset; docs/audio.md has the measurements.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchaudio import transforms


class Representation:
    """Waveforms [N, 1, T] (float, at the modality's sample rate) <-> model space [N, C, *spatial].

    ``padded_length(T)`` is the length T' >= T that ``encode`` zero-pads to (at the end);
    ``decode(encode(w))`` returns [N, 1, T']."""

    samples_per_step = 1  # waveform samples per step of the model space's time axis (the hop)

    def padded_length(self, T: int) -> int:
        raise NotImplementedError

    def waveform_length(self, steps: int) -> int:
        """The waveform length T' whose encoding has ``steps`` steps along the time axis."""
        return steps

    def encode(self, wave: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _pad(self, wave: Tensor) -> Tensor:
        """[N, 1, T] -> [N, T'] zero-padded at the end."""
        T = wave.shape[-1]
        return F.pad(wave[:, 0], (0, self.padded_length(T) - T))


def framed_length(T: int, hop_length: int, pad_to: int) -> int:
    """The smallest T' >= T whose centred STFT has a multiple of ``pad_to`` frames.

    With center=True an STFT of T' = hop * k samples has k + 1 frames (torch.stft), so
    T' = hop * (frames - 1) with frames the smallest multiple of pad_to >= ceil(T / hop) + 1."""
    frames = math.ceil((math.ceil(T / hop_length) + 1) / pad_to) * pad_to
    return hop_length * (frames - 1)


class Waveform(Representation):
    """Model space [N, 1, T'] = scale * waveform, T' = T rounded up to a multiple of ``pad_to``
    (the U-Net's total down-sampling factor along time)."""

    def __init__(self, scale: float = 3.0, pad_to: int = 256):
        self.scale, self.pad_to = scale, pad_to

    def padded_length(self, T: int) -> int:
        return math.ceil(T / self.pad_to) * self.pad_to

    def encode(self, wave: Tensor) -> Tensor:
        return self._pad(wave)[:, None] * self.scale

    def decode(self, x: Tensor) -> Tensor:
        return x / self.scale


class ComplexSTFT(Representation):
    """Model space [N, 2, F, frames]: real and imaginary parts of Y = scale * |X|^c * exp(i angle X),
    X = STFT(w) with a Hann window and center=True, F = n_fft // 2 + 1, frames = T' / hop + 1
    (a multiple of ``pad_to``).

    Compression c < 1 lifts quiet time-frequency bins towards loud ones, as in SGMSE+ (Richter et al.
    2023, Eq. 12, c = 0.5) after Braun & Tashev (2021). The inverse is exact: |X| = (|Y| / scale)^(1/c)
    with the phase kept, then the inverse STFT, whose overlap-add divides by the summed squared
    window: exact wherever that sum is non-zero (NOLA), which a Hann window meets for any hop < n_fft;
    hop <= n_fft / 2 is asked for to keep the division well conditioned.
    n_fft = 254 gives F = 128, a power of two that the U-Net can halve.
    """

    def __init__(self, n_fft: int = 254, hop_length: int = 64, compression: float = 0.5, scale: float = 1.25,
                 pad_to: int = 16):
        if compression <= 0:
            raise ValueError(f"compression must be > 0, got {compression}")
        if hop_length > n_fft // 2:
            raise ValueError(f"hop_length={hop_length} must be at most n_fft // 2 = {n_fft // 2} "
                             "(a well-conditioned inverse)")
        self.n_fft, self.hop_length, self.compression, self.scale, self.pad_to = (
            n_fft, hop_length, compression, scale, pad_to)

    def padded_length(self, T: int) -> int:
        return framed_length(T, self.hop_length, self.pad_to)

    @property
    def samples_per_step(self) -> int:
        return self.hop_length

    def waveform_length(self, steps: int) -> int:
        return self.hop_length * (steps - 1)  # centred frames: T' = hop * (frames - 1)

    def encode(self, wave: Tensor) -> Tensor:
        X = torch.stft(self._pad(wave), self.n_fft, self.hop_length, window=self._window(wave), center=True,
                       return_complex=True)
        Y = torch.polar(X.abs() ** self.compression, X.angle()) * self.scale  # polar: safe at |X| = 0
        return torch.stack([Y.real, Y.imag], dim=1)

    def decode(self, x: Tensor) -> Tensor:
        Y = torch.complex(x[:, 0], x[:, 1]) / self.scale
        X = torch.polar(Y.abs() ** (1 / self.compression), Y.angle())
        length = self.hop_length * (x.shape[-1] - 1)
        wave = torch.istft(X, self.n_fft, self.hop_length, window=self._window(x), center=True, length=length)
        return wave[:, None]

    def _window(self, like: Tensor) -> Tensor:
        return torch.hann_window(self.n_fft, device=like.device, dtype=like.real.dtype)


class LogMel(Representation):
    """Model space [N, 1, n_mels, frames]: scale * (log(M + eps) - offset), M the mel spectrogram of the
    STFT magnitude (Hann window, center=True; torchaudio's HTK mel scale, unnormalised triangles),
    frames = T' / hop + 1 a multiple of ``pad_to``.

    eps = 1e-2 floors the log about 80 dB below a full-scale sine (whose peak bin is about n_fft / 4);
    offset and scale map FSDD speech and the built-in notes to mean ~0, std ~0.5 (docs/audio.md).
    Decoding is lossy: least squares (torchaudio's InverseMelScale) gives a linear-frequency magnitude,
    and Griffin-Lim (Griffin & Lim 1984, with the momentum of Perraudin et al. 2013) estimates a phase
    for it, starting from zero phase so that decoding is deterministic. With ``vocoder`` set (a network
    [N, 1, n_mels, frames] -> [N, 1, T'] trained for :attr:`settings`: mmdiff.models.vocoder) decoding
    runs it instead.
    """

    LOG_MAX = 12.0  # clamp on decoded log-mel values: far above any real signal's (~5), below exp overflow

    def __init__(self, sample_rate: int, n_fft: int = 512, hop_length: int = 64, n_mels: int = 64, f_min: float = 0.0,
                 f_max: float | None = None, eps: float = 1e-2, offset: float = -3.0, scale: float = 0.2,
                 griffin_lim_iters: int = 64, pad_to: int = 16):
        self.hop_length, self.eps, self.offset, self.scale, self.pad_to = hop_length, eps, offset, scale, pad_to
        self.mel = transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length, f_min=f_min,
                                             f_max=f_max, n_mels=n_mels, power=1.0, center=True)
        if torch.linalg.matrix_rank(self.mel.mel_scale.fb) < n_mels:  # else the least-squares inverse is undefined
            raise ValueError(f"n_mels={n_mels} is too many for n_fft={n_fft} at {sample_rate} Hz: the narrow low "
                             "mel bands share STFT bins; lower n_mels or raise n_fft")
        self.inverse_mel = transforms.InverseMelScale(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max)
        self.griffin_lim = transforms.GriffinLim(n_fft, n_iter=griffin_lim_iters, hop_length=hop_length, power=1.0,
                                                 momentum=0.99, rand_init=False)
        self.vocoder: torch.nn.Module | None = None

    @property
    def settings(self) -> dict:
        """The mel analysis and the model-space map: what a learned vocoder must have been trained for."""
        mel = self.mel.mel_scale
        return {"sample_rate": int(mel.sample_rate), "n_fft": int(self.mel.n_fft), "hop_length": int(self.hop_length),
                "n_mels": int(mel.n_mels), "f_min": float(mel.f_min), "f_max": float(mel.f_max), "eps": float(self.eps),
                "offset": float(self.offset), "scale": float(self.scale)}

    def padded_length(self, T: int) -> int:
        return framed_length(T, self.hop_length, self.pad_to)

    @property
    def samples_per_step(self) -> int:
        return self.hop_length

    def waveform_length(self, steps: int) -> int:
        return self.hop_length * (steps - 1)  # centred frames: T' = hop * (frames - 1)

    def encode(self, wave: Tensor) -> Tensor:
        M = self.mel.to(wave.device)(self._pad(wave))
        return (torch.log(M + self.eps) - self.offset)[:, None] * self.scale

    def decode(self, x: Tensor) -> Tensor:
        if self.vocoder is not None:
            with torch.no_grad():
                return self.vocoder.to(x.device)(x)  # T' = hop * (frames - 1) samples, as below
        log_mel = (x[:, 0] / self.scale + self.offset).clamp(max=self.LOG_MAX)
        M = (torch.exp(log_mel) - self.eps).clamp(min=0)
        magnitude = self.inverse_mel.to(x.device)(M)
        return self.griffin_lim.to(x.device)(magnitude)[:, None]  # T' = hop * (frames - 1) samples


REPRESENTATIONS = {"waveform": Waveform, "stft": ComplexSTFT, "mel": LogMel}


# --- round-trip metrics ----------------------------------------------------------------------------

def snr_db(ref: Tensor, est: Tensor) -> Tensor:
    """Signal-to-noise ratio per clip in dB: 10 log10(sum ref^2 / sum (ref - est)^2).

    ``ref`` and ``est`` have the same shape [N, ...] (the sums run over all but the first dim), or
    are one clip [T] (a scalar result). +inf when est == ref."""
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {tuple(ref.shape)} and {tuple(est.shape)}")
    dims = tuple(range(1, ref.ndim)) if ref.ndim > 1 else (0,)
    return 10 * torch.log10(ref.pow(2).sum(dims) / (ref - est).pow(2).sum(dims))


def stft_magnitude(wave: Tensor, n_fft: int = 512, hop: int = 128) -> Tensor:
    """|STFT| of waveforms [..., T] -> [..., n_fft // 2 + 1, frames] (Hann window, center=True), scaled
    by 2 / sum(window) so that a full-scale sine's peak bin is about 1 (0 dBFS)."""
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    X = torch.stft(wave.reshape(-1, wave.shape[-1]), n_fft, hop, window=window, center=True, return_complex=True)
    return (X.abs() * 2 / window.sum()).reshape(*wave.shape[:-1], *X.shape[-2:])


def log_spectral_distance(ref: Tensor, est: Tensor, n_fft: int = 512, hop: int = 128, eps: float = 1e-10) -> Tensor:
    """Log-spectral distance per clip in dB, for waveforms [N, 1, T], [N, T] or one clip [T]:

        LSD = mean over frames of sqrt(mean over bins of (10 log10(P_ref + eps) - 10 log10(P_est + eps))^2),

    P = ``stft_magnitude``^2 (0 dBFS = a full-scale sine), eps = 1e-10 a floor at -100 dBFS.
    Identical signals give 0, est = 2 ref gives 20 log10 2 = 6.02 dB. Defaults: 64 ms windows, 16 ms hop at 8 kHz.
    """
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {tuple(ref.shape)} and {tuple(est.shape)}")
    P_ref, P_est = stft_magnitude(ref, n_fft, hop) ** 2, stft_magnitude(est, n_fft, hop) ** 2
    lsd = (10 * torch.log10(P_ref + eps) - 10 * torch.log10(P_est + eps)).pow(2).mean(-2).sqrt().mean(-1)
    return lsd.flatten(1).mean(1) if lsd.ndim > 1 else lsd  # [N, 1] -> [N]
