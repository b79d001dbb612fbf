"""The audio modality: waveforms <-> model space (through a representation of ``spectral.py``), WAV files,
spectrogram images, the gallery page to listen to samples in a browser, and gap editing that keeps the
untouched audio bit for bit."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn
from torchaudio import transforms

from ..core.editing import gap_mask
from ..data.audio import PEAK, SILENCE, read_audio
from ..errors import UserError
from ..models.vocoder import MEL_KEYS, load_vocoder
from .base import Loaded, Modality, pad_or_crop
from .gallery import Cell, Shown
from .grid import grid_image, grid_rows, label_names
from .media import Media, Picture, Sound
from .spectral import REPRESENTATIONS, LogMel, stft_magnitude

SPEC_N_FFT = 254      # spectrogram images: 128 frequency rows
SPEC_HOP = 64         # ... and a column per 64 samples (8 ms at 8 kHz),
SPEC_MAX_COLUMNS = 256  # or fewer columns (a longer hop) for long clips
DB_RANGE = (-80.0, 0.0)  # colour range in dBFS: 0 dB is a full-scale sine
GAP_SECONDS = 0.25    # silence between the samples of a preview WAV
CROSSFADE_SECONDS = 0.005  # edits fade from the kept audio into the regenerated audio over this long
PNG_INCHES, PNG_DPI = (4, 2.5), 80


class AudioModality(Modality):
    """Mono audio at ``sample_rate`` Hz; decoded data is float waveforms [N, 1, T] in [-1, 1].

    ``representation`` names the model space (``spectral.REPRESENTATIONS``: waveform, stft, mel);
    ``options[representation]`` goes to its constructor (e.g. n_fft, hop_length, scale), with
    ``pad_to`` (the multiple the time axis is padded to) added. ``spectrogram`` is the representation
    a 2-D model gets when the config says ``representation: auto`` (see :meth:`resolve_config`). Every
    argument comes from conf/modality/audio.yaml: no defaults here."""

    name = "audio"
    unit = "clips"
    sample_suffix = "wav"
    fd_name = "fad"
    edit_options = ("gap",)
    time_unit = "s"
    evaluator_channels = (16, 32, 64, 128)
    decoder_file = "vocoder.safetensors"

    def __init__(self, *, sample_rate: int, representation: str, spectrogram: str, pad_to: int | str,
                 options: dict):
        if representation not in REPRESENTATIONS:
            raise UserError(f"modality.representation={representation} is unknown: use one of "
                            f"{', '.join(REPRESENTATIONS)}")
        if pad_to == "auto":
            raise UserError("modality.pad_to=auto is filled in from the model by mmdiff.build: build the modality "
                            "with mmdiff.build.build_modality, or give a number")
        cls = REPRESENTATIONS[representation]
        options = dict((options or {}).get(representation) or {})
        options["pad_to"] = int(pad_to)
        valid = set(inspect.signature(cls).parameters) - {"sample_rate"}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise UserError(f"modality.options.{representation}.{unknown[0]} is not an option of the "
                            f"{representation} representation: use {', '.join(sorted(valid))}")
        if "sample_rate" in inspect.signature(cls).parameters:
            options["sample_rate"] = sample_rate
        try:
            self.representation = cls(**options)
        except ValueError as e:
            raise UserError(f"bad modality options for representation={representation}: {e}") from None
        self.sample_rate, self.representation_name = sample_rate, representation

    @classmethod
    def resolve_config(cls, cfg: dict, model: dict) -> dict:
        """``representation: auto``: waveform for a 1-D model, ``spectrogram`` otherwise; ``pad_to: auto``:
        the model's total down-sampling, so that the padded data fits the U-Net."""
        cfg = dict(cfg)
        if cfg.get("representation") == "auto":
            cfg["representation"] = "waveform" if model.get("dims") == 1 else cfg["spectrogram"]
        if cfg.get("pad_to") == "auto":
            cfg["pad_to"] = model["total_downsampling"]
        return cfg

    # --- model space ---

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Waveforms [N, 1, T] -> model space (zero-padded to T' = representation.padded_length(T))."""
        if data.ndim != 3 or data.shape[1] != 1:
            raise ValueError(f"audio must be mono waveforms [N, 1, T], got shape {tuple(data.shape)}")
        return self.representation.encode(data.float())

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> float32 waveforms [N, 1, T'] on the CPU, clamped to [-1, 1]."""
        return self.representation.decode(x.detach().float()).clamp(-1, 1).cpu()

    def axes(self, shape: Sequence[int]) -> tuple[str, ...]:
        return ("time",) if len(shape) == 2 else ("frequency", "time")

    def time_steps(self, amount: float) -> int:
        """How many steps of the model space's time axis (its last dim) ``amount`` seconds take."""
        return round(amount * self.sample_rate / self.representation.samples_per_step)

    # --- the learned decoder: a vocoder (mmdiff.models.vocoder) instead of Griffin-Lim ---

    def decoder_settings(self) -> dict:
        """The log-mel settings a vocoder of this model space is trained for (``LogMel.settings``); a UserError for
        the waveform and STFT representations, which decode exactly."""
        if not isinstance(self.representation, LogMel):
            raise UserError(f"a vocoder decodes log-mel spectrograms, and this audio model space is the "
                            f"{self.representation_name} representation, which decodes exactly: drop vocoder=, or "
                            "train on log-mels (modality.spectrogram=mel, the default)")
        return self.representation.settings

    def use_decoder(self, path: str | Path | None) -> None:
        """Decode log-mels with the vocoder in ``path`` (written by mode=train_vocoder) instead of Griffin-Lim
        (None: with Griffin-Lim again); one trained for other mel settings or another sample rate is a UserError
        naming both."""
        if path is None:
            if isinstance(self.representation, LogMel):
                self.representation.vocoder = None
            return
        wanted = self.decoder_settings()
        found = load_vocoder(path)
        differ = [k for k in MEL_KEYS if found.mel.get(k) != wanted[k]]
        if differ:
            theirs = ", ".join(f"{k}={found.mel.get(k)}" for k in differ)
            mine = ", ".join(f"{k}={wanted[k]}" for k in differ)
            raise UserError(f"vocoder {path} was trained for log-mels with {theirs}, but this model's have {mine}: "
                            "train a vocoder for this model's data (python -m mmdiff mode=train_vocoder with the "
                            "model's dataset and modality options), or drop vocoder= to decode with Griffin-Lim")
        self.representation.vocoder = found.net

    def decoder_hint(self) -> str | None:
        """For log-mel decoded by Griffin-Lim: how to get a vocoder, which sounds better."""
        if isinstance(self.representation, LogMel) and self.representation.vocoder is None:
            return ("decoding log-mels with Griffin-Lim, which only estimates the phase: a learned vocoder sounds "
                    "better. Train one with `python -m mmdiff mode=train_vocoder` (the model's dataset options), then "
                    "pass vocoder=PATH or put its vocoder.safetensors beside the checkpoint")
        return None

    # --- files ---

    def read(self, path: str | Path, shape: Sequence[int]) -> Loaded:
        """An audio file -> mixed to mono, resampled, cut or zero-padded to the length that encodes to
        ``shape``; the model sees it peak-normalised like the datasets (``gain``), ``data`` keeps it as it was."""
        wave = read_audio(path, self.sample_rate, self.representation.waveform_length(shape[-1]), normalize="none")
        peak = float(wave.abs().max())
        gain = PEAK / peak if peak >= SILENCE else 1.0
        return Loaded(self.encode((wave * gain)[None]), wave[None], gain)

    def write_samples(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                      out_dir: Path) -> list[Path]:
        """In ``out_dir`` (created): sample_00000.wav (PCM 16-bit) and sample_00000.png (its spectrogram)
        per sample in batch order, grid.png and grid.wav (:meth:`write_grid`) and index.html, the gallery page
        (:meth:`write_gallery`): every sample with a player and its spectrogram. Returns the paths written,
        index.html last."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        waves = data[:, 0]
        names = label_names(labels, class_names, len(waves))
        paths = []
        for i, wave in enumerate(waves):
            wav, png = out_dir / f"sample_{i:05d}.wav", out_dir / f"sample_{i:05d}.png"
            sf.write(wav, wave.numpy(), self.sample_rate, subtype="PCM_16")
            title = f"sample {i}" + (f": {names[i]}" if names else "")
            self._plot_spectrogram(wave, title, png)
            paths += [wav, png]
        grid = self.write_grid(data, labels, class_names, out_dir / "grid.png")
        paths += [grid, grid.with_suffix(".wav")]
        return paths + [self.write_gallery(out_dir, len(waves), labels, class_names)]

    def write_grid(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                   path: Path) -> Path:
        """A grid of spectrogram images at ``path`` (mmdiff.modalities.grid: a row per class, labelled),
        and beside it a WAV (same name, .wav) of all samples in grid order (row by row), GAP_SECONDS of
        silence apart. Returns the PNG's path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        waves = data[:, 0]
        grid_image(torch.stack([self.spectrogram_image(w) for w in waves]), labels, class_names).save(path)
        order = [i for _, members in grid_rows(len(waves), labels, class_names) for i in members]
        gap = torch.zeros(round(GAP_SECONDS * self.sample_rate))
        parts = [p for i in order for p in (gap, waves[i])][1:]  # the gaps go between samples only
        sf.write(path.with_suffix(".wav"), torch.cat(parts).numpy(), self.sample_rate, subtype="PCM_16")
        return path

    def media(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None) -> list[Media]:
        """The grid of spectrograms as a picture named "spectrograms", then each sample as a sound with its
        spectrogram, named by its index and class (``03_pluck``)."""
        waves = data[:, 0].float()
        names = label_names(labels, class_names, len(waves))
        pictures = [self.spectrogram_image(w) for w in waves]
        grid = np.asarray(grid_image(torch.stack(pictures), labels, class_names))
        sounds = [Sound(f"{i:02d}" + (f"_{_tag(names[i])}" if names else ""), w.numpy(), self.sample_rate,
                        p.permute(1, 2, 0).numpy()) for i, (w, p) in enumerate(zip(waves, pictures))]
        return [Picture("spectrograms", grid.reshape(*grid.shape[:2], -1)), *sounds]

    def gallery_cells(self, n: int, labels: torch.Tensor | None,
                      class_names: list[str] | None) -> tuple[list[Shown], list[Cell]]:
        """grid.png (the spectrograms, a row per class) and grid.wav (every sample in grid order); a cell per
        sample: its player and its spectrogram."""
        names = label_names(labels, class_names, n)
        cells = [Cell(i, names[i] if names else None,
                      (Shown("audio", f"sample_{i:05d}.wav", f"sample {i}"),
                       Shown("image", f"sample_{i:05d}.png", f"spectrogram of sample {i}")))
                 for i in range(n)]
        overview = [Shown("image", "grid.png", "Spectrograms of all samples" + (", a row per class" if names else "")),
                    Shown("audio", "grid.wav", "All samples in grid order")]
        return overview, cells

    def read_samples(self, paths: Sequence[Path]) -> torch.Tensor:
        """WAVs at this sample rate -> [N, 1, T] (mixed to mono; shorter ones zero-padded to the longest)."""
        items = []
        for p in paths:
            try:
                wave, rate = sf.read(p, dtype="float32", always_2d=True)
            except (OSError, RuntimeError, ValueError) as e:
                raise UserError(f"{p} is unreadable ({e}): delete it or sample again") from None
            if rate != self.sample_rate:
                raise UserError(f"{p} is at {rate} Hz but the model's data is at {self.sample_rate} Hz")
            items.append(torch.from_numpy(wave.mean(axis=1)))
        T = max(len(w) for w in items)
        return torch.stack([pad_or_crop(w, T) for w in items])[:, None]

    # --- editing ---

    def edit_mask(self, options: dict[str, Any], shape: Sequence[int]) -> torch.Tensor | None:
        """``gap``: [start, stop] seconds to regenerate, rounded inwards to whole steps of the model space's
        time axis (frames of a spectrogram), so that everything outside the requested gap is kept."""
        if "gap" not in options:
            return None
        a, b = (float(v) for v in options["gap"])
        per_second = self.sample_rate / self.representation.samples_per_step
        start, stop = math.ceil(a * per_second - 1e-9), math.floor(b * per_second + 1e-9)
        seconds = shape[-1] / per_second
        if not 0 <= a < b <= seconds + 1e-9 or start >= stop:
            raise UserError(f"gap={[a, b]} is not a span inside the clip (0 to {seconds:.3f} s, at least "
                            f"{1 / per_second * 1000:.1f} ms long): give gap=[start,stop] in seconds")
        return gap_mask(shape, start, stop)

    def restore(self, edited: torch.Tensor, original: Loaded, keep: torch.Tensor) -> torch.Tensor:
        """Undo the input's loudness normalisation, then put the original samples back wherever ``keep``
        (a mask over the model space's time axis) keeps them, bit for bit, with a CROSSFADE_SECONDS linear
        crossfade inside the regenerated part at each border (only where the original has samples)."""
        waves = edited / original.gain
        T = waves.shape[-1]
        hop = self.representation.samples_per_step
        frames = keep.reshape(-1, keep.shape[-1]).all(dim=0).cpu()
        kept = pad_or_crop(frames.repeat_interleave(hop).float(), T) > 0
        source = pad_or_crop(original.data.to(waves.dtype), T)
        kept &= torch.arange(T) < original.data.shape[-1]
        weight = kept.float()
        n = max(1, round(CROSSFADE_SECONDS * self.sample_rate))
        for k in range(1, n + 1):  # linear ramp from the kept samples into the regenerated ones
            near = torch.zeros_like(kept)
            near[k:] |= kept[:-k]
            near[:-k] |= kept[k:]
            weight = torch.maximum(weight, near.float() * (1 - k / (n + 1)))
        blended = weight * source + (1 - weight) * waves
        return torch.where(kept, source, blended).clamp(-1, 1)

    # --- evaluation ---

    def eval_data(self, data: torch.Tensor, reference_shape: Sequence[int]) -> torch.Tensor:
        """Mono waveforms, cropped or zero-padded at the end to the real clips' length (representations pad
        the time axis)."""
        if data.ndim != 3 or data.shape[1] != 1:
            raise UserError(f"audio samples must be mono waveforms [N, 1, T], got shape {list(data.shape)}")
        return pad_or_crop(data.float(), reference_shape[-1])

    def evaluator_frontend(self, config: dict | None = None) -> tuple[dict, nn.Module]:
        """Waveforms [N, 1, T] -> log(mel + eps) [N, 1, n_mels, frames] (:func:`mel_settings`), so that one
        2-D classifier serves audio whatever representation the diffusion model used."""
        config = dict(config) if config else mel_settings(self.sample_rate)
        return config, LogMelFrontend(config)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A circular shift of the spectrogram along time by up to 1/8 of its frames."""
        shift = int(torch.randint(-(x.shape[-1] // 8), x.shape[-1] // 8 + 1, (1,), generator=generator))
        return torch.roll(x, shift, dims=-1)

    # --- pictures of sound ---

    def spectrogram_image(self, wave: torch.Tensor) -> torch.Tensor:
        """A waveform [T] or [1, T] -> uint8 RGB [3, 128, frames]: dBFS magnitudes of a 254-sample
        Hann STFT in DB_RANGE through the magma colormap, low frequencies at the bottom."""
        db = _spectrogram_db(wave.reshape(-1))
        level = ((db - DB_RANGE[0]) / (DB_RANGE[1] - DB_RANGE[0])).clamp(0, 1).flip(0)
        lut = torch.from_numpy((colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8))
        return lut[(level * 255).round().long()].permute(2, 0, 1).contiguous()

    def _plot_spectrogram(self, wave: torch.Tensor, title: str, path: Path) -> None:
        """A PNG of the spectrogram with axes in s and Hz and a dB colour bar (matplotlib, Agg canvas)."""
        fig = Figure(figsize=PNG_INCHES, layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(_spectrogram_db(wave).numpy(), origin="lower", aspect="auto", cmap="magma",
                       vmin=DB_RANGE[0], vmax=DB_RANGE[1],
                       extent=(0, len(wave) / self.sample_rate, 0, self.sample_rate / 2))
        ax.set(xlabel="time (s)", ylabel="frequency (Hz)", title=title)
        fig.colorbar(im, ax=ax, label="dBFS")
        fig.savefig(path, dpi=PNG_DPI)


def mel_settings(sample_rate: int) -> dict:
    """The evaluator's log-mel parameters for audio at ``sample_rate`` Hz: a ~64 ms Hann window (n_fft the
    nearest power of two: 512 at 8 kHz, 1024 at 16 kHz), a half-window hop, 40 mel bands up to Nyquist (a
    1 s FSDD clip -> 40 x 32: on FSDD this held out 98 % in a minute where 64 bands at a quarter-window hop
    gave 92 % in three, measured on a shared 2-core machine)."""
    n_fft = 2 ** round(math.log2(0.064 * sample_rate))
    return {"sample_rate": int(sample_rate), "n_fft": n_fft, "hop_length": n_fft // 2, "n_mels": 40,
            "f_min": 0.0, "f_max": sample_rate / 2, "log_eps": 1e-3}


class LogMelFrontend(nn.Module):
    """Waveforms [N, 1, T] -> log(mel + log_eps) [N, 1, n_mels, frames] (torchaudio, power 1, centred)."""

    def __init__(self, settings: dict):
        super().__init__()
        m = dict(settings)
        self.log_eps = m.pop("log_eps")
        self.mel = transforms.MelSpectrogram(m.pop("sample_rate"), power=1.0, center=True, **m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel.to(x.device)(x.float()[:, 0]) + self.log_eps)[:, None]


def _spectrogram_db(wave: torch.Tensor) -> torch.Tensor:
    """[T] -> dBFS magnitudes [128, frames] for the images (hop SPEC_HOP, longer for long clips)."""
    hop = max(SPEC_HOP, math.ceil(len(wave) / SPEC_MAX_COLUMNS))
    return 20 * torch.log10(stft_magnitude(wave.float(), SPEC_N_FFT, hop) + 1e-10)


def _tag(text: str) -> str:
    """A class name as part of a logger's tag: letters, digits, - and _ (others become _)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
