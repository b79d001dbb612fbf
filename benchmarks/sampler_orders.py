"""Orders of convergence of the deterministic samplers on the exact Gaussian-mixture denoiser.

Every sampler in ``mmdiff.core.samplers.ORDERS`` (with the options listed there that make it
deterministic) solves the probability-flow ODE from the same noises on the analytic mixture of
tests/core/test_samplers.py (3 components in rank-3 tensors [B, 2, 3], float64, exact denoiser
from mmdiff.core.analytic), on the Karras schedule (rho 7, sigma 40 -> 0.005, then 0), at 8, 16, ...,
256 steps. The error is the mean over the noises of the L2 distance to a fine reference solve: classic
RK4 in lambda = -log sigma (where the ODE reads dx/dlambda = D - x) with uniform steps, then the same
last step to sigma = 0 as every sampler (x = D(x, sigma_min)). The reference's own error is estimated
from a solve with half its steps (RK4: e(N) ~ |x_N - x_{N/2}| / 15) and printed, so errors near it
are known to be floor, not method.

The table: the error at each step count and the local orders log2(e_n / e_2n) between successive
step counts; they tend to the expected order as the steps grow.

Usage: python benchmarks/sampler_orders.py [--steps 8,16,32,64,128,256] [--reference-steps 4000] [--n 32]
(about 10 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from mmdiff.core.analytic import GaussianMixture, rk4_in_lambda
from mmdiff.core.samplers import ORDERS, SAMPLERS
from mmdiff.core.schedules import karras

SIGMA_MIN, SIGMA_MAX = 0.005, 40.0


def mixture() -> GaussianMixture:
    """The mixture of tests/core/test_samplers.py: data of rank 3, so no sampler may assume images."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 3, generator=g, dtype=torch.float64) * 1.5
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.4]), torch.tensor([0.5, 0.3, 0.2]))


def mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).flatten(1).norm(dim=1).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="8,16,32,64,128,256",
                        help="comma-separated step counts, each the double of the last")
    parser.add_argument("--reference-steps", type=int, default=4000, help="RK4 steps of the reference solve")
    parser.add_argument("--n", type=int, default=32, help="number of starting noises")
    parser.add_argument("--seed", type=int, default=1, help="seed of the starting noises")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    start = time.perf_counter()

    gm = mixture()
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.n, *gm.shape, generator=g, dtype=torch.float64) * SIGMA_MAX
    ref = rk4_in_lambda(gm.denoise, x_T, SIGMA_MAX, SIGMA_MIN, args.reference_steps)
    ref_half = rk4_in_lambda(gm.denoise, x_T, SIGMA_MAX, SIGMA_MIN, args.reference_steps // 2)
    ref_error = mean_distance(ref, ref_half) / 15

    print(f"`python benchmarks/sampler_orders.py --steps {args.steps} --reference-steps {args.reference_steps} "
          f"--n {args.n} --seed {args.seed}`: mean L2 error over {args.n} noises against RK4 in lambda with "
          f"{args.reference_steps} steps (its own error ~{ref_error:.1e}); Karras schedule, sigma {SIGMA_MAX:g} -> "
          f"{SIGMA_MIN:g}, float64.\n")
    header = ["sampler", "expected"] + [f"e({n})" for n in steps] + ["local orders"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, (expected, options) in ORDERS.items():
        errors = []
        for n in steps:
            x = SAMPLERS[name](gm.denoise, x_T, karras(n, SIGMA_MIN, SIGMA_MAX), **options)
            errors.append(mean_distance(x, ref))
        local = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
        label = name + (" (" + ", ".join(f"{k} {v:g}" for k, v in options.items()) + ")" if options else "")
        row = [label, str(expected)] + [f"{e:.2e}" for e in errors] + [", ".join(f"{o:.2f}" for o in local)]
        print("| " + " | ".join(row) + " |")
    print(f"\n{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
