"""Audio datasets: synthesised musical notes (built in), the Free Spoken Digit Dataset, a folder of audio files.

Each loader is a Hydra ``_target_`` (conf/dataset/) and returns a ``Dataset`` of [N, 1, T] float32 mono
waveforms in [-1, 1], with T = round(seconds * sample_rate) samples.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from functools import partial
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from ..errors import UserError
from .file_captions import file_texts
from .dataset import Dataset
from .scan import load_files, scan_folder
from .splits import split_items
from .stream import Files

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
CROPS = ("random", "center", "start")
NORMALIZATIONS = ("peak", "rms", "none")
PEAK = 0.95      # "peak" normalisation target: a little headroom below full scale
RMS = 0.1        # "rms" normalisation target (-20 dBFS), typical of speech and music recordings
SILENCE = 1e-4   # a peak below this (-80 dBFS) counts as silence: nothing to normalise or learn from


# --- checks and shared waveform helpers ----------------------------------------------------------

def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Integral) or sample_rate < 1:
        raise UserError(f"dataset.sample_rate={sample_rate} is not a positive whole number of Hz: "
                        f"set e.g. dataset.sample_rate=16000")
    return int(sample_rate)


def _num_samples(seconds: float, sample_rate: int) -> int:
    """T = round(seconds * sample_rate), after checking ``seconds``."""
    if isinstance(seconds, bool) or not isinstance(seconds, Real) or not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"dataset.seconds={seconds} is not a positive duration: set e.g. dataset.seconds=1.0")
    length = round(seconds * sample_rate)
    if length < 1:
        raise UserError(f"dataset.seconds={seconds} is shorter than one sample at {sample_rate} Hz: "
                        f"make dataset.seconds longer")
    return length


def _check_choice(value: str, key: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"dataset.{key}={value} is not supported: use one of {', '.join(choices)}")
    return value


def normalize_audio(wave: np.ndarray | torch.Tensor, mode: str) -> np.ndarray | torch.Tensor:
    """Scale each row of the last axis (one clip per row; [T], [N, T], [N, 1, T], ...) and return
    the same type. "peak": peak -> 0.95. "rms": RMS -> 0.1 (-20 dBFS), lowered where that would put
    the peak above 1. "none": unchanged. Silent rows (peak < 1e-4) are left as they are: scaling them
    up would only amplify noise."""
    _check_choice(mode, "normalize", NORMALIZATIONS)
    if mode == "none":
        return wave
    is_torch = isinstance(wave, torch.Tensor)
    a = wave.detach().cpu().numpy() if is_torch else np.asarray(wave)
    peak = np.abs(a).max(axis=-1, keepdims=True)
    if mode == "peak":
        gain = PEAK / np.maximum(peak, SILENCE)
    else:
        rms = np.sqrt(np.mean(np.square(a, dtype=np.float64), axis=-1, keepdims=True))
        gain = np.minimum(RMS / np.maximum(rms, SILENCE), 1.0 / np.maximum(peak, SILENCE))
    out = (a * np.where(peak < SILENCE, 1.0, gain)).astype(a.dtype)
    return torch.from_numpy(out).to(wave.device) if is_torch else out


def _crop_start(total: int, length: int, crop: str, rng: np.random.Generator | None) -> int:
    if crop == "start":
        return 0
    if crop == "center":
        return (total - length) // 2
    if rng is None:
        raise ValueError('crop="random" needs a numpy Generator')
    return int(rng.integers(0, total - length + 1))


def fix_length(wave: np.ndarray | torch.Tensor, length: int, crop: str = "start",
               rng: np.random.Generator | None = None) -> np.ndarray | torch.Tensor:
    """[..., L] -> [..., length], same type. Longer input is cropped to one window for the whole
    array: "start" keeps the first samples, "center" the middle ones, "random" a window drawn from
    ``rng`` (a numpy Generator). Shorter input is zero-padded at the end."""
    _check_choice(crop, "crop", CROPS)
    total = wave.shape[-1]
    if total > length:
        start = _crop_start(total, length, crop, rng)
        return wave[..., start:start + length]
    if total < length:
        if isinstance(wave, torch.Tensor):
            return F.pad(wave, (0, length - total))
        return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, length - total)])
    return wave


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """[..., L] float32 at ``orig_rate`` Hz -> [..., ceil(L * new_rate / orig_rate)] at ``new_rate``
    Hz, with torchaudio's windowed-sinc resampler (band-limited: nothing folds back when downsampling)."""
    if orig_rate == new_rate:
        return wave
    return AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), int(orig_rate), int(new_rate)).numpy()


# --- shared by FSDD and the audio folder ---------------------------------------------------------

def _stack(clips: list[np.ndarray], rate: int, sample_rate: int, length: int, crop: str,
           rng: np.random.Generator | None, normalize: str) -> torch.Tensor:
    """1-D float32 clips at ``rate`` Hz -> [N, 1, length] at ``sample_rate`` Hz in [-1, 1]: cropped or
    zero-padded (at the end) to the source length of ``length`` samples, resampled, normalised, clamped."""
    source = math.ceil(length * rate / sample_rate)
    batch = np.stack([fix_length(c, source, crop, rng) for c in clips]).astype(np.float32)
    batch = fix_length(resample(batch, rate, sample_rate), length)
    batch = normalize_audio(batch, normalize)
    return torch.from_numpy(np.clip(batch, -1.0, 1.0)).unsqueeze(1)


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    """An audio file soundfile reads -> ([L] float32 mono, sample rate). Raises on files that hold no
    usable sound (load_files counts and reports them)."""
    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    if wave.shape[0] == 0:
        raise ValueError("no samples")
    if not np.isfinite(wave).all():
        raise ValueError("non-finite samples (NaN or infinity)")
    mono = wave.mean(axis=1)  # mix-down: the average of the channels
    if np.abs(mono).max() < SILENCE:
        raise ValueError(f"silent (peak below {SILENCE:g})")
    return mono, int(rate)


# --- Free Spoken Digit Dataset -------------------------------------------------------------------

FSDD_RATE = 8000
FSDD_NPZ = "fsdd_8k_int16.npz"
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")  # {digit}_{speaker}_{index}.wav
FSDD_SPLITS = ("train", "test", "all")
FSDD_TEST = 5  # the dataset's own split: recordings 0-4 of each (digit, speaker) are the test set
DIGIT_NAMES = [str(d) for d in range(10)]
# The speakers, all male, and their accents (the FSDD repository's metadata.py); extras["speaker"] indexes this
# table, in its order, and is -1 for a recording by anyone else.
FSDD_SPEAKERS = {"george": "Greek", "jackson": "American", "lucas": "German", "nicolas": "Belgian French",
                 "theo": "American", "yweweler": "German"}
FETCH = "run python data_prep/fsdd.py --out {root} to download it"


def _in_split(indices: np.ndarray, split: str) -> np.ndarray:
    if split == "all":
        return np.ones(len(indices), bool)
    return (indices < FSDD_TEST) == (split == "test")


def _corrupt_npz(path: Path, reason: str) -> UserError:
    return UserError(f"dataset.root={path} is not a valid packed FSDD file ({reason}): it is damaged or "
                     f"incomplete; replace it, or {FETCH.format(root=path.parent)} in its original layout")


def speaker_index(names) -> np.ndarray:
    """Speaker names -> [N] int64: each one's position in FSDD_SPEAKERS, -1 for a name not there."""
    table = {name: i for i, name in enumerate(FSDD_SPEAKERS)}
    return np.array([table.get(str(name), -1) for name in names], dtype=np.int64)


def _fsdd_npz(path: Path, split: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The packed copy (see ../shared/data/fsdd/README.md): clips of ``split``, their digits and speaker names."""
    keys = ("audio", "offsets", "lengths", "digits", "indices", "speakers")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:  # our handle: closed even on errors
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise _corrupt_npz(path, f"no {', '.join(missing)} array")
            audio, offsets, lengths, digits, indices, speakers = (npz[k] for k in keys)
            rate = int(npz["sample_rate"]) if "sample_rate" in npz.files else FSDD_RATE
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _corrupt_npz(path, f"{type(e).__name__}: {e}") from None
    n = len(offsets)
    if rate != FSDD_RATE or audio.dtype != np.int16 or any(len(a) != n for a in (lengths, digits, indices, speakers)) \
            or (n and ((offsets < 0).any() or (lengths < 0).any() or (offsets + lengths).max() > len(audio)
                       or digits.min() < 0 or digits.max() > 9)):
        raise _corrupt_npz(path, "its arrays do not fit together")
    rows = np.flatnonzero(_in_split(indices, split))
    # int16 -> float32 exactly as soundfile reads PCM_16 WAVs: divide by 32768
    clips = [audio[offsets[k]:offsets[k] + lengths[k]].astype(np.float32) / 32768.0 for k in rows]
    return clips, digits[rows], speakers[rows]


def _load_fsdd_wav(path: Path) -> np.ndarray:
    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    if wave.shape[0] == 0:
        raise ValueError("no samples")
    return resample(wave.mean(axis=1), rate, FSDD_RATE)


def _fsdd_recordings(folder: Path, split: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The original layout: ``folder/{digit}_{speaker}_{index}.wav``, in the packed copy's order
    (digit, speaker, index): the clips of ``split`` that read, their digits and speaker names."""
    found, other = [], []
    for path in folder.glob("*.wav"):
        match = FSDD_NAME.match(path.name)
        if match:
            found.append(((int(match[1]), match[2], int(match[3])), path))
        elif not path.name.startswith("."):
            other.append(path.name)
    if not found:
        raise UserError(f"dataset.root={folder} holds no FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav: "
                        f"{FETCH.format(root=folder)}, or point dataset.root at the folder holding recordings/")
    if other:
        warnings.warn(f"ignored {len(other)} WAV file(s) in {folder} not named like FSDD recordings "
                      f"({{digit}}_{{speaker}}_{{index}}.wav), e.g. {sorted(other)[0]}", stacklevel=3)
    found.sort()
    indices = np.array([key[2] for key, _ in found])
    items = [(path, k) for k, ((_, path), keep) in enumerate(zip(found, _in_split(indices, split))) if keep]
    if not items:
        raise UserError(f"dataset.root={folder} holds no FSDD recordings of split={split}: "
                        f"{FETCH.format(root=folder.parent)}, or use dataset.split=all")
    clips, rows, _ = load_files(items, _load_fsdd_wav, "FSDD recording")
    return clips, np.array([found[k][0][0] for k in rows]), np.array([found[k][0][1] for k in rows])


def _fsdd_source(root: str) -> Path:
    """The packed .npz or the recordings folder that ``root`` names (see load_fsdd)."""
    path = Path(root).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"dataset.root={root} does not exist: {FETCH.format(root=root)}, or point dataset.root at "
                        f"a folder holding recordings/ or {FSDD_NPZ}")
    for candidate in (path / "recordings", path / FSDD_NPZ):  # the complete original layout first
        if candidate.exists():
            return candidate
    if any(FSDD_NAME.match(p.name) for p in path.glob("*.wav")):
        return path
    raise UserError(f"dataset.root={root} holds neither recordings/ nor {FSDD_NPZ}: {FETCH.format(root=root)}, "
                    f"or point dataset.root at the folder that holds them")


def load_fsdd(root: str, split: str = "train", sample_rate: int = 8000, seconds: float = 1.0,
              normalize: str = "peak") -> Dataset:
    """The Free Spoken Digit Dataset: spoken digits 0-9 (classes "0".."9"), 8 kHz mono recordings.

    ``root`` is the original layout (a folder holding ``recordings/``, or ``recordings/`` itself, of
    ``{digit}_{speaker}_{index}.wav``; data_prep/fsdd.py fetches it) or the packed copy
    (``fsdd_8k_int16.npz``, or the folder holding it). ``split``: "test" is recordings 0-4 of every
    (digit, speaker), the dataset's own rule; "train" the others; "all" both. Order: (digit, speaker,
    index). ``extras["speaker"]``: each recording's speaker, an index into FSDD_SPEAKERS (-1: someone else).
    Each clip (0.14-2.28 s) starts at t = 0 and is zero-padded at the end to T =
    round(seconds * sample_rate) samples; a longer one keeps its first T samples (digits are spoken
    from the start). Resampled from 8 kHz if ``sample_rate`` differs, then normalised per clip."""
    _check_choice(split, "split", FSDD_SPLITS)
    _check_choice(normalize, "normalize", NORMALIZATIONS)
    sample_rate = _check_rate(sample_rate)
    length = _num_samples(seconds, sample_rate)
    source = _fsdd_source(root)
    clips, digits, speakers = (_fsdd_npz if source.is_file() else _fsdd_recordings)(source, split)
    if not clips:
        raise UserError(f"dataset.root={root} holds no FSDD clips of split={split}: use dataset.split=all, "
                        f"or {FETCH.format(root=root)}")
    data = _stack(clips, FSDD_RATE, sample_rate, length, "start", None, normalize)
    return Dataset(data, torch.from_numpy(np.asarray(digits, np.int64)), DIGIT_NAMES, "fsdd",
                   extras={"speaker": torch.from_numpy(speaker_index(speakers))})


# --- a folder of audio files ---------------------------------------------------------------------

def _load_clip(path: Path, sample_rate: int, length: int, crop: str, rng: np.random.Generator,
               normalize: str) -> torch.Tensor:
    """One audio file -> [1, length] float32 at ``sample_rate`` Hz."""
    mono, rate = _read_mono(path)
    return _stack([mono], rate, sample_rate, length, crop, rng, normalize)[0]


def read_audio(path: str | Path, sample_rate: int, length: int, normalize: str = "peak") -> torch.Tensor:
    """One audio file (e.g. an init clip for editing) -> [1, length] float32 at ``sample_rate`` Hz,
    mixed to mono, resampled, cut or zero-padded at the end, normalised. Problems are a UserError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass the path of a WAV, FLAC or OGG file")
    try:
        return _load_clip(path, sample_rate, length, "start", None, normalize)
    except Exception as e:  # noqa: BLE001 - any decoding failure of a user file
        raise UserError(f"{path} could not be read as audio ({type(e).__name__}: {e}): pass a WAV, FLAC or OGG "
                        "file with sound in it") from None


def _folder_clip(path: Path, sample_rate: int, length: int, crop: str, seed: int, normalize: str) -> torch.Tensor:
    """One file of an audio folder -> [1, length]; a random crop is drawn from (seed, file name), so it does not
    depend on which files come before it (or on the worker that decodes it)."""
    rng = np.random.default_rng([seed, zlib.crc32(path.name.encode())])
    return _load_clip(path, sample_rate, length, crop, rng, normalize)


def load_audio_folder(root: str, sample_rate: int = 16000, seconds: float = 1.0, normalize: str = "peak",
                      crop: str = "random", seed: int = 0, split: str = "all") -> Files:
    """Audio files from ``root``: one sub-folder per class (class names sorted), or the files directly
    in ``root`` for one class named after it. WAV, FLAC or OGG (anything soundfile reads under those
    names), mixed down to mono (the channels' average), cut to ``seconds`` at the source rate (crop:
    "random", drawn from numpy's Generator([seed, crc32(file name)]); "center"; or "start"), zero-padded at
    the end if shorter, resampled to ``sample_rate``, and normalised per clip. ``split``: "all", or
    "train"/"test" (every 5th file of each class in scan order is "test"). Nothing is decoded here:
    mmdiff.data.stream.prepare does it, skipping files that are unreadable, empty, silent or hold
    NaN/infinity with one warning that counts them."""
    _check_choice(normalize, "normalize", NORMALIZATIONS)
    _check_choice(crop, "crop", CROPS)
    sample_rate = _check_rate(sample_rate)
    length = _num_samples(seconds, sample_rate)
    items, class_names = scan_folder(root, AUDIO_EXTENSIONS, "audio")
    items = split_items(items, split)
    load_one = partial(_folder_clip, sample_rate=sample_rate, length=length, crop=crop, seed=seed,
                       normalize=normalize)
    return Files(items, load_one, class_names, "audio_folder", "audio", root=Path(root).expanduser(),
                 options={"sample_rate": sample_rate, "length": length, "crop": crop, "seed": seed,
                          "normalize": normalize},
                 texts=file_texts([p for p, _ in items], Path(root).expanduser()))
