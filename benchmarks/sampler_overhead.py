"""What a sampler adds to the network's time: per network evaluation, the sampler's own arithmetic
(measured with a denoiser that costs nothing: it returns a tensor made in advance) against one forward
pass of the small image U-Net (the default digits model, and the same U-Net at 32x32) at the same batch.

Usage: python benchmarks/sampler_overhead.py [batch] [steps]
"""

from __future__ import annotations

import sys
import time

import torch

from mmdiff.api import config
from mmdiff.build import build_denoiser, resolve_model_config
from mmdiff.core.samplers import SAMPLERS
from mmdiff.core.schedules import karras

from sampler_nfe import count_nfe, sampler_options  # noqa: E402  (benchmarks/ is the working folder)


def best_of(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def unet(size: int):
    """The default digits U-Net (conf/model/unet2d.yaml as the default run resolves it) at size x size."""
    cfg = config()
    info = {"shape": [1, size, size], "class_names": [str(i) for i in range(10)]}
    return build_denoiser(cfg, resolve_model_config(cfg.model, info), info)


def main(batch: int = 64, steps: int = 20) -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, {steps} steps")
    for size in (8, 32):
        net = unet(size).eval()
        x = torch.randn(batch, 1, size, size)
        sigma = torch.full((batch,), 1.0)
        labels = torch.zeros(batch, dtype=torch.long)
        with torch.no_grad():
            forward = best_of(lambda: net(x, sigma, labels))
        print(f"\n{size}x{size} U-Net ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M params): "
              f"forward {forward * 1e3:.2f} ms")
        print(f"| sampler | NFE | sampler time per NFE (ms) | share of a forward pass |\n|---|---|---|---|")
        fixed = torch.randn_like(x)
        for name in SAMPLERS:
            def free(x_, s_):
                return fixed
            options = sampler_options(name)
            sigmas = karras(steps, 0.002, 80.0).float()
            gens = [torch.Generator().manual_seed(i) for i in range(batch)]
            with torch.no_grad():
                total = best_of(lambda: SAMPLERS[name](free, x * 80.0, sigmas, generator=gens, **options))
            nfe = count_nfe(name, steps, options)
            per = total / max(nfe, 1)
            print(f"| {name} | {nfe} | {per * 1e3:.3f} | {per / forward:.2%} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
