"""Fetch CIFAR-10 (its binary version) and convert it to image folders that ``dataset=image_folder`` reads.

    python data_prep/cifar10.py [--out data/cifar10] [--source URL_OR_PATH] [--keep-archive] [--force]

Downloads ``cifar-10-binary.tar.gz`` (162 MB; resuming a partial download through an HTTP Range request),
checks its md5, reads it as a stream and writes every image as a PNG: OUT/train/<class>/<i>.png (the
50,000 images of data_batch_1..5) and OUT/test/<class>/<i>.png (the 10,000 of test_batch), with <i> the
image's position in its split (five digits) and class names from batches.meta.txt. Each split folder
appears only once it is complete. Then it prints the images per class and split.

The binary version, never the Python one: that one is pickles, and unpickling a download runs whatever
code it holds. A binary batch is a sequence of 3,073-byte records: one label byte (0-9), then the
1,024 red, 1,024 green and 1,024 blue values of a 32x32 image, rows top to bottom.
``--source`` takes another URL, the archive (a path or a file:// URL), or a folder of the extracted
``*.bin`` files and batches.meta.txt (then there is no archive checksum to check).
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
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file (python data_prep/cifar10.py): make data_prep importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import FetchError, ProgressReader, count_table, local_path, obtain, replace_dir  # noqa: E402

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
SIZE = 32
RECORD = 1 + 3 * SIZE * SIZE  # label byte, then the R, G and B planes
BATCHES = {"train": [f"data_batch_{k}.bin" for k in range(1, 6)], "test": ["test_batch.bin"]}
META = "batches.meta.txt"
NUM_CLASSES = 10
CLASS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]*$")  # safe as a folder name


# --- reading the batches -------------------------------------------------------------------------

def archive_members(archive: Path) -> Iterator[tuple[str, BinaryIO]]:
    """(base name, file object) for the batches and the class list of the archive, read as one stream."""
    with ProgressReader(archive) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            name = PurePosixPath(member.name).name
            if member.isfile() and (name == META or any(name in b for b in BATCHES.values())):
                yield name, tar.extractfile(member)


def folder_members(folder: Path) -> Iterator[tuple[str, BinaryIO]]:
    """The same from a folder of the extracted files (or the folder holding cifar-10-batches-bin/)."""
    if (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    for name in [META] + [b for batches in BATCHES.values() for b in batches]:
        if (folder / name).is_file():
            with open(folder / name, "rb") as f:
                yield name, f


def read_records(f: BinaryIO, name: str) -> Iterator[tuple[int, np.ndarray]]:
    """(label, [32, 32, 3] uint8 image) for every record of one batch file."""
    while record := f.read(RECORD):
        if len(record) != RECORD:
            raise FetchError(f"{name} ends with {len(record)} bytes, not a whole {RECORD}-byte record: the archive "
                             f"is damaged or not CIFAR-10 binary; delete it and run again")
        if record[0] >= NUM_CLASSES:
            raise FetchError(f"{name} holds label {record[0]}, not 0-9: it is not CIFAR-10 binary")
        planes = np.frombuffer(record, np.uint8, offset=1).reshape(3, SIZE, SIZE)
        yield record[0], planes.transpose(1, 2, 0)


def parse_meta(text: str) -> list[str]:
    """The ten class names of batches.meta.txt (one per line, label order; blank lines ignored)."""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != NUM_CLASSES or not all(CLASS_NAME.match(n) for n in names) or len(set(names)) != NUM_CLASSES:
        raise FetchError(f"{META} lists {names[:12]}, not ten distinct class names: it is not CIFAR-10's")
    return names


# --- converting ----------------------------------------------------------------------------------

def convert(members: Iterator[tuple[str, BinaryIO]], staging: Path) -> tuple[list[str], Counter]:
    """Write every image of ``members`` as staging/<split>/<class>/<i>.png, <i> its position in the split in
    batch order (whatever order the archive holds the batches in). Returns (class names, Counter of
    (class, split))."""
    raw = staging / "raw"  # PNGs as they come, named by batch and record, moved into place at the end
    raw.mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[int]] = {}
    class_names = None
    for name, f in members:
        if name == META:
            class_names = parse_meta(f.read().decode("utf-8", "replace"))
            continue
        labels[name] = []
        for r, (label, image) in enumerate(read_records(f, name)):
            Image.fromarray(image, "RGB").save(raw / f"{name}_{r:05d}.png")
            labels[name].append(label)
    missing = [b for batches in BATCHES.values() for b in batches if b not in labels]
    missing += [] if class_names is not None else [META]
    if missing:
        raise FetchError(f"the source lacks {', '.join(missing)}: it is incomplete or not CIFAR-10 binary")

    counts = Counter()
    for split, batches in BATCHES.items():
        for class_name in class_names:
            (staging / split / class_name).mkdir(parents=True)
        i = 0
        for batch in batches:
            for r, label in enumerate(labels[batch]):
                (raw / f"{batch}_{r:05d}.png").replace(staging / split / class_names[label] / f"{i:05d}.png")
                counts[class_names[label], split] += 1
                i += 1
    raw.rmdir()
    return class_names, counts


def count_folders(out: Path) -> tuple[list[str], Counter]:
    """Class names and (class, split) counts of PNGs of an existing conversion."""
    counts = Counter()
    names = sorted({p.name for split in BATCHES for p in (out / split).iterdir() if p.is_dir()})
    for split in BATCHES:
        for name in names:
            counts[name, split] = sum(1 for _ in (out / split / name).glob("*.png"))
    return names, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/cifar10", help="folder for train/ and test/ (default: data/cifar10)")
    parser.add_argument("--source", default=URL, help="a URL, the archive (path or file:// URL), or a folder of "
                                                      "the extracted .bin files (default: the original site)")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    parser.add_argument("--force", action="store_true", help="convert again even if OUT/train and OUT/test exist")
    args = parser.parse_args(argv)

    out = Path(args.out).expanduser()
    staging = out / "cifar10.partial"
    try:
        if all((out / split).is_dir() for split in BATCHES) and not args.force:
            print(f"{out} already holds train/ and test/ (--force converts again)")
            class_names, counts = count_folders(out)
        else:
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            path = local_path(args.source)
            if path is not None and path.is_dir():
                print(f"converting the .bin files of {path} (a folder: no archive checksum to check)")
                class_names, counts = convert(folder_members(path), staging)
                archive, downloaded = None, False
            else:
                archive, downloaded = obtain(args.source, out / ARCHIVE, algorithm="md5", digest=MD5)
                print(f"{archive}: md5 checked; converting")
                try:
                    class_names, counts = convert(archive_members(archive), staging)
                except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
                    raise FetchError(f"{archive} is not a valid tar.gz archive ({type(e).__name__}: {e}): it is "
                                     f"damaged or incomplete; delete it and run again") from None
            for split in BATCHES:
                replace_dir(staging / split, out / split)
            staging.rmdir()
            if downloaded and not args.keep_archive:
                archive.unlink()
    except (FetchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    print(count_table(counts, class_names, list(BATCHES), "class"))
    print(f"{sum(counts.values())} images, {SIZE}x{SIZE} RGB PNG, in {out}/train and {out}/test")
    print(f"CIFAR-10 is by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton (Learning Multiple Layers of Features "
          f"from Tiny Images, 2009): cite it.\nTrain on it:\n"
          f"  python -m mmdiff dataset=image_folder dataset.root={out / 'train'} dataset.size={SIZE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
