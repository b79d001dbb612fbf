"""Captions from the files themselves: a sidecar ``NAME.txt`` beside a file (LoRA trainers' convention) or a row of a
``metadata.jsonl`` in its folder (Hugging Face's imagefolder/audiofolder). The folder loaders read them into
``Dataset.texts``; mmdiff.data.captions turns them into training captions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError

METADATA = "metadata.jsonl"   # Hugging Face imagefolder/audiofolder: one {"file_name": ..., "text": ...} per line


def _metadata(folder: Path, cache: dict) -> dict[Path, str]:
    """{resolved file path: text} of ``folder``/metadata.jsonl ({} without one); read once per folder."""
    if folder not in cache:
        table, path = {}, folder / METADATA
        if path.is_file():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    table[(folder / row["file_name"]).resolve()] = str(row.get("text") or "")
                except (ValueError, KeyError, TypeError) as e:
                    raise UserError(f"{path} line {n} is not a JSON object with file_name and text ({e}): fix or "
                                    "delete that line") from None
        cache[folder] = table
    return cache[folder]


def file_texts(paths: Sequence[Path], root: Path) -> list[str | None] | None:
    """The caption of each file: the text of ``NAME.txt`` beside it, else its row of a metadata.jsonl in its folder
    or in ``root`` (file_name relative to that folder); None for a file without one. None when no file has one."""
    cache: dict = {}
    texts = []
    for path in paths:
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            texts.append(sidecar.read_text(encoding="utf-8", errors="replace").strip())
            continue
        resolved = path.resolve()
        texts.append(next((t[resolved] for folder in dict.fromkeys([path.parent, Path(root)])
                           if resolved in (t := _metadata(folder, cache))), None))
    return texts if any(t is not None for t in texts) else None
