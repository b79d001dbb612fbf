"""Sample quality per CPU-minute: mmdiff's default digits run against denoising-diffusion-pytorch (issue 5, part 2).

Both train on the same data for the same wall-clock budget (``--minutes``, default 5) with the same torch
thread count, then draw 900 samples each, and both sample sets are scored with the same digits FD: mmdiff's
evaluator features and the protocol of ``mmdiff.eval.evaluate.evaluate`` (reference: half B of the 364
held-out digits of the test split, which neither model trains on; floor: half A against half B). The
figure of merit is the gap FD - floor.

- mmdiff: its default config (``python -m mmdiff``: the 1.08M-parameter class-conditional U-Net, EDM,
  batch 128, lr 2e-3, EMA) through ``mmdiff.api.train`` with ``trainer.max_seconds`` = the budget.
  Sampled as ``mode=eval`` does (dpmpp_2m, 20 steps, EMA weights, the classes in turn) with guidance 1.5
  (the default: class-conditional) and with guidance 0 (its unconditional model, trained on the 10 %
  of dropped labels); ``--mmdiff-runs unconditional`` trains ``model.num_classes=0`` instead (or as well).
- denoising-diffusion-pytorch: its ``Unet`` (``--ddpm-dim 24 --ddpm-mults 1 2 3``: 1.13M parameters, 3
  levels 8x8 -> 4x4 -> 2x2; it is unconditional) inside its ``GaussianDiffusion`` with the defaults (1000
  steps, sigmoid schedule, v-prediction), on the same 8x8 digits in [0, 1] (the 1,433 of the train split,
  as mmdiff's default config). Its ``Trainer`` needs image folders and accelerate, so a short loop here
  does what it does: the diffusion's forward loss, gradient clipping at 1, and its EMA (ema_pytorch, beta
  0.995, every 10 steps; sampled from); with mmdiff's optimizer settings: AdamW, lr 2e-3, betas (0.9,
  0.99), batch 128, 200 warm-up steps, batches drawn without replacement. Sampled with
  ``diffusion.sample``: DDIM (eta 0) with ``--ddpm-sampling-steps`` steps (default 250; 1000 = its
  ancestral DDPM sampler).

Each training budget counts the training loop only (as mmdiff's trainer.max_seconds does; mmdiff's loop
includes its periodic preview grids and checkpoints), not building, sampling or scoring.

Usage (the benchmark venv: pip install -e ".[bench]"):
    python benchmarks/compare_ddpm_pytorch.py [--minutes 5] [--threads 2] [--ddpm-sampling-steps 250 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch


class DoneRecord(logging.Handler):
    """Keeps the arguments of mmdiff's trainer's last log record (its "done: ..." line)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.args: tuple = ()

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("done:"):
            self.args = record.args


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def score(real, images: torch.Tensor, labels, evaluator) -> dict:
    """FD (and its floor, KID, precision/recall, class accuracy with labels) by mmdiff's evaluate()."""
    from mmdiff.eval.evaluate import evaluate
    from mmdiff.modalities.image import ImageModality
    result = evaluate(real, images, labels, ImageModality(), evaluator)
    m = result["metrics"]
    out = {"fd": m["fd"]["samples"], "floor": m["fd"]["floor"], "kid_x1e3": m["kid"]["samples"] * 1e3,
           "precision": m["precision"]["samples"], "recall": m["recall"]["samples"]}
    out["gap"] = out["fd"] - out["floor"]
    if "accuracy" in m:
        out["accuracy"] = m["accuracy"]["samples"]
    return out


# --- mmdiff -------------------------------------------------------------------------------------

def run_mmdiff(seconds: float, threads: int, n: int, out: Path, real, evaluator, extra: list[str]) -> list[dict]:
    from mmdiff import api
    overrides = [f"trainer.max_seconds={seconds}", f"trainer.num_threads={threads}", "trainer.progress=false", *extra]
    print(f"mmdiff: training, overrides {overrides}", flush=True)
    done = DoneRecord()
    logger = logging.getLogger("mmdiff.tasks.train")
    logger.addHandler(done)
    logger.setLevel(logging.INFO)
    t = time.perf_counter()
    try:
        ckpt = api.train(overrides, run_dir=out)
    finally:
        logger.removeHandler(done)
    wall = time.perf_counter() - t
    # the trainer's "done: %d steps (%d samples, %d skipped) in %.1f s" line
    steps, samples_seen, _, loop = done.args[:4]
    model = api.Model.from_checkpoint(ckpt)
    torch.set_num_threads(threads)
    train = {"params": n_params(model.denoiser), "steps": steps, "loop_seconds": round(loop, 1),
             "wall_seconds": round(wall, 1), "images_per_s": samples_seen / loop}
    print(f"mmdiff: {steps} steps in {loop:.1f} s (training loop), {wall:.0f} s with setup and final checkpoint",
          flush=True)
    results = []
    conditional = bool(model.class_names)
    for guidance in ((1.5, 0.0) if conditional else (1.0,)):
        t = time.perf_counter()
        x = model.sample(n=n, guidance=guidance, seed=0)   # dpmpp_2m, 20 steps, karras, EMA: as mode=eval
        sample_s = time.perf_counter() - t
        labels = model.labels(None, n) if conditional and guidance > 0 else None
        what = ("class-conditional, guidance 1.5" if guidance > 0 and conditional else
                "unconditional (guidance 0)" if conditional else "unconditional model")
        sampler = "dpmpp_2m, 20 steps" + (" (CFG: cond + uncond batch)" if guidance not in (0.0, 1.0) else "")
        results.append({"model": f"mmdiff, {what}", **train, "sampler": sampler, "sample_seconds": round(sample_s, 1),
                        **score(real, model.decode(x), labels, evaluator)})
        print(results[-1], flush=True)
    return results


# --- denoising-diffusion-pytorch ------------------------------------------------------------------

def run_ddpm(seconds: float, threads: int, n: int, train, real, evaluator, args) -> list[dict]:
    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    ddp.tqdm = lambda it, **kwargs: it  # its sampling loops print a progress bar per call
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    data = train.data.clone()  # [N, 1, 8, 8] in [0, 1]: GaussianDiffusion normalises to [-1, 1] itself
    unet = Unet(dim=args.ddpm_dim, dim_mults=tuple(args.ddpm_mults), channels=data.shape[1])
    diffusion = GaussianDiffusion(unet, image_size=data.shape[-1], timesteps=1000)
    opt = torch.optim.AdamW(diffusion.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = EMA(diffusion, beta=0.995, update_every=10)   # its Trainer's defaults
    batch, gen = min(args.batch, len(data)), torch.Generator().manual_seed(0)
    per_epoch = len(data) // batch
    print(f"denoising-diffusion-pytorch: Unet(dim={args.ddpm_dim}, dim_mults={tuple(args.ddpm_mults)}) "
          f"{n_params(unet) / 1e6:.3f}M parameters, objective {diffusion.objective}; training {seconds:.0f} s", flush=True)
    step, losses, log = 0, [], []
    diffusion.train()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if step % per_epoch == 0:
            perm = torch.randperm(len(data), generator=gen)
        idx = perm[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
        opt.zero_grad(set_to_none=True)
        loss = diffusion(data[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        ema.update()
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            log.append((step, round(time.perf_counter() - start, 1), sum(losses[-100:]) / 100))
            if not math.isfinite(log[-1][2]):
                raise RuntimeError(f"denoising-diffusion-pytorch diverged at step {step}: lower --lr")
    loop = time.perf_counter() - start
    print(f"denoising-diffusion-pytorch: {step} steps in {loop:.1f} s; loss every 100 steps: {log}", flush=True)
    train = {"params": n_params(unet), "steps": step, "loop_seconds": round(loop, 1), "wall_seconds": round(loop, 1),
             "images_per_s": step * batch / loop}
    sampler = ema.ema_model
    sampler.eval()
    results = []
    for steps in args.ddpm_sampling_steps:
        sampler.sampling_timesteps = steps
        sampler.is_ddim_sampling = steps < sampler.num_timesteps
        torch.manual_seed(0)
        t = time.perf_counter()
        images = torch.cat([sampler.sample(batch_size=min(args.sample_batch, n - i)) for i in range(0, n, args.sample_batch)])
        sample_s = time.perf_counter() - t
        name = f"DDIM (eta 0), {steps} steps" if sampler.is_ddim_sampling else "DDPM ancestral, 1000 steps"
        results.append({"model": "denoising-diffusion-pytorch (unconditional)", **train, "sampler": name,
                        "sample_seconds": round(sample_s, 1), **score(real, images.clamp(0, 1), None, evaluator)})
        print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each (wall-clock minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=900, help="samples drawn from each model")
    parser.add_argument("--ddpm-dim", type=int, default=24)
    parser.add_argument("--ddpm-mults", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ddpm-sampling-steps", type=int, nargs="+", default=[250],
                        help="DDIM steps (< 1000) or 1000 (DDPM ancestral); several: one score each")
    parser.add_argument("--lr", type=float, default=2e-3, help="denoising-diffusion-pytorch's (mmdiff's default)")
    parser.add_argument("--batch", type=int, default=128, help="denoising-diffusion-pytorch's (mmdiff's default)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up steps (mmdiff's default)")
    parser.add_argument("--sample-batch", type=int, default=900)
    parser.add_argument("--mmdiff-runs", nargs="+", choices=["conditional", "unconditional"], default=["conditional"],
                        help="mmdiff runs: the default (class-conditional) config and/or model.num_classes=0")
    parser.add_argument("--skip", choices=["mmdiff", "ddpm"], nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench/compare_ddpm_runs"), help="run folders")
    parser.add_argument("--json", type=Path, default=Path("/tmp/bench/compare_ddpm_pytorch.json"), help="results")
    args = parser.parse_args()

    from importlib.metadata import version

    from mmdiff.data.images import load_digits
    from mmdiff.eval.evaluator import load_or_train_evaluator
    from mmdiff.modalities.image import ImageModality

    torch.set_num_threads(args.threads)
    seconds = args.minutes * 60
    header = (f"torch {torch.__version__}, denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}, "
              f"{args.threads} threads; budget {seconds:.0f} s of training each (train split); {args.n} samples each, "
              "FD against the held-out test split")
    print(header, flush=True)
    train, real = load_digits(8, split="train"), load_digits(8, split="test")  # real: the held-out reference
    evaluator = load_or_train_evaluator(train, ImageModality(), held_out_data=real)
    torch.set_num_threads(args.threads)
    print(f"evaluator: held-out accuracy {evaluator.held_out_accuracy:.4f} ({evaluator.path})", flush=True)

    results = []
    if "mmdiff" not in args.skip:
        if "conditional" in args.mmdiff_runs:
            results += run_mmdiff(seconds, args.threads, args.n, args.out / "mmdiff", real, evaluator, [])
        if "unconditional" in args.mmdiff_runs:
            results += run_mmdiff(seconds, args.threads, args.n, args.out / "mmdiff_uncond", real, evaluator,
                                  ["model.num_classes=0"])
    if "ddpm" not in args.skip:
        results += run_ddpm(seconds, args.threads, args.n, train, real, evaluator, args)

    lines = ["| model | params | train steps | loop s | images/s | sampler | sample s | FD | floor | gap = FD - floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.3f}M | {r['steps']} | {r['loop_seconds']:.0f} | "
                     f"{r['images_per_s']:.0f} | {r['sampler']} | {r['sample_seconds']:.0f} | {r['fd']:.3f} | "
                     f"{r['floor']:.3f} | {r['gap']:.3f} |")
    print("\n" + header + "\n\n" + "\n".join(lines))
    theirs = [r for r in results if r["model"].startswith("denoising")]
    ours = [r for r in results if r["model"].startswith("mmdiff")]
    if theirs and ours:
        print("\nRatio of gaps, mmdiff / denoising-diffusion-pytorch (goal: <= 0.5):")
        for a in ours:
            for b in theirs:
                ratio = a["gap"] / b["gap"] if b["gap"] > 0 else float("inf")
                note = " (mmdiff's FD is below the floor)" if a["gap"] < 0 else ""
                print(f"- {a['model']} / theirs with {b['sampler']}: {a['gap']:.3f} / {b['gap']:.3f} = {ratio:.3f} "
                      f"({'met' if ratio <= 0.5 else 'NOT met'}){note}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"header": header, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
