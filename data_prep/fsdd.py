"""Fetch the Free Spoken Digit Dataset (FSDD) into OUT/recordings/, ready for ``dataset=fsdd``.

    python data_prep/fsdd.py [--out data/fsdd] [--source URL_OR_PATH] [--sha256 HEX] [--expect 3000]

By default it downloads the archive of the public GitHub repository Jakobovski/free-spoken-digit-dataset
at a pinned commit (resuming a partial download through an HTTP Range request), extracts only
``recordings/{digit}_{speaker}_{index}.wav`` and checks them: 3,000 files, each one a non-empty 8 kHz
mono WAV that soundfile reads. The recordings appear in OUT/recordings/ only once they pass; then it
prints counts per digit and split (recordings 0-4 of every digit and speaker are the test set) and
the command that trains on them. ``--source`` takes another URL, a local .zip laid out like GitHub's
archive (``<top folder>/recordings/*.wav``), a file:// URL, or a local folder of the WAV files.

FSDD is licensed CC BY-SA 4.0 (see the repository's README): credit its authors when you use it.
GitHub builds archives on request and does not promise the same bytes twice, so there is no default
archive checksum (pass --sha256 to pin one); the extracted files are checked instead, and compared
with the git tree of recordings/ at the pinned commit.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import soundfile as sf

if __package__ in (None, ""):  # run as a file (python data_prep/fsdd.py): make data_prep importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import FetchError, count_table, listed, local_path, obtain, replace_dir  # noqa: E402

COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"  # 2024-05-02
URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{COMMIT}.zip"
RECORDINGS_TREE = "d04322e322a9f937f6f4f7c8546693755184df5b"  # git tree of recordings/ at COMMIT
COUNT = 3000
RATE = 8000
NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")  # {digit}_{speaker}_{index}.wav
TEST_INDICES = 5  # the dataset's own split: recordings 0-4 of every (digit, speaker) are the test set


# --- getting the recordings ----------------------------------------------------------------------

def extract(archive: Path, folder: Path) -> int:
    """Copy every ``.../recordings/{digit}_{speaker}_{index}.wav`` of the zip ``archive`` into
    ``folder`` (flat, by base name, so no member can write outside it). Returns how many."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()
                       and PurePosixPath(m.filename).parent.name == "recordings"
                       and NAME.match(PurePosixPath(m.filename).name)]
            if not members:
                raise FetchError(f"{archive} holds no recordings/*.wav: it is not the FSDD repository archive")
            folder.mkdir(parents=True, exist_ok=True)
            for m in members:
                with zf.open(m) as src, open(folder / PurePosixPath(m.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise FetchError(f"{archive} is not a valid zip archive ({e}): it is damaged or incomplete; "
                         f"delete it and run again") from None
    return len(members)


def copy_folder(source: Path, folder: Path) -> int:
    """Copy the FSDD WAVs of ``source`` (a folder holding recordings/, or the WAVs themselves)."""
    if (source / "recordings").is_dir():
        source = source / "recordings"
    files = [p for p in sorted(source.iterdir()) if NAME.match(p.name) and p.is_file()]
    if not files:
        raise FetchError(f"{source} holds no FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav")
    folder.mkdir(parents=True, exist_ok=True)
    for p in files:
        shutil.copyfile(p, folder / p.name)
    return len(files)


# --- checking ------------------------------------------------------------------------------------

def verify(folder: Path, expect: int = COUNT) -> list[tuple[int, str, int, int]]:
    """Check ``folder``: exactly ``expect`` WAVs, every one named {digit}_{speaker}_{index}.wav and a
    non-empty 8 kHz mono file that soundfile reads in full. Returns (digit, speaker, index, samples)."""
    wavs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav")
    problems, records = [], []
    for path in wavs:
        match = NAME.match(path.name)
        if not match:
            problems.append(f"{path.name}: not named {{digit}}_{{speaker}}_{{index}}.wav")
            continue
        try:
            audio, rate = sf.read(path, dtype="int16", always_2d=True)
        except Exception as e:  # noqa: BLE001 - any failure to decode means a damaged file
            problems.append(f"{path.name}: unreadable ({e})")
            continue
        if rate != RATE or audio.shape[1] != 1 or len(audio) == 0:
            problems.append(f"{path.name}: {rate} Hz, {audio.shape[1]} channel(s), {len(audio)} samples "
                            f"(FSDD is {RATE} Hz mono)")
            continue
        records.append((int(match[1]), match[2], int(match[3]), len(audio)))
    if problems:
        raise FetchError(f"{len(problems)} of {len(wavs)} files in {folder} are not FSDD recordings: "
                         f"{listed(problems)}. Delete the folder and run again")
    if len(records) != expect:
        raise FetchError(f"{folder} holds {len(records)} recordings, expected {expect}: the archive is incomplete "
                         f"or not FSDD at commit {COMMIT[:12]}; delete it and run again")
    return records


def git_tree(folder: Path) -> str:
    """Git's hash of a tree holding the folder's WAVs as regular files: equal to the repository's tree
    hash only when the files are byte for byte those of the commit."""
    entries = b""
    for path in sorted(folder.glob("*.wav"), key=lambda p: p.name.encode()):
        data = path.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).digest()
        entries += b"100644 " + path.name.encode() + b"\0" + blob
    return hashlib.sha1(b"tree %d\0" % len(entries) + entries).hexdigest()


def summary(records: list[tuple[int, str, int, int]]) -> str:
    """Counts per digit and split, speakers and duration, as a few lines of text."""
    split = Counter((digit, "test" if index < TEST_INDICES else "train") for digit, _, index, _ in records)
    speakers = sorted({r[1] for r in records})
    seconds = sum(r[3] for r in records) / RATE
    return (count_table(split, sorted({r[0] for r in records}), ["train", "test"], "digit") + "\n"
            f"{len(records)} recordings, {len(speakers)} speakers ({', '.join(speakers)}), "
            f"{seconds / 60:.1f} minutes at {RATE} Hz")


# --- the command ---------------------------------------------------------------------------------

def fetch(source: str, out: Path, sha: str | None, keep_archive: bool) -> Path:
    """Bring the recordings of ``source`` into a staging folder under ``out`` and return it."""
    staging = out / "recordings.partial"
    shutil.rmtree(staging, ignore_errors=True)
    path = local_path(source)
    if path is not None and path.is_dir():
        print(f"copying the recordings of {path}")
        copy_folder(path, staging)
        return staging
    dest = out / f"fsdd-{Path(urlparse(source).path).name or 'archive.zip'}"
    archive, downloaded = obtain(source, dest, digest=sha)
    print(f"extracting recordings/*.wav from {archive}")
    extract(archive, staging)
    if downloaded and not keep_archive:
        archive.unlink()
    return staging


def _complete(folder: Path, expect: int) -> bool:
    return sum(1 for p in folder.iterdir() if NAME.match(p.name)) == expect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/fsdd", help="folder to put recordings/ in (default: data/fsdd)")
    parser.add_argument("--source", default=URL, help="a URL, a local zip or file:// URL, or a folder of the WAVs "
                                                      "(default: the GitHub archive at the pinned commit)")
    parser.add_argument("--sha256", help="expected sha256 of the archive (checked before extracting)")
    parser.add_argument("--expect", type=int, default=COUNT, help=f"how many recordings to expect (default {COUNT})")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip")
    parser.add_argument("--force", action="store_true", help="fetch again even if OUT/recordings is complete")
    args = parser.parse_args(argv)

    out = Path(args.out).expanduser()
    recordings = out / "recordings"
    try:
        source = local_path(args.source)
        if source is not None and source.resolve() in (recordings.resolve(), out.resolve()):
            records = verify(recordings, args.expect)  # already in place: only check it
        elif recordings.is_dir() and not args.force and _complete(recordings, args.expect):
            print(f"{recordings} already holds the {args.expect} recordings (--force fetches them again)")
            records = verify(recordings, args.expect)
        else:
            out.mkdir(parents=True, exist_ok=True)
            staging = fetch(args.source, out, args.sha256, args.keep_archive)
            records = verify(staging, args.expect)
            replace_dir(staging, recordings)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    print(summary(records))
    if len(records) == COUNT:
        tree = git_tree(recordings)
        print(f"git tree of recordings/: {tree} " + ("(the same files as commit " + COMMIT[:12] + ")"
              if tree == RECORDINGS_TREE else f"(not {RECORDINGS_TREE[:12]}: these files differ from commit "
                                              f"{COMMIT[:12]})"))
    print(f"FSDD is CC BY-SA 4.0: credit its authors (github.com/Jakobovski/free-spoken-digit-dataset).\n"
          f"Train on it:\n  python -m mmdiff modality=audio dataset=fsdd dataset.root={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
