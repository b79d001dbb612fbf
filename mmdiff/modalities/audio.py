"""The audio adapter: waveforms <-> model space (through a representation of ``spectral.py``), WAV files,
spectrogram images and an HTML page to listen to samples in a browser."""

from __future__ import annotations

import html
import inspect
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..data.audio import read_audio
from ..errors import UserError
from .image import grid_image, grid_rows
from .spectral import REPRESENTATIONS, stft_magnitude

SPEC_N_FFT = 254      # spectrogram images: 128 frequency rows
SPEC_HOP = 64         # ... and a column per 64 samples (8 ms at 8 kHz),
SPEC_MAX_COLUMNS = 256  # or fewer columns (a longer hop) for long clips
DB_RANGE = (-80.0, 0.0)  # colour range in dBFS: 0 dB is a full-scale sine
GAP_SECONDS = 0.25    # silence between the samples of a preview WAV
PNG_INCHES, PNG_DPI = (4, 2.5), 80


class AudioModality:
    """Mono audio at ``sample_rate`` Hz: waveforms [N, 1, T] in [-1, 1].

    ``representation`` names the model space (``spectral.REPRESENTATIONS``: waveform, stft, mel);
    ``options[representation]`` goes to its constructor (e.g. n_fft, hop_length, scale), with
    ``pad_to`` (the multiple the time axis is padded to) added. ``spectrogram`` is the representation
    a 2-D model gets when the config says ``representation: auto`` (resolved by ``mmdiff.build``)."""

    name = "audio"
    unit = "clips"  # throughput is logged as clips_per_s

    def __init__(self, sample_rate: int = 8000, representation: str = "stft", spectrogram: str = "stft",
                 pad_to: int | None = None, options: dict | None = None):
        if representation not in REPRESENTATIONS:
            raise UserError(f"modality.representation={representation} is unknown: use one of "
                            f"{', '.join(REPRESENTATIONS)}")
        cls = REPRESENTATIONS[representation]
        options = dict((options or {}).get(representation) or {})
        if pad_to is not None:
            options["pad_to"] = pad_to
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
        self.sample_rate = sample_rate

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Waveforms [N, 1, T] -> model space (zero-padded to T' = representation.padded_length(T))."""
        if data.ndim != 3 or data.shape[1] != 1:
            raise ValueError(f"audio must be mono waveforms [N, 1, T], got shape {tuple(data.shape)}")
        return self.representation.encode(data.float())

    def read(self, path: str | Path, shape: list[int]) -> torch.Tensor:
        """An audio file -> model space [1, *shape] (e.g. an init clip for editing): mixed to mono,
        resampled, cut or zero-padded to the length that encodes to ``shape``, peak-normalised."""
        wave = read_audio(path, self.sample_rate, self.representation.waveform_length(shape[-1]))
        return self.encode(wave[None])

    def time_steps(self, seconds: float) -> int:
        """How many steps of the model space's time axis (its last dim) ``seconds`` of audio take."""
        return round(seconds * self.sample_rate / self.representation.samples_per_step)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> float32 waveforms [N, 1, T'] on the CPU, clamped to [-1, 1]."""
        return self.representation.decode(x.detach().float()).clamp(-1, 1).cpu()

    def save_samples(self, x: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                     out_dir: str | Path) -> list[Path]:
        """In ``out_dir`` (created): sample_00000.wav (PCM 16-bit) and sample_00000.png (its spectrogram)
        per sample in batch order, grid.png and grid.wav (``save_grid``) and index.html, a page that lists
        every sample with a player and its spectrogram. ``x`` is in model space. Returns the paths
        written, index.html last."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        waves = self.decode(x)[:, 0]
        names = _class_names(labels, class_names, len(waves))
        paths = []
        for i, wave in enumerate(waves):
            wav, png = out_dir / f"sample_{i:05d}.wav", out_dir / f"sample_{i:05d}.png"
            sf.write(wav, wave.numpy(), self.sample_rate, subtype="PCM_16")
            title = f"sample {i}" + (f": {names[i]}" if names else "")
            self._plot_spectrogram(wave, title, png)
            paths += [wav, png]
        grid = self._write_grid(waves, labels, class_names, out_dir / "grid.png")
        paths += [grid, grid.with_suffix(".wav")]
        index = out_dir / "index.html"
        index.write_text(_index_html(len(waves), names, grid.name, grid.with_suffix(".wav").name), encoding="utf-8")
        return paths + [index]

    def save_grid(self, x: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                  path: str | Path) -> Path:
        """The training preview: a grid of spectrogram images at ``path`` (``image.grid_image``: a row per
        class, labelled), and beside it a WAV (same name, .wav) of all samples in grid order (row by row),
        GAP_SECONDS of silence apart. Returns the PNG's path."""
        return self._write_grid(self.decode(x)[:, 0], labels, class_names, Path(path))

    def _write_grid(self, waves: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                    path: Path) -> Path:
        """``save_grid`` for decoded waveforms [N, T']."""
        path.parent.mkdir(parents=True, exist_ok=True)
        grid_image(torch.stack([self.spectrogram_image(w) for w in waves]), labels, class_names).save(path)
        order = [i for _, members in grid_rows(len(waves), labels, class_names) for i in members]
        gap = torch.zeros(round(GAP_SECONDS * self.sample_rate))
        parts = [p for i in order for p in (gap, waves[i])][1:]  # the gaps go between samples only
        sf.write(path.with_suffix(".wav"), torch.cat(parts).numpy(), self.sample_rate, subtype="PCM_16")
        return path

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


def _spectrogram_db(wave: torch.Tensor) -> torch.Tensor:
    """[T] -> dBFS magnitudes [128, frames] for the images (hop SPEC_HOP, longer for long clips)."""
    hop = max(SPEC_HOP, math.ceil(len(wave) / SPEC_MAX_COLUMNS))
    return 20 * torch.log10(stft_magnitude(wave.float(), SPEC_N_FFT, hop) + 1e-10)


def _class_names(labels: torch.Tensor | None, class_names: list[str] | None, n: int) -> list[str] | None:
    """The class name of each sample (its index when there are no names), or None without labels."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    if len(labels) != n:
        raise ValueError(f"{n} samples but {len(labels)} labels")
    return [class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c) for c in labels]


def _index_html(n: int, names: list[str] | None, grid_png: str, grid_wav: str) -> str:
    """A self-contained page (relative links only) with the grid and a row per sample."""
    rows = "\n".join(
        f'<tr><td>{i}</td>' + (f"<td>{html.escape(names[i])}</td>" if names else "")
        + f'<td><audio controls preload="none" src="sample_{i:05d}.wav"></audio></td>'
        f'<td><img src="sample_{i:05d}.png" alt="spectrogram of sample {i}" loading="lazy"></td></tr>'
        for i in range(n))
    head = "<th>#</th>" + ("<th>class</th>" if names else "") + "<th>listen</th><th>spectrogram</th>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mmdiff: {n} audio samples</title>
<style>body {{ font-family: sans-serif; margin: 1em; }} td, th {{ padding: 2px 8px; text-align: left; }}</style>
</head>
<body>
<h1>{n} audio samples</h1>
<p><img src="{grid_png}" alt="spectrograms of all samples, a row per class"></p>
<p>All samples in grid order: <audio controls preload="none" src="{grid_wav}"></audio></p>
<table>
<tr>{head}</tr>
{rows}
</table>
</body>
</html>
"""
