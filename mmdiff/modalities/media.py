"""What a preview is, as data: pictures, sounds and clips that loggers render without knowing the modality.

A modality turns decoded samples into a list of these (:meth:`mmdiff.modalities.base.Modality.media`);
mmdiff.loggers writes each kind the way its backend shows it (TensorBoard: an image, an audio clip, an
animated GIF; Weights & Biases: wandb.Image, wandb.Audio, wandb.Video). ``name`` is the item's tag under
the logger's prefix (e.g. ``preview/grid``): stable from one preview to the next, so that a backend shows
one series per name.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Picture:
    """An image: ``pixels`` uint8 [H, W, C], C = 1 (grayscale) or 3 (RGB)."""

    name: str
    pixels: np.ndarray


@dataclass(frozen=True)
class Sound:
    """An audio clip: ``wave`` float32 [T] in [-1, 1] at ``sample_rate`` Hz, with a picture of it (its
    spectrogram, uint8 [H, W, C]) or None."""

    name: str
    wave: np.ndarray
    sample_rate: int
    picture: np.ndarray | None = None


@dataclass(frozen=True)
class Clip:
    """A video: ``frames`` uint8 [T, H, W, C] (C = 1 or 3) played at ``fps`` frames per second."""

    name: str
    frames: np.ndarray
    fps: float

    def gif(self) -> bytes:
        """The clip as an animated GIF (looping; exact for grayscale, colour quantised to 256 colours)."""
        mode = "L" if self.frames.shape[-1] == 1 else "RGB"
        images = [Image.fromarray(f[..., 0] if mode == "L" else f, mode) for f in self.frames]
        buffer = io.BytesIO()
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=max(10, round(1000 / self.fps / 10) * 10))
        return buffer.getvalue()


Media = Picture | Sound | Clip
