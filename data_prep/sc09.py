"""Fetch SC09, the spoken digits of Speech Commands v0.02, into folders that ``dataset=audio_folder`` reads.

    python data_prep/sc09.py [--out data/sc09] [--source URL_OR_PATH] [--sha256 HEX|none] [--keep-archive] [--force]

SC09 is the ten words "zero" .. "nine" of Google's Speech Commands v0.02 (Warden 2018): 1-second
16 kHz mono clips from thousands of speakers, the benchmark DiffWave and SaShiMi report on. This
downloads ``speech_commands_v0.02.tar.gz`` (2.3 GB; resuming a partial download through an HTTP Range
request), checks its sha256 (the value TensorFlow Datasets records; ``--sha256 none`` skips the check,
``--sha256 HEX`` pins another), reads it as one stream and writes only the digit words:
OUT/<split>/<word>/<speaker>_nohash_<k>.wav, with split ``valid`` and ``test`` from the archive's own
validation_list.txt and testing_list.txt and ``train`` the rest. The split folders appear only once every
clip is in place and checked (a non-empty 16 kHz mono WAV of at most 1 s; some are shorter). Then it
prints the clips per word and split.

``--source`` takes another URL, the archive (a path or a file:// URL), or a folder of the extracted
dataset (holding zero/ .. nine/ and the two lists).
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import sys
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import soundfile as sf

if __package__ in (None, ""):  # run as a file (python data_prep/sc09.py): make data_prep importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import (  # noqa: E402
    FetchError,
    ProgressReader,
    count_table,
    listed,
    local_path,
    obtain,
    replace_dir,
)

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"  # TensorFlow Datasets' record
ARCHIVE = "speech_commands_v0.02.tar.gz"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RATE = 16000
MAX_FRAMES = RATE  # clips are at most 1 s
LISTS = {"valid": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "valid", "test")
CLIP = re.compile(r"^(?:\./)?(" + "|".join(WORDS) + r")/([0-9a-f]+_nohash_\d+\.wav)$")  # word/speaker_nohash_k.wav


# --- reading the source --------------------------------------------------------------------------

def archive_members(archive: Path) -> Iterator[tuple[str, BinaryIO]]:
    """(name inside the dataset, file object) of every regular file of the archive, read as one stream."""
    with ProgressReader(archive) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member)


def folder_members(folder: Path) -> Iterator[tuple[str, BinaryIO]]:
    """The same for the files that matter of an extracted copy: the two lists and the digit words."""
    names = list(LISTS.values()) + [f"{w}/{p.name}" for w in WORDS if (folder / w).is_dir()
                                    for p in sorted((folder / w).glob("*.wav"))]
    for name in names:
        if (folder / name).is_file():
            with open(folder / name, "rb") as f:
                yield name, f


def extract(members: Iterator[tuple[str, BinaryIO]], folder: Path) -> dict[str, set[str]]:
    """Write the digit clips of ``members`` to folder/<word>/<file> (nothing else, and only names that
    match word/<speaker>_nohash_<k>.wav, so no member can write anywhere else). Returns the two split
    lists ({"valid": {"word/file.wav", ...}, "test": ...}), read whenever the stream reaches them."""
    lists: dict[str, set[str]] = {}
    for name, f in members:
        if (match := CLIP.match(name)) is not None:
            (folder / match[1]).mkdir(parents=True, exist_ok=True)
            with open(folder / match[1] / match[2], "wb") as dst:
                shutil.copyfileobj(f, dst)
            continue
        for split, list_name in LISTS.items():
            if name.removeprefix("./") == list_name:
                lines = f.read().decode("utf-8", "replace").splitlines()
                lists[split] = {line.strip() for line in lines if line.strip()}
    missing = [n for s, n in LISTS.items() if s not in lists]
    if missing:
        raise FetchError(f"the source lacks {' and '.join(missing)}: it is not Speech Commands v0.02 or incomplete")
    return lists


def split_clips(folder: Path, lists: dict[str, set[str]], staging: Path) -> Counter:
    """Move folder/<word>/<file> into staging/<split>/<word>/<file> by the official lists. Checks that
    every digit clip the lists name is there. Returns a Counter of (word, split)."""
    found = {f"{w}/{p.name}" for w in WORDS if (folder / w).is_dir() for p in (folder / w).iterdir()}
    listed_digits = {name for names in lists.values() for name in names if CLIP.match(name)}
    absent = sorted(listed_digits - found)
    if absent:
        raise FetchError(f"{len(absent)} clips named in the split lists are not in the source: {listed(absent)}. "
                         f"It is incomplete: delete it and run again")
    counts = Counter()
    for split in SPLITS:
        for word in WORDS:
            (staging / split / word).mkdir(parents=True)
    for name in sorted(found):
        split = "test" if name in lists["test"] else "valid" if name in lists["valid"] else "train"
        (folder / name).replace(staging / split / name)
        counts[name.split("/")[0], split] += 1
    return counts


def check_clips(staging: Path) -> tuple[int, int]:
    """Every clip a non-empty 16 kHz mono WAV of at most 1 s. Returns (clips, clips shorter than 1 s)."""
    problems, short, total = [], 0, 0
    for path in sorted(staging.glob("*/*/*.wav")):
        total += 1
        try:
            info = sf.info(path)
        except Exception as e:  # noqa: BLE001 - any failure to read the header means a damaged file
            problems.append(f"{path.relative_to(staging)}: unreadable ({e})")
            continue
        if info.samplerate != RATE or info.channels != 1 or not 0 < info.frames <= MAX_FRAMES:
            problems.append(f"{path.relative_to(staging)}: {info.samplerate} Hz, {info.channels} channel(s), "
                            f"{info.frames} samples (SC09 is {RATE} Hz mono, at most 1 s)")
        short += info.frames < MAX_FRAMES
    if problems:
        raise FetchError(f"{len(problems)} of {total} clips are not SC09 clips: {listed(problems)}. "
                         f"The source is damaged or another dataset: delete it and run again")
    return total, short


def count_folders(out: Path) -> Counter:
    return Counter({(w, s): sum(1 for _ in (out / s / w).glob("*.wav")) for s in SPLITS for w in WORDS})


def convert(members: Iterator[tuple[str, BinaryIO]], staging: Path) -> tuple[Counter, int]:
    """Extract, split and check: staging/<split>/<word>/*.wav. Returns (counts, clips shorter than 1 s)."""
    extracted = staging / "all"
    lists = extract(members, extracted)
    counts = split_clips(extracted, lists, staging)
    shutil.rmtree(extracted)
    _, short = check_clips(staging)
    return counts, short


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/sc09", help="folder for train/, valid/ and test/ (default: data/sc09)")
    parser.add_argument("--source", default=URL, help="a URL, the archive (path or file:// URL), or a folder of the "
                                                      "extracted dataset (default: the TensorFlow download site)")
    parser.add_argument("--sha256", default=SHA256, help="expected sha256 of the archive, or none to skip the check "
                                                         "(default: the published value)")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    parser.add_argument("--force", action="store_true", help="extract again even if OUT/train, valid and test exist")
    args = parser.parse_args(argv)

    out = Path(args.out).expanduser()
    staging = out / "sc09.partial"
    sha = None if args.sha256.lower() in ("none", "") else args.sha256
    try:
        if all((out / s).is_dir() for s in SPLITS) and not args.force:
            print(f"{out} already holds train/, valid/ and test/ (--force extracts again)")
            counts, short = count_folders(out), None
        else:
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            path = local_path(args.source)
            archive, downloaded = None, False
            if path is not None and path.is_dir():
                print(f"copying the digit words of {path} (a folder: no archive checksum to check)")
                counts, short = convert(folder_members(path), staging)
            else:
                archive, downloaded = obtain(args.source, out / ARCHIVE, digest=sha)
                print(f"{archive}: {'sha256 checked' if sha else 'sha256 not checked'}; extracting the digit words")
                try:
                    counts, short = convert(archive_members(archive), staging)
                except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
                    raise FetchError(f"{archive} is not a valid tar.gz archive ({type(e).__name__}: {e}): it is "
                                     f"damaged or incomplete; delete it and run again") from None
            for split in SPLITS:
                replace_dir(staging / split, out / split)
            staging.rmdir()
            if downloaded and not args.keep_archive:
                archive.unlink()
    except (FetchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    print(count_table(counts, list(WORDS), list(SPLITS), "word"))
    total = sum(counts.values())
    print(f"{total} clips at {RATE} Hz mono" + (f", {short} of them shorter than 1 s (the loader pads them)"
                                                  if short is not None else ""))
    print(f"Speech Commands is by Pete Warden (Google), CC BY 4.0: credit it (arXiv:1804.03209).\nTrain on it:\n"
          f"  python -m mmdiff modality=audio dataset=audio_folder dataset.root={out / 'train'} "
          f"dataset.sample_rate={RATE} dataset.seconds=1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
