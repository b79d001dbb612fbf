"""The training loop: one visible loop (nanoGPT-style), modality-agnostic.

Each step: draw a batch x0 and noise levels sigma, denoise x0 + sigma * n, and minimise the
weighted error lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 (EDM Eq. 2) with AdamW. Around it:
learning-rate warm-up, gradient clipping, EMA, label dropout for classifier-free guidance, mixed
precision, gradient accumulation, torch.compile, DistributedDataParallel under torchrun,
metrics.csv, a progress bar, periodic sample grids and atomic checkpoints.

Batches: ``trainer.batch_size`` is the global batch of one optimizer step. Its indices, noise levels,
noise and label dropout are drawn from generators that every process holds in the same state, and
process r of N works on the r-th slice of it (in ``trainer.grad_accum`` micro-batches): N processes
compute the same step as one process with the same global batch, up to the order of float sums.
The data order is a function of (seed, step), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .build import (_instantiate, build_dataset, build_denoiser, build_modality, build_sigmas, data_info,
                    pick_device, resolve_labels, resolve_modality_config, resolve_model_config, to_container)
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .core.ema import EMA
from .core.guidance import drop_labels
from .core.losses import denoising_loss
from .core.schedules import append_dims
from .distributed import World, any_true, close_world, init_world, mean_over_world
from .errors import UserError
from .sample import generate

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Batches:
    """Deterministic mini-batches without replacement: epoch e is a permutation drawn from seed + e,
    and step s reads batch s % per_epoch of epoch s // per_epoch (the last partial batch is dropped)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = max(1, n // batch_size)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return self._perm[k * self.batch_size:(k + 1) * self.batch_size]


class MetricsLog:
    """metrics.csv: one row every trainer.log_every steps, flushed as written."""

    def __init__(self, path: Path, unit: str, append: bool):
        self.fields = ["step", "samples_seen", "seconds", "loss", "lr", "grad_norm", f"{unit}_per_s", "skipped"]
        new = not (append and path.exists())
        self.file = open(path, "w" if new else "a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(self.fields)

    def write(self, row: dict) -> None:
        self.writer.writerow([row[f] for f in self.fields])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _check_resume(ckpt: Checkpoint, resolved: dict, info: dict, path) -> None:
    for key in ("model", "diffusion", "modality"):
        if ckpt.config.get(key) != resolved.get(key):
            raise UserError(f"trainer.resume={path} was trained with a different {key} config "
                            f"({ckpt.config.get(key)}) than this run ({resolved.get(key)}): resume with the same "
                            f"{key} options, or start a new run without trainer.resume")
    if ckpt.data["shape"] != info["shape"]:
        raise UserError(f"trainer.resume={path} was trained on data of shape {ckpt.data['shape']}, this run's data "
                        f"has shape {info['shape']}: resume on the same dataset options")


def _check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} is unknown: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("trainer.precision=fp16 needs a GPU (float16 autocast with a gradient scaler): "
                        "use trainer.precision=bf16 or fp32 on the CPU")


def _micro_batch(batch_size: int, world: World, accum: int) -> int:
    """Per-process micro-batch size: the global batch split over processes and accumulation steps."""
    if batch_size % (world.size * accum):
        raise UserError(f"trainer.batch_size={batch_size} does not split into {world.size} process(es) x "
                        f"{accum} accumulation step(s): use a multiple of {world.size * accum}")
    return batch_size // (world.size * accum)


def train(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Train as ``cfg`` says, writing into ``run_dir``; returns the path of the last checkpoint."""
    world = init_world(pick_device(cfg.device))
    try:
        return _train(cfg, Path(run_dir), world)
    finally:
        close_world(world)


def _train(cfg: DictConfig, run_dir: Path, world: World) -> Path:
    t = cfg.trainer
    device = world.device
    _check_precision(t.precision, device)
    torch.manual_seed(cfg.seed)
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    elif world.distributed and device.type == "cpu":  # N processes share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // world.size))

    # data, in model space, on the device
    modality_cfg = resolve_modality_config(cfg)
    modality = build_modality(modality_cfg)
    dataset = build_dataset(cfg)
    x_data = modality.encode(dataset.data).to(device)
    y_data = dataset.labels.to(device)
    info = data_info(x_data, dataset)
    model_cfg = resolve_model_config(cfg.model, info)
    resolved = to_container(cfg) | {"model": model_cfg, "modality": modality_cfg}

    denoiser = build_denoiser(cfg, model_cfg, info).to(device)
    channels_last = bool(t.channels_last) and x_data.ndim == 4
    if channels_last:
        denoiser = denoiser.to(memory_format=torch.channels_last)
    conditional = bool(model_cfg.get("num_classes"))
    null_label = len(dataset.class_names)
    noise_levels = _instantiate(cfg.diffusion.noise, "diffusion.noise")
    weighting = _instantiate(cfg.diffusion.weighting, "diffusion.weighting")
    params = list(denoiser.parameters())
    opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    ema = EMA(denoiser, t.ema_halflife, t.ema_rampup)
    gen = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(t.batch_size, len(dataset))
    micro = _micro_batch(batch_size, world, t.grad_accum)
    batches = Batches(len(dataset), batch_size, cfg.seed)
    step = samples_seen = 0

    if t.resume:
        ckpt = load_checkpoint(t.resume)
        _check_resume(ckpt, resolved, info, t.resume)
        denoiser.load_state_dict(ckpt.model)
        ema.averaged.load_state_dict(ckpt.ema)
        if ckpt.optimizer is not None:
            opt.load_state_dict(ckpt.optimizer)
        if "scaler" in ckpt.extra:
            scaler.load_state_dict(ckpt.extra["scaler"])
        gen.set_state(ckpt.rng["train"])
        torch.set_rng_state(ckpt.rng["torch"])
        if device.type == "cuda" and "cuda" in ckpt.rng:
            torch.cuda.set_rng_state(ckpt.rng["cuda"], device)
        step, samples_seen = ckpt.step, ckpt.samples_seen
        log.info("resumed from %s at step %d", t.resume, step)

    model = denoiser
    if world.distributed:
        model = DistributedDataParallel(denoiser, device_ids=[device] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model, backend=t.compile_backend)
    autocast = torch.autocast(device.type, dtype=PRECISIONS[t.precision], enabled=t.precision != "fp32")

    ckpt_path = run_dir / "last.safetensors"
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
        log.info("training %s (%.2fM parameters) on %s: %d items of shape %s, %d classes; %d process(es), "
                 "global batch %d; run folder %s", model_cfg.get("_target_"), sum(p.numel() for p in params) / 1e6,
                 dataset.name, len(dataset), info["shape"], len(dataset.class_names), world.size, batch_size, run_dir)

    def checkpoint() -> None:
        if not world.is_main:
            return
        if not all(torch.isfinite(p).all() for p in params):
            log.error("weights are not finite at step %d: checkpoint not written", step)
            return
        rng = {"train": gen.get_state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(ckpt_path, Checkpoint(
            config=resolved, data=info, step=step, samples_seen=samples_seen,
            model=denoiser.state_dict(), ema=ema.averaged.state_dict(), optimizer=opt.state_dict(), rng=rng,
            extra={"scaler": scaler.state_dict()} if scaler.is_enabled() else {}))

    preview_labels = resolve_labels(None, cfg.n, dataset.class_names if conditional else [])
    preview_sigmas = build_sigmas(cfg.sampler, cfg.steps, cfg.diffusion)

    def preview() -> Path | None:
        if not world.is_main:
            return None
        x = generate(ema.averaged, shape=info["shape"], labels=preview_labels, n=cfg.n, sampler=cfg.sampler.name,
                     sigmas=preview_sigmas, guidance=cfg.guidance, null_label=null_label, seed=cfg.seed,
                     batch_size=cfg.batch_size, sampler_options=dict(cfg.sampler.options), device=device)
        path = run_dir / "samples" / f"step_{step:07d}.png"
        return modality.save_grid(x, preview_labels, dataset.class_names if conditional else None, path)

    def train_step() -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward over this process's share of the global batch: (loss, grad norm)."""
        idx = batches.indices(step).to(device)
        sigma = noise_levels(batch_size, gen).to(device)
        noise = torch.randn((batch_size, *x_data.shape[1:]), generator=gen).to(device)
        labels = drop_labels(y_data[idx], t.label_dropout, null_label, gen) if conditional else None
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for a in range(t.grad_accum):
            part = slice((world.rank * t.grad_accum + a) * micro, (world.rank * t.grad_accum + a + 1) * micro)
            x0, s = x_data[idx[part]], sigma[part]
            x_noisy = x0 + append_dims(s, x0.ndim) * noise[part]
            if channels_last:
                x_noisy = x_noisy.contiguous(memory_format=torch.channels_last)
            sync = a == t.grad_accum - 1 or not world.distributed
            with (nullcontext() if sync else model.no_sync()), autocast:
                denoised = model(x_noisy, s, None if labels is None else labels[part])
            loss = denoising_loss(denoised, x0, weighting(s, denoiser)).mean() / t.grad_accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip else math.inf)
        return loss_sum, grad_norm

    metrics = MetricsLog(run_dir / "metrics.csv", getattr(modality, "unit", "samples"),
                         append=bool(t.resume)) if world.is_main else None
    bar = tqdm(total=t.max_steps, initial=step, disable=not (t.progress and world.is_main), dynamic_ncols=True,
               unit="step")
    start = time.perf_counter()
    window_start, window_items, losses, skipped, nonfinite_in_a_row = start, 0, [], 0, 0
    lr = t.lr
    model.train()
    try:
        while step < t.max_steps and not any_true(time.perf_counter() - start >= t.max_seconds, world):
            loss, grad_norm = train_step()
            # fp16: the scaler skips steps with overflowing gradients by itself; only a non-finite
            # loss means divergence. Otherwise non-finite gradients do too (and are never applied).
            bad = not torch.isfinite(loss) or (not scaler.is_enabled() and not torch.isfinite(grad_norm))
            if any_true(bad, world):
                skipped += 1
                nonfinite_in_a_row += 1
                if scaler.is_enabled():
                    scaler.update()
                if nonfinite_in_a_row >= t.max_nonfinite:
                    raise UserError(f"training diverged: {nonfinite_in_a_row} steps in a row had a non-finite loss or "
                                    f"gradient (step {step}); lower trainer.lr (now {t.lr}) or set trainer.grad_clip. "
                                    f"The last good checkpoint is {ckpt_path}")
                continue
            nonfinite_in_a_row = 0
            lr = t.lr * min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else t.lr
            for group in opt.param_groups:
                group["lr"] = lr
            scaler.step(opt)
            scaler.update()
            step += 1
            samples_seen += batch_size
            ema.update(denoiser, batch_size, samples_seen)
            losses.append(loss)
            window_items += batch_size
            bar.update(1)

            if step % t.log_every == 0:
                mean_loss = mean_over_world(torch.stack(losses).mean(), world).item()
                now = time.perf_counter()
                rate = window_items / (now - window_start)
                if world.is_main:
                    metrics.write({"step": step, "samples_seen": samples_seen, "seconds": round(now - start, 3),
                                   "loss": f"{mean_loss:.6g}", "lr": f"{lr:.6g}",
                                   "grad_norm": f"{grad_norm.item():.4g}", metrics.fields[6]: round(rate, 1),
                                   "skipped": skipped})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", **{f"{metrics.fields[6][:-6]}/s": f"{rate:.0f}"})
                    # with a time budget, show the bar against the steps that will fit in it
                    steps_per_s = t.log_every / (now - window_start)
                    bar.total = min(t.max_steps, int(step + max(0.0, t.max_seconds - (now - start)) * steps_per_s))
                    bar.refresh()
                window_start, window_items, losses = now, 0, []
            if t.sample_every and step % t.sample_every == 0:
                preview()
            if t.checkpoint_every and step % t.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: writing a checkpoint before exiting", step)
        checkpoint()
        raise
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()

    elapsed = time.perf_counter() - start
    checkpoint()
    grid = preview()
    if world.is_main:
        log.info("done: %d steps (%d samples) in %.1f s; checkpoint %s; samples %s", step, samples_seen, elapsed,
                 ckpt_path, grid)
    return ckpt_path
