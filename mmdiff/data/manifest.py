"""A manifest: one CSV that lists a folder's data files, their classes and whether each one loads.

``python data_prep/scan.py FOLDER --kind image|audio`` checks every file once and writes
FOLDER/manifest.csv; a loader that finds it takes the file list and the classes from it instead of
walking the folder, and never retries the files known to be broken.

Format: UTF-8 CSV with a header row. Columns, in this order:

- ``path``: the file, relative to the folder the manifest describes, with ``/`` separators;
- ``class``: its class name (the sub-folder, or the folder's own name for files directly in it);
- ``ok``: ``true`` if the file loads, ``false`` if not; ``error``: why not (empty when ok);
- any further columns describe the file: for audio ``sample_rate``, ``frames``, ``channels``,
  ``seconds``; for images ``width``, ``height``, ``mode``. Readers ignore columns they do not know.

Rows follow ``scan_folder``'s order (classes sorted, then paths), and classes are the sorted distinct
``class`` values of all rows, broken files included, so class indices match a scan of the folder.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from ..atomic import atomic_open
from ..errors import UserError

MANIFEST_NAME = "manifest.csv"
COLUMNS = ("path", "class", "ok", "error")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
RESCAN = "run python data_prep/scan.py {root} to write it again"


def write_manifest(path: str | Path, rows: Iterable[Mapping[str, object]], extra_columns: Sequence[str] = ()) -> Path:
    """Write ``rows`` (mappings with keys path, class, ok, error and ``extra_columns``; ok a bool,
    a missing or None value an empty cell) as a manifest CSV, atomically. Returns the path."""
    path = Path(path)
    columns = list(COLUMNS) + [c for c in extra_columns if c not in COLUMNS]
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            cells = dict(row, ok="true" if row["ok"] else "false")
            writer.writerow(["" if cells.get(c) is None else cells[c] for c in columns])
    return path


def _ok(value: str, path: Path, line: int) -> bool:
    v = value.strip().lower()
    if v in TRUE or v in FALSE:
        return v in TRUE
    raise UserError(f"{path}, line {line}: ok={value!r} is neither true nor false: fix the cell, or "
                    f"{RESCAN.format(root=path.parent)}")


def read_manifest(path: str | Path, root: str | Path | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """([(file path, class index)] of the rows with ok=true, class names) from a manifest CSV, in the
    shape of ``scan_folder``'s answer. Paths are relative to ``root`` (default: the manifest's folder).
    Raises UserError for a file that is not a manifest, a path outside ``root``, or no loadable file."""
    path = Path(path).expanduser()
    root = Path(root).expanduser() if root is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet may add a BOM
            reader = csv.DictReader(f)
            missing = [c for c in ("path", "class", "ok") if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} is not a manifest: it has no {', '.join(missing)} column; "
                                f"{RESCAN.format(root=root)}")
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"could not read the manifest {path} ({type(e).__name__}: {e}): {RESCAN.format(root=root)}") \
            from None

    entries = []
    for line, row in rows:
        relative, class_name = (row.get("path") or "").strip(), (row.get("class") or "").strip()
        rel = PurePosixPath(relative)
        if not relative or not class_name:
            raise UserError(f"{path}, line {line}: an empty path or class: fix the row, or {RESCAN.format(root=root)}")
        if rel.is_absolute() or ".." in rel.parts:
            raise UserError(f"{path}, line {line}: path {relative} is not inside the folder: a manifest lists paths "
                            f"relative to its folder; {RESCAN.format(root=root)}")
        entries.append((rel.parts, class_name, _ok(row.get("ok") or "", path, line)))

    class_names = sorted({class_name for _, class_name, _ in entries})
    index = {name: i for i, name in enumerate(class_names)}
    ok = sorted((index[class_name], parts) for parts, class_name, is_ok in entries if is_ok)
    if not ok:
        raise UserError(f"{path} lists no loadable file ({len(entries)} rows, none with ok=true): add files, "
                        f"then {RESCAN.format(root=root)}")
    return [(root.joinpath(*parts), i) for i, parts in ok], class_names
