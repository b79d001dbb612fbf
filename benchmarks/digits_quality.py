"""Sample quality of a digits checkpoint, measured without any downloaded weights.

- accuracy: the share of class-conditional samples that an SVM trained on the real digits
  (scikit-learn, ~99% cross-validated accuracy on real data) assigns to the class they were asked for;
- FD: the Frechet distance between Gaussians fitted to the 64 raw pixels of 898 samples and of
  one random half of the real digits (898), beside the real-vs-real floor: the other half against
  the same half, so both numbers carry the same finite-sample bias.

A stand-in until the evaluation issue's learned-feature metrics exist.
Usage: python benchmarks/digits_quality.py CHECKPOINT [n_per_class] [sampler] [steps] [guidance]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from scipy import linalg
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from mmdiff.build import build_denoiser, build_sigmas
from mmdiff.checkpoint import load_checkpoint
from mmdiff.sample import generate


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
    x = generate(denoiser, shape=ckpt.data["shape"], labels=labels, n=len(labels), sampler=sampler, sigmas=sigmas,
                 guidance=guidance, null_label=10, seed=12345, batch_size=500)
    seconds = time.perf_counter() - t
    fake = ((x.clamp(-1, 1) + 1) / 2 * 16).flatten(1).numpy()  # back to the digits' 0..16 scale
    digits = load_digits()
    real, y = digits.data, digits.target
    clf = SVC(gamma=0.001, C=10).fit(real, y)
    acc = float((clf.predict(fake) == labels.numpy()).mean())
    perm = np.random.default_rng(0).permutation(len(real))
    half_a, half_b = real[perm[: len(real) // 2]], real[perm[len(real) // 2:]]
    result = {"step": ckpt.step, "sampler": sampler, "steps": steps, "guidance": guidance, "accuracy": acc,
              "fd": frechet(fake[: len(half_a)], half_b), "fd_real_halves": frechet(half_a, half_b),
              "sampling_seconds": round(seconds, 2)}
    print(result)
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *(f(a) for f, a in zip([int, str, int, float], args[1:])))
