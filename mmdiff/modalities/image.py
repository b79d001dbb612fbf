"""The image modality: pixels in [0, 1] <-> model space [-1, 1]; PNG files, labelled grids, a gallery page,
box and mask inpainting."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import read_image
from ..errors import UserError
from .base import Loaded, Modality
from .grid import grid_image, to_pil
from .media import Media, Picture


class ImageModality(Modality):
    """Images [N, C, H, W] with C = 1 (grayscale) or 3 (RGB); decoded data is uint8."""

    name = "image"
    unit = "images"
    sample_suffix = "png"
    edit_options = ("mask", "box")
    inception_fid = True

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [0, 1] -> model space [-1, 1]."""
        return data * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> uint8 [N, C, H, W], clamped and rounded."""
        return ((x.detach().float().cpu() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)

    def axes(self, shape: Sequence[int]) -> tuple[str, ...]:
        return ("height", "width")

    def read(self, path: str | Path, shape: Sequence[int]) -> Loaded:
        """An image file, resized and centre-cropped like a dataset image to ``shape`` [C, H, W]."""
        channels, height, width = shape
        if height != width:
            raise UserError(f"this model makes {height}x{width} images; only square images are read")
        image = read_image(path, height, channels)[None]
        return Loaded(self.encode(image), (image * 255).round().to(torch.uint8))

    def write_samples(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                      out_dir: Path) -> list[Path]:
        """One PNG per sample (sample_00000.png, ... in batch order), grid.png, and index.html (every image
        with its label: :meth:`write_gallery`, whose default cells fit these files), in that order."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, image in enumerate(data):
            path = out_dir / f"sample_{i:05d}.png"
            to_pil(image.permute(1, 2, 0).numpy()).save(path)
            paths.append(path)
        paths.append(self.write_grid(data, labels, class_names, out_dir / "grid.png"))
        return paths + [self.write_gallery(out_dir, len(data), labels, class_names)]

    def write_grid(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                   path: Path) -> Path:
        """A PNG grid (mmdiff.modalities.grid): a row per class present, labelled; else square-ish."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid_image(data, labels, class_names).save(path)
        return path

    def media(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None) -> list[Media]:
        """The labelled grid, as one picture named "grid"."""
        pixels = np.asarray(grid_image(data, labels, class_names))
        return [Picture("grid", pixels.reshape(*pixels.shape[:2], -1))]

    def read_samples(self, paths: Sequence[Path]) -> torch.Tensor:
        """PNGs -> uint8 [N, C, H, W] (C from the mode: L -> 1, RGB -> 3; others converted to RGB)."""
        items = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    a = np.array(im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode))
            except (OSError, ValueError) as e:
                raise UserError(f"{p} is unreadable ({e}): delete it or sample again") from None
            items.append(torch.from_numpy(a).reshape(*a.shape[:2], -1).permute(2, 0, 1))
        shapes = sorted({tuple(x.shape) for x in items})
        if len(shapes) > 1:
            raise UserError(f"the images in {Path(paths[0]).parent} differ in size or mode: {shapes}")
        return torch.stack(items)

    def edit_mask(self, options: dict[str, Any], shape: Sequence[int]) -> torch.Tensor | None:
        """``mask``: an image file, white = keep, black = regenerate; ``box``: [top, left, bottom, right]
        pixels to regenerate."""
        if "mask" in options:
            return self.read(options["mask"], [1, *shape[1:]]).x[0] > 0  # white (model space > 0) = keep
        if "box" in options:
            top, left, bottom, right = (int(v) for v in options["box"])
            if not (0 <= top < bottom <= shape[-2] and 0 <= left < right <= shape[-1]):
                raise UserError(f"box={list(options['box'])} is not inside the {shape[-2]}x{shape[-1]} image: give "
                                "[top, left, bottom, right] with 0 <= top < bottom <= height, 0 <= left < right <= width")
            keep = torch.ones(shape, dtype=torch.bool)
            keep[..., top:bottom, left:right] = False
            return keep
        return None

    def eval_data(self, data: torch.Tensor, reference_shape: Sequence[int]) -> torch.Tensor:
        """uint8 images / 255 (float images as they are), the shape checked against the real images."""
        return super().eval_data(data.float() / 255.0 if data.dtype == torch.uint8 else data, reference_shape)
