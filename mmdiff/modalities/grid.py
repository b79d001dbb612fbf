"""Labelled grids of pictures: the preview layout shared by images, spectrograms (audio) and filmstrips.

``grid_rows`` decides the layout (a row per class, wrapping after MAX_COLUMNS; a square-ish grid without
labels) and ``grid_image`` draws uint8 pictures [N, C, H, W] into one Pillow image with the class names
on the left.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MAX_COLUMNS = 16    # a grid row wraps after this many images
MIN_CELL = 32       # smaller images are upscaled (nearest) to at least this many pixels tall
PAD = 2             # pixels between cells and around the grid
LABEL_MARGIN = 4    # pixels left and right of a row's label text
BACKGROUND, INK = 255, 0


def to_pil(a: np.ndarray) -> Image.Image:
    """[H, W, C] uint8 -> a grayscale (C = 1) or RGB (C = 3) image."""
    if a.shape[-1] == 1:
        return Image.fromarray(a[..., 0], "L")
    if a.shape[-1] == 3:
        return Image.fromarray(a, "RGB")
    raise ValueError(f"images need 1 or 3 channels, got {a.shape[-1]}")


def label_names(labels: torch.Tensor | None, class_names: list[str] | None, n: int) -> list[str] | None:
    """The class name of each sample (its index when there are no names), or None without labels."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    if len(labels) != n:
        raise ValueError(f"{n} samples but {len(labels)} labels")
    return [class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c) for c in labels]


def grid_rows(n: int, labels: torch.Tensor | None,
              class_names: list[str] | None) -> list[tuple[str | None, list[int]]]:
    """The grid layout: rows of (label text or None, sample indices).

    With labels: samples grouped by class (in class index order, batch order within a class),
    a row per class, wrapped after MAX_COLUMNS; a continuation row repeats the label.
    Without: ceil(sqrt(n)) columns.
    """
    if labels is None:
        cols = max(1, math.ceil(math.sqrt(n)))
        return [(None, list(range(start, min(start + cols, n)))) for start in range(0, n, cols)]
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"{n} samples but {len(labels)} labels")
    rows = []
    for c in sorted(set(labels.tolist())):
        text = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        members = (labels == c).nonzero().flatten().tolist()
        rows += [(text, members[s:s + MAX_COLUMNS]) for s in range(0, len(members), MAX_COLUMNS)]
    return rows


def label_width(texts: list[str | None], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    """Width of the label column: the widest text plus margins; 0 when no row has a label."""
    widths = [x1 - x0 for x0, _, x1, _ in (font.getbbox(t) for t in texts if t is not None)]
    return max(widths) + 2 * LABEL_MARGIN if widths else 0


def grid_image(images: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None) -> Image.Image:
    """uint8 [N, C, H, W] -> one grid image (see ``grid_rows``), grayscale for C = 1, RGB for C = 3.

    Cells are the images upscaled by the integer factor ceil(MIN_CELL / H) (nearest), PAD pixels
    apart and from the border; the label column (if any) is left of the first cell.
    """
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("no images to put in a grid")
    scale = max(1, math.ceil(MIN_CELL / h))
    cells = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3).permute(0, 2, 3, 1).numpy()
    ch, cw = h * scale, w * scale

    rows = grid_rows(n, labels, class_names)
    font = ImageFont.load_default()
    left = label_width([t for t, _ in rows], font)
    cols = max(len(members) for _, members in rows)
    mode = "L" if c == 1 else "RGB"
    grid = Image.new(mode, (left + cols * (cw + PAD) + PAD, len(rows) * (ch + PAD) + PAD),
                     BACKGROUND if c == 1 else (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(grid)
    for r, (text, members) in enumerate(rows):
        top = PAD + r * (ch + PAD)
        if text is not None:
            x0, y0, _, y1 = draw.textbbox((0, 0), text, font=font)
            draw.text((LABEL_MARGIN - x0, top + (ch - (y1 - y0)) // 2 - y0), text, font=font,
                      fill=INK if c == 1 else (INK,) * 3)
        for k, i in enumerate(members):
            grid.paste(to_pil(cells[i]), (left + PAD + k * (cw + PAD), top))
    return grid
