"""One gallery page for every modality: ``index.html`` beside the samples it shows.

The page is built from what a modality says about its files (:meth:`mmdiff.modalities.base.Modality.
gallery_cells`): overview items (the grid, the grid's audio) and a cell per sample (images with their label;
an audio player with its spectrogram; a playing clip), each item a file shown by its kind. At the top: the
sampler settings and the run's config; for training previews, the earlier preview grids. One template, no
script, inline style, relative links only: it works opened from disk, with no server and no network.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_open

KINDS = ("image", "audio", "video", "link")
KIND_OF_SUFFIX = {"png": "image", "gif": "image", "jpg": "image", "jpeg": "image", "webp": "image",
                  "wav": "audio", "flac": "audio", "ogg": "audio", "mp3": "audio",
                  "mp4": "video", "webm": "video"}


@dataclass(frozen=True)
class Shown:
    """A file on the page: ``kind`` image (``<img>``, GIFs play), audio (a player), video (a player) or link;
    ``src`` relative to the page; ``alt`` what it shows, in words."""

    kind: str
    src: str
    alt: str = ""

    @classmethod
    def of(cls, src: str, alt: str = "") -> Shown:
        """A file shown by the kind its suffix says (unknown suffixes: a link)."""
        return cls(KIND_OF_SUFFIX.get(src.rsplit(".", 1)[-1].lower(), "link"), src, alt)


@dataclass(frozen=True)
class Cell:
    """One sample: its index, its class name (None without labels) and its files."""

    index: int
    label: str | None
    items: tuple[Shown, ...]


@dataclass
class Page:
    """What the page says about how its samples were made: ``settings`` (sampler, steps, guidance, seed, ...),
    ``config`` (the run's resolved config), ``history`` (earlier preview grids: (caption, src), newest first)."""

    title: str | None = None
    settings: Mapping | None = None
    config: Mapping | None = None
    history: Sequence[tuple[str, str]] = field(default_factory=tuple)


STYLE = """body { font-family: sans-serif; margin: 1em; }
table.settings td, table.settings th { padding: 1px 8px; text-align: left; }
pre { background: #f4f4f4; padding: 8px; max-height: 30em; overflow: auto; }
figure { display: inline-block; margin: 4px; vertical-align: top; text-align: center; }
figure img.pixels { image-rendering: pixelated; min-width: 64px; }
figure video { image-rendering: pixelated; width: 128px; }
section.overview img { image-rendering: pixelated; max-width: 100%; }
figcaption { font-size: 90%; }"""


def _item(shown: Shown, pixels: bool = True) -> str:
    src, alt = html.escape(shown.src, quote=True), html.escape(shown.alt, quote=True)
    if shown.kind == "image":
        css = ' class="pixels"' if pixels else ""
        return f'<img src="{src}" alt="{alt}" loading="lazy"{css}>'
    if shown.kind == "audio":
        return f'<audio controls preload="none" src="{src}" title="{alt}"></audio>'
    if shown.kind == "video":
        return f'<video src="{src}" autoplay loop muted playsinline title="{alt}"></video>'
    return f'<a href="{src}">{html.escape(shown.src)}</a>'


def _cell(cell: Cell) -> str:
    caption = f"{cell.index}" + (f": {cell.label}" if cell.label is not None else "")
    items = "<br>".join(_item(s) for s in cell.items)
    return f'<figure class="cell">{items}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _settings(settings: Mapping) -> str:
    def text(value) -> str:
        return html.escape(value if isinstance(value, str) else json.dumps(value))
    rows = "\n".join(f"<tr><th>{text(str(k))}</th><td>{text(v)}</td></tr>" for k, v in settings.items())
    return f'<table class="settings">\n{rows}\n</table>'


def render(overview: Sequence[Shown], cells: Sequence[Cell], page: Page) -> str:
    """The page's HTML."""
    title = html.escape(page.title or f"{len(cells)} samples")
    parts = [f"<h1>{title}</h1>"]
    if page.settings:
        parts.append("<h2>Sampler settings</h2>\n" + _settings(page.settings))
    if page.config:
        text = json.dumps(page.config, indent=2)
        parts.append("<details><summary>The run's config</summary>\n<pre class=\"config\">"
                     + html.escape(text, quote=False) + "</pre></details>")
    if overview:
        parts.append('<section class="overview">\n' + "\n".join(f"<p>{html.escape(s.alt)}<br>{_item(s, False)}</p>"
                                                                 for s in overview) + "\n</section>")
    parts.append('<section class="cells">\n' + "\n".join(_cell(c) for c in cells) + "\n</section>")
    if page.history:
        figures = "\n".join(f"<figure>{_item(Shown.of(src, caption), False)}<figcaption>{html.escape(caption)}"
                            "</figcaption></figure>" for caption, src in page.history)
        parts.append(f'<h2>Earlier previews</h2>\n<section class="history">\n{figures}\n</section>')
    body = "\n".join(parts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mmdiff: {title}</title>
<style>
{STYLE}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def write_page(path: str | Path, overview: Sequence[Shown], cells: Sequence[Cell], page: Page | None = None) -> Path:
    """Write the page to ``path`` (atomically: a browser refreshing it during training never reads half)."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(render(overview, cells, page or Page()))
    return path
