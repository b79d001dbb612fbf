"""One folder scanner for every modality: files by extension, class = sub-folder name.

Layout: ``root/<class>/**/<file>`` (any depth inside a class folder), or files directly in
``root`` for a single class named after the folder. Hidden files and folders (a leading dot, such
as macOS ``._x.png`` resource forks) are ignored. Files that cannot be loaded are skipped and
counted in one warning, so one bad file does not stop a run and many bad files are not missed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from ..errors import UserError
from .manifest import MANIFEST_NAME, read_manifest

T = TypeVar("T")

SHOW_FIRST = 5  # how many skipped paths a warning or an error names


def _normalize(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({("." + e.lower().lstrip(".")) for e in extensions}))


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _files(folder: Path, extensions: tuple[str, ...], recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = [p for p in candidates
             if p.suffix.lower() in extensions and _visible(p, folder) and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def scan_folder(root: str | Path, extensions: Iterable[str],
                what: str = "image") -> tuple[list[tuple[Path, int]], list[str]]:
    """([(path, class_index)], class_names) for the files under ``root`` whose extension (any
    case) is in ``extensions``. Classes are the sorted sub-folders that hold at least one such
    file; with none, the files directly in ``root`` form one class named after ``root``.
    Sorted and deterministic."""
    extensions = _normalize(extensions)
    looked_for = ", ".join(extensions)
    layout = (f"one sub-folder of {what} files ({looked_for}) per class, or the {what} files "
              f"directly in it for a single class")
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"dataset.root={root} does not exist: point dataset.root at a folder with {layout}")
    if not root.is_dir():
        raise UserError(f"dataset.root={root} is a file, not a folder: point dataset.root at a folder with {layout}")

    manifest = root / MANIFEST_NAME
    if manifest.is_file():  # written by data_prep/scan.py: its file list, rows with ok=false skipped
        items, class_names = read_manifest(manifest)
        items = [(p, c) for p, c in items if p.suffix.lower() in extensions]
        if items:
            return items, class_names
        # a manifest of another kind of file: fall through to the normal scan

    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [(f.name, files) for f in folders if (files := _files(f, extensions, recursive=True))]
    loose = _files(root, extensions, recursive=False)
    if per_class:
        if loose:
            warnings.warn(f"ignored {len(loose)} {what} file(s) directly in dataset.root={root} (e.g. {loose[0].name}) "
                          f"because it has class sub-folders: move them into a class sub-folder to use them",
                          stacklevel=2)
    elif loose:
        per_class = [(root.resolve().name or "root", loose)]
    else:
        raise UserError(f"dataset.root={root} holds no {what} files (looked for {looked_for}, also in sub-folders): "
                        f"point dataset.root at a folder with {layout}")

    items = [(path, i) for i, (_, files) in enumerate(per_class) for path in files]
    return items, [name for name, _ in per_class]


def _list(failures: Sequence[tuple[Path, str]]) -> str:
    shown = "; ".join(f"{path} ({reason})" for path, reason in failures[:SHOW_FIRST])
    more = len(failures) - SHOW_FIRST
    return shown + (f"; and {more} more" if more > 0 else "")


def try_load(load_one: Callable[[Path], T | None], path: Path) -> tuple[T | None, str | None]:
    """(value, None), or (None, why) for a file whose ``load_one`` raises (any Exception) or returns None."""
    try:
        value = load_one(path)
    except Exception as e:  # noqa: BLE001 - any failure of a user file means: skip it, say why
        return None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return (value, None) if value is not None else (None, "unreadable")


def report_failures(loaded: int, failures: Sequence[tuple[Path, str]], what: str) -> None:
    """One warning counting the files that could not be read; a UserError when none could."""
    total = loaded + len(failures)
    if not loaded:
        if not failures:
            raise UserError(f"no {what} files to load: point dataset.root at a folder that holds some")
        raise UserError(f"none of the {total} {what} files could be read: {_list(failures)}. "
                        f"Replace them with valid {what} files, or point dataset.root at another folder")
    if failures:
        warnings.warn(f"skipped {len(failures)} of {total} {what} files that could not be read: {_list(failures)}",
                      stacklevel=3)


def load_files(items: Iterable[tuple[Path, int]], load_one: Callable[[Path], T | None],
               what: str = "image") -> tuple[list[T], list[int], int]:
    """Call ``load_one`` on every path of ``items`` ([(path, class_index)], as ``scan_folder``
    gives). A file whose ``load_one`` raises (any Exception) or returns None is skipped.
    Returns (loaded, their class indices, number skipped); warns once if any were skipped."""
    loaded: list[T] = []
    classes: list[int] = []
    failures: list[tuple[Path, str]] = []
    for path, class_index in items:
        value, why = try_load(load_one, path)
        if why is not None:
            failures.append((path, why))
            continue
        loaded.append(value)
        classes.append(class_index)
    report_failures(len(loaded), failures, what)
    return loaded, classes, len(failures)
