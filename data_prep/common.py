"""What every data_prep script shares: getting a file (a resumable download with a progress bar, or a
local path / file:// URL), checking its md5 or sha256, moving results into place only once they are
complete, reading a large archive with a progress bar, and printing count tables.

A script never leaves a half-written result under its final name: downloads grow in ``NAME.part``
(a later run resumes them with an HTTP Range request), copies and converted folders are written
beside their final name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from tqdm import tqdm

from mmdiff.atomic import atomic_path

SHOW_FIRST = 5  # how many problems an error message names
USER_AGENT = "mmdiff-data-prep"
PART = ".part"  # suffix of a download in progress (what a later run resumes)


class FetchError(Exception):
    """Something went wrong fetching or checking a dataset; the message says what to do."""


def listed(problems: Sequence[str]) -> str:
    """The first few problems, joined, and how many more there are."""
    more = len(problems) - SHOW_FIRST
    return "; ".join(problems[:SHOW_FIRST]) + (f"; and {more} more" if more > 0 else "")


# --- where a source is ---------------------------------------------------------------------------

def local_path(source: str | Path) -> Path | None:
    """The local path that ``source`` names (a path or a file:// URL), or None for a remote URL."""
    source = str(source)
    if source.startswith("file://"):
        return Path(url2pathname(urlparse(source).path))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", source):
        return None
    return Path(source).expanduser()


def join_source(base: str, name: str) -> str:
    """``name`` inside ``base``: a folder path, a file:// URL or a remote URL (a folder of files)."""
    path = local_path(base)
    if path is not None:
        return str(path / name)
    return base.rstrip("/") + "/" + name


# --- downloading ---------------------------------------------------------------------------------

def download(url: str, dest: Path, chunk: int = 1 << 16) -> Path:
    """Download ``url`` to ``dest`` with a progress bar. Bytes arrive in ``dest``.part, which a later
    call resumes with an HTTP Range request (starting again if the server ignores it)."""
    part = dest.with_name(dest.name + PART)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing after `offset`: the previous run got every byte
            return part.replace(dest)
        raise FetchError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"could not download {url} ({getattr(e, 'reason', e)}): check the connection and run "
                         f"again (it resumes), or download the file by hand and pass --source PATH") from None
    with response:
        if offset and response.status != 206:  # the server sent the whole file, not the rest
            offset = 0
        size = response.headers.get("Content-Length")
        total = int(size) + offset if size is not None else None
        try:
            with open(part, "ab" if offset else "wb") as f, \
                    tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=dest.name, disable=None) as bar:
                while block := response.read(chunk):
                    f.write(block)
                    bar.update(len(block))
        except OSError as e:
            raise FetchError(f"the download of {url} stopped ({e}): run again, it resumes from {part}") from None
    if total is not None and part.stat().st_size != total:
        raise FetchError(f"the download of {url} stopped at {part.stat().st_size} of {total} bytes: "
                         f"run again, it resumes from {part}")
    return part.replace(dest)


# --- checksums -----------------------------------------------------------------------------------

def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``algorithm``: any name hashlib knows, e.g. md5, sha256)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def md5(path: Path) -> str:
    return file_digest(path, "md5")


def check_digest(path: Path, expected: str | None, algorithm: str = "sha256", remove: bool = False) -> None:
    """Raise FetchError unless ``path`` has the ``expected`` hex digest (any case; None: no check).
    ``remove`` deletes a file that fails (a download of ours, never a file the user passed)."""
    if not expected:
        return
    found = file_digest(path, algorithm)
    if found == expected.lower():
        return
    if remove:
        path.unlink()
        fix = "it was deleted: run again to download it afresh"
    else:
        fix = "delete it and run again, or pass the original file"
    raise FetchError(f"{path} has {algorithm} {found}, not the expected {expected}: it is damaged, incomplete "
                     f"or another file; {fix}")


# --- getting a file in place ---------------------------------------------------------------------

def copy_atomic(src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` through a temporary name beside it, so ``dest`` is never half-written."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def obtain(source: str, dest: Path, *, algorithm: str = "sha256", digest: str | None = None,
           copy_local: bool = False) -> tuple[Path, bool]:
    """Get the file that ``source`` names (a URL, a local path or a file:// URL), checked against
    ``digest`` (hex, of ``algorithm``; None: no check). Returns (path, downloaded).

    A URL is downloaded to ``dest`` (resuming ``dest``.part; a ``dest`` already complete and matching
    the digest is reused); a download with the wrong digest is deleted. A local file is checked where
    it is and returned as it is, or copied to ``dest`` when ``copy_local``; it is never deleted."""
    path = local_path(source)
    if path is not None:
        if not path.is_file():
            raise FetchError(f"{source} does not exist" + (" (it is a folder)" if path.is_dir() else "")
                             + ": pass the downloaded file, a file:// URL or a URL")
        check_digest(path, digest, algorithm)
        if copy_local and path.resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            return copy_atomic(path, dest), False
        return path, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():  # a complete earlier download (downloads get this name only when complete)
        try:
            check_digest(dest, digest, algorithm, remove=True)
            print(f"using {dest}, downloaded before")
            return dest, False
        except FetchError:
            print(f"{dest} does not match its {algorithm}: downloading it again")
    download(source, dest)
    check_digest(dest, digest, algorithm, remove=True)
    return dest, True


def replace_dir(staging: Path, final: Path) -> Path:
    """Move the complete folder ``staging`` to ``final``, replacing what was there."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    staging.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


class ProgressReader:
    """A binary file opened for reading whose reads advance a progress bar over its size: a large
    archive read as a stream (``tarfile.open(fileobj=..., mode="r|gz")``) shows how far it has got."""

    def __init__(self, path: Path, desc: str | None = None):
        self.file = open(path, "rb")
        self.bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=desc or path.name, disable=None)

    def read(self, size: int = -1) -> bytes:
        block = self.file.read(size)
        self.bar.update(len(block))
        return block

    def close(self) -> None:
        self.bar.close()
        self.file.close()

    def __enter__(self) -> ProgressReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- summaries -----------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table: every column right-aligned to its widest cell, two spaces apart."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in cells)


def count_table(counts: Counter, keys: Sequence[object], columns: Sequence[str], key_header: str) -> str:
    """Counts of (key, column) pairs as a table, one row per key plus an "all" row of column totals."""
    rows = [[key] + [counts[key, c] for c in columns] for key in keys]
    rows.append(["all"] + [sum(counts[k, c] for k in keys) for c in columns])
    return table([key_header, *columns], rows)
