"""Check a folder of your own audio or images once: what is there, what is broken, and a manifest.

    python data_prep/scan.py FOLDER --kind audio|image [--manifest OUT.csv | --no-manifest]
                             [--spectrograms DIR [--sample-rate 16000] [--seconds 1.0] [--shard-size 1000]]

Lists the files the way ``dataset=audio_folder`` / ``dataset=image_folder`` do (one sub-folder per
class, or the files directly in FOLDER), opens every one the way those loaders do, and reports: files
per class, every unreadable file with the reason, files with other extensions that are ignored, and for
audio the sample rates, channel counts and durations, for images the sizes and colour modes. It writes
the manifest (default FOLDER/manifest.csv; the format is in mmdiff/data/manifest.py): one row per file
with its class, ok/error and its properties, so that a loader can start from it without walking the
folder or retrying broken files. Re-run it after adding or removing files.

``--spectrograms DIR`` (audio) also precomputes log-mel spectrograms of the loadable files into .npz
shards, DIR/shard_00000.npz, ... of up to ``--shard-size`` clips each, every one a plain NumPy archive
(no pickles; ``np.load(path)`` reads it) holding:

- ``log_mel``: float16 [n, n_mels, frames], log(mel + eps) of each clip: the clip exactly as
  ``dataset=audio_folder`` loads it with ``crop=start`` and ``normalize=peak`` (mono, first ``seconds``
  or zero-padded, resampled to ``sample_rate``), through the mel filterbank of the audio modality's
  log-mel representation (mmdiff.modalities.spectral.LogMel: STFT magnitude with a Hann window,
  center=True, HTK mel scale); frames = round(seconds * sample_rate) // hop_length + 1, not padded;
- ``labels``: int64 [n], class indices into ``class_names``; ``paths``: str [n], relative to FOLDER;
- ``class_names``: str [C]; scalars ``sample_rate``, ``seconds``, ``n_fft``, ``hop_length``,
  ``n_mels``, ``eps``. LogMel.encode(wave) = scale * (log_mel - offset) of the clip padded to its
  ``padded_length``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ""):  # run as a file (python data_prep/scan.py): make data_prep and mmdiff importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import count_table, table  # noqa: E402
from mmdiff.atomic import atomic_open  # noqa: E402
from mmdiff.data.audio import AUDIO_EXTENSIONS, _load_clip, _read_mono  # noqa: E402
from mmdiff.data.images import IMAGE_EXTENSIONS  # noqa: E402
from mmdiff.data.manifest import MANIFEST_NAME, write_manifest  # noqa: E402
from mmdiff.data.scan import scan_folder  # noqa: E402
from mmdiff.errors import UserError  # noqa: E402
from mmdiff.modalities.spectral import LogMel  # noqa: E402

KINDS = {"audio": AUDIO_EXTENSIONS, "image": IMAGE_EXTENSIONS}
COLUMNS = {"audio": ("sample_rate", "frames", "channels", "seconds"), "image": ("width", "height", "mode")}
DURATION_EDGES = (0.5, 1, 2, 5, 10, 30, 60)  # seconds: the duration histogram's bin edges
SHOW_BROKEN = 20  # how many broken files the report names (the manifest has them all)


def _reason(e: Exception, path: Path) -> str:
    """Why a file failed, naming it by its base name (the manifest's path column says where it is)."""
    return f"{type(e).__name__}: {e}".replace(str(path), path.name) if str(e) else type(e).__name__


# --- one file ------------------------------------------------------------------------------------

def probe_audio(path: Path) -> dict:
    """sample_rate, frames, channels, seconds (from the header), and ok/error: whether the audio
    loaders would use the file (they skip unreadable, empty, non-finite and silent files)."""
    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - any failure to open a user file means: report it, say why
        return {"ok": False, "error": _reason(e, path)}
    row = {"sample_rate": info.samplerate, "frames": info.frames, "channels": info.channels,
           "seconds": round(info.frames / info.samplerate, 6) if info.samplerate else None}
    try:
        _read_mono(path)  # the audio loaders' own check
    except Exception as e:  # noqa: BLE001
        return row | {"ok": False, "error": _reason(e, path)}
    return row | {"ok": True, "error": ""}


def probe_image(path: Path) -> dict:
    """width, height, mode, and ok/error: whether Pillow decodes the whole file, as the image loader does."""
    row = {}
    try:
        with Image.open(path) as im:
            row = {"width": im.width, "height": im.height, "mode": im.mode}
            im.load()  # decode now: a truncated file fails here
    except Exception as e:  # noqa: BLE001
        return row | {"ok": False, "error": _reason(e, path)}
    return row | {"ok": True, "error": ""}


def scan(folder: Path, kind: str) -> tuple[list[dict], list[str]]:
    """One row per file of ``folder`` (path relative to it, class, ok, error, properties) and the
    class names, in the loaders' order."""
    items, class_names = scan_folder(folder, KINDS[kind], kind)
    probe = probe_audio if kind == "audio" else probe_image
    rows = []
    for path, c in tqdm(items, desc=f"checking {kind} files", unit="file", disable=None):
        rows.append({"path": path.relative_to(folder).as_posix(), "class": class_names[c]} | probe(path))
    return rows, class_names


def other_files(folder: Path, kind: str, rows: list[dict]) -> Counter:
    """Extensions of the visible files that the loaders ignore (not one of the kind's extensions)."""
    listed = {r["path"] for r in rows}
    found = Counter()
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.as_posix() not in listed \
                and p.name not in (MANIFEST_NAME, MANIFEST_NAME + ".tmp"):
            found[p.suffix.lower() or "(none)"] += 1
    return found


# --- the report ----------------------------------------------------------------------------------

def _histogram(counter: Counter, unit: str = "") -> str:
    return ", ".join(f"{value}{unit}: {n}" for value, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _duration_bins(seconds: list[float]) -> list[tuple[str, int]]:
    edges = (0.0, *DURATION_EDGES, math.inf)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = sum(lo <= s < hi for s in seconds)
        if n:
            bins.append((f"{lo:g}-{hi:g} s" if hi < math.inf else f">= {lo:g} s", n))
    return bins


def report(rows: list[dict], class_names: list[str], kind: str, folder: Path, ignored: Counter) -> str:
    """The scan as text: counts per class, broken files, properties, and the command to train on it."""
    counts = Counter((r["class"], "ok" if r["ok"] else "broken") for r in rows)
    lines = [count_table(counts, class_names, ["ok", "broken"], "class")]
    broken = [r for r in rows if not r["ok"]]
    good = [r for r in rows if r["ok"]]
    lines.append(f"{len(rows)} {kind} files in {len(class_names)} classes: {len(good)} ok, {len(broken)} broken")
    for r in broken[:SHOW_BROKEN]:
        lines.append(f"  broken: {r['path']}: {r['error']}")
    if len(broken) > SHOW_BROKEN:
        lines.append(f"  and {len(broken) - SHOW_BROKEN} more broken files: see the manifest")
    if ignored:
        lines.append(f"ignored {sum(ignored.values())} files with other extensions ({_histogram(ignored)}); "
                     f"the loaders read {', '.join(KINDS[kind])}")
    if not good:
        return "\n".join(lines)
    if kind == "audio":
        seconds = [r["seconds"] for r in good]
        lines.append(f"sample rates: {_histogram(Counter(r['sample_rate'] for r in good), ' Hz')}")
        lines.append(f"channels: {_histogram(Counter(r['channels'] for r in good))}")
        lines.append(f"durations: min {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s, "
                     f"max {max(seconds):.3f} s")
        lines.append(table(["duration", "files"], _duration_bins(seconds)))
        rate = Counter(r["sample_rate"] for r in good).most_common(1)[0][0]
        lines.append(f"Train on it:\n  python -m mmdiff modality=audio dataset=audio_folder dataset.root={folder} "
                     f"dataset.sample_rate={rate} dataset.seconds={min(max(seconds), 10.0):.2g}")
    else:
        sizes = Counter(f"{r['width']}x{r['height']}" for r in good)
        shown = Counter(dict(sizes.most_common(10)))
        more = f"; and {len(sizes) - 10} other sizes" if len(sizes) > 10 else ""
        lines.append(f"sizes: {_histogram(shown)}{more}")
        modes = Counter(r["mode"] for r in good)
        lines.append(f"modes: {_histogram(modes)}")
        channels = 1 if set(modes) <= {"L", "1", "I;16", "I", "F", "LA"} else 3
        size = min(min(r["width"], r["height"]) for r in good)
        lines.append(f"Train on it:\n  python -m mmdiff dataset=image_folder dataset.root={folder} "
                     f"dataset.size={min(size, 64)} dataset.channels={channels}")
    return "\n".join(lines)


# --- spectrogram shards --------------------------------------------------------------------------

def write_spectrograms(folder: Path, rows: list[dict], class_names: list[str], out: Path, sample_rate: int = 16000,
                       seconds: float = 1.0, shard_size: int = 1000, n_fft: int = 512, hop_length: int = 64,
                       n_mels: int = 64) -> list[Path]:
    """Log-mel spectrograms of the ok rows into out/shard_*.npz (format: this module's docstring)."""
    representation = LogMel(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    length = round(seconds * sample_rate)
    good = [r for r in rows if r["ok"]]
    index = {name: i for i, name in enumerate(class_names)}
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in tqdm(range(0, len(good), shard_size), desc="spectrogram shards", unit="shard", disable=None):
        chunk = good[start:start + shard_size]
        waves = torch.cat([_load_clip(folder / r["path"], sample_rate, length, "start", None, "peak") for r in chunk])
        with torch.no_grad():
            log_mel = torch.log(representation.mel(waves) + representation.eps)
        path = out / f"shard_{start // shard_size:05d}.npz"
        with atomic_open(path, "wb") as f:
            np.savez(f, log_mel=log_mel.numpy().astype(np.float16),
                     labels=np.array([index[r["class"]] for r in chunk], np.int64),
                     paths=np.array([r["path"] for r in chunk]), class_names=np.array(class_names),
                     sample_rate=np.int64(sample_rate), seconds=np.float64(seconds), n_fft=np.int64(n_fft),
                     hop_length=np.int64(hop_length), n_mels=np.int64(n_mels), eps=np.float64(representation.eps))
        shards.append(path)
    return shards


# --- the command ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder: one sub-folder per class, or the files directly in it")
    parser.add_argument("--kind", choices=sorted(KINDS), required=True, help="what the files are")
    parser.add_argument("--manifest", help=f"where to write the manifest CSV (default: FOLDER/{MANIFEST_NAME}, "
                                           "where the loaders look for it; paths in it are relative to FOLDER)")
    parser.add_argument("--no-manifest", action="store_true", help="only report, write no manifest")
    parser.add_argument("--spectrograms", metavar="DIR", help="audio: precompute log-mel shards into DIR")
    parser.add_argument("--sample-rate", type=int, default=16000, help="spectrograms: sample rate (default 16000)")
    parser.add_argument("--seconds", type=float, default=1.0, help="spectrograms: clip length (default 1.0)")
    parser.add_argument("--shard-size", type=int, default=1000, help="spectrograms: clips per shard (default 1000)")
    parser.add_argument("--n-fft", type=int, default=512, help="spectrograms: STFT size (default 512)")
    parser.add_argument("--hop-length", type=int, default=64, help="spectrograms: STFT hop (default 64)")
    parser.add_argument("--n-mels", type=int, default=64, help="spectrograms: mel bands (default 64)")
    args = parser.parse_args(argv)

    folder = Path(args.folder).expanduser()
    try:
        if args.spectrograms and args.kind != "audio":
            raise UserError("--spectrograms is for --kind audio")
        if args.sample_rate < 1 or args.seconds <= 0 or args.shard_size < 1:
            raise UserError("--sample-rate, --seconds and --shard-size must be positive")
        rows, class_names = scan(folder, args.kind)
        print(report(rows, class_names, args.kind, folder, other_files(folder, args.kind, rows)))
        if not args.no_manifest:
            manifest = Path(args.manifest).expanduser() if args.manifest else folder / MANIFEST_NAME
            write_manifest(manifest, rows, COLUMNS[args.kind])
            print(f"wrote {manifest} ({len(rows)} rows)")
        if args.spectrograms:
            shards = write_spectrograms(folder, rows, class_names, Path(args.spectrograms).expanduser(),
                                        args.sample_rate, args.seconds, args.shard_size, args.n_fft,
                                        args.hop_length, args.n_mels)
            print(f"wrote {len(shards)} spectrogram shards to {args.spectrograms}")
    except (UserError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
