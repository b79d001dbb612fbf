"""The training loop: one visible loop (nanoGPT-style), modality-agnostic.

Each step: draw a batch x0 and noise levels sigma, denoise x0 + sigma * n, and minimise the
weighted error lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 (EDM Eq. 2) with AdamW. Around it:
learning-rate warm-up, gradient clipping, EMA, label dropout for classifier-free guidance,
metrics.csv, a progress bar, periodic sample grids and atomic checkpoints. The data order is a
function of (seed, step) and every random number comes from saved generators, so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .build import (_instantiate, build_dataset, build_denoiser, build_modality, build_sigmas, data_info,
                    pick_device, resolve_labels, resolve_modality_config, resolve_model_config, to_container)
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .core.ema import EMA
from .core.guidance import drop_labels
from .core.losses import denoising_loss
from .core.schedules import append_dims
from .errors import UserError
from .sample import generate

log = logging.getLogger(__name__)


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


def train(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Train as ``cfg`` says, writing into ``run_dir``; returns the path of the last checkpoint."""
    run_dir = Path(run_dir)
    t = cfg.trainer
    torch.manual_seed(cfg.seed)
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    device = pick_device(cfg.device)

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
    conditional = bool(model_cfg.get("num_classes"))
    null_label = len(dataset.class_names)
    noise_levels = _instantiate(cfg.diffusion.noise, "diffusion.noise")
    weighting = _instantiate(cfg.diffusion.weighting, "diffusion.weighting")
    params = list(denoiser.parameters())
    opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    ema = EMA(denoiser, t.ema_halflife, t.ema_rampup)
    gen = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(t.batch_size, len(dataset))
    batches = Batches(len(dataset), batch_size, cfg.seed)
    step = samples_seen = 0

    if t.resume:
        ckpt = load_checkpoint(t.resume)
        _check_resume(ckpt, resolved, info, t.resume)
        denoiser.load_state_dict(ckpt.model)
        ema.averaged.load_state_dict(ckpt.ema)
        if ckpt.optimizer is not None:
            opt.load_state_dict(ckpt.optimizer)
        gen.set_state(ckpt.rng["train"])
        torch.set_rng_state(ckpt.rng["torch"])
        step, samples_seen = ckpt.step, ckpt.samples_seen
        log.info("resumed from %s at step %d", t.resume, step)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
    ckpt_path = run_dir / "last.safetensors"
    n_params = sum(p.numel() for p in params)
    log.info("training %s (%.2fM parameters) on %s: %d items of shape %s, %d classes; run folder %s",
             model_cfg.get("_target_"), n_params / 1e6, dataset.name, len(dataset), info["shape"],
             len(dataset.class_names), run_dir)

    def checkpoint() -> None:
        if not all(torch.isfinite(p).all() for p in params):
            log.error("weights are not finite at step %d: checkpoint not written", step)
            return
        save_checkpoint(ckpt_path, Checkpoint(
            config=resolved, data=info, step=step, samples_seen=samples_seen,
            model=denoiser.state_dict(), ema=ema.averaged.state_dict(), optimizer=opt.state_dict(),
            rng={"train": gen.get_state(), "torch": torch.get_rng_state()}))

    preview_labels = resolve_labels(None, cfg.n, dataset.class_names if conditional else [])
    preview_sigmas = build_sigmas(cfg.sampler, cfg.steps, cfg.diffusion)

    def preview() -> Path:
        x = generate(ema.averaged, shape=info["shape"], labels=preview_labels, n=cfg.n, sampler=cfg.sampler.name,
                     sigmas=preview_sigmas, guidance=cfg.guidance, null_label=null_label, seed=cfg.seed,
                     batch_size=cfg.batch_size, sampler_options=dict(cfg.sampler.options), device=device)
        path = run_dir / "samples" / f"step_{step:07d}.png"
        return modality.save_grid(x, preview_labels, dataset.class_names if conditional else None, path)

    metrics = MetricsLog(run_dir / "metrics.csv", getattr(modality, "unit", "samples"), append=bool(t.resume))
    bar = tqdm(total=t.max_steps, initial=step, disable=not t.progress, dynamic_ncols=True, unit="step")
    start = time.perf_counter()
    window_start, window_items, losses, skipped, nonfinite_in_a_row = start, 0, [], 0, 0
    grad_norm = torch.tensor(0.0)
    denoiser.train()
    try:
        while step < t.max_steps and time.perf_counter() - start < t.max_seconds:
            idx = batches.indices(step).to(device)
            x0, y = x_data[idx], y_data[idx]
            sigma = noise_levels(len(idx), gen).to(device)
            n = torch.randn(x0.shape, generator=gen).to(device)
            labels = drop_labels(y, t.label_dropout, null_label, gen) if conditional else None
            denoised = denoiser(x0 + append_dims(sigma, x0.ndim) * n, sigma, labels)
            loss = denoising_loss(denoised, x0, weighting(sigma, denoiser)).mean()

            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip else math.inf)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                skipped += 1
                nonfinite_in_a_row += 1
                if nonfinite_in_a_row >= t.max_nonfinite:
                    raise UserError(f"training diverged: {nonfinite_in_a_row} steps in a row had a non-finite loss or "
                                    f"gradient (step {step}); lower trainer.lr (now {t.lr}) or set trainer.grad_clip. "
                                    f"The last good checkpoint is {ckpt_path}")
                continue
            nonfinite_in_a_row = 0
            lr = t.lr * min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else t.lr
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            step += 1
            samples_seen += len(idx)
            ema.update(denoiser, len(idx), samples_seen)
            losses.append(loss.detach())
            window_items += len(idx)
            bar.update(1)

            if step % t.log_every == 0:
                now = time.perf_counter()
                rate = window_items / (now - window_start)
                mean_loss = torch.stack(losses).mean().item()
                metrics.write({"step": step, "samples_seen": samples_seen, "seconds": round(now - start, 3),
                               "loss": f"{mean_loss:.6g}", "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm.item():.4g}",
                               f"{metrics.fields[6]}": round(rate, 1), "skipped": skipped})
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
        metrics.close()

    elapsed = time.perf_counter() - start
    checkpoint()
    grid = preview()
    log.info("done: %d steps (%d samples) in %.1f s; checkpoint %s; samples %s", step, samples_seen, elapsed,
             ckpt_path, grid)
    return ckpt_path
