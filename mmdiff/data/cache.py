"""Where mmdiff keeps what it computes from data once (trained evaluators, decoded datasets): next to the
data when its folder is writable, else in the user's cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """``$MMDIFF_CACHE/<kind>`` if MMDIFF_CACHE is set, else ``$XDG_CACHE_HOME/mmdiff/<kind>`` (default
    ``~/.cache/mmdiff/<kind>``): where caches of built-in or read-only data go."""
    if os.environ.get("MMDIFF_CACHE"):
        return Path(os.environ["MMDIFF_CACHE"]).expanduser() / kind
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mmdiff" / kind


def writable(folder: Path) -> bool:
    """Whether ``folder`` may be written to. Beyond os.access: root passes os.access everywhere, so a folder
    whose permission bits say read-only (like a shared copy of a dataset, dr-xr-xr-x), or a read-only
    mount, counts as read-only too."""
    try:
        return (os.access(folder, os.W_OK | os.X_OK) and bool(folder.stat().st_mode & 0o222)
                and not os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def data_folder(root: str | Path | None) -> Path | None:
    """The data's folder (``root``, or the folder holding it when it is a file), if it exists."""
    if root is None or str(root) in ("", "None", "null", "???"):
        return None
    folder = Path(root).expanduser()
    folder = folder.parent if folder.is_file() else folder
    return folder if folder.is_dir() else None


def cache_path(name: str, kind: str, data_root: str | Path | None = None) -> Path:
    """``<data_root>/.mmdiff/<name>`` ("next to the data") when the data has a writable root folder; for
    built-in data (no root) or a read-only root, ``cache_dir(kind)/<name>``."""
    folder = data_folder(data_root)
    if folder is not None:
        sub = folder / ".mmdiff"
        if writable(sub if sub.is_dir() else folder):
            return sub / name
    return cache_dir(kind) / name
