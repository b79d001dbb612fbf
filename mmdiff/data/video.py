"""Video datasets: bouncing digits (built in), Moving MNIST, a folder of animations and videos.

Every loader is a Hydra ``_target_`` (conf/dataset/) and gives clips [N, C, T, H, W] float32 in [0, 1]
(time is the first spatial axis; C = 1 grayscale or 3 RGB) with int64 labels:

- :func:`load_moving_digits`: scikit-learn's 8x8 digits bouncing on a small canvas (no download);
- :func:`load_moving_mnist`: the published Moving MNIST sequences (Srivastava et al. 2015), or the same
  bouncing generator applied to MNIST digits;
- :func:`load_video_folder`: GIF/APNG/WebP (Pillow) and MP4/WebM/AVI/MOV/MKV (PyAV, ``mmdiff[video]``),
  one sub-folder per class, decoded lazily (a :class:`~mmdiff.data.stream.Files`).

The two generated sets share one generator, :func:`moving_clips`: digits move by whole pixels per frame and
reflect off the walls, so every frame holds the source digit exactly, translated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from . import splits
from .dataset import Dataset
from .images import _to_mode, load_digits, load_mnist, resize
from .scan import scan_folder
from .stream import Files

DIGIT_NAMES = [str(d) for d in range(10)]
# Compass directions of a velocity, counter-clockwise from east; rows grow downwards, so "N" is up the image.
DIRECTIONS = ["E", "NE", "N", "NW", "W", "SW", "S", "SE"]
STILL = len(DIRECTIONS)  # the "direction" of a clip of still images (stills_per_digit)
SPLIT_STREAM = {"train": 0, "test": 1, "all": 2}  # each split draws its motions from its own random stream
CHUNK = 256  # clips rendered at once: bounds the memory of the index tensors (MNIST: 60,000 clips)


def _whole(value, key: str, low: int, example: str) -> int:
    """``value`` as an int >= ``low``, else a UserError naming ``dataset.key``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise UserError(f"dataset.{key}={value} is not a whole number >= {low}: set e.g. dataset.{key}={example}")
    return int(value)


def _resize_clips(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, T, H, W] -> [N, C, T, size, size], frame by frame (bilinear with antialiasing)."""
    n, c, t, h, w = x.shape
    if (h, w) == (size, size):
        return x
    frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    return resize(frames, size).reshape(n, t, c, size, size).permute(0, 2, 1, 3, 4).contiguous()


def _frame_counts(frames, max_frames, longest: int | None = None) -> tuple[int, int, int | None]:
    """(frames, length of an item, training window or None) from the ``frames`` and ``max_frames`` options."""
    frames = _whole(frames, "frames", 1, "8")
    length = frames if max_frames is None else _whole(max_frames, "max_frames", 1, str(2 * frames))
    if length < frames:
        raise UserError(f"dataset.max_frames={max_frames} is shorter than dataset.frames={frames}: items are cut to "
                        f"max_frames and the model trains on windows of frames; set max_frames >= frames (or null)")
    if longest is not None and length > longest:
        raise UserError(f"dataset.{'max_frames' if max_frames is not None else 'frames'}={length} is more than the "
                        f"{longest} frames every sequence has: use at most {longest}")
    return frames, length, frames if length > frames else None


# --- the bouncing-digits generator (shared by moving_digits and Moving MNIST's generator) --------------

def bounce(start: np.ndarray, velocity: np.ndarray, frames: int, room: np.ndarray) -> np.ndarray:
    """Positions [n, frames, 2] of points starting at ``start`` [n, 2] and moving by ``velocity`` [n, 2]
    (whole pixels per frame) inside [0, room] ([2]: per axis), reflected at both walls.

    Reflection keeps the path that a ball would take: the unfolded position p0 + v t folded into
    [0, room] by a triangle wave of period 2 room, so a step that would cross a wall by k pixels ends k
    pixels inside it, moving the other way."""
    room = np.asarray(room, np.int64)
    t = np.arange(frames, dtype=np.int64)
    unfolded = start[:, None, :] + velocity[:, None, :] * t[None, :, None]
    period = np.maximum(2 * room, 1)  # room 0 (digit as large as the canvas): it stays at 0
    x = np.mod(unfolded, period)
    return np.where(x > room, 2 * room - x, x) * (room > 0)


def direction(velocity: np.ndarray) -> np.ndarray:
    """[n, 2] (rows, columns per frame) -> [n] int64 index into DIRECTIONS: the compass direction nearest
    to the motion on the image (rows grow downwards: a negative row velocity moves north)."""
    angle = np.arctan2(-velocity[:, 0], velocity[:, 1])  # counter-clockwise from east
    return np.mod(np.rint(angle / (np.pi / 4)).astype(np.int64), 8)


def _velocities(n: int, max_speed: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 2] int64, each drawn uniformly from {-max_speed..max_speed}^2 without (0, 0): every clip moves."""
    steps = np.arange(-max_speed, max_speed + 1)
    choices = np.stack(np.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)
    choices = choices[(choices != 0).any(1)]
    return choices[rng.integers(len(choices), size=n)]


def _render(padded: torch.Tensor, source: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Frames [n, T, S, S]: image ``source[i]`` of ``padded`` ([M, S, S]: each digit at the top-left of a
    zero canvas) moved to ``positions[i, t]`` (top-left, rows and columns). Shifting a zero-padded canvas
    cyclically moves only zeros across its edges (a position is at most S - h), so it is an exact
    translation: every value is copied, none is interpolated."""
    s = padded.shape[-1]
    axis = torch.arange(s)
    rows = (axis - positions[..., 0:1]) % s  # [n, T, S]: the source row shown at each canvas row
    cols = (axis - positions[..., 1:2]) % s
    return padded[source[:, None, None, None], rows[..., :, None], cols[..., None, :]]


def moving_clips(images: torch.Tensor, canvas: int, frames: int, per_image: int, digits: int, max_speed: int,
                 rng: np.random.Generator, size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bouncing digits: ``per_image`` clips of each of the M ``images`` ([M, h, w] in [0, 1]).

    Clip j (source-major order: the clips of image 0, then of image 1, ...) shows image j // per_image,
    and with ``digits=2`` a second image drawn uniformly from all M, on a canvas x canvas zero background for
    ``frames`` frames. Each digit starts at a uniformly drawn top-left position with its whole digit inside,
    moves with a velocity drawn uniformly from {-max_speed..max_speed}^2 without (0, 0) (pixels per frame;
    whole pixels keep the digits crisp) and reflects off the walls (:func:`bounce`); two digits are summed
    and clipped to 1, as in Moving MNIST. Every draw comes from ``rng``.

    Returns (clips [M * per_image, 1, frames, size, size] float32, extras); ``size`` (None: canvas) resizes
    the rendered frames (bilinear, antialiased), a chunk of clips at a time. Extras, for the first
    digit: ``source`` [N] int64 (index into ``images``), ``positions`` [N, frames, 2] int64 (top-left row
    and column in each frame), ``velocity`` [N, 2] int64 (rows, columns per frame at frame 0),
    ``direction`` [N] int64 (index into DIRECTIONS) and ``speed`` [N] float32 (pixels per frame); for a
    second digit the same with the suffix ``_2`` (``source_2``, ..., ``speed_2``)."""
    m, h, w = images.shape
    if canvas < max(h, w):
        raise UserError(f"the canvas ({canvas}x{canvas}) is smaller than the digits ({h}x{w}): make it at least "
                        f"{max(h, w)}")
    n = m * per_image
    room = np.array([canvas - h, canvas - w])
    padded = torch.zeros(m, canvas, canvas, dtype=torch.float32)
    padded[:, :h, :w] = images.to(torch.float32)
    extras: dict[str, torch.Tensor] = {}
    slots = []
    for d in range(digits):
        source = np.repeat(np.arange(m), per_image) if d == 0 else rng.integers(m, size=n)
        start = np.stack([rng.integers(0, room[0] + 1, size=n), rng.integers(0, room[1] + 1, size=n)], 1)
        velocity = _velocities(n, max_speed, rng)
        positions = bounce(start, velocity, frames, room)
        suffix = "" if d == 0 else f"_{d + 1}"
        extras[f"source{suffix}"] = torch.from_numpy(source.astype(np.int64))
        extras[f"positions{suffix}"] = torch.from_numpy(positions.astype(np.int64))
        extras[f"velocity{suffix}"] = torch.from_numpy(velocity.astype(np.int64))
        extras[f"direction{suffix}"] = torch.from_numpy(direction(velocity))
        extras[f"speed{suffix}"] = torch.from_numpy(np.hypot(velocity[:, 0], velocity[:, 1]).astype(np.float32))
        slots.append((extras[f"source{suffix}"], extras[f"positions{suffix}"]))
    size = canvas if size is None else size
    clips = torch.empty(n, 1, frames, size, size, dtype=torch.float32)
    for lo in range(0, n, CHUNK):  # in chunks: the canvas-sized frames of all clips may not fit in memory
        part = slice(lo, lo + CHUNK)
        frame = _render(padded, *(t[part] for t in slots[0]))
        for source, positions in slots[1:]:
            frame += _render(padded, source[part], positions[part])
        clips[part] = _resize_clips(frame.clamp_(0, 1).unsqueeze(1), size)
    return clips, extras


def _generate(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], name: str, *, canvas: int,
              size: int, frames: int, per_image: int, digits: int, max_speed: int, rng: np.random.Generator,
              window: int | None = None) -> Dataset:
    """moving_clips of ``images`` [M, h, w], resized from canvas to size, labelled by the first digit."""
    clips, extras = moving_clips(images, canvas, frames, per_image, digits, max_speed, rng, size)
    if digits > 1:
        extras["label_2"] = labels[extras["source_2"]]
    return Dataset(clips, labels[extras["source"]], class_names, name, extras=extras, window=window)


def _check_motion(digits, per_digit, max_speed) -> tuple[int, int, int]:
    digits = _whole(digits, "digits", 1, "1")
    if digits > 2:
        raise UserError(f"dataset.digits={digits} is not supported: use dataset.digits=1 or dataset.digits=2")
    return digits, _whole(per_digit, "per_digit", 1, "3"), _whole(max_speed, "max_speed", 1, "2")


# --- moving digits (built in) --------------------------------------------------------------------

def load_moving_digits(size: int = 16, frames: int = 8, digits: int = 1, per_digit: int = 3, max_speed: int = 2,
                       stills_per_digit: int = 0, split: str = "train", seed: int = 0) -> Dataset:
    """The built-in video set (no download): scikit-learn's 8x8 handwritten digits bouncing on a
    size x size canvas for ``frames`` frames. [N, 1, frames, size, size] float32 in [0, 1], classes "0".."9".

    Split by SOURCE IMAGE: "train" moves only the 1,433 digits of load_digits' train split, "test" only the
    364 held-out ones (every 5th of each digit), "all" all 1,797; so prediction is measured on digits the
    model never saw. ``per_digit`` clips of each source image, in source-major order (N = per_digit x
    images); with ``digits=2`` each clip adds a second digit drawn from the same split, summed and clipped,
    and the label is the FIRST digit's (``extras["label_2"]`` holds the second's). Digits are drawn at their
    native 8x8, move by whole pixels (velocity components in {-max_speed..max_speed}, never both 0) and
    reflect off the walls: see :func:`moving_clips` for the motion and the extras (``positions``,
    ``velocity``, ``direction``, ``speed``, ``source``: an index into ``load_digits(split=split)``).
    Deterministic for (seed, split).

    ``stills_per_digit`` > 0 adds that many "clips" of still images per source image for joint image-video
    training (Ho et al., Video Diffusion Models): each frame shows the digit at its own random position, the
    frames are independent images (``extras["independent"]`` is True for them, False for the moving clips; the
    network skips its temporal layers for them), ``direction`` is STILL and ``speed`` 0 (with ``digits=2``:
    ``label_2`` is -1, no second digit; of the second digit's extras the set keeps ``label_2``, ``direction_2``
    and ``speed_2``).

    Defaults (16x16, 8 frames, 1 digit, 3 clips per digit): train 4,299 clips (35.2 MB of float32,
    8 KiB a clip), test 1,092 (8.9 MB); generated in well under a second."""
    size = _whole(size, "size", 8, "16")
    frames = _whole(frames, "frames", 1, "8")
    digits, per_digit, max_speed = _check_motion(digits, per_digit, max_speed)
    stills = _whole(stills_per_digit, "stills_per_digit", 0, "0")
    source = load_digits(split=split)  # checks split
    rng = np.random.default_rng([_whole(seed, "seed", 0, "0"), SPLIT_STREAM[split]])
    moving = _generate(source.data[:, 0], source.labels, DIGIT_NAMES, "moving_digits", canvas=size, size=size,
                       frames=frames, per_image=per_digit, digits=digits, max_speed=max_speed, rng=rng)
    if not stills:
        return moving
    images = source.data[:, 0]
    m, h, w = images.shape
    n = m * stills
    padded = torch.zeros(m, size, size)
    padded[:, :h, :w] = images
    src = torch.arange(m).repeat_interleave(stills)
    positions = torch.stack([torch.from_numpy(rng.integers(0, size - h + 1, size=(n, frames))),
                             torch.from_numpy(rng.integers(0, size - w + 1, size=(n, frames)))], -1)
    still = _render(padded, src, positions).unsqueeze(1)
    extras = {"source": src, "positions": positions, "velocity": torch.zeros(n, 2, dtype=torch.int64),
              "direction": torch.full((n,), STILL, dtype=torch.int64), "speed": torch.zeros(n)}
    if digits > 1:  # a still shows one digit: no second one (label -1)
        extras |= {"label_2": torch.full((n,), -1), "direction_2": torch.full((n,), STILL), "speed_2": torch.zeros(n)}
    joined = {k: torch.cat([moving.extras[k], extras[k]]) for k in extras}
    joined["independent"] = torch.cat([torch.zeros(len(moving), dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    return Dataset(torch.cat([moving.data, still]), torch.cat([moving.labels, source.labels[src]]), DIGIT_NAMES,
                   "moving_digits", extras=joined)


# --- Moving MNIST --------------------------------------------------------------------------------

MOVING_MNIST_FILE = "mnist_test_seq.npy"
MOVING_MNIST_FETCH = "run python data_prep/moving_mnist.py --out {root} to download it"
SOURCES = ("canonical", "generator")


def _sequences_file(root: str) -> Path:
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / MOVING_MNIST_FILE
    if not path.is_file():
        folder = path.parent if path.suffix == ".npy" else path
        raise UserError(f"dataset.root={root} holds no {MOVING_MNIST_FILE}: {MOVING_MNIST_FETCH.format(root=folder)}, "
                        f"or point dataset.root at the file (or use dataset.source=generator with an MNIST folder)")
    return path


def _read_sequences(path: Path) -> np.ndarray:
    """The canonical file as a read-only memory map [T, N, H, W] uint8 (nothing is read yet)."""
    fix = f"it is damaged or not the Moving MNIST file; delete it and {MOVING_MNIST_FETCH.format(root=path.parent)}"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path} could not be read as a .npy array ({type(e).__name__}: {e}): {fix}") from None
    if array.ndim != 4 or array.dtype != np.uint8 or array.shape[2] != array.shape[3] or 0 in array.shape:
        raise UserError(f"{path} holds {array.dtype} {list(array.shape)}, not the Moving MNIST layout uint8 "
                        f"[frames, sequences, height, width] (published: [20, 10000, 64, 64]): {fix}")
    return array


def _canonical(root: str, split: str, length: int, size: int, window: int | None) -> Dataset:
    """The sequences of ``split`` (a slice of "test" or "all", which are the same) from the canonical file."""
    if splits.parse(split)[0] == "train":
        raise UserError("dataset.split=train: the canonical Moving MNIST file is one set of 10,000 test sequences; "
                        "train on a slice of it (dataset.split=test::8000, held out: test:8000:) or generate "
                        "training clips from MNIST (dataset.source=generator)")
    array = _read_sequences(_sequences_file(root))
    total, count = array.shape[:2]
    _frame_counts(1, length, total)  # checks the item length against the file
    rows = range(count)[splits.select(count, split)]
    data = torch.empty(len(rows), 1, length, size, size, dtype=torch.float32)
    for lo in range(0, len(rows), CHUNK):  # a chunk at a time: the float32 copy of the whole file is 3.3 GB
        block = rows[lo:lo + CHUNK]
        raw = np.asarray(array[:length, block.start:block.stop:block.step])  # [T, n, H, W]
        x = torch.from_numpy(raw.transpose(1, 0, 2, 3).copy()).unsqueeze(1).to(torch.float32) / 255.0
        data[lo:lo + len(block)] = _resize_clips(x, size)
    return Dataset(data, torch.zeros(len(rows), dtype=torch.int64), ["moving_mnist"], "moving_mnist", window=window)


def load_moving_mnist(root: str = "data/moving_mnist", source: str = "canonical", split: str = "test::8000",
                      frames: int = 20, max_frames: int | None = None, size: int = 32, canvas: int = 64,
                      digits: int = 2, per_digit: int = 1, max_speed: int = 3, seed: int = 0) -> Dataset:
    """Moving MNIST as [N, 1, T, size, size] float32 in [0, 1], T = max_frames (default: frames).

    ``source="canonical"``: the published sequences of Srivastava et al. 2015, ``mnist_test_seq.npy``
    (uint8 [20, 10000, 64, 64]: two digits bouncing, no labels, so one class "moving_mnist"; fetched by
    data_prep/moving_mnist.py). ``root`` is the file or the folder holding it. Items are the first
    ``max_frames`` of the 20 frames; with max_frames > frames the model trains on a random window of
    ``frames`` of them (``Dataset.window``). The file is ONE set of 10,000 sequences, named ``test``
    (``all`` is the same); a slice of it in file order trains, the rest is held out: the default
    ``test::8000`` trains on the first 8,000 and mode=eval measures against the last 2,000 (the CLI takes the
    slice in mmdiff.build; called from Python, this function takes it). At size 32: 8,000 sequences of
    20 frames are 655 MB of float32 (all 10,000: 819 MB; at 64: 3.3 GB, streamed from disk).

    ``source="generator"``: the bouncing generator of :func:`load_moving_digits` (:func:`moving_clips`)
    applied to MNIST digits read from the IDX files in ``root`` (load_mnist: split train or test), 28x28 on
    a canvas x canvas frame, resized to size; ``digits`` per clip, ``per_digit`` clips per MNIST image,
    velocities in {-max_speed..max_speed}^2; labels = the first digit (classes "0".."9"), the motion in
    ``extras``; deterministic for (seed, split). ``canvas``, ``digits``, ``per_digit``, ``max_speed`` and
    ``seed`` are the generator's only."""
    if source not in SOURCES:
        raise UserError(f"dataset.source={source} is not supported: use canonical (the published sequences) or "
                        f"generator (bouncing MNIST digits)")
    base = splits.parse(split)[0]
    size = _whole(size, "size", 1, "32")
    frames, length, window = _frame_counts(frames, max_frames)
    if source == "canonical":
        return _canonical(root, split, length, size, window)
    canvas = _whole(canvas, "canvas", 28, "64")
    digits, per_digit, max_speed = _check_motion(digits, per_digit, max_speed)
    if base == "all":
        parts = [load_mnist(root, s, size=28) for s in ("train", "test")]
        mnist = Dataset(torch.cat([p.data for p in parts]), torch.cat([p.labels for p in parts]), DIGIT_NAMES, "mnist")
    else:
        mnist = load_mnist(root, base, size=28)
    rng = np.random.default_rng([_whole(seed, "seed", 0, "0"), SPLIT_STREAM[base]])
    data = _generate(mnist.data[:, 0], mnist.labels, DIGIT_NAMES, "moving_mnist", canvas=canvas, size=size,
                     frames=length, per_image=per_digit, digits=digits, max_speed=max_speed, rng=rng, window=window)
    return data.subset(splits.select(len(data), split))


# --- a folder of animations and videos -----------------------------------------------------------

PILLOW_EXTENSIONS = (".gif", ".png", ".apng", ".webp")          # read by Pillow (a dependency already)
AV_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")  # read by PyAV (the mmdiff[video] extra)
VIDEO_EXTENSIONS = PILLOW_EXTENSIONS + AV_EXTENSIONS
INSTALL_AV = 'pip install "mmdiff[video]"'
NO_DURATION = 0.1  # s: a frame without a usable duration shows this long (what browsers do for GIFs)
EPS = 1e-6         # s: frame times within this of an output time count as on it (float timestamps)
SHRINK_ABOVE = 4   # a decoded video frame larger than this many times the output is first shrunk by FFmpeg


def import_av():
    """The ``av`` module (PyAV), or a UserError naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise UserError(f"reading MP4/WebM/AVI/MOV/MKV files needs PyAV, which is not installed: {INSTALL_AV} "
                        f"(or pip install av)") from None
    return av


def _read_by_pillow(path: Path) -> bool:
    """Whether Pillow decodes ``path``. By its first bytes (GIF, PNG/APNG, WebP), so that a file with the
    wrong extension still goes to the decoder that reads it; anything else goes to PyAV (FFmpeg probes the
    contents itself), or, where PyAV is not installed, to Pillow, which reads other still images."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head.startswith((b"GIF87a", b"GIF89a", b"\x89PNG\r\n\x1a\n")) or (head[:4] == b"RIFF" and head[8:] == b"WEBP"):
        return True
    try:
        import_av()
    except UserError:
        return path.suffix.lower() not in AV_EXTENSIONS
    return False


def _pillow_frames(path: Path) -> Iterator[tuple[float, float, Image.Image]]:
    """(start s, duration s, frame) of every frame of a GIF, APNG or WebP (a still image is one frame).
    The frame is only valid until the next one is asked for (Pillow seeks the same image in place)."""
    with Image.open(path) as im:
        gif = im.format == "GIF"
        start = 0.0
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            ms = im.info.get("duration") or 0
            # browsers show GIF frames of <= 10 ms for 100 ms; 0 (or no duration) means "unknown" elsewhere
            seconds = ms / 1000 if ms > (10 if gif else 0) else NO_DURATION
            yield start, seconds, im
            start += seconds


def _av_frames(path: Path, size: int) -> Iterator[tuple[float, float, Image.Image]]:
    """(start s, duration s, RGB frame) of every frame of the first video stream, in presentation order,
    times from the container's timestamps (so variable frame rates are kept). A frame much larger than
    ``size`` is shrunk by FFmpeg first: decoding a 4000x4000 video never holds more than one such frame."""
    av = import_av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        default = float(1 / rate) if rate else NO_DURATION
        first = None
        for i, frame in enumerate(container.decode(stream)):
            time = frame.time if frame.time is not None else i * default
            first = time if first is None else first
            ticks = getattr(frame, "duration", None)
            seconds = float(ticks * frame.time_base) if ticks and frame.time_base else default
            short = min(frame.width, frame.height)
            if short > SHRINK_ABOVE * size:
                scale = 2 * size / short
                frame = frame.reformat(width=max(1, round(frame.width * scale)),
                                       height=max(1, round(frame.height * scale)), format="rgb24")
            yield time - first, seconds, frame.to_image()


def _square(im: Image.Image, size: int, mode: str) -> np.ndarray:
    """One frame -> [size, size] (mode "L") or [size, size, 3] ("RGB") uint8: shorter side scaled to
    ``size``, centre-cropped, as the image folder loader does (transparency on white)."""
    im = _to_mode(im, mode)
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    # reducing_gap: a huge frame is first reduced by an integer factor (fast, and exact enough at 3x the output)
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0), np.uint8)


def _sample(frames: Iterator[tuple[float, float, Image.Image]], length: int, fps: float | None, fit) -> list:
    """At most ``length`` frames, each passed through ``fit`` while still valid. ``fps`` None: the file's
    frames in order. Else output frame k is the frame shown at time k / fps (the last one starting at or
    before it), so a frame lasting 3 / fps appears 3 times and frames between two output times are dropped;
    the clip ends with its last frame's duration."""
    out: list = []
    if fps is None:
        for _, _, im in frames:
            out.append(fit(im))
            if len(out) == length:
                break
        return out
    shown, end = None, 0.0
    for start, seconds, im in frames:
        while shown is not None and len(out) < length and len(out) / fps < start - EPS:
            out.append(shown)  # every output time before this frame starts shows the previous frame
        if len(out) == length:
            return out
        shown, end = fit(im), start + seconds
    while shown is not None and len(out) < length and (len(out) / fps < end - EPS or not out):
        out.append(shown)
    return out


def _read_clip(path: Path, length: int, size: int, channels: int, fps: float | None) -> torch.Tensor:
    """One file -> [channels, length, size, size] float32 in [0, 1] (see load_video_folder)."""
    frames = _pillow_frames(path) if _read_by_pillow(path) else _av_frames(path, size)
    try:
        kept = _sample(frames, length, fps, partial(_square, size=size, mode="L" if channels == 1 else "RGB"))
    finally:
        frames.close()  # closes the file now, also when sampling stopped early
    if not kept:
        raise ValueError("no frames")
    kept += [kept[-1]] * (length - len(kept))  # a short clip holds its last frame
    clip = torch.from_numpy(np.stack(kept)).to(torch.float32) / 255.0  # [T, S, S] or [T, S, S, 3]
    return clip.unsqueeze(0) if channels == 1 else clip.permute(3, 0, 1, 2).contiguous()


def _check_video_options(size, channels, fps) -> tuple[int, int, float | None]:
    size = _whole(size, "size", 1, "32")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise UserError(f"dataset.channels={channels} is not supported: use dataset.channels=1 (grayscale) "
                        f"or dataset.channels=3 (RGB)")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
                            or fps <= 0):
        raise UserError(f"dataset.fps={fps} is not a positive frame rate: set e.g. dataset.fps=10, or null to keep "
                        f"the files' own frames")
    return size, int(channels), None if fps is None else float(fps)


def read_video(path: str | Path, frames: int, size: int, channels: int = 1, fps: float | None = None) -> torch.Tensor:
    """One video or animation (e.g. the start of a clip to extend) -> [channels, frames, size, size]
    float32 in [0, 1], prepared like a dataset item. A missing or unreadable file is a UserError."""
    size, channels, fps = _check_video_options(size, channels, fps)
    frames = _whole(frames, "frames", 1, "8")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass the path of a GIF, APNG, WebP or MP4 file")
    try:
        return _read_clip(path, frames, size, channels, fps)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure of a user file
        raise UserError(f"{path} could not be read as a video ({type(e).__name__}: {e}): pass a GIF, APNG, WebP "
                        "or MP4 file with at least one frame") from None


def load_video_folder(root: str, frames: int = 16, size: int = 32, channels: int = 1, fps: float | None = None,
                      max_frames: int | None = None, split: str = "all") -> Files:
    """Videos from ``root``: one sub-folder per class (class names sorted), or the files directly in ``root``
    for one class named after it (a manifest.csv there gives the list instead: mmdiff.data.scan).

    GIF, APNG (.png/.apng) and animated WebP are read by Pillow; MP4, WebM, AVI, MOV and MKV by PyAV (``pip
    install "mmdiff[video]"``; without it such files are one UserError naming that command). The decoder is
    chosen by the file's first bytes, so a GIF named .mp4 still loads. A still PNG or one-frame GIF is a
    one-frame clip. Each item is [channels, T, size, size] float32 in [0, 1], T = ``max_frames`` (default:
    ``frames``):

    - ``fps`` None: the file's frames in order. Beware that Pillow merges identical consecutive frames when it
      writes GIF/APNG/WebP (adding their durations), so such files hold fewer frames than were drawn; set
      ``fps`` to expand frames by their durations. ``fps`` set: the clip resampled to that rate from the
      frames' own durations or timestamps (variable frame rates included): frame k is the one shown at k/fps.
      A GIF frame of 10 ms or less, or any frame without a duration, lasts 100 ms (as browsers show GIFs).
    - Longer clips are cut to their first T frames; shorter ones HOLD THEIR LAST FRAME up to T (a one-frame
      file is a still clip). With ``max_frames > frames`` the model trains on a random window of ``frames``
      of each item, drawn per epoch (``Files.window``); windows can land on held frames of short clips.
    - Every frame: grayscale (channels=1, ITU-R 601 luma) or RGB (3), transparency composited on white,
      shorter side scaled to ``size`` and centre-cropped (huge frames are reduced while decoding).

    ``split``: "all", or "train"/"test" (every 5th file of each class in scan order is "test"). Nothing is
    decoded here: mmdiff.data.stream.prepare decodes the files into memory or a disk cache, skipping broken,
    empty or frameless files with one warning that counts them (none readable: one UserError)."""
    size, channels, fps = _check_video_options(size, channels, fps)
    frames, length, window = _frame_counts(frames, max_frames)
    items, class_names = scan_folder(root, VIDEO_EXTENSIONS, "video")
    items = splits.split_items(items, split)
    by_av = [path for path, _ in items if path.suffix.lower() in AV_EXTENSIONS]
    if by_av:
        try:
            import_av()
        except UserError:
            raise UserError(f"dataset.root={root} holds {len(by_av)} MP4/WebM/AVI/MOV/MKV file(s) (e.g. "
                            f"{by_av[0].name}) and reading them needs PyAV, which is not installed: {INSTALL_AV}") from None
    load_one = partial(_read_clip, length=length, size=size, channels=channels, fps=fps)
    return Files(items, load_one, class_names, "video_folder", "video", root=Path(root).expanduser(),
                 options={"size": size, "channels": channels, "length": length, "fps": fps}, window=window)
