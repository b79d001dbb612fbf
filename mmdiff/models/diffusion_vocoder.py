"""A diffusion vocoder on mmdiff's core: DiffWave (Kong et al. 2021) with the project's own pieces.

The waveform [B, 1, T] (by default its whitened form y, below) is the diffused variable and the model-space
log-mel [B, 1, n_mels, F] the condition, with T = hop * (F - 1) as ``LogMel.decode`` gives it:

- the network (:class:`MelConditionedUNet`) is EDM's raw F (Karras et al. 2022, Eq. 7): the 1-D U-Net of
  mmdiff.models.unet with the log-mel as ``n_mels`` extra input channels, upsampled to the sample rate by
  :func:`upsample_frames` (sample t takes the frame centred nearest to it, as LogMel's centred STFT places
  frame k on sample k * hop: each frame drives its own hop of samples). DiffWave upsamples with learned
  transposed convolutions; here the U-Net's first convolution, over patches of samples, does that work;
- it is wrapped in one of the core's parametrizations (mmdiff.core.precond.PRECONDS) and trained with the
  core's loss, as mode=train trains a generator (mmdiff.tasks.train_vocoder);
- optionally (``shaping_floor_db``) the diffused variable is not the waveform w but y = S^-1(w), with S a filter
  that gives white noise the spectral envelope the log-mel implies (:class:`SpectralShaping`; SpecGrad,
  Koizumi et al. 2022): the noise a few-step sampler leaves in y comes out of S shaped like the sound, so an
  empty band stays empty, where white noise would fill it;
- :class:`DiffusionVocoder` decodes in a few steps of one of the core's samplers over a schedule fitted to the
  trained network (mmdiff.core.schedule_fit, as mode=fit_schedule fits one to a generator). It has Vocos's
  call, log-mel [B, 1, n_mels, F] -> waveform [B, 1, hop * (F - 1)], so ``LogMel.decode`` runs either kind.
  Every clip starts from the noise of one generator seeded with ``decoding["seed"]``: the same log-mel gives
  the same waveform, whatever batch it is decoded in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.guidance import CFGDenoiser
from ..core.precond import PRECONDS
from ..core.samplers import SAMPLERS, randn_like
from ..core.schedule_fit import FitResult, fit_schedule
from .mel_spectrum import mel_to_linear
from .unet import UNet


def upsample_frames(mel: Tensor, hop_length: int, length: int) -> Tensor:
    """Model-space log-mel [B, 1, n_mels, F] -> [B, n_mels, length], one frame per sample: sample t takes frame
    round(t / hop) (halves rounded up; the last frame past the end), the frame whose centre k * hop is nearest.
    So frame k drives samples k * hop - hop // 2 ... k * hop + hop // 2 - 1 (the first and last frames half a
    hop at the ends of hop * (F - 1) samples)."""
    frame = ((torch.arange(length, device=mel.device) + hop_length // 2) // hop_length).clamp(max=mel.shape[-1] - 1)
    return mel[:, 0, :, frame]


class MelConditionedUNet(nn.Module):
    """EDM's F for waveforms: x [B, 1, T], c_noise [B], labels (unused), mel [B, 1, n_mels, F] with
    T = hop * (F - 1) -> [B, 1, T].

    ``unet`` holds the U-Net's options (conf/config.yaml's ``train_vocoder.diffusion.net``); its input is x
    and the upsampled log-mel (:func:`upsample_frames`) as ``n_mels`` extra channels. T need not be a multiple
    of the U-Net's total down-sampling: the input is zero-padded at the end to one (the log-mel's last frame
    going on), and the output cut back to T."""

    def __init__(self, n_mels: int, hop_length: int, **unet):
        super().__init__()
        self.hop_length = hop_length
        self.unet = UNet(dims=1, in_channels=1, cond_channels=n_mels, **unet)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None, mel: Tensor | None = None) -> Tensor:
        T = x.shape[-1]
        total = self.unet.total_downsampling
        padded = -(-T // total) * total
        cond = upsample_frames(mel, self.hop_length, padded).to(x.dtype)
        h = self.unet(F.pad(x, (0, padded - T)), c_noise, None, cond=cond)
        return h[..., :T]


class SpectralShaping(nn.Module):
    """The filter S(y) = istft(g * stft(y)) and its inverse S^-1(w) = istft(stft(w) / g), waveforms [B, 1, T]
    with T = hop * (F - 1), for the gain g [B, n_fft // 2 + 1, F] a model-space log-mel [B, 1, n_mels, F] implies.

    g is the STFT magnitude the log-mel describes (:func:`mel_to_linear`; the same centred Hann STFT as LogMel's,
    so STFT frame k is mel frame k), floored at ``floor_db`` below a full-scale sine's peak bin (n_fft / 4), and
    divided by sqrt(sum of the squared window): white noise of unit variance has that expected magnitude in every
    bin, so a waveform whose spectrum is g becomes y of std about 0.5 (the built-in notes: 0.52 at -100 dB).
    A gain that changes between frames makes S S^-1 the identity only approximately (the modified STFT is not
    quite an STFT): on the notes, w and S(S^-1(w)) differ by 5 % in RMS and 1 dB in log-spectral distance."""

    def __init__(self, mel: dict, floor_db: float):
        super().__init__()
        self.n_fft, self.hop_length = mel["n_fft"], mel["hop_length"]
        W, b = mel_to_linear(mel)
        window = torch.hann_window(self.n_fft)
        self.register_buffer("W", W, persistent=False)
        self.register_buffer("b", b, persistent=False)
        self.register_buffer("window", window, persistent=False)
        self.log_floor = math.log(self.n_fft / 4) + floor_db / 20 * math.log(10)
        self.log_norm = 0.5 * math.log(float(window.square().sum()))

    def gain(self, mel: Tensor) -> Tensor:
        """g [B, n_fft // 2 + 1, F] for the log-mel [B, 1, n_mels, F]."""
        log_magnitude = torch.einsum("km,bmf->bkf", self.W, mel[:, 0]) + self.b[:, None]
        return (log_magnitude.clamp(min=self.log_floor) - self.log_norm).exp()

    def filter(self, wave: Tensor, gain: Tensor) -> Tensor:
        """istft(gain * stft(wave)): [B, 1, T] -> [B, 1, T]."""
        window = self.window.to(wave.dtype)
        S = torch.stft(wave[:, 0], self.n_fft, self.hop_length, window=window, center=True, return_complex=True)
        out = torch.istft(S * gain, self.n_fft, self.hop_length, window=window, center=True, length=wave.shape[-1])
        return out[:, None]

    def shape(self, y: Tensor, mel: Tensor) -> Tensor:
        """S(y): the diffused variable -> the waveform."""
        return self.filter(y, self.gain(mel))

    def whiten(self, wave: Tensor, mel: Tensor) -> Tensor:
        """S^-1(w): the waveform -> the diffused variable."""
        return self.filter(wave, 1 / self.gain(mel))


class DiffusionVocoder(nn.Module):
    """Model-space log-mel [B, 1, n_mels, F] -> waveform [B, 1, hop_length * (F - 1)], by diffusion.

    ``mel``: the LogMel settings it decodes (mmdiff.models.vocoder.MEL_KEYS); ``net``: the U-Net's options;
    ``precond`` (a name in mmdiff.core.precond.PRECONDS) and ``sigma_data``: the parametrization;
    ``shaping_floor_db``: diffuse y = S^-1(w) (:class:`SpectralShaping`, with that floor), or None: w itself;
    ``decoding``: how :meth:`forward` samples: {"sampler": a name in SAMPLERS, "options": its options,
    "sigmas": the decreasing levels ending in 0, "seed": the seed of every clip's noise}. The decoding is
    data, not architecture: training sets it after fitting the schedule (:meth:`fit_schedule`), and the
    vocoder's file keeps it beside the weights."""

    kind = "diffusion"

    def __init__(self, mel: dict, *, net: dict, precond: str, sigma_data: float, shaping_floor_db: float | None,
                 decoding: dict):
        super().__init__()
        self.hop_length = mel["hop_length"]
        self.architecture = {"net": dict(net), "precond": precond, "sigma_data": float(sigma_data),
                             "shaping_floor_db": shaping_floor_db}
        self.denoiser = PRECONDS[precond](MelConditionedUNet(mel["n_mels"], mel["hop_length"], **net), sigma_data)
        self.shaping = None if shaping_floor_db is None else SpectralShaping(mel, float(shaping_floor_db))
        self.decoding = dict(decoding)

    def whiten(self, wave: Tensor, mel: Tensor) -> Tensor:
        """The waveform [B, 1, T] -> the diffused variable (itself without shaping)."""
        return wave if self.shaping is None else self.shaping.whiten(wave, mel)

    def shape(self, y: Tensor, mel: Tensor) -> Tensor:
        """The diffused variable [B, 1, T] -> the waveform (itself without shaping)."""
        return y if self.shaping is None else self.shaping.shape(y, mel)

    def bind(self, mel: Tensor) -> CFGDenoiser:
        """The ``denoiser(x, sigma)`` the samplers call, with the log-mel ``mel`` [B, 1, n_mels, F] bound in."""
        return CFGDenoiser(self.denoiser, None, conditions={"mel": mel})

    def forward(self, mel: Tensor) -> Tensor:
        d = self.decoding
        sigmas = torch.tensor(d["sigmas"], dtype=torch.float64, device=mel.device)
        gens = [torch.Generator().manual_seed(int(d["seed"])) for _ in range(len(mel))]
        x = randn_like(mel.new_empty(len(mel), 1, self.hop_length * (mel.shape[-1] - 1)), gens) * sigmas[0]
        return self.shape(SAMPLERS[d["sampler"]](self.bind(mel), x, sigmas, generator=gens, **d["options"]), mel)

    @torch.no_grad()
    def fit_schedule(self, mel: Tensor, held_out: Tensor | None = None, *, floor: float, seed: int = 0,
                     **options) -> FitResult:
        """Fit the levels of ``decoding["sigmas"]`` for ``decoding["sampler"]`` to this network (the deterministic
        form of the sampler; mmdiff.core.schedule_fit) on the log-mels ``mel`` [n, 1, n_mels, F] from seeded
        noises, scored before and after on ``held_out`` log-mels too, and keep them in ``decoding``. ``options``:
        reference_steps, sweeps, iters (mmdiff.core.schedule_fit.fit_schedule's)."""
        gen = torch.Generator().manual_seed(seed)

        def problem(m: Tensor):
            noise = torch.randn(len(m), 1, self.hop_length * (m.shape[-1] - 1), generator=gen).to(m.device)
            return self.bind(m), noise
        start = torch.tensor(self.decoding["sigmas"], dtype=torch.float64)
        result = fit_schedule(*problem(mel), start, self.decoding["sampler"], floor=floor,
                              held_out=None if held_out is None else problem(held_out), **options)
        self.decoding["sigmas"] = result.sigmas.tolist()
        return result
