"""Generation: from a denoiser (during training) or from a checkpoint (``mode=sample``).

``mode=sample`` generates n samples, or with ``init=FILE`` edits a given image or clip: SDEdit
(``strength``), inpainting (``mask``/``box`` for images, ``gap`` for audio) or audio continuation
(``extend``); ``interpolate=true`` walks from the noise of ``seed`` to that of ``seed2``;
``trajectory=true`` also writes the reverse and forward processes as strips. All of it goes through
the core's editing and trajectory functions (mmdiff/core/editing.py, trajectory.py): the same code
for images and audio.
"""

from __future__ import annotations

import json
import time
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from .api import Model
from .build import build_sigmas, schedule_key
from .core.editing import continuation_input, gap_mask, inpaint, interpolate_noise, sdedit
from .core.guidance import CFGDenoiser, DynamicThreshold
from .core.samplers import SAMPLERS
from .core.schedules import FITTED
from .core.trajectory import Trajectory, forward_process
from .errors import UserError

log = logging.getLogger(__name__)


def guided(denoiser, labels: torch.Tensor | None, null_label: int | None, guidance: float = 1.0,
           rescale: float = 0.0, interval=None, threshold: float | None = None):
    """Bind labels and every guidance option into a ``denoiser(x, sigma)`` for the samplers."""
    d = CFGDenoiser(denoiser, labels, guidance, null_label, rescale=rescale,
                    interval=tuple(interval) if interval else None)
    return DynamicThreshold(d, percentile=threshold) if threshold else d


def batched(n: int, batch_size: int, seed: int, run: Callable[[slice, list[torch.Generator]], torch.Tensor]):
    """Call ``run(part, generators)`` on consecutive parts of n samples; sample i gets its own generator
    seeded with seed + i, so a sample does not depend on the batch it is made in."""
    out = []
    for start in range(0, n, batch_size):
        part = slice(start, min(start + batch_size, n))
        out.append(run(part, [torch.Generator().manual_seed(seed + i) for i in range(part.start, part.stop)]).cpu())
    return torch.cat(out)


def initial_noise(shape, gens, sigma_max: float, device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device) * float(sigma_max)


@torch.no_grad()
def generate(denoiser, *, shape: list[int], labels: torch.Tensor | None, n: int, sampler: str, sigmas: torch.Tensor,
             guidance: float = 1.0, null_label: int | None = None, seed: int = 0, batch_size: int = 256,
             sampler_options: dict | None = None, device: torch.device | str = "cpu", rescale: float = 0.0,
             interval=None, threshold: float | None = None, callback=None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """n samples [n, *shape] in model space (sample i's noise from a generator seeded with seed + i).

    ``noise``: the starting noise [n, *shape] at unit variance instead (it is scaled to the first noise
    level here); stochastic samplers still draw their per-step noise from the seeded generators."""
    device = torch.device(device)
    if noise is not None and tuple(noise.shape) != (n, *shape):
        raise UserError(f"noise has shape {list(noise.shape)}; this model samples [n, *shape] = {[n, *shape]}")

    def run(part, gens):
        y = None if labels is None else labels[part].to(device)
        model = guided(denoiser, y, null_label, guidance, rescale, interval, threshold)
        x = initial_noise(shape, gens, sigmas[0], device) if noise is None else \
            noise[part].to(device, torch.float32) * float(sigmas[0])
        return SAMPLERS[sampler](model, x, sigmas, generator=gens, callback=callback, **(sampler_options or {}))

    return batched(n, batch_size, seed, run)


# --- mode=sample ---------------------------------------------------------------------------------

def _edit_mask(cfg: DictConfig, modality, shape: list[int]) -> torch.Tensor | None:
    """The inpainting mask (True = keep) that mask/box (images) or gap (audio) describe, or None."""
    given = [k for k in ("mask", "box", "gap") if cfg.get(k) is not None]
    if len(given) > 1:
        raise UserError(f"give one of mask, box and gap, not {' and '.join(given)}")
    if not given:
        return None
    kind = modality.name
    if given[0] in ("mask", "box") and kind != "image":
        raise UserError(f"{given[0]}= is for images; for audio use gap=[start,stop] (seconds)")
    if given[0] == "gap" and kind != "audio":
        raise UserError("gap= is for audio; for images use box=[top,left,bottom,right] or mask=FILE")
    if given[0] == "mask":
        return modality.read(cfg.mask, [1, *shape[1:]])[0] > 0  # white (model space > 0) = keep
    if given[0] == "box":
        top, left, bottom, right = (int(v) for v in cfg.box)
        keep = torch.ones(shape, dtype=torch.bool)
        keep[..., top:bottom, left:right] = False
        return keep
    start, stop = (modality.time_steps(float(v)) for v in cfg.gap)
    if not 0 <= start < stop <= shape[-1]:
        raise UserError(f"gap={list(cfg.gap)} is not inside the clip (0 to "
                        f"{shape[-1] * modality.representation.samples_per_step / modality.sample_rate:.2f} s)")
    return gap_mask(shape, start, stop)


def sample_from_checkpoint(cfg: DictConfig) -> list[Path]:
    """mode=sample: rebuild the model from the checkpoint's own config, generate or edit, write files."""
    model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema)
    denoiser, run_cfg, device, modality = model.denoiser, model.config, model.device, model.modality
    class_names, shape, step = model.class_names, model.shape, model.step
    labels = model.labels(cfg["class"], cfg.n)
    sigmas = build_sigmas(cfg.sampler, cfg.steps, run_cfg["diffusion"], model.schedules)
    options = dict(cfg.sampler.options)
    guide = {"guidance": cfg.guidance, "rescale": cfg.guidance_rescale, "interval": cfg.guidance_interval,
             "threshold": cfg.dynamic_threshold}
    out = Path(cfg.out)
    trajectory = Trajectory(frames=10, steps=len(sigmas) - 1) if cfg.trajectory else None

    def model_for(part):
        y = None if labels is None else labels[part].to(device)
        return guided(denoiser, y, len(class_names), **guide)

    if cfg.init is not None:
        x_init = modality.read(cfg.init, shape).to(device)
        mask = _edit_mask(cfg, modality, shape)
        if cfg.extend is not None:
            x = _extend(cfg, modality, denoiser, x_init, labels, class_names, sigmas, guide, options, device)
            labels_out = None if labels is None else labels[:1]
            paths = modality.save_samples(x, labels_out, class_names or None, out)
            log.info("extended %s by %.2f s into %s", cfg.init, cfg.extend, out)
            return paths
        modality.save_grid(x_init.cpu(), None, None, out / "input.png")

        def run(part, gens):
            x0 = x_init.expand(len(gens), *shape).contiguous()
            if mask is not None:
                return inpaint(model_for(part), x0, mask.to(device), sigmas, resample=cfg.resample,
                               sampler=cfg.sampler.name, generator=gens, callback=trajectory, **options)
            return sdedit(model_for(part), x0, sigmas, strength=cfg.strength, sampler=cfg.sampler.name,
                          generator=gens, callback=trajectory, **options)
        what = "inpainted" if mask is not None else f"SDEdit (strength {cfg.strength})"
    elif cfg.interpolate:
        a = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed))
        b = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed2))
        path_noise = interpolate_noise(a, b, cfg.n)

        def run(part, gens):
            x = path_noise[part].to(device) * float(sigmas[0])
            return SAMPLERS[cfg.sampler.name](model_for(part), x, sigmas, generator=gens, callback=trajectory,
                                              **options)
        what = f"interpolation from seed {cfg.seed} to seed {cfg.seed2}"
    else:
        def run(part, gens):
            x = initial_noise(shape, gens, sigmas[0], device)
            return SAMPLERS[cfg.sampler.name](model_for(part), x, sigmas, generator=gens, callback=trajectory,
                                              **options)
        what = "samples"

    log.info("%s: %d from %s (step %d) with %s, %d steps, guidance %.2f", what, cfg.n, cfg.checkpoint, step,
             cfg.sampler.name, cfg.steps, cfg.guidance)
    with torch.no_grad():
        x = batched(cfg.n, cfg.n if trajectory else cfg.batch_size, cfg.seed, run)
    paths = modality.save_samples(x, labels, class_names or None, out)
    if labels is not None:  # the class of each sample, in file order (mode=eval samples=FOLDER reads it)
        (out / "labels.json").write_text(json.dumps([class_names[i] for i in labels.tolist()]) + "\n")
        paths.append(out / "labels.json")
    if trajectory is not None:
        paths += _write_trajectories(modality, trajectory, x, sigmas, cfg, out)
    log.info("wrote %d files to %s", len(paths), out)
    return paths


def _extend(cfg, modality, denoiser, x_init, labels, class_names, sigmas, guide, options, device) -> torch.Tensor:
    """Audio continuation: window after window, keep the last half of what exists as the known start
    of the next window and inpaint the rest, until ``extend`` seconds have been added."""
    if modality.name != "audio":
        raise UserError("extend= is for audio clips; for images use box= or mask= (inpainting)")
    window = x_init.shape[-1]
    keep = window // 2
    wanted = x_init.shape[-1] + modality.time_steps(float(cfg.extend))
    y = None if labels is None else labels[:1].to(device)
    model = guided(denoiser, y, len(class_names), **guide)
    audio, k = x_init, 0
    while audio.shape[-1] < wanted:
        x_known, mask = continuation_input(audio[..., -keep:], window)
        gens = [torch.Generator().manual_seed(cfg.seed + k)]
        new = inpaint(model, x_known.to(device), mask.to(device), sigmas, resample=cfg.resample,
                      sampler=cfg.sampler.name, generator=gens, **options)
        audio, k = torch.cat([audio, new[..., keep:]], dim=-1), k + 1
    return audio[..., :wanted].cpu()


def _write_trajectories(modality, trajectory: Trajectory, x: torch.Tensor, sigmas, cfg, out: Path) -> list[Path]:
    """trajectory.png (x after each kept step), trajectory_denoised.png (the estimates) and forward.png
    (the same samples noised step by step at the same levels), each a row per sample (up to 8)."""
    rows = min(len(x), 8)
    paths = []
    for key, name in (("x", "trajectory"), ("denoised", "trajectory_denoised")):
        frames = trajectory.stack(key)[:, :rows]  # [F, rows, *shape]
        levels = trajectory.levels(key)
        paths.append(_strip(modality, frames, levels, out / f"{name}.png"))
    forward_sigmas = trajectory.levels("x").flip(0)
    gen = torch.Generator().manual_seed(cfg.seed)
    forward = forward_process(x[:rows], forward_sigmas.to(x.dtype), generator=gen).frames
    paths.append(_strip(modality, forward, forward_sigmas, out / "forward.png"))
    return paths


def _strip(modality, frames: torch.Tensor, levels: torch.Tensor, path: Path) -> Path:
    """[F, R, *shape] frames -> a grid with a row per sample, its F frames left to right; the row
    label names the sample, and the noise levels go in a text file beside the image."""
    F, R = frames.shape[:2]
    flat = frames.transpose(0, 1).reshape(F * R, *frames.shape[2:])
    labels = torch.arange(R).repeat_interleave(F)
    modality.save_grid(flat, labels, [f"sample {r}" for r in range(R)], path)
    path.with_suffix(".txt").write_text("sigma per column: " + ", ".join(f"{s:.4g}" for s in levels.tolist()) + "\n")
    return path


def fit_schedule_from_config(cfg: DictConfig) -> dict:
    """mode=fit_schedule: fit a step schedule for cfg.sampler and cfg.steps to the checkpoint's model and
    store it in the checkpoint (or fit.out), where sampler.schedule=fitted finds it."""
    model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema)
    f = cfg.fit
    start = "karras" if cfg.sampler.schedule == FITTED else cfg.sampler.schedule  # refit from scratch
    t0 = time.perf_counter()
    result = model.fit_schedule(cfg.sampler.name, cfg.steps, n=f.n, held_out=f.held_out, guidance=cfg.guidance,
                                start=start, reference_steps=f.reference_steps, sweeps=f.sweeps, iters=f.iters,
                                seed=cfg.seed)
    path = model.save_schedules(f.out)
    record = model.schedules[schedule_key(cfg.sampler.name, cfg.steps)]
    print(f"fitted a {cfg.steps}-step schedule for {cfg.sampler.name} (guidance {cfg.guidance}) in "
          f"{time.perf_counter() - t0:.0f} s, {result.evaluations} solves of {f.n} samples")
    print(f"  RMS error vs a {f.reference_steps}-step Heun solve   {start:>12}   fitted")
    print(f"  fitting batch ({f.n:>4})                  {result.error[0]:12.5f} {result.error[1]:9.5f}")
    if result.held_out:
        print(f"  held-out noises ({f.held_out:>4})              {result.held_out[0]:12.5f} {result.held_out[1]:9.5f}")
    print("  sigmas " + " ".join(f"{s:.4g}" for s in record["sigmas"]))
    print(f"stored in {path}; sample with: sampler={cfg.sampler.name} steps={cfg.steps} sampler.schedule=fitted")
    return record
