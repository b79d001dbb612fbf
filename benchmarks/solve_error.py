"""How far a trained model's few-step solves land from a fine solve of the same noises, in model space.

For each sampler and step count: the RMS distance between its samples and a fine Heun solve from the same noises
and labels (the classes in turn), at the given guidance, with the Karras schedule. A sampler whose error falls
steadily with the steps converges on this model; a sample metric that does not follow it (e.g. a FAD through a
decoder) is reacting to something the solver error does not show. Prints one JSON line per row.

Usage: python benchmarks/solve_error.py CHECKPOINT [--samplers unipc dpmpp_2m] [--steps 4 6 10 20] [--n 16]
    [--reference-steps 60] [--guidance 1.5]
"""

from __future__ import annotations

import argparse
import json

import torch

from mmdiff.model import Model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--samplers", nargs="+", default=["unipc", "dpmpp_2m"])
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 6, 10, 20])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--reference-steps", type=int, default=60)
    parser.add_argument("--guidance", type=float, default=1.5)
    args = parser.parse_args()
    model = Model.from_checkpoint(args.checkpoint)
    noise = torch.randn(args.n, *model.shape, generator=torch.Generator().manual_seed(0))
    k = len(model.class_names)
    labels = torch.arange(args.n) % k if k else None
    reference = model.sample(n=args.n, labels=labels, sampler="heun", steps=args.reference_steps,
                             guidance=args.guidance, noise=noise)
    for sampler in args.samplers:
        for steps in args.steps:
            out = model.sample(n=args.n, labels=labels, sampler=sampler, steps=steps, guidance=args.guidance,
                               noise=noise)
            print(json.dumps({"sampler": sampler, "steps": steps, "reference": f"heun {args.reference_steps}",
                              "rms": round(float((out - reference).pow(2).mean().sqrt()), 4)}), flush=True)


if __name__ == "__main__":
    main()
