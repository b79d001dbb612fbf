"""Training throughput of mmdiff's image U-Net against diffusers' UNet2DModel, on this CPU (issue 5, part 1).

What is measured, per model size, at batch 32 on 32x32x3 images (CIFAR-like), unconditional for both:
one full training step = forward, loss, backward, gradient clipping (max norm 1) and an AdamW step.

- mmdiff: ``mmdiff.models.unet.UNet`` inside its EDM preconditioning (``build_denoiser``), with the EDM
  loss of ``mmdiff.tasks.train`` (log-normal sigma, EDM weighting): the lines of its training step, less
  EMA.
- diffusers: ``UNet2DModel`` with the same layout (widths, 2 residual blocks per level, attention at the
  16x16 level and in the middle, 32 channels per head, the same GroupNorm groups) and
  ``resnet_time_scale_shift="scale_shift"`` (ADM's conditioning, as mmdiff's), trained with the eps loss of
  its examples (``DDPMScheduler.add_noise``, MSE on the noise). Its parameter count then equals mmdiff's
  to 0.01 %. A second diffusers row uses its own default ``resnet_time_scale_shift="default"``: the
  issue's ~1.6M / ~6.5M parameters, 7 % fewer than mmdiff's.
- bf16: the same steps under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (mmdiff's
  ``trainer.precision=bf16``), for mmdiff and, for reference, diffusers.

Timings are interleaved (A, B, C, ... A, B, C, ...) after a warm-up, so that noise from other work on the
machine hits every model alike; the table gives the median and best step time. FLOPs per step come from
``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward (the optimizer's elementwise work
is not counted; CPU attention kernels, which torch's counter does not know, are counted with its SDPA
formulas), in fp32 for every model; its bf16 row does the same arithmetic and reuses the count. The
matmul peaks are the best of several 2048x2048 matmuls in float32 and bfloat16; a 3x3 convolution's rate
is printed beside them, since the share of the "peak" can pass 100 % (see ``conv_rate``).

``--quality`` adds the bf16 sample-quality check: two digits trainings of the default config with the
same trainer.max_steps, fp32 and bf16 (on the train split), each scored by ``python -m mmdiff mode=eval ...
n=900`` (digits FD against the held-out test split, and its real-vs-real floor) at guidance 1.5 and 0,
once per sampling seed (the same seeds for both), and compared by the paired difference.

Usage (the benchmark venv: pip install -e ".[bench]"):
    python benchmarks/compare_throughput.py [--threads 2] [--steps 10] [--quality [--quality-steps 1500]
                                             [--quality-seeds 0 1000 ...] [--quality-guidance 1.5 0]]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

# (label, mmdiff overrides, diffusers block_out_channels, GroupNorm groups)
SIZES = {
    "small": ([32, 64, 64], 8),    # ~1.7M parameters (diffusers default shift: 1.62M)
    "large": ([64, 128, 128], 32),  # ~6.9M parameters (diffusers default shift: 6.47M)
}


# --- FLOP counting -------------------------------------------------------------------------------

def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter registers the CUDA attention kernels only; F.scaled_dot_product_attention on the CPU runs
# these two. The counter looks ops up by their overload packet (aten.x, not aten.x.default).
CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


# --- matmul peaks --------------------------------------------------------------------------------

def _best_rate(fn, flops: float, repeats: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return _best_rate(lambda: a @ b, 2 * n**3, repeats)


def conv_rate(dtype: torch.dtype, ch: int = 128, size: int = 16, batch: int = 32, repeats: int = 8) -> float:
    """FLOP/s of the best of ``repeats`` 3x3 convolutions (ch -> ch, size x size, batch), counted as direct
    convolutions (2 ch^2 9 size^2 batch FLOPs) like the FLOP counter does. oneDNN may use Winograd for
    these, which does less arithmetic, so this rate can exceed the matmul peak."""
    x, w = torch.randn(batch, ch, size, size).to(dtype), torch.randn(ch, ch, 3, 3).to(dtype)
    return _best_rate(lambda: F.conv2d(x, w, padding=1), 2 * ch * ch * 9 * size * size * batch, repeats)


# --- the competitors ----------------------------------------------------------------------------

class Runner:
    """One model with its optimizer and a ``step()`` that runs one full training step."""

    def __init__(self, name: str, library: str, precision: str, model: torch.nn.Module, loss_fn, batch: int,
                 shape: tuple[int, ...], lr: float = 1e-4):
        self.name, self.library, self.precision, self.model, self.loss_fn = name, library, precision, model, loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.gen = torch.Generator().manual_seed(0)
        self.x0 = torch.rand((batch, *shape), generator=self.gen) * 2 - 1   # stands in for images in [-1, 1]
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        self.times: list[float] = []
        self.flops = 0
        model.train()

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def forward_backward(self, autocast=None) -> torch.Tensor:
        """Forward, loss and backward, under this runner's precision unless ``autocast`` is given."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, self.x0, self.gen, autocast or self.autocast)
        loss.backward()
        return loss

    def step(self) -> float:
        t = time.perf_counter()
        self.forward_backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return time.perf_counter() - t


def mmdiff_runner(widths: list[int], groups: int, precision: str, batch: int, channels: int, size: int) -> Runner:
    from mmdiff.api import config
    from mmdiff.build import _instantiate, build_denoiser, resolve_model_config
    from mmdiff.core.losses import denoising_loss
    from mmdiff.core.schedules import append_dims

    base = widths[0]
    mult = [w // base for w in widths]
    cfg = config([f"model.channels={base}", f"model.channel_mult=[{','.join(map(str, mult))}]",
                  "model.attn_levels=[1]", f"model.groups={groups}", "model.num_classes=0"])
    info = {"shape": [channels, size, size], "class_names": []}
    denoiser = build_denoiser(cfg, resolve_model_config(cfg.model, info), info)
    noise_levels = _instantiate(cfg.diffusion.noise, "diffusion.noise")
    weighting = _instantiate(cfg.diffusion.weighting, "diffusion.weighting")

    def loss_fn(model, x0, gen, autocast):  # mmdiff/tasks/train.py's train_step, one micro-batch, no labels
        sigma = noise_levels(len(x0), gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_noisy = x0 + append_dims(sigma, x0.ndim) * noise
        with autocast:
            denoised = model(x_noisy, sigma, None)
        return denoising_loss(denoised, x0, weighting(sigma, model)).mean()

    return Runner(f"mmdiff {precision}", "mmdiff", precision, denoiser, loss_fn, batch, (channels, size, size))


def diffusers_runner(widths: list[int], groups: int, precision: str, batch: int, channels: int, size: int,
                     shift: str = "scale_shift") -> Runner:
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(widths), layers_per_block=2,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=groups, attention_head_dim=32, resnet_time_scale_shift=shift)
    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def loss_fn(model, x0, gen, autocast):  # diffusers' train_unconditional.py: eps prediction, MSE
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        x_noisy = scheduler.add_noise(x0, noise, t)
        with autocast:
            pred = model(x_noisy, t).sample
        return F.mse_loss(pred.float(), noise)

    name = f"diffusers {precision}" + ("" if shift == "scale_shift" else " (default shift)")
    return Runner(name, "diffusers", precision, unet, loss_fn, batch, (channels, size, size))


# --- the measurement ----------------------------------------------------------------------------

def measure(runners: list[Runner], warmup: int, steps: int) -> None:
    """Interleaved: round r runs one step of every runner in turn; the first ``warmup`` rounds are dropped."""
    for r in range(warmup + steps):
        for runner in runners:
            t = runner.step()
            if r >= warmup:
                runner.times.append(t)
    for runner in runners:  # the model's FLOPs, counted in fp32: a bf16 row does the same arithmetic
        runner.flops = count_flops(lambda: runner.forward_backward(torch.autocast("cpu", enabled=False)))


def table(size_name: str, runners: list[Runner], batch: int, peaks: dict) -> tuple[str, list[dict]]:
    base = next(r for r in runners if r.name == "diffusers fp32")
    base_ips = batch / statistics.median(base.times)
    rows, out = [], []
    for r in runners:
        med, best = statistics.median(r.times), min(r.times)
        ips = batch / med
        achieved = r.flops / med
        row = {"size": size_name, "model": r.name, "params": r.num_params, "median_ms": med * 1e3, "best_ms": best * 1e3,
               "images_per_s": ips, "gflop_per_step": r.flops / 1e9, "achieved_gflops": achieved / 1e9,
               "peak_share": achieved / peaks[r.precision], "vs_diffusers_fp32": ips / base_ips,
               "times_ms": [round(t * 1e3, 2) for t in r.times]}
        out.append(row)
        rows.append(f"| {size_name} | {r.name} | {r.num_params / 1e6:.3f}M | {med * 1e3:.0f} ({best * 1e3:.0f}) | "
                    f"{ips:.1f} | {r.flops / 1e9:.2f} | {achieved / 1e9:.1f} | {achieved / peaks[r.precision]:.1%} "
                    f"({r.precision}) | {ips / base_ips:.2f}x |")
    return "\n".join(rows), out


# --- bf16 sample quality (optional) --------------------------------------------------------------

def quality(steps: int, out_dir: Path, threads: int, seeds: list[int], guidances: list[float]) -> tuple[str, dict]:
    """Train the default digits config for ``steps`` steps in fp32 and in bf16; score both checkpoints with
    mode=eval (900 samples) at each guidance scale, once per sampling seed, the same seeds for both, so that
    bf16 - fp32 is a paired difference whose spread shows the sampling noise. (Training noise, another
    seed of the training itself, is not varied.)"""
    runs = {}
    for precision in ("fp32", "bf16"):
        run = out_dir / f"compare_quality_{precision}"
        train = [sys.executable, "-m", "mmdiff", f"trainer.precision={precision}", f"trainer.max_steps={steps}",
                 "trainer.max_seconds=100000", f"trainer.num_threads={threads}", "trainer.progress=false",
                 f"hydra.run.dir={run}"]
        _run(train, f"{run}.train.log")
        done = re.findall(r"done: (\d+) steps \((\d+) samples, \d+ skipped\) in ([\d.]+) s",
                          Path(f"{run}.train.log").read_text())
        step, samples, loop = done[-1]
        runs[precision] = {"run": run, "step": int(step), "train_seconds": float(loop),
                           "images_per_s": int(samples) / float(loop), "scores": {}}
    floor = None
    for g in guidances:
        for seed in seeds:
            for precision, r in runs.items():
                out = Path(f"{r['run']}_eval_g{g}_s{seed}")
                _run([sys.executable, "-m", "mmdiff", "mode=eval", f"checkpoint={r['run']}/last.safetensors",
                      "n=900", f"seed={seed}", f"guidance={g}", f"hydra.run.dir={out}"], f"{out}.log")
                metrics = json.loads((out / "eval.json").read_text())["metrics"]
                floor = metrics["fd"]["floor"]
                r["scores"].setdefault(str(g), []).append(
                    {"seed": seed, "fd": metrics["fd"]["samples"], "accuracy": metrics.get("accuracy", {}).get("samples")})

    lines = [f"training: fp32 {runs['fp32']['images_per_s']:.0f} images/s, bf16 {runs['bf16']['images_per_s']:.0f} "
             f"images/s ({runs['fp32']['step']} steps each); FD against the held-out test split, floor (real vs real) "
             f"{floor:.3f}; seeds {seeds}", "",
             "| guidance | fp32 FD mean (sd) | bf16 FD mean (sd) | bf16 / fp32 | paired bf16 - fp32 (se) | "
             "class accuracy fp32 / bf16 | bf16 no worse |", "|---|---|---|---|---|---|---|"]
    summary = {}
    for g in map(str, guidances):
        fd = {p: [x["fd"] for x in runs[p]["scores"][g]] for p in runs}
        acc = {p: statistics.mean(x["accuracy"] or 0.0 for x in runs[p]["scores"][g]) for p in runs}
        diff = [b - a for a, b in zip(fd["fp32"], fd["bf16"])]
        se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        ok = statistics.mean(diff) <= 2 * se if len(diff) > 1 else diff[0] <= 0  # not worse beyond the noise
        sd = {p: statistics.stdev(v) if len(v) > 1 else float("nan") for p, v in fd.items()}
        summary[g] = {"fd_mean": {p: statistics.mean(v) for p, v in fd.items()}, "fd_sd": sd,
                      "diff_mean": statistics.mean(diff), "diff_se": se, "no_worse": ok, "accuracy": acc}
        m = summary[g]["fd_mean"]
        lines.append(f"| {g} | {m['fp32']:.3f} ({sd['fp32']:.3f}) | {m['bf16']:.3f} ({sd['bf16']:.3f}) | "
                     f"{m['bf16'] / m['fp32']:.3f} | {statistics.mean(diff):+.4f} ({se:.4f}) | "
                     f"{acc['fp32']:.3f} / {acc['bf16']:.3f} | {'yes' if ok else 'NO'} |")
    lines.append("\n(no worse: the mean paired difference is below two of its standard errors)")
    results = {p: {k: v for k, v in r.items() if k != "run"} for p, r in runs.items()} | {"floor": floor,
                                                                                          "summary": summary}
    return "\n".join(lines), results


def _run(cmd: list[str], log: str) -> None:
    print("$ python", " ".join(cmd[1:]), flush=True)
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="image size (pixels)")
    parser.add_argument("--channels", type=int, default=3, help="image channels (3: RGB, 1: grayscale)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES),
                        help="model sizes to time (none: only the peaks and, with --quality, the quality check)")
    parser.add_argument("--no-extras", action="store_true",
                        help="only the three rows of the goals (mmdiff fp32 and bf16, diffusers fp32)")
    parser.add_argument("--quality", action="store_true", help="also the bf16 vs fp32 digits FD check (~12 min)")
    parser.add_argument("--quality-steps", type=int, default=1500)
    parser.add_argument("--quality-seeds", type=int, nargs="+", default=[0, 1000, 2000, 3000, 4000],
                        help="sampling seeds of the quality check (the same for fp32 and bf16)")
    parser.add_argument("--quality-guidance", type=float, nargs="+", default=[1.5, 0.0],
                        help="guidance scales of the quality check (1.5: the default; 0: unconditional)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench"), help="folder for the JSON and quality runs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    import diffusers
    header = (f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}, "
              f"{torch.get_num_threads()} threads; batch {args.batch}, {args.size}x{args.size}x{args.channels}, "
              f"unconditional; {args.warmup} warm-up + {args.steps} timed steps each, interleaved")
    print(header, flush=True)
    start = time.perf_counter()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    convs = {"fp32": conv_rate(torch.float32), "bf16": conv_rate(torch.bfloat16)}
    print(f"\nmatmul peaks (2048x2048, best of 8): float32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bfloat16 {peaks['bf16'] / 1e9:.1f} GFLOP/s ({peaks['bf16'] / peaks['fp32']:.2f}x); 3x3 convolution "
          f"(128 channels, 16x16, batch 32): float32 {convs['fp32'] / 1e9:.1f}, bfloat16 {convs['bf16'] / 1e9:.1f} "
          f"GFLOP/s", flush=True)

    lines = ["| size | model | params | ms/step median (best) | images/s | GFLOP/step | achieved GFLOP/s | "
             "of matmul peak | images/s vs diffusers fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    results = []
    for size_name in args.sizes:
        widths, groups = SIZES[size_name]
        common = (widths, groups)
        shape = dict(batch=args.batch, channels=args.channels, size=args.size)
        runners = [mmdiff_runner(*common, "fp32", **shape), diffusers_runner(*common, "fp32", **shape),
                   mmdiff_runner(*common, "bf16", **shape)]
        if not args.no_extras:
            runners += [diffusers_runner(*common, "bf16", **shape),
                        diffusers_runner(*common, "fp32", **shape, shift="default")]
        measure(runners, args.warmup, args.steps)
        text, rows = table(size_name, runners, args.batch, peaks)
        lines.append(text)
        results += rows
        print(f"\n{size_name} done ({time.perf_counter() - start:.0f} s)\n" + text, flush=True)

    print("\n" + "\n".join(lines))
    print("\nGoals (median images/s):")
    goals = {}
    for size_name in args.sizes:
        by = {r["model"]: r for r in results if r["size"] == size_name}
        fp32 = by["mmdiff fp32"]["vs_diffusers_fp32"]
        bf16 = by["mmdiff bf16"]["vs_diffusers_fp32"]
        goals[size_name] = {"fp32_ratio": fp32, "bf16_ratio": bf16}
        print(f"- {size_name}: mmdiff fp32 / diffusers fp32 = {fp32:.2f}x (goal >= 1: {'met' if fp32 >= 1 else 'NOT met'}); "
              f"mmdiff bf16 / diffusers fp32 = {bf16:.2f}x (goal >= 1.5: {'met' if bf16 >= 1.5 else 'NOT met'})")
    print(f"\nthroughput part: {time.perf_counter() - start:.0f} s")

    record = {"header": header, "peaks_gflops": {k: v / 1e9 for k, v in peaks.items()},
              "conv3x3_gflops": {k: v / 1e9 for k, v in convs.items()}}
    if args.sizes:
        (args.out / "compare_throughput.json").write_text(json.dumps(record | {"rows": results, "goals": goals},
                                                                     indent=2) + "\n")
    if args.quality:
        print(f"\nbf16 quality: the default digits config, {args.quality_steps} steps each, FD of 900 samples "
              f"per seed and guidance", flush=True)
        text, q = quality(args.quality_steps, args.out, args.threads, args.quality_seeds, args.quality_guidance)
        print(text)
        (args.out / "compare_quality.json").write_text(json.dumps(record | {"quality": q}, indent=2) + "\n")


if __name__ == "__main__":
    main()
