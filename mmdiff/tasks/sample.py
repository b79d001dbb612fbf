"""mode=sample: generate from a checkpoint, or edit a file with it.

n samples; or with ``init=FILE``: SDEdit (``strength``), inpainting with the masks the modality builds from
its editing options (images: ``mask``/``box``; audio: ``gap``; video: ``context``), or continuation along
the time axis (``extend``); ``interpolate=true`` walks from the noise of ``seed`` to that of ``seed2``;
``trajectory=true`` also writes the reverse and forward processes as strips. Everything goes through the
core's editing and trajectory functions and the modality interface: no kind of data is special here. An
edit returns the input's own data wherever the mask keeps it (``Modality.restore``), bit for bit.

A mask that keeps whole steps of the time axis is filled by conditioning when the model was trained with
``time_context`` (the known steps enter the network as extra channels: mmdiff.core.context), and by
RePaint inpainting otherwise; ``edit_method`` forces one or the other (``Model.completion``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..build import build_sigmas, sampler_settings
from ..core.editing import continuation_mask, interpolate_noise, sdedit
from ..core.trajectory import Trajectory, forward_process
from ..errors import UserError
from ..generate import Guidance, from_noise, generate
from ..modalities.base import MASK_OPTIONS, Loaded, Modality
from ..modalities.gallery import Page
from ..model import Model

log = logging.getLogger(__name__)


def edit_options(cfg: DictConfig, modality: Modality) -> dict:
    """The editing masks given on the command line, checked against what the modality takes."""
    given = {k: cfg[k] for k in MASK_OPTIONS if cfg.get(k) is not None}
    foreign = [k for k in given if k not in modality.edit_options]
    if foreign:
        takes = ", ".join(f"{k}=" for k in modality.edit_options) or "no mask options"
        raise UserError(f"{foreign[0]}= is not an editing option of {modality.name} data: it takes {takes}")
    if len(given) > 1:
        raise UserError(f"give one of {', '.join(given)}, not several")
    if given and cfg.init is None:
        raise UserError(f"{next(iter(given))}= marks what to regenerate in a file: give the file with init=PATH")
    return given


def sample_from_checkpoint(cfg: DictConfig) -> list[Path]:
    """mode=sample: rebuild the model from the checkpoint's own config, generate or edit, write files."""
    model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema, decoder=cfg.get("vocoder"))
    modality, shape, names = model.modality, model.shape, model.class_names
    prompts = read_prompts(cfg)
    text = model.prompt_inputs(prompts, cfg.n, cfg.get("negative_prompt"), cfg["class"])
    labels, prompted, null_conditions = (model.labels(cfg["class"], cfg.n), None, None) if text is None else \
        (None, *text[1:])
    sigmas = build_sigmas(cfg.sampler, cfg.steps, model.config["diffusion"], model.schedules)
    options, sampler = dict(cfg.sampler.options), cfg.sampler.name
    model.check_sampler(sampler)
    guidance, out = model.guidance_from_config(cfg), Path(cfg.out)
    trajectory = Trajectory(frames=10, steps=len(sigmas) - 1) if cfg.trajectory else None
    given = edit_options(cfg, modality)
    if cfg.extend is not None and cfg.init is None:
        raise UserError("extend= continues a file: give it with init=PATH")

    loaded, keep, conditions = None, None, None
    if cfg.init is not None:
        loaded = modality.read(cfg.init, shape)
        keep = modality.edit_mask(given, shape)
        if cfg.extend is not None:
            return _extend(cfg, model, loaded, labels, sigmas, guidance, options, out)
        modality.write_grid(modality.decode(loaded.x), None, None, out / "input.png")
        x_init = loaded.x.to(model.device)
        if keep is not None:
            solve, conditions, what = model.completion(x_init.expand(cfg.n, *shape), keep, sampler, sigmas, options,
                                                       method=cfg.get("edit_method") or "auto",
                                                       resample=cfg.resample, callback=trajectory)
        else:
            def solve(denoiser, part, gens):
                return sdedit(denoiser, x_init.expand(len(gens), *shape).contiguous(), sigmas, strength=cfg.strength,
                              sampler=sampler, generator=gens, callback=trajectory, **options)
            what = f"SDEdit (strength {cfg.strength})"
    elif cfg.interpolate:
        a = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed))
        b = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed2))
        solve = from_noise(shape, sampler, sigmas, options, device=model.device, noise=interpolate_noise(a, b, cfg.n),
                           callback=trajectory)
        what = f"interpolation from seed {cfg.seed} to seed {cfg.seed2}"
    else:
        solve = from_noise(shape, sampler, sigmas, options, device=model.device, callback=trajectory)
        what = "samples"

    log.info("%s: %d from %s (step %d) with %s, %d steps, guidance %.2f", what, cfg.n, cfg.checkpoint, model.step,
             sampler, cfg.steps, cfg.guidance)
    if prompted is not None:
        conditions = (conditions or {}) | prompted
    x = generate(model.denoiser, solve, n=cfg.n, labels=labels, null_label=model.null_label, guidance=guidance,
                 seed=cfg.seed, batch_size=cfg.n if trajectory else cfg.batch_size, device=model.device,
                 conditions=conditions, null_conditions=null_conditions)
    if (hint := modality.decoder_hint()) is not None:
        log.info(hint)
    data = modality.decode(x)
    if keep is not None:
        data = modality.restore(data, loaded, keep)
    paths = _write(cfg, model, data, labels, out) if text is None else _write(cfg, model, data, text[0], out, prompts)
    if trajectory is not None:
        paths += _write_trajectories(modality, trajectory, x, cfg, out)
    log.info("wrote %d files to %s", len(paths), out)
    return paths


def read_prompts(cfg: DictConfig) -> list[str] | None:
    """The prompts of ``prompt=TEXT`` or ``prompts=FILE`` (one per line, blank lines skipped), or None."""
    if cfg.get("prompt") is not None and cfg.get("prompts") is not None:
        raise UserError("give prompt=TEXT or prompts=FILE, not both")
    if cfg.get("prompt") is not None:  # a list (prompt=[a,b]) takes turns like prompts=FILE
        return [str(p) for p in cfg.prompt] if OmegaConf.is_list(cfg.prompt) else [str(cfg.prompt)]
    if cfg.get("prompts") is None:
        return None
    path = Path(cfg.prompts)
    if not path.is_file():
        raise UserError(f"prompts={path} does not exist: give a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts={path} holds no prompt: write one prompt per line")
    return prompts


def _write(cfg: DictConfig, model: Model, data: torch.Tensor, labels: torch.Tensor | None, out: Path,
           prompts: list[str] | None = None) -> list[Path]:
    """The modality's files; the gallery page with the sampler settings and the model's config at the top; and
    labels.json: the class of each sample in file order (mode=eval samples=FOLDER reads it), or with ``prompts``
    (``labels`` then indexes them) the prompt of each sample."""
    modality, names = model.modality, prompts or model.class_names
    paths = modality.write_samples(data, labels, names or None, out)
    modality.write_gallery(out, len(data), labels, names or None,
                           Page(None, sampler_settings(cfg, ema=cfg.ema), model.config))
    if labels is not None:
        (out / "labels.json").write_text(json.dumps([names[i] for i in labels.tolist()]) + "\n")
        paths.append(out / "labels.json")
    return paths


def _extend(cfg: DictConfig, model: Model, loaded: Loaded, labels, sigmas, guidance: Guidance, options: dict,
            out: Path) -> list[Path]:
    """Continuation along the time axis (``Model.extend``), then the original put back bit for bit."""
    modality, shape = model.modality, model.shape
    y = None if labels is None else labels[:1]
    x = model.extend(loaded.x, modality.time_steps(float(cfg.extend)), labels=y, guidance=guidance,
                     sampler=cfg.sampler.name, sigmas=sigmas, options=options, seed=cfg.seed,
                     method=cfg.get("edit_method") or "auto", resample=cfg.resample)
    keep = continuation_mask(x.shape[1:], shape[modality.time_dim(shape) - 1], time_dim=modality.time_dim(shape) - 1)
    data = modality.restore(modality.decode(x), loaded, keep)
    log.info("extended %s by %s %s into %s", cfg.init, cfg.extend, modality.time_unit, out)
    return _write(cfg, model, data, None if y is None else y.cpu(), out)


def _write_trajectories(modality: Modality, trajectory: Trajectory, x: torch.Tensor, cfg, out: Path) -> list[Path]:
    """trajectory.png (x after each kept step), trajectory_denoised.png (the estimates) and forward.png
    (the same samples noised step by step at the same levels), each a row per sample (up to 8)."""
    rows = min(len(x), 8)
    paths = []
    for key, name in (("x", "trajectory"), ("denoised", "trajectory_denoised")):
        paths.append(_strip(modality, trajectory.stack(key)[:, :rows], trajectory.levels(key), out / f"{name}.png"))
    forward_sigmas = trajectory.levels("x").flip(0)
    gen = torch.Generator().manual_seed(cfg.seed)
    forward = forward_process(x[:rows], forward_sigmas.to(x.dtype), generator=gen).frames
    paths.append(_strip(modality, forward, forward_sigmas, out / "forward.png"))
    return paths


def _strip(modality: Modality, frames: torch.Tensor, levels: torch.Tensor, path: Path) -> Path:
    """[F, R, *shape] frames (model space) -> a grid with a row per sample, its F frames left to right; the
    row label names the sample, and the noise levels go in a text file beside the image."""
    F, R = frames.shape[:2]
    flat = frames.transpose(0, 1).reshape(F * R, *frames.shape[2:])
    labels = torch.arange(R).repeat_interleave(F)
    modality.write_grid(modality.decode(flat), labels, [f"sample {r}" for r in range(R)], path)
    path.with_suffix(".txt").write_text("sigma per column: " + ", ".join(f"{s:.4g}" for s in levels.tolist()) + "\n")
    return path

