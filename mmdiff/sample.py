"""Generation: from a denoiser (during training) or from a checkpoint (``mode=sample``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from .build import build_denoiser, build_modality, build_sigmas, pick_device, resolve_labels
from .checkpoint import load_checkpoint
from .core.guidance import CFGDenoiser
from .core.samplers import SAMPLERS
from .errors import UserError

log = logging.getLogger(__name__)


@torch.no_grad()
def generate(denoiser, *, shape: list[int], labels: torch.Tensor | None, n: int, sampler: str, sigmas: torch.Tensor,
             guidance: float = 1.0, null_label: int | None = None, seed: int = 0, batch_size: int = 256,
             sampler_options: dict | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """n samples [n, *shape] in model space. Sample i draws all its noise from its own generator
    seeded with seed + i, so a sample does not depend on the batch it is generated in."""
    device = torch.device(device)
    out = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
        x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device) * float(sigmas[0])
        y = None if labels is None else labels[start:stop].to(device)
        model = CFGDenoiser(denoiser, y, guidance, null_label)
        out.append(SAMPLERS[sampler](model, x, sigmas, generator=gens, **(sampler_options or {})).cpu())
    return torch.cat(out)


def sample_from_checkpoint(cfg: DictConfig) -> list[Path]:
    """mode=sample: rebuild the model from the checkpoint's own config, generate, write files."""
    ckpt = load_checkpoint(cfg.checkpoint)
    run_cfg, info = ckpt.config, ckpt.data
    device = pick_device(cfg.device)
    denoiser = build_denoiser(run_cfg, run_cfg["model"], info)
    weights = ckpt.ema if cfg.ema and ckpt.ema else ckpt.model
    try:
        denoiser.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"checkpoint {cfg.checkpoint} does not match the model its config describes ({e}): "
                        "the file is damaged or was edited; use an intact checkpoint") from None
    denoiser.to(device).eval()

    class_names = info["class_names"] if run_cfg["model"].get("num_classes") else []
    labels = resolve_labels(cfg["class"], cfg.n, class_names)
    sigmas = build_sigmas(cfg.sampler, cfg.steps, run_cfg["diffusion"])
    log.info("sampling %d from %s (step %d) with %s, %d steps, guidance %.2f", cfg.n, cfg.checkpoint, ckpt.step,
             cfg.sampler.name, cfg.steps, cfg.guidance)
    x = generate(denoiser, shape=info["shape"], labels=labels, n=cfg.n, sampler=cfg.sampler.name, sigmas=sigmas,
                 guidance=cfg.guidance, null_label=len(class_names), seed=cfg.seed, batch_size=cfg.batch_size,
                 sampler_options=dict(cfg.sampler.options), device=device)
    modality = build_modality(run_cfg["modality"])
    paths = modality.save_samples(x, labels, class_names or None, Path(cfg.out))
    log.info("wrote %d files to %s", len(paths), cfg.out)
    return paths
