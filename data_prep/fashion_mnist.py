"""Fetch Fashion-MNIST (Zalando Research) as its original IDX gzip files, checked against their md5.

    python data_prep/fashion_mnist.py [--out data/fashion_mnist] [--source DIR_OR_URL] [--splits train test]

The same files and layout as MNIST (data_prep/mnist.py does the work), ten clothing classes:
T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python data_prep/fashion_mnist.py): make data_prep importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.mnist import FASHION_MNIST  # noqa: E402
from data_prep.mnist import main as fetch_idx  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return fetch_idx(argv, FASHION_MNIST)


if __name__ == "__main__":
    sys.exit(main())
