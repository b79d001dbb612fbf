"""Image datasets: scikit-learn's digits (built in), MNIST from its IDX files, a folder of images.

Each loader is a Hydra ``_target_`` (conf/dataset/) and returns a ``Dataset`` of [N, C, H, W]
float32 in [0, 1].
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
import math
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import UserError
from .file_captions import file_texts
from .dataset import Dataset
from .scan import scan_folder
from .splits import every_kth, split_items
from .stream import Files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DIGIT_NAMES = [str(d) for d in range(10)]


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"dataset.size={size} is not a positive whole number of pixels: set e.g. dataset.size=32")
    return size


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, size, size], bilinear with antialiasing (for downsampling)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


# --- scikit-learn digits -------------------------------------------------------------------------

def load_digits(size: int = 8, split: str = "train") -> Dataset:
    """scikit-learn's handwritten digits: 1,797 real 8x8 grayscale images (values 0..16),
    classes "0".."9", shipped inside scikit-learn (no download). ``size`` != 8 resizes them.
    ``split``: scikit-learn has none, so "test" is every 5th image of each digit in file order (364
    images, mmdiff.data.splits.every_kth), "train" the other 1,433, "all" every image."""
    from sklearn.datasets import load_digits as sklearn_digits

    size = _check_size(size)
    digits = sklearn_digits()
    data = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1) / 16.0
    labels = torch.from_numpy(digits.target).to(torch.int64)
    return Dataset(resize(data, size), labels, DIGIT_NAMES, "digits").subset(every_kth(labels, split))


# --- MNIST (IDX files) ---------------------------------------------------------------------------

MNIST_PREFIX = {"test": "t10k", "train": "train"}
IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: 0x0000 0x08 (unsigned byte) and the number of dims


def _mnist_files(split: str) -> tuple[str, str]:
    prefix = MNIST_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / (name + ".gz"), root / name):
        if candidate.is_file():
            return candidate
    return None


def _corrupt(path: Path, reason: str) -> UserError:
    return UserError(f"{path} is not a valid MNIST IDX file ({reason}): it is damaged or incomplete; "
                     f"delete it and re-fetch it")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (gzipped if its name ends in .gz) of unsigned bytes, as a uint8 array whose
    shape is the file's dims. Checks the magic number and that the size matches the dims."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise _corrupt(path, f"gzip: {e}") from None
    if len(raw) < 4:
        raise _corrupt(path, f"only {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _corrupt(path, f"magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, f"header cut short at {len(raw)} bytes")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise _corrupt(path, f"{len(raw)} bytes, but dims {dims} need {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_mnist(root: str, split: str = "test", size: int = 28, class_names: Sequence[str] | None = None,
               name: str = "mnist") -> Dataset:
    """MNIST from its original IDX files in ``root``, gzipped or not:
    t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] for split="test",
    train-* for split="train". 1 channel, [0, 1]; ``size`` != 28 resizes them. Datasets in the same
    layout (Fashion-MNIST) give their ten ``class_names`` and ``name``."""
    names_out = list(class_names) if class_names else DIGIT_NAMES
    if len(names_out) != 10:
        raise UserError(f"dataset.class_names has {len(names_out)} names: the MNIST layout has 10 classes")
    if split not in MNIST_PREFIX:
        raise UserError(f"dataset.split={split} is not an MNIST split: use one of {sorted(MNIST_PREFIX)}")
    size = _check_size(size)
    names = _mnist_files(split)
    expected = " and ".join(f"{n}.gz (or {n})" for n in names)
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UserError(f"dataset.root={root} is not a folder: point dataset.root at the folder holding {expected} "
                        f"(the original MNIST files)")
    paths = [_find(root_path, n) for n in names]
    if None in paths:
        missing = " and ".join(f"{n}.gz" for n, p in zip(names, paths) if p is None)
        raise UserError(f"dataset.root={root} lacks {missing}: MNIST split={split} needs {expected} there; "
                        f"fetch the original MNIST files into it, or point dataset.root at a folder that has them")
    images_path, labels_path = paths
    images, labels = read_idx(images_path, IDX_IMAGES), read_idx(labels_path, IDX_LABELS)
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels: "
                        f"one of them is from another split or damaged; re-fetch both")
    if len(labels) and labels.max() > 9:
        raise _corrupt(labels_path, f"label {labels.max()} is not one of the 10 classes")
    data = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32) / 255.0
    return Dataset(resize(data, size), torch.from_numpy(labels.astype(np.int64)), names_out, name)


# --- a folder of images --------------------------------------------------------------------------

def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert any Pillow image to "L" or "RGB".

    Transparency is composited onto white: transparent pixels often hold arbitrary colours
    (frequently black), and icons and scans with an alpha channel are drawn on white.
    16- and 32-bit integer grayscale (PNG/TIFF) is scaled from 0..65535; Pillow's own conversion
    would clip it to 0..255, turning mid-grey white.
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if im.mode not in ("L", "RGB"):  # P, 1, CMYK, YCbCr, F, ...: Pillow's conversion is right for these
        im = im.convert("L" if im.mode in ("1", "F") else "RGB")
    return im if im.mode == mode else im.convert(mode)  # RGB -> L: ITU-R 601-2 luma


def _load_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image file -> [channels, size, size] uint8: shorter side scaled to ``size``, centre crop."""
    with Image.open(path) as im:
        im.load()  # decode now, so a truncated file fails here
        im = ImageOps.exif_transpose(im)  # phone photos store their rotation in EXIF
        im = _to_mode(im, "L" if channels == 1 else "RGB")
    w, h = im.size
    s = min(w, h)
    # Resizing the centred s x s box equals "resize the shorter side, then centre-crop", in one
    # resampling and with the exact (fractional) centre.
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    im = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
    a = torch.from_numpy(np.array(im, dtype=np.uint8))
    return a.unsqueeze(0) if a.ndim == 2 else a.permute(2, 0, 1)


def read_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """One image file (e.g. an init image for editing) -> [channels, size, size] float32 in [0, 1],
    prepared like a dataset image. A missing or unreadable file is a UserError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass the path of a PNG or JPEG file")
    try:
        return _load_image(path, size, channels).float() / 255
    except Exception as e:  # noqa: BLE001 - any decoding failure of a user file
        raise UserError(f"{path} could not be read as an image ({type(e).__name__}: {e}): pass a PNG or JPEG "
                        "file") from None


def _image_item(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image file -> [channels, size, size] float32 in [0, 1] (a dataset item)."""
    return _load_image(path, size, channels).to(torch.float32) / 255.0


def load_image_folder(root: str, size: int = 32, channels: int = 3, split: str = "all") -> Files:
    """Images from ``root``: one sub-folder per class (class names sorted), or the images directly
    in ``root`` for one class named after it. Any format Pillow reads (PNG, JPEG, BMP, GIF, WebP,
    TIFF), converted to grayscale (channels=1) or RGB (channels=3), with transparency composited
    on white; shorter side resized to ``size``, centre-cropped to size x size. ``split``: "all", or
    "train"/"test" (every 5th file of each class in scan order is "test": mmdiff.data.splits.every_kth).
    Nothing is decoded here: mmdiff.data.stream.prepare decodes the files into memory or a disk cache,
    skipping unreadable ones with one warning."""
    if channels not in (1, 3):
        raise UserError(f"dataset.channels={channels} is not supported: use dataset.channels=1 (grayscale) "
                        f"or dataset.channels=3 (RGB)")
    size = _check_size(size)
    items, class_names = scan_folder(root, IMAGE_EXTENSIONS, "image")
    items = split_items(items, split)
    return Files(items, partial(_image_item, size=size, channels=channels), class_names, "image_folder", "image",
                 root=Path(root).expanduser(), options={"size": size, "channels": channels},
                 texts=file_texts([p for p, _ in items], Path(root).expanduser()))
