"""Round trip (audio -> representation -> audio) of each audio representation, and its model-space scale.

On the FSDD test split (300 spoken digits, 8 kHz, as recorded) and on the built-in notes dataset
(``dataset=notes`` defaults, its train split: 384 clips of 0.5 s), per clip: encode, decode, cut back to
the clip's length, then
- SNR (dB) of the waveform (``spectral.snr_db``),
- magnitude SNR (dB): ``snr_db`` of the STFT magnitudes (512-sample windows, hop 128), which ignores phase,
- LSD (dB, ``spectral.log_spectral_distance``),
- encode + decode time per clip (one clip per call, milliseconds, median).
Then the model-space mean and std (all values of all clips pooled), which the default scales aim at
~0 and ~0.5: on the FSDD test clips as recorded (each padded only to its own ``padded_length``), on
the same clips as ``dataset=fsdd`` delivers them (peak-normalised to 0.95, cut or padded to 1 s), and
on the notes.
Prints markdown tables (docs/audio.md holds a copy).

Usage: python benchmarks/audio_roundtrip.py [path/to/fsdd_8k_int16.npz] [max_clips]
"""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmdiff.data.audio import load_fsdd
from mmdiff.data.notes import load_notes
from mmdiff.modalities.spectral import REPRESENTATIONS, log_spectral_distance, snr_db, stft_magnitude

SAMPLE_RATE = 8000
DEFAULT_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "fsdd_8k_int16.npz"


def fsdd_test_clips(path: str | Path, max_clips: int | None = None) -> list[torch.Tensor]:
    """The FSDD test split (recordings 0-4 of every digit and speaker) as float32 clips [T] in [-1, 1)."""
    d = dict(np.load(path))
    if int(d["sample_rate"]) != SAMPLE_RATE:
        raise ValueError(f"expected {SAMPLE_RATE} Hz audio, got {int(d['sample_rate'])}")
    rows = np.flatnonzero(d["splits"] == "test")[:max_clips]
    return [torch.from_numpy(d["audio"][d["offsets"][k]:d["offsets"][k] + d["lengths"][k]].astype(np.float32) / 32768)
            for k in rows]


def round_trip(representation, clips: list[torch.Tensor]) -> dict:
    snr, mag_snr, lsd, ms = [], [], [], []
    for clip in clips:
        wave = clip[None, None]
        t = time.perf_counter()
        est = representation.decode(representation.encode(wave))[..., :clip.shape[-1]]
        ms.append((time.perf_counter() - t) * 1000)
        snr.append(snr_db(wave, est).item())
        mag_snr.append(snr_db(stft_magnitude(wave), stft_magnitude(est)).item())
        lsd.append(log_spectral_distance(wave, est).item())
    return {"snr": np.array(snr), "mag_snr": np.array(mag_snr), "lsd": np.array(lsd), "ms": np.median(ms)}


def model_space_stats(representation, clips: list[torch.Tensor]) -> tuple[float, float]:
    values = torch.cat([representation.encode(c[None, None]).flatten() for c in clips])
    return values.mean().item(), values.std().item()


def fmt(v: float) -> str:
    return "inf (exact)" if math.isinf(v) else f"{v:.2f}"


def main(path: str | Path = DEFAULT_NPZ, max_clips: int | None = None) -> dict:
    torch.manual_seed(0)
    sets = {"FSDD test": fsdd_test_clips(path, max_clips), "notes": list(load_notes().data[:, 0])}
    reps = {name: cls(SAMPLE_RATE) if name == "mel" else cls() for name, cls in REPRESENTATIONS.items()}
    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for set_name, clips in sets.items():
        print(f"\n{set_name}: {len(clips)} clips\n")
        print("| representation | SNR mean / median (dB) | magnitude SNR mean / median (dB) | LSD mean / median (dB) "
              "| encode + decode (ms per clip) |")
        print("| --- | --- | --- | --- | --- |")
        for name, rep in reps.items():
            r = results[set_name, name] = round_trip(rep, clips)
            print(f"| {name} | {fmt(r['snr'].mean())} / {fmt(np.median(r['snr']))} "
                  f"| {fmt(r['mag_snr'].mean())} / {fmt(np.median(r['mag_snr']))} "
                  f"| {r['lsd'].mean():.2f} / {np.median(r['lsd']):.2f} | {r['ms']:.2f} |")
    sets = {"FSDD test as recorded": sets["FSDD test"],
            "FSDD test as dataset=fsdd gives it": list(load_fsdd(path, split="test").data[:max_clips, 0]),
            "notes": sets["notes"]}
    print("\nmodel space, all values pooled: mean / std\n")
    print("| representation | " + " | ".join(sets) + " |")
    print("| --- |" + " --- |" * len(sets))
    for name, rep in reps.items():
        stats = [model_space_stats(rep, clips) for clips in sets.values()]
        results["stats", name] = stats
        print(f"| {name} | " + " | ".join(f"{m:.2f} / {s:.2f}" for m, s in stats) + " |")
    return results


if __name__ == "__main__":
    main(*(sys.argv[1:2] or [DEFAULT_NPZ]), *(int(a) for a in sys.argv[2:3]))
