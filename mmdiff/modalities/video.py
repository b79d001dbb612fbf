"""The video modality: clips [N, C, T, H, W] (time the first spatial axis) <-> model space [-1, 1];
animated GIFs (and MP4 with the ``video`` extra), filmstrip grids, the gallery page that plays every clip,
and context frames: the frames an edit keeps."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageSequence

from ..data.video import import_av, read_video
from ..errors import UserError
from .base import Loaded, Modality
from .gallery import Cell, Shown
from .grid import grid_image, grid_rows, label_names, to_pil
from .image import ImageModality
from .media import Clip, Media

COMMENT = re.compile(rb"mmdiff frame_ms=(\d+) channels=(\d)")


class VideoModality(Modality):
    """Clips of C = 1 (grayscale) or 3 (RGB) channels; decoded data is uint8 [N, C, T, H, W]."""

    name = "video"
    unit = "clips"
    sample_suffix = "gif"
    fd_name = "fvd"
    edit_options = ("context",)
    time_unit = "frames"
    evaluator_channels = (16, 32, 64)
    evaluator_net = {"factorized": True}      # a (2+1)-D classifier
    evaluator_targets = ("direction",)        # and a motion head, where the data knows the direction

    def __init__(self, *, fps: float, mp4: bool):
        self.fps, self.mp4 = float(fps), bool(mp4)

    # --- model space ---

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """[N, C, T, H, W] in [0, 1] -> model space [-1, 1]."""
        if data.ndim != 5:
            raise ValueError(f"video must be clips [N, C, T, H, W], got shape {tuple(data.shape)}")
        return data * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> uint8 [N, C, T, H, W] on the CPU, clamped and rounded."""
        return ((x.detach().float().cpu() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)

    def axes(self, shape: Sequence[int]) -> tuple[str, ...]:
        return ("time", "height", "width")

    def time_steps(self, amount: float) -> int:
        return int(round(amount))

    # --- files ---

    def read(self, path: str | Path, shape: Sequence[int]) -> Loaded:
        """A clip file (GIF, APNG, WebP; MP4/WebM/AVI with the ``video`` extra) -> resized and centre-cropped
        like a dataset clip, resampled to ``fps`` (so the GIFs mmdiff writes come back frame for frame), its
        first T frames (held at the last frame if shorter)."""
        channels, frames, height, width = shape
        if height != width:
            raise UserError(f"this model makes {height}x{width} frames; only square frames are read")
        clip = read_video(path, frames=frames, size=height, channels=channels, fps=self.fps)[None]  # [1, C, T, H, W]
        return Loaded(self.encode(clip), (clip * 255).round().to(torch.uint8))

    def write_samples(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                      out_dir: Path) -> list[Path]:
        """sample_00000.gif ... (and .mp4 with ``mp4``), grid.png (a filmstrip: a row per clip, frames left to
        right) with grid.gif (the clips playing side by side), and index.html, the gallery page that plays every
        clip beside its label (:meth:`write_gallery`). Returns the paths written, index.html last."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, clip in enumerate(data):
            paths.append(write_gif(clip, out_dir / f"sample_{i:05d}.gif", self.fps))
            if self.mp4:
                paths.append(write_mp4(clip, out_dir / f"sample_{i:05d}.mp4", self.fps))
        grid = self.write_grid(data, labels, class_names, out_dir / "grid.png")
        paths += [grid, grid.with_suffix(".gif")]
        return paths + [self.write_gallery(out_dir, len(data), labels, class_names)]

    def write_grid(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                   path: Path) -> Path:
        """A filmstrip PNG at ``path``: a row per clip in grid order (by class when labelled), its frames as
        columns, the row labelled with the clip's class (and number); beside it a GIF (same name) of the grid
        of clips playing (mmdiff.modalities.grid's layout, one GIF frame per clip frame)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n, _, T = data.shape[:3]
        order = [i for _, members in grid_rows(n, labels, class_names) for i in members]
        names = label_names(labels, class_names, n) or [str(i) for i in range(n)]
        strip = data[order].transpose(1, 2).reshape(n * T, data.shape[1], *data.shape[3:])   # clip by clip
        rows = torch.arange(n).repeat_interleave(T)
        grid_image(strip, rows, [f"{names[i]} ({i})" for i in order]).save(path)
        pages = [grid_image(data[:, :, t], labels, class_names) for t in range(T)]
        _save_gif(pages, path.with_suffix(".gif"), self.fps)
        return path

    def media(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None) -> list[Media]:
        """The grid of clips playing (a row per class, labelled), as one clip named "grid"."""
        pages = [np.asarray(grid_image(data[:, :, t], labels, class_names)) for t in range(data.shape[2])]
        frames = np.stack([p.reshape(*p.shape[:2], -1) for p in pages])
        return [Clip("grid", frames, self.fps)]

    def gallery_cells(self, n: int, labels: torch.Tensor | None,
                      class_names: list[str] | None) -> tuple[list[Shown], list[Cell]]:
        """grid.gif (every clip playing); a cell per clip: its GIF (and its MP4 with ``mp4``)."""
        names = label_names(labels, class_names, n)
        cells = [Cell(i, names[i] if names else None,
                      (Shown("image", f"sample_{i:05d}.gif", f"clip {i}"),
                       *([Shown("video", f"sample_{i:05d}.mp4", f"clip {i}")] if self.mp4 else [])))
                 for i in range(n)]
        return [Shown("image", "grid.gif", "Every clip playing" + (", a row per class" if names else ""))], cells

    def read_samples(self, paths: Sequence[Path]) -> torch.Tensor:
        """GIFs written by :meth:`write_samples` -> uint8 [N, C, T, H, W] (C: 1 for grayscale, 3 for colour)."""
        clips = [read_gif(p) for p in paths]
        shapes = sorted({tuple(c.shape) for c in clips})
        if len(shapes) > 1:
            raise UserError(f"the clips in {Path(paths[0]).parent} differ in size, length or colour: {shapes}")
        return torch.stack(clips)

    # --- editing ---

    def edit_mask(self, options: dict[str, Any], shape: Sequence[int]) -> torch.Tensor | None:
        """``context``: the frames of the clip to keep (indices; negative ones count from the end); the rest
        is generated: ``[0,1,2,3]`` predicts from the first four frames, ``[0,-1]`` interpolates."""
        if "context" not in options:
            return None
        T = shape[1]
        frames = options["context"]
        frames = [frames] if isinstance(frames, int) else list(frames)
        valid = all(isinstance(f, int) and not isinstance(f, bool) and -T <= f < T for f in frames)
        known = sorted({f % T for f in frames}) if valid else []
        if not known or len(known) == T:
            raise UserError(f"context={frames} must name some, not all, of the clip's {T} frames by index "
                            f"(0 to {T - 1}, or -1 for the last)")
        keep = torch.zeros(1, T, 1, 1, dtype=torch.bool)
        keep[0, known] = True
        return keep

    # --- evaluation ---

    def eval_data(self, data: torch.Tensor, reference_shape: Sequence[int]) -> torch.Tensor:
        """uint8 clips / 255, the shape checked against the real clips."""
        return super().eval_data(data.float() / 255.0 if data.dtype == torch.uint8 else data, reference_shape)

    def frames(self, data: torch.Tensor) -> tuple[torch.Tensor, Modality]:
        """[N, C, T, H, W] -> every frame as an image [N * T, C, H, W] (clip by clip), and the image modality."""
        return data.transpose(1, 2).reshape(-1, data.shape[1], *data.shape[3:]), ImageModality()

    def statistics(self, data: torch.Tensor) -> dict[str, torch.Tensor]:
        """Motion, per clip [N]: ``speed``, the mean distance (pixels per frame) that the frames' centre of
        brightness moves; ``change``, the mean absolute difference of consecutive frames (flicker and motion)."""
        w = data.float().mean(1)                                            # [N, T, H, W]
        mass = w.sum((2, 3)).clamp(min=1e-6)
        ys = torch.arange(w.shape[2], dtype=w.dtype)
        xs = torch.arange(w.shape[3], dtype=w.dtype)
        cy, cx = (w.sum(3) * ys).sum(2) / mass, (w.sum(2) * xs).sum(2) / mass  # [N, T]
        speed = (cy.diff(dim=1) ** 2 + cx.diff(dim=1) ** 2).sqrt().mean(1)
        change = (data[:, :, 1:] - data[:, :, :-1]).abs().float().flatten(1).mean(1)
        return {"speed": speed, "change": change}


# --- files --------------------------------------------------------------------------------------------

def _frames(clip: torch.Tensor) -> list[Image.Image]:
    """uint8 [C, T, H, W] -> T Pillow images (L or RGB)."""
    return [to_pil(clip[:, t].permute(1, 2, 0).numpy()) for t in range(clip.shape[1])]


def _save_gif(images: list[Image.Image], path: Path, fps: float) -> Path:
    """An animated GIF, looping, durations in whole centiseconds, with a comment naming the frame duration and
    the channels: Pillow merges identical consecutive frames (adding their durations), and :func:`read_gif`
    expands them back."""
    ms = max(10, round(1000 / fps / 10) * 10)
    channels = 1 if images[0].mode == "L" else 3
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms, loop=0,
                   comment=f"mmdiff frame_ms={ms} channels={channels}".encode())
    return path


def write_gif(clip: torch.Tensor, path: Path, fps: float) -> Path:
    """uint8 [C, T, H, W] -> an animated GIF: exact for grayscale (256 grey levels); colour is quantised to
    the GIF palette's 256 colours."""
    return _save_gif(_frames(clip), path, fps)


def read_gif(path: Path) -> torch.Tensor:
    """A GIF written by :func:`write_gif` -> uint8 [C, T, H, W], merged frames expanded by their durations."""
    try:
        with Image.open(path) as im:
            m = COMMENT.search(im.info.get("comment", b""))
            frame_ms, channels = (int(m[1]), int(m[2])) if m else (None, None)
            frames, modes = [], set()
            for frame in ImageSequence.Iterator(im):
                rgb = frame.convert("RGB")
                repeat = max(1, round(frame.info.get("duration", frame_ms or 1) / frame_ms)) if frame_ms else 1
                frames += [np.asarray(rgb)] * repeat
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}): delete it or sample again") from None
    a = np.stack(frames)                                                   # [T, H, W, 3]
    if channels is None:  # not written by mmdiff: grey if every pixel is
        channels = 1 if bool((a == a[..., :1]).all()) else 3
    return torch.from_numpy(a[..., :channels]).permute(3, 0, 1, 2).contiguous()


def write_mp4(clip: torch.Tensor, path: Path, fps: float) -> Path:
    """uint8 [C, T, H, W] -> an H.264 MP4 (yuv420p, playable in browsers) through PyAV (the ``video`` extra)."""
    av = import_av()
    frames = clip.permute(1, 2, 3, 0).numpy()                              # [T, H, W, C]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p wants even sizes
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
