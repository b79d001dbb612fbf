"""How recognisable generated notes are, measured without downloaded weights.

- timbre accuracy: a logistic-regression classifier on simple timbre features (mean log-mel spectrum,
  RMS envelope over time), fitted on the built-in notes (seed 0, the training set) and checked on a
  held-out set synthesised with another seed, labels the class-conditional samples. Both sets go
  through the checkpoint's representation and back first, so that what the representation loses
  (Griffin-Lim's phase for mel) is not counted against the model: the held-out accuracy is the
  ceiling a perfect model of that representation would reach;
- pitch stability: librosa.pyin's f0 track over the sustained part of each clip (50-350 ms): the
  share of voiced frames and the standard deviation of f0 in cents (real notes: vibrato of at most
  10 cents), and the distance of the median f0 to the nearest semitone.

Usage: python benchmarks/notes_quality.py CHECKPOINT [n_per_class] [sampler] [steps] [guidance]
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

from mmdiff.build import build_denoiser, build_modality, build_sigmas
from mmdiff.checkpoint import load_checkpoint
from mmdiff.data.notes import load_notes
from mmdiff.sample import generate

RATE = 8000


def features(waves: np.ndarray) -> np.ndarray:
    """[N, T] -> [N, 64 + 10]: mean log-mel spectrum (relative to its peak) and the RMS envelope."""
    mel = librosa.feature.melspectrogram(y=waves, sr=RATE, n_fft=512, hop_length=128, n_mels=64)
    logmel = np.log(mel.mean(-1) + 1e-8)
    logmel -= logmel.max(-1, keepdims=True)
    segments = np.array_split(waves[:, :4000], 10, axis=-1)
    env = np.stack([np.sqrt((s**2).mean(-1)) for s in segments], -1)
    return np.concatenate([logmel, env / (env.max(-1, keepdims=True) + 1e-8)], -1)


def pitch_stats(waves: np.ndarray) -> dict:
    f0, voiced, _ = librosa.pyin(waves[:, int(0.05 * RATE):int(0.35 * RATE)], fmin=150, fmax=1200, sr=RATE,
                                 frame_length=1024, hop_length=128)
    voiced_share, spread, detune = [], [], []
    for track, v in zip(f0, voiced):
        voiced_share.append(v.mean())
        if v.sum() >= 3:
            cents = 1200 * np.log2(track[v] / 440.0)
            spread.append(cents.std())
            detune.append(abs((np.median(cents) + 50) % 100 - 50))
    return {"voiced": float(np.mean(voiced_share)), "f0_std_cents": float(np.median(spread)) if spread else None,
            "semitone_dev_cents": float(np.median(detune)) if detune else None}


def classifier(modality=None):
    """The timbre classifier, fitted on notes passed through ``modality`` (encode, decode) if given,
    and its accuracy on held-out notes passed through it likewise."""
    train, held_out = load_notes(seed=0), load_notes(seed=1)

    def waves(data):
        if modality is not None:
            data = modality.decode(modality.encode(data))
        return data[:, 0, :4000].numpy()

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(features(waves(train.data)), train.labels.numpy())
    acc = clf.score(features(waves(held_out.data)), held_out.labels.numpy())
    return clf, acc, train


def main(path: str, per_class: int = 25, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 1.5) -> dict:
    ckpt = load_checkpoint(path)
    modality = build_modality(ckpt.config["modality"])
    clf, real_acc, real = classifier(modality)
    denoiser = build_denoiser(ckpt.config, ckpt.config["model"], ckpt.data)
    denoiser.load_state_dict(ckpt.ema)
    denoiser.eval()
    k = len(ckpt.data["class_names"])
    labels = torch.arange(k).repeat_interleave(per_class)
    sigmas = build_sigmas({"schedule": "karras", "schedule_options": {"rho": 7.0}}, steps, ckpt.config["diffusion"])
    t = time.perf_counter()
    x = generate(denoiser, shape=ckpt.data["shape"], labels=labels, n=len(labels), sampler=sampler, sigmas=sigmas,
                 guidance=guidance, null_label=k, seed=777, batch_size=50)
    seconds = time.perf_counter() - t
    waves = modality.decode(x)[:, 0, :4000].numpy()
    result = {"step": ckpt.step, "representation": ckpt.config["modality"].get("representation"),
              "sampler": sampler, "steps": steps, "guidance": guidance,
              "timbre_accuracy": float((clf.predict(features(waves)) == labels.numpy()).mean()),
              "ceiling_held_out_real_round_trip": real_acc, "sampling_seconds": round(seconds, 1)}
    result |= {f"generated_{k}": v for k, v in pitch_stats(waves).items()}
    result |= {f"real_{k}": v for k, v in pitch_stats(real.data[::4, 0].numpy()).items()}
    print(result)
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *(f(a) for f, a in zip([int, str, int, float], args[1:])))
