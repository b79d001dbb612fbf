"""Fetch Moving MNIST's published sequences, ``mnist_test_seq.npy``, checked, for ``dataset=moving_mnist``.

    python data_prep/moving_mnist.py [--out data/moving_mnist] [--source URL_OR_PATH] [--sha256 HEX|none]

Moving MNIST (Srivastava, Mansimov and Salakhutdinov, "Unsupervised Learning of Video Representations
using LSTMs", ICML 2015) is 10,000 sequences of 20 frames of two MNIST digits bouncing in a 64x64 frame,
published by the authors on the University of Toronto page http://www.cs.toronto.edu/~nitish/unsupervised_video/
as one NumPy file, uint8 [20, 10000, 64, 64] (frames first; 819,200,096 bytes). This downloads it to
OUT/mnist_test_seq.npy (resuming a partial download through an HTTP Range request), checks its sha256 (the
value TensorFlow Datasets records for that URL; torchvision checks the same file's md5,
be083ec986bfe91a449d63653c411eb2; ``--sha256 none`` skips the check, ``--sha256 HEX`` pins another), then
checks the array itself (a .npy of uint8, [20, N, 64, 64], not blank) and prints its statistics, its sha256
and the command that trains on it. ``--source`` takes another URL, or the file (a path or a file:// URL),
which is checked where it is and copied to OUT. A file already in OUT that matches is kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file (python data_prep/moving_mnist.py): make data_prep and mmdiff importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import FetchError, local_path, obtain, sha256  # noqa: E402

FILE = "mnist_test_seq.npy"
URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/" + FILE
SHA256 = "c2a3e8d3939c001ab77bf543f130157424efa486bb4d0974d2cebb773b13f8b3"  # TensorFlow Datasets' record
SEQUENCES, FRAMES, SIDE = 10_000, 20, 64  # the published layout: [FRAMES, SEQUENCES, SIDE, SIDE]
CREDIT = ("Moving MNIST is by Nitish Srivastava, Elman Mansimov and Ruslan Salakhutdinov (ICML 2015), made from "
          "MNIST (LeCun, Cortes and Burges): credit them.")


def check_sequences(path: Path) -> str:
    """Check that ``path`` holds the Moving MNIST layout (a .npy of uint8 [20, N, 64, 64] with some ink);
    return a one-line summary. Raises FetchError naming what is wrong."""
    fix = "it is damaged, incomplete or another file: delete it and run again"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise FetchError(f"{path} is not a readable .npy file ({type(e).__name__}: {e}): {fix}") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] != FRAMES or array.shape[2:] != (SIDE, SIDE) \
            or array.shape[1] == 0:
        raise FetchError(f"{path} holds {array.dtype} {list(array.shape)}, not uint8 [{FRAMES}, sequences, {SIDE}, "
                         f"{SIDE}] (published: [{FRAMES}, {SEQUENCES}, {SIDE}, {SIDE}]): {fix}")
    n = array.shape[1]
    low, high, total = 255, 0, 0
    for lo in range(0, n, 1000):  # a block of sequences at a time: the file is 781 MiB
        block = np.asarray(array[:, lo:lo + 1000])
        low, high = min(low, int(block.min())), max(high, int(block.max()))
        total += int(block.sum(dtype=np.int64))
    if high == 0:
        raise FetchError(f"{path} is all zeros: {fix}")
    note = "" if n == SEQUENCES else f" (the published file has {SEQUENCES:,})"
    return (f"{n:,} sequences{note} of {FRAMES} frames of {SIDE}x{SIDE} uint8, values {low}..{high}, "
            f"mean pixel {total / array.size:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/moving_mnist", help="folder for mnist_test_seq.npy "
                                                                   "(default: data/moving_mnist)")
    parser.add_argument("--source", default=URL, help="a URL, or the file (a path or a file:// URL) "
                                                      "(default: the authors' page at the University of Toronto)")
    parser.add_argument("--sha256", default=SHA256, help="expected sha256 of the file, or none to skip the check "
                                                         "(default: the published value)")
    args = parser.parse_args(argv)

    out = Path(args.out).expanduser()
    expected = None if args.sha256.lower() in ("none", "") else args.sha256
    dest = out / FILE
    try:
        path, downloaded = obtain(args.source, dest, digest=expected, copy_local=True)
        source = local_path(args.source)
        if downloaded:
            how = "downloaded"
        elif source is None:
            how = "already there"
        else:
            how = "checked in place" if source.resolve() == dest.resolve() else f"copied from {source}"
        print(f"{path}: {how}, {'sha256 checked' if expected else 'sha256 not checked'}")
        summary = check_sequences(path)
        digest = sha256(path) if not expected else expected.lower()
    except (FetchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary)
    print(f"sha256 {digest}")
    print(f"{CREDIT}\nTrain on it (the first 8,000 sequences; mode=eval measures against the other 2,000):\n"
          f"  python -m mmdiff modality=video dataset=moving_mnist dataset.root={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
