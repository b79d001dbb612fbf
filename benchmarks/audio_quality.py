"""How recognisable generated audio is (the built-in notes or FSDD digits), without downloaded weights.

- class accuracy: a logistic-regression classifier on log-mel features (32 bands averaged over 8
  time segments, relative to the clip's peak) labels the class-conditional samples. It is fitted on
  the training split and checked on the held-out test split (notes: the same notes with variations
  that training never sees; FSDD: recordings 0-4 of every digit and speaker), both passed through the
  checkpoint's representation and back, so that what the representation loses (Griffin-Lim's phase
  for mel) is not counted against the model: the held-out accuracy is the ceiling a perfect model of
  that representation would reach;
- notes only, pitch stability: librosa.pyin's f0 track over the sustained part of each clip
  (50-350 ms): the share of voiced frames, the standard deviation of f0 in cents (real notes: vibrato
  of at most 10 cents), and the distance of the median f0 to the nearest semitone; the real clips'
  figures are those of a quarter of the held-out test split.

Usage: python benchmarks/audio_quality.py CHECKPOINT [n_per_class] [sampler] [steps] [guidance]
"""

from __future__ import annotations

import sys
import time

import librosa
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmdiff.build import build_dataset, build_denoiser, build_modality, build_sigmas
from mmdiff.checkpoint import load_checkpoint
from mmdiff.generate import Guidance, from_noise, generate


def features(waves: np.ndarray, rate: int) -> np.ndarray:
    """[N, T] -> [N, 32 * 8]: log-mel energies in 8 time segments, relative to each clip's peak."""
    mel = librosa.feature.melspectrogram(y=waves, sr=rate, n_fft=512, hop_length=128, n_mels=32)
    segments = np.stack([s.mean(-1) for s in np.array_split(mel, 8, axis=-1)], -1)
    logmel = np.log(segments + 1e-8)
    return (logmel - logmel.max(axis=(1, 2), keepdims=True)).reshape(len(waves), -1)


def pitch_stats(waves: np.ndarray, rate: int) -> dict:
    f0, voiced, _ = librosa.pyin(waves[:, int(0.05 * rate):int(0.35 * rate)], fmin=150, fmax=1200, sr=rate,
                                 frame_length=1024, hop_length=128)
    spread, detune = [], []
    for track, v in zip(f0, voiced):
        if v.sum() >= 3:
            cents = 1200 * np.log2(track[v] / 440.0)
            spread.append(cents.std())
            detune.append(abs((np.median(cents) + 50) % 100 - 50))
    return {"voiced": float(voiced.mean()), "f0_std_cents": float(np.median(spread)) if spread else None,
            "semitone_dev_cents": float(np.median(detune)) if detune else None}


def reference_sets(run_cfg: dict):
    """The train and (held-out) test splits of the dataset the checkpoint was trained on."""
    return tuple(build_dataset(run_cfg | {"dataset": run_cfg["dataset"] | {"split": split}})
                 for split in ("train", "test"))


def main(path: str, per_class: int = 25, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 1.5) -> dict:
    ckpt = load_checkpoint(path)
    modality = build_modality(ckpt.config["modality"])
    rate, length = modality.sample_rate, round(ckpt.config["dataset"]["seconds"] * modality.sample_rate)
    train, held_out = reference_sets(ckpt.config)

    def round_trip(data):
        return modality.decode(modality.encode(data))[:, 0, :length].numpy()

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(features(round_trip(train.data), rate), train.labels.numpy())
    ceiling = clf.score(features(round_trip(held_out.data), rate), held_out.labels.numpy())

    denoiser = build_denoiser(ckpt.config, ckpt.config["model"], ckpt.data)
    denoiser.load_state_dict(ckpt.ema)
    denoiser.eval()
    k = len(ckpt.data["class_names"])
    labels = torch.arange(k).repeat_interleave(per_class)
    sigmas = build_sigmas({"schedule": "karras", "schedule_options": {"rho": 7.0}}, steps, ckpt.config["diffusion"])
    t = time.perf_counter()
    x = generate(denoiser, from_noise(ckpt.data["shape"], sampler, sigmas), n=len(labels), labels=labels,
                 null_label=k, guidance=Guidance(guidance), seed=777, batch_size=50, device="cpu")
    seconds = time.perf_counter() - t
    waves = modality.decode(x)[:, 0, :length].numpy()
    result = {"step": ckpt.step, "dataset": ckpt.data.get("dataset"),
              "representation": ckpt.config["modality"].get("representation"), "sampler": sampler, "steps": steps,
              "guidance": guidance, "class_accuracy": float((clf.predict(features(waves, rate)) == labels.numpy()).mean()),
              "ceiling_held_out_real_round_trip": ceiling, "held_out": f"test split ({len(held_out)} clips)",
              "sampling_seconds": round(seconds, 1)}
    if ckpt.data.get("dataset") == "notes":
        result |= {f"generated_{k}": v for k, v in pitch_stats(waves, rate).items()}
        result |= {f"real_{k}": v for k, v in pitch_stats(held_out.data[::4, 0].numpy(), rate).items()}
    print(result)
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *(f(a) for f, a in zip([int, str, int, float], args[1:])))
