"""What the factorised (2+1)-D video U-Net saves: the cost of one training step (forward + backward of
the raw network, fp32) and the parameter count of conf/model/video_unet.yaml (temporal: factorized, VDM)
against conf/model/video_unet_3d.yaml (temporal: full: 3x3x3 convolutions and joint space-time
attention, RaMViD) at the same widths, on clips of the built-in moving digits' size, and both again
with patch_size 1 (what the [1, 2, 2] patches save).

The variants take turns within every repetition, so that a machine shared with other jobs slows them
alike; the table gives the median of the timed steps after the warm-up ones, and the fastest step (other
jobs only ever add time, so on a shared machine the fastest is the closer to the cost).

Usage: OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/video_cost.py [--batch 16] [--frames 8] [--size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def build(name: str, channels: int, classes: int, cond_channels: int, **overrides) -> torch.nn.Module:
    """The network of conf/model/<name>.yaml with its ``auto`` options set as a run on the data would."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.in_channels, cfg.num_classes, cfg.cond_channels = channels, classes, cond_channels
    for key, value in overrides.items():
        cfg[key] = value
    net = instantiate(cfg)
    # Give the zero-initialised layers weights, as after training (a zero branch costs the same, but
    # this way nothing is special).
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16, help="clips per training step")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=16, help="frame height and width")
    ap.add_argument("--channels", type=int, default=1, help="data channels")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--cond-channels", type=int, default=0, help="model.cond_channels (known frames and mask)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    common = dict(channels=args.channels, classes=args.classes, cond_channels=args.cond_channels)
    variants = {
        "video_unet (factorised (2+1)-D)": build("video_unet", **common),
        "video_unet_3d (full 3-D)": build("video_unet_3d", **common),
        "video_unet, patch_size=1": build("video_unet", **common, patch_size=1),
        "video_unet_3d, patch_size=1": build("video_unet_3d", **common, patch_size=1),
    }
    B = args.batch
    x = torch.randn(B, args.channels, args.frames, args.size, args.size)
    c_noise = torch.randn(B)
    labels = torch.randint(0, args.classes, (B,)) if args.classes else None
    cond = torch.randn(B, args.cond_channels, *x.shape[2:]) if args.cond_channels else None
    for net in variants.values():
        net.check_input_shape(x.shape[2:])

    def step(net: torch.nn.Module) -> float:
        net.zero_grad(set_to_none=True)
        t = time.perf_counter()
        net(x, c_noise, labels, cond).square().mean().backward()
        return time.perf_counter() - t

    times = {name: [] for name in variants}
    for rep in range(args.warmup + args.steps):
        for name, net in variants.items():
            seconds = step(net)
            if rep >= args.warmup:
                times[name].append(seconds)

    base = statistics.median(times[next(iter(variants))])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, batch {B} of "
          f"{args.channels}x{args.frames}x{args.size}x{args.size}, forward + backward, median of {args.steps} "
          f"steps after {args.warmup} warm-up\n")
    print("| network | parameters | ms per training step (median) | fastest step (ms) | cost vs video_unet (median) |")
    print("|---|---|---|---|---|")
    for name, net in variants.items():
        params = sum(p.numel() for p in net.parameters())
        median = statistics.median(times[name])
        print(f"| {name} | {params / 1e6:.2f}M | {median * 1e3:.0f} | {min(times[name]) * 1e3:.0f} | "
              f"{median / base:.2f}x |")


if __name__ == "__main__":
    main()
