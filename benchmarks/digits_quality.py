"""Sample quality of a digits checkpoint, measured without any downloaded weights.

- accuracy: the share of class-conditional samples that an SVM trained on the training split of the
  digits (the 1,433 a model trains on; scikit-learn, 98.9% accurate on the held-out test split) assigns
  to the class they were asked for;
- FD: the Frechet distance between Gaussians fitted to the 64 raw pixels of 182 samples (a random subset
  across all classes) and of one random half of the held-out test split (182 of its 364 digits, which no
  model trained on), beside the real-vs-real floor: the other half against the same half, so both numbers carry the same
  finite-sample bias.

A stand-in until the evaluation issue's learned-feature metrics exist.
Usage: python benchmarks/digits_quality.py CHECKPOINT [n_per_class] [sampler] [steps] [guidance]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from scipy import linalg
from sklearn.svm import SVC

from mmdiff.build import build_denoiser, build_sigmas
from mmdiff.checkpoint import load_checkpoint
from mmdiff.data.images import load_digits
from mmdiff.generate import Guidance, from_noise, generate


def frechet(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)); eps on the diagonals, since the
    digits' corner pixels are (almost) constant and their covariance is singular."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = np.cov(a, rowvar=False) + eps * np.eye(a.shape[1])
    cb = np.cov(b, rowvar=False) + eps * np.eye(a.shape[1])
    covmean = linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def main(path: str, per_class: int = 90, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 1.5) -> dict:
    ckpt = load_checkpoint(path)
    denoiser = build_denoiser(ckpt.config, ckpt.config["model"], ckpt.data)
    denoiser.load_state_dict(ckpt.ema)
    denoiser.eval()
    labels = torch.arange(10).repeat_interleave(per_class)
    sigmas = build_sigmas({"schedule": "karras", "schedule_options": {"rho": 7.0}}, steps, ckpt.config["diffusion"])
    t = time.perf_counter()
    x = generate(denoiser, from_noise(ckpt.data["shape"], sampler, sigmas), n=len(labels), labels=labels,
                 null_label=10, guidance=Guidance(guidance), seed=12345, batch_size=500, device="cpu")
    seconds = time.perf_counter() - t
    fake = ((x.clamp(-1, 1) + 1) / 2 * 16).flatten(1).numpy()  # back to the digits' 0..16 scale
    train, test = (load_digits(split=split) for split in ("train", "test"))
    clf = SVC(gamma=0.001, C=10).fit(train.data.flatten(1).numpy() * 16, train.labels.numpy())
    acc = float((clf.predict(fake) == labels.numpy()).mean())
    real = test.data.flatten(1).numpy() * 16  # the FD reference: held-out digits, on the 0..16 scale
    perm = np.random.default_rng(0).permutation(len(real))
    half_a, half_b = real[perm[: len(real) // 2]], real[perm[len(real) // 2:]]
    # as many samples as half A, drawn across all classes (the samples come class by class)
    subset = np.random.default_rng(1).permutation(len(fake))[: len(half_a)]
    result = {"step": ckpt.step, "reference": f"test split ({len(real)} held-out digits)", "sampler": sampler,
              "steps": steps, "guidance": guidance, "accuracy": acc,
              "fd": frechet(fake[subset], half_b), "fd_real_halves": frechet(half_a, half_b),
              "sampling_seconds": round(seconds, 2)}
    print(result)
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *(f(a) for f, a in zip([int, str, int, float], args[1:])))
