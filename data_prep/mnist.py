"""Fetch MNIST (or Fashion-MNIST: data_prep/fashion_mnist.py) as its original IDX gzip files, checked.

    python data_prep/mnist.py [--out data/mnist] [--source DIR_OR_URL] [--splits train test]

Downloads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` from a canonical mirror (resuming a
partial download through an HTTP Range request; the next mirror if one fails), checks each file's md5
against the published value (the ones torchvision checks), decodes it (IDX magic number, dimensions,
labels 0-9) and prints the label histogram of each split and the command that trains on it. The files
stay as they are: ``dataset=mnist`` reads them. ``--source`` takes a local folder holding the files, a
file:// URL or another base URL; ``--splits test`` fetches only the test files. Files already in OUT
with the right md5 are kept.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file (python data_prep/mnist.py): make data_prep and mmdiff importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import FetchError, count_table, join_source, md5, obtain  # noqa: E402
from mmdiff.data.images import IDX_IMAGES, IDX_LABELS, MNIST_PREFIX, read_idx  # noqa: E402
from mmdiff.errors import UserError  # noqa: E402

SPLITS = ("train", "test")


@dataclass(frozen=True)
class IdxDataset:
    """One dataset published as the four MNIST-style IDX gzip files."""

    name: str                  # as printed
    config: str                # the conf/dataset option that reads it
    mirrors: tuple[str, ...]   # base URLs, tried in order
    md5: dict[str, str]        # file name -> md5 of the .gz file
    class_names: tuple[str, ...]
    out: str                   # default output folder
    credit: str


MNIST = IdxDataset(
    name="MNIST", config="mnist",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
             "http://yann.lecun.com/exdb/mnist/"),               # the original site (often refuses downloads)
    md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    class_names=tuple(str(d) for d in range(10)), out="data/mnist",
    credit="MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0): credit them.")

FASHION_MNIST = IdxDataset(
    name="Fashion-MNIST", config="fashion_mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
    out="data/fashion_mnist",
    credit="Fashion-MNIST is by Zalando Research (Xiao, Rasul and Vollgraf 2017; MIT license): credit them.")


def split_files(split: str) -> tuple[str, str]:
    """The (images, labels) file names of ``split``, as published (gzipped)."""
    prefix = MNIST_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def fetch_file(spec: IdxDataset, name: str, out: Path, source: str | None) -> Path:
    """OUT/name, checked against its md5: kept if already there, else copied or downloaded."""
    dest = out / name
    expected = spec.md5[name]
    if dest.is_file() and md5(dest) == expected:
        print(f"{dest}: already there, md5 checked")
        return dest
    errors = []
    for base in [source] if source else spec.mirrors:
        try:
            path, downloaded = obtain(join_source(base, name), dest, algorithm="md5", digest=expected,
                                      copy_local=True)
            print(f"{dest}: {'downloaded' if downloaded else 'copied'}, md5 checked")
            return path
        except FetchError as e:
            if source or "could not download" not in str(e):  # only an unreachable mirror moves on to the next
                raise
            errors.append(str(e))
    raise FetchError(f"no mirror of {spec.name} answered: {' | '.join(errors)}")


def read_split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one split: ([N, H, W] uint8 images, [N] uint8 labels)."""
    try:
        images, labels = read_idx(images_path, IDX_IMAGES), read_idx(labels_path, IDX_LABELS)
    except UserError as e:
        raise FetchError(str(e)) from None
    if images.ndim != 3 or len(images) != len(labels):
        raise FetchError(f"{images_path} holds images of shape {list(images.shape)} but {labels_path} "
                         f"{len(labels)} labels: one of them is from another split or damaged; delete both and "
                         f"run again")
    if len(labels) and labels.max() >= num_classes:
        raise FetchError(f"{labels_path} holds label {labels.max()}, but there are {num_classes} classes: "
                         f"delete it and run again")
    return images, labels


def main(argv: list[str] | None = None, spec: IdxDataset = MNIST) -> int:
    parser = argparse.ArgumentParser(description=f"Fetch {spec.name} as its original IDX gzip files, checked "
                                                 f"against their md5, into OUT/ (dataset={spec.config} reads them).")
    parser.add_argument("--out", default=spec.out, help=f"folder for the IDX files (default: {spec.out})")
    parser.add_argument("--source", help="a local folder holding the .gz files, a file:// URL, or a base URL "
                                         f"(default: {', then '.join(spec.mirrors)})")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="which splits to fetch (default: train test)")
    args = parser.parse_args(argv)

    out = Path(args.out).expanduser()
    splits = [s for s in SPLITS if s in args.splits]
    counts, lines = Counter(), []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for split in splits:
            images_path, labels_path = (fetch_file(spec, name, out, args.source) for name in split_files(split))
            images, labels = read_split(images_path, labels_path, len(spec.class_names))
            counts.update((spec.class_names[k], split) for k in labels.tolist())
            lines.append(f"{split}: {len(images)} images of {images.shape[1]}x{images.shape[2]} uint8, "
                         f"mean pixel {images.mean():.2f}")
    except (FetchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    print(count_table(counts, list(spec.class_names), splits, "class"))
    print("\n".join(lines))
    print(f"{spec.credit}\nTrain on it:\n  python -m mmdiff dataset={spec.config} dataset.root={out} "
          f"dataset.split={'train' if 'train' in splits else 'test'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
