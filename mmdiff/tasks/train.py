"""mode=train: build the run (:func:`build_run`), then one visible loop (:func:`train`), nanoGPT-style.

Each step draws a global batch x0 with noise levels sigma, denoises x0 + sigma * n and minimises the
weighted error lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 (EDM Eq. 2) with AdamW. Around it:
learning-rate warm-up, gradient clipping, EMA, label (or caption) dropout for classifier-free guidance, mixed
precision, gradient accumulation, torch.compile, DistributedDataParallel under torchrun, metrics.csv and
the configured loggers (mmdiff.loggers: TensorBoard, W&B), a progress bar, periodic previews with their
gallery page and atomic checkpoints.

Randomness is keyed, not carried: the batch of step s is a function of (seed, s) (mmdiff.data.order); its
noise levels and label dropout come from a generator seeded with (seed, s), identical on every process;
the noise of global sample j comes from a generator on the training device seeded with (seed, s, j), so a
process draws the noise of its own slice only, and N processes (or K accumulation steps) compute the same
step as one process with the same global batch, up to the order of float sums. A resumed run continues
exactly where it stopped. The loop waits for the device only at log, preview and checkpoint steps:
a step with a non-finite loss or gradient is skipped on the device (the fused AdamW's ``found_inf``), and
counted; ``trainer.max_nonfinite`` of them in a row stop the run at the next log step.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..build import (CHANNELS_LAST, PRECISIONS, _instantiate, check_run_config, conditioning_kind, sampler_settings, build_dataset, build_denoiser, build_modality,
                     build_sigmas, data_info, pick_device, resolve_labels, resolve_modality_config,
                     resolve_model_config, to_container)
from ..checkpoint import SNAPSHOTS, Checkpoint, load_checkpoint, save_checkpoint, save_snapshot
from ..core.context import context_input, draw_masks
from ..core.ema import EMA
from ..core.phema import PowerEMA
from ..core.guidance import drop_captions, drop_labels
from ..core.losses import denoising_loss
from ..core.schedules import append_dims
from ..data.captions import caption_training_set
from ..data.order import Batches, Windows
from ..data.stream import batch_loader
from ..distributed import World, any_true, close_world, init_world, mean_over_world
from ..errors import UserError
from ..generate import Guidance, from_noise, generate, prompt_conditions
from ..loggers import Loggers, build_loggers, check_loggers
from ..modalities.gallery import Page
from ..models.text import text_tokenizer

log = logging.getLogger(__name__)


class MetricsLog:
    """metrics.csv: one row every trainer.log_every steps, flushed as written. On resume, rows past the
    checkpoint's step (written before a crash, and about to be written again) are dropped first."""

    def __init__(self, path: Path, unit: str, resume_step: int | None):
        self.fields = ["step", "samples_seen", "seconds", "loss", "lr", "grad_norm", f"{unit}_per_s", "skipped"]
        kept = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, self.fields, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(kept)
        self.file.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class Run:
    """Everything a training run holds, built once by :func:`build_run`."""

    cfg: DictConfig
    run_dir: Path
    world: World
    modality: object
    class_names: list[str]          # the dataset's (also when the model is unconditional)
    info: dict                      # what the checkpoint records about the data
    resolved: dict                  # the config with every ``auto`` filled in (saved beside the run)
    denoiser: torch.nn.Module       # the parametrised network: what EMA, checkpoints and previews use
    model: torch.nn.Module          # what the step calls: the denoiser under DDP and/or torch.compile
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA
    noise_levels: object            # diffusion.noise: (batch, generator) -> sigma [B]
    weighting: object               # diffusion.weighting: (sigma, precond) -> lambda [B]
    batches: Batches
    batch_size: int                 # the global batch of one optimizer step
    part: slice                     # this process's share of every global batch
    micro: int                      # samples per forward/backward
    labels: torch.Tensor            # all labels (on the CPU: a step draws its label dropout there)
    x_data: torch.Tensor | None     # in memory: the whole set on the device (encoded unless windows are cut)
    loader: object = None           # streamed: an iterator of raw batches (mmdiff.data.stream.batch_loader)
    windows: Windows | None = None  # items longer than the training window: a window per epoch
    context: dict | None = None     # conditioning on known time steps (the ``time_context`` node), or None
    time_dim: int | None = None     # the time axis of model-space batches
    independent: torch.Tensor | None = None  # [N] bool: items whose frames are independent images (joint training)
    memory_format: torch.memory_format | None = None
    conditional: bool = False
    step: int = 0
    samples_seen: int = 0
    ckpt_path: Path = field(default=Path("last.safetensors"))
    loggers: Loggers = field(default_factory=Loggers)  # the ``logger`` node's, on process 0 (none elsewhere)
    previewed: int | None = None    # the step of the last preview
    power_ema: PowerEMA | None = None  # post-hoc EMA's power-function averages (trainer.phema), or None
    objective: Callable = None      # (run, batch, micro-batch slice, step) -> loss [b]: denoising_objective by default
    captions: torch.Tensor | None = None  # conditioning=text: [N, phrasings, L] tokens of every item's captions
    captions_empty: torch.Tensor | None = None  # [L]: the empty caption's tokens (caption dropout, guidance)
    prompts: list[str] = field(default_factory=list)  # conditioning=text: the previews' prompts (a row each)
    seconds: float = 0.0            # training-loop seconds of earlier invocations (resumed runs)
    started: float | None = None    # perf_counter() when this invocation's loop started

    @property
    def device(self) -> torch.device:
        return self.world.device


def _micro_batch(batch_size: int, world: World, accum: int) -> int:
    """Per-process micro-batch size: the global batch split over processes and accumulation steps."""
    if batch_size % (world.size * accum):
        raise UserError(f"trainer.batch_size={batch_size} does not split into {world.size} process(es) x "
                        f"{accum} accumulation step(s): use a multiple of {world.size * accum}")
    return batch_size // (world.size * accum)


def _check_resume(ckpt: Checkpoint, resolved: dict, info: dict, path) -> None:
    for key in ("model", "diffusion", "modality"):
        if ckpt.config.get(key) != resolved.get(key):
            raise UserError(f"trainer.resume={path} was trained with a different {key} config "
                            f"({ckpt.config.get(key)}) than this run ({resolved.get(key)}): resume with the same "
                            f"{key} options, or start a new run without trainer.resume")
    if ckpt.data["shape"] != info["shape"]:
        raise UserError(f"trainer.resume={path} was trained on data of shape {ckpt.data['shape']}, this run's data "
                        f"has shape {info['shape']}: resume on the same dataset options")


def build_run(cfg: DictConfig, run_dir: Path, world: World) -> Run:
    """Data, model, optimizer, EMA and state (from ``trainer.resume`` if given) for ``cfg``."""
    t = cfg.trainer
    device = world.device
    check_loggers(cfg.get("logger"))  # a missing extra or a misspelt option, before the data is loaded
    if t.precision == "fp16" and device.type != "cuda":
        raise UserError("trainer.precision=fp16 needs a GPU (float16 autocast with a gradient scaler): "
                        "use trainer.precision=bf16 or fp32 on the CPU")
    torch.manual_seed(cfg.seed)
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    elif world.distributed and device.type == "cpu":  # N processes share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // world.size))

    modality_cfg = resolve_modality_config(cfg)
    modality = build_modality(modality_cfg)
    dataset = build_dataset(cfg)
    captions = None
    if conditioning_kind(cfg) == "text":   # measured on the whole split, then held-out combinations dropped
        captions, dataset = caption_training_set(dataset, cfg.conditioning, cfg.seed)
    streamed = dataset.cache is not None
    windows = (Windows(len(dataset), dataset.shape[1], dataset.window, cfg.seed)
               if dataset.window and dataset.window < dataset.shape[1] else None)
    # the model-space shape, from one item (the whole set is encoded below only when it stays in memory)
    first = dataset.data[:1].float()
    info = data_info(modality.encode(windows.cut(first, torch.zeros(1, dtype=torch.long)) if windows else first),
                     dataset)
    model_cfg = resolve_model_config(cfg.model, info, cfg.get("time_context"), cfg.get("conditioning"))
    resolved = to_container(cfg) | {"model": model_cfg, "modality": modality_cfg}
    context = resolved["time_context"] if (resolved.get("time_context") or {}).get("enabled") else None
    time_dim = modality.time_dim(info["shape"])
    if context is not None and time_dim is None:
        raise UserError(f"time_context.enabled=true conditions on known steps of a time axis, and {modality.name} "
                        "data has none: drop time_context.enabled")

    denoiser = build_denoiser(cfg, model_cfg, info).to(device)
    independent = dataset.extras.get("independent")
    if independent is not None and not getattr(denoiser.net, "frames_can_be_independent", False):
        raise UserError(f"the dataset mixes still images into its clips (extras['independent']), which needs a network "
                        "that can skip its temporal layers per item: use model=video_unet (temporal: factorized, time "
                        "never down-sampled), or drop the stills")
    memory_format = CHANNELS_LAST[model_cfg["dims"]] if t.channels_last else None
    if memory_format is not None:
        denoiser = denoiser.to(memory_format=memory_format)
    params = list(denoiser.parameters())
    # fused: one kernel per step, and ``found_inf`` skips a bad step on the device without a host sync
    opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    ema = EMA(denoiser, t.ema_halflife, t.ema_rampup)
    power_ema = PowerEMA(denoiser, t.phema.sigma_rels) if t.phema.sigma_rels else None
    batch_size = min(t.batch_size, len(dataset))
    micro = _micro_batch(batch_size, world, t.grad_accum)
    share = micro * t.grad_accum
    run = Run(cfg=cfg, run_dir=run_dir, world=world, modality=modality, class_names=list(dataset.class_names),
              info=info, resolved=resolved, denoiser=denoiser, model=denoiser, opt=opt, scaler=scaler, ema=ema,
              noise_levels=_instantiate(cfg.diffusion.noise, "diffusion.noise"),
              weighting=_instantiate(cfg.diffusion.weighting, "diffusion.weighting"),
              batches=Batches(len(dataset), batch_size, cfg.seed), batch_size=batch_size,
              part=slice(world.rank * share, (world.rank + 1) * share), micro=micro,
              labels=dataset.labels, x_data=None if streamed else
              (dataset.data.to(device) if windows else modality.encode(dataset.data).to(device)),
              windows=windows, context=context, time_dim=time_dim, independent=independent,
              memory_format=memory_format, conditional=bool(model_cfg.get("num_classes")),
              ckpt_path=run_dir / "last.safetensors", power_ema=power_ema, objective=denoising_objective)

    if captions is not None:
        _prepare_captions(run, dataset, captions, cfg.conditioning)
    logger_state = {}
    if t.resume:
        ckpt = load_checkpoint(t.resume)
        _check_resume(ckpt, resolved, info, t.resume)
        denoiser.load_state_dict(ckpt.model)
        ema.averaged.load_state_dict(ckpt.ema)
        if power_ema is not None:
            for sigma_rel, averaged in zip(power_ema.sigma_rels, power_ema.averaged):
                if str(sigma_rel) not in ckpt.averages:
                    raise UserError(f"trainer.resume={t.resume} holds no power-function EMA of sigma_rel {sigma_rel}: "
                                    "resume with the trainer.phema.sigma_rels it was trained with")
                averaged.load_state_dict(ckpt.averages[str(sigma_rel)])
        if ckpt.optimizer is not None:
            opt.load_state_dict(ckpt.optimizer)
        if "scaler" in ckpt.extra:
            scaler.load_state_dict(ckpt.extra["scaler"])
        torch.set_rng_state(ckpt.rng["torch"])
        if device.type == "cuda" and "cuda" in ckpt.rng:
            torch.cuda.set_rng_state(ckpt.rng["cuda"], device)
        run.step, run.samples_seen = ckpt.step, ckpt.samples_seen
        run.seconds = float(ckpt.extra.get("train_seconds", 0.0))
        logger_state = ckpt.extra.get("loggers", {})
        log.info("resumed from %s at step %d", t.resume, run.step)

    if streamed:
        workers = int(cfg.data.workers) if cfg.get("data") is not None else 0
        run.loader = batch_loader(dataset, run.batches, run.step, run.part, workers, pin_memory=device.type == "cuda")
    if world.distributed:
        run.model = DistributedDataParallel(denoiser, device_ids=[device] if device.type == "cuda" else None)
    if t.compile:
        run.model = torch.compile(run.model, backend=t.compile_backend)
    log.info("process %d of %d: micro-batches of %d x %d accumulation step(s), samples %d-%d of each global batch "
             "of %d (%s)", world.rank, world.size, micro, t.grad_accum, run.part.start, run.part.stop - 1, batch_size,
             "streamed from " + str(dataset.cache) if streamed else "in memory")
    if world.is_main:
        log.info("training %s (%.2fM parameters) on %s: %d items of shape %s, %d classes; run folder %s",
                 model_cfg.get("_target_"), sum(p.numel() for p in params) / 1e6, dataset.name, len(dataset),
                 info["shape"], len(dataset.class_names), run_dir)
        # last: nothing after this may fail and leave a tracker's run open (train closes them)
        run.loggers = build_loggers(resolved.get("logger"), run_dir, resume_step=run.step if t.resume else None,
                                    state=logger_state)
    return run


def _prepare_captions(run: Run, dataset, captions: list[list[str]], conditioning) -> None:
    """conditioning=text: every item's captions (:func:`caption_training_set`), tokenized once; the previews'
    prompts are the first caption of the first captioned item of each class."""
    k = int(conditioning.phrasings)
    tokenizer = text_tokenizer(run.denoiser.net)  # the network's own: bytes, or a pretrained encoder's
    run.captions = tokenizer.encode([c for item in captions for c in item]).view(len(captions), k, -1)
    run.captions_empty = tokenizer.encode([""])[0]
    firsts = {}
    for i, c in enumerate(dataset.labels.tolist()):
        if captions[i][0] and c not in firsts:
            firsts[c] = i
    run.prompts = [captions[i][0] for _, i in sorted(firsts.items())]
    if run.world.is_main:
        log.info("captions: %d per item, e.g. %s", k, "; ".join(repr(c) for c in captions[0][:3]))


# --- one step ------------------------------------------------------------------------------------------

def sample_key(seed: int, step: int, index: int) -> int:
    """The seed of global sample ``index``'s noise at ``step`` (a 63-bit mix of the three)."""
    return ((seed * 1_000_003 + step) * 1_000_033 + index) % (2**63 - 1)


@dataclass
class Batch:
    """This process's share of one step's global batch, on the device."""

    x0: torch.Tensor                       # [b, C, *spatial] model space
    sigma: torch.Tensor                    # [b] noise levels
    noise: torch.Tensor                    # like x0, unit variance
    labels: torch.Tensor | None            # [b] (label dropout applied), or None for an unconditional model
    cond: torch.Tensor | None = None       # [b, C + 1, *spatial]: the known time steps and their mask
    unknown: torch.Tensor | None = None    # [b, 1, *spatial] float: where the loss is counted (context only)
    independent: torch.Tensor | None = None  # [b] bool: items whose frames are independent images
    tokens: torch.Tensor | None = None     # [b, L] caption tokens (caption dropout applied), conditioning=text

    def conditions(self, part: slice) -> dict[str, torch.Tensor]:
        """The network's inputs besides x, sigma and labels, for the micro-batch ``part``."""
        out = {} if self.cond is None else {"cond": self.cond[part]}
        out = out if self.tokens is None else out | {"tokens": self.tokens[part]}
        return out if self.independent is None else out | {"independent": self.independent[part]}


def draw(run: Run, step: int) -> Batch:
    """This process's share of step ``step``'s batch. Host draws (batch indices, noise levels, label dropout,
    context masks) cover the global batch from a generator seeded with (seed, step), the same on every
    process; the noise comes from per-sample generators on the device, for this process's samples only."""
    t, device, part = run.cfg.trainer, run.device, run.part
    idx = run.batches.indices(step)
    gen = torch.Generator().manual_seed(sample_key(run.cfg.seed, step, -1))
    sigma = run.noise_levels(len(idx), gen)[part].to(device, non_blocking=True)
    labels = None
    if run.conditional:
        dropped = drop_labels(run.labels[idx], t.label_dropout, len(run.class_names), gen)
        labels = dropped[part].to(device, non_blocking=True)
    tokens = None
    if run.captions is not None:  # a caption of each item, chosen among its phrasings, then caption dropout
        pick = torch.randint(run.captions.shape[1], (len(idx),), generator=gen)
        dropped = drop_captions(run.captions[idx, pick], t.label_dropout, run.captions_empty, gen)
        tokens = dropped[part].to(device, non_blocking=True)
    x0 = run.x_data[idx[part].to(device)] if run.x_data is not None else next(run.loader).to(device, non_blocking=True)
    if run.windows is not None:
        x0 = run.windows.cut(x0, run.windows.offsets(step // run.batches.per_epoch)[idx[part]])
    if run.windows is not None or run.x_data is None:
        x0 = run.modality.encode(x0)
    gens = [torch.Generator(device).manual_seed(sample_key(run.cfg.seed, step, j)) for j in range(part.start, part.stop)]
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g, device=device) for g in gens])
    batch = Batch(x0, sigma, noise, labels, tokens=tokens)
    if run.independent is not None:
        batch.independent = run.independent[idx[part]].to(device, non_blocking=True)
    if run.context is not None:
        steps = x0.shape[run.time_dim]
        known = draw_masks(len(idx), steps, run.context["masks"], gen)[part]
        if run.independent is not None:  # the frames of still images tell nothing about each other
            known &= ~run.independent[idx[part]][:, None]
        aug = (torch.rand(len(idx), generator=gen) * float(run.context["noise"]))[part].to(device)
        extra = torch.stack([torch.randn(x0.shape[1:], generator=g, device=device) for g in gens])
        batch.cond = context_input(x0 + append_dims(aug, x0.ndim) * extra, known, run.time_dim)
        unknown = 1.0 - batch.cond[:, -1:]
        batch.unknown = torch.where(unknown.flatten(1).sum(1).view(-1, *[1] * (x0.ndim - 1)) > 0, unknown, 1.0)
    return batch


def noisy(run: Run, b: Batch, part: slice) -> torch.Tensor:
    """The micro-batch ``part`` of the batch, noised: x0 + sigma n (in the model's memory format)."""
    x = b.x0[part] + append_dims(b.sigma[part], b.x0.ndim) * b.noise[part]
    return x if run.memory_format is None else x.contiguous(memory_format=run.memory_format)


def denoising_objective(run: Run, b: Batch, part: slice, step: int) -> torch.Tensor:
    """The diffusion loss of a micro-batch (EDM Eq. 2, with the configured weighting), per sample [b]."""
    s = b.sigma[part]
    denoised = run.model(noisy(run, b, part), s, None if b.labels is None else b.labels[part], **b.conditions(part))
    mask = None if b.unknown is None else b.unknown[part]
    return denoising_loss(denoised, b.x0[part], run.weighting(s, run.denoiser), mask, run.denoiser.logvar(s))


def train_step(run: Run, step: int, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward over this process's share of the global batch, in micro-batches, then the
    gradient clip: (loss, grad norm), both still on the device."""
    t, world = run.cfg.trainer, run.world
    b = draw(run, step)
    run.opt.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=run.device)
    for a in range(t.grad_accum):
        part = slice(a * run.micro, (a + 1) * run.micro)
        sync = a == t.grad_accum - 1 or not world.distributed
        with (nullcontext() if sync else run.model.no_sync()), autocast:
            loss = run.objective(run, b, part, step).mean() / t.grad_accum
        run.scaler.scale(loss).backward()
        loss_sum += loss.detach()
    run.scaler.unscale_(run.opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.denoiser.parameters(), t.grad_clip if t.grad_clip else math.inf)
    return loss_sum, grad_norm


def learning_rate(t: DictConfig, step: int, samples_seen: int) -> float:
    """``trainer.lr`` with a linear warm-up over ``warmup_steps`` and, with ``lr_decay_samples``, EDM2's inverse
    square-root decay counted in samples (Karras et al. 2024, Eq. 16): lr / sqrt(max(samples_seen / ref, 1))."""
    lr = t.lr * min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else t.lr
    return lr / (max(samples_seen / t.lr_decay_samples, 1.0) ** 0.5) if t.lr_decay_samples else lr


# --- previews and checkpoints ------------------------------------------------------------------------

def checkpoint(run: Run) -> None:
    """Write last.safetensors (process 0; never with non-finite weights)."""
    if not run.world.is_main:
        return
    if not all(torch.isfinite(p).all() for p in run.denoiser.parameters()):
        log.error("weights are not finite at step %d: checkpoint not written", run.step)
        return
    rng = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    extra = {"scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {}
    extra["train_seconds"] = round(run.seconds + (time.perf_counter() - run.started if run.started else 0.0), 3)
    if logger_state := run.loggers.state():  # e.g. the W&B run id, which a resumed run reopens
        extra["loggers"] = logger_state
    save_checkpoint(run.ckpt_path, Checkpoint(
        config=run.resolved, data=run.info, step=run.step, samples_seen=run.samples_seen,
        model=run.denoiser.state_dict(), ema=run.ema.averaged.state_dict(), optimizer=run.opt.state_dict(), rng=rng,
        averages={} if run.power_ema is None else {str(s): a.state_dict() for s, a in
                                                   zip(run.power_ema.sigma_rels, run.power_ema.averaged)},
        extra=extra))


def preview(run: Run, final: bool = False) -> Path | None:
    """``n`` samples from the EMA weights, as mode=sample would draw them (process 0): the grid
    ``samples/step_XXXXXXX.png`` and the gallery page ``samples/index.html`` (the latest grid, the earlier ones
    below; at the ``final`` preview also every sample's files, cell by cell: writing them at every preview
    would cost an audio run seconds of its budget); and the same to the loggers."""
    if not run.world.is_main:
        return None
    grid = run.run_dir / "samples" / f"step_{run.step:07d}.png"
    repeated = run.previewed == run.step  # the loop's last preview was at this step: the same samples
    if repeated and not final:
        return grid
    cfg = run.cfg
    names = run.class_names if run.conditional else []
    labels = resolve_labels(None, cfg.n, names)
    conditions = null_conditions = None
    if run.prompts:  # captions: the prompts take the place of the classes (a grid row each)
        names = run.prompts
        index = resolve_labels(None, cfg.n, names)
        conditions, null_conditions = prompt_conditions(text_tokenizer(run.denoiser.net), names, index)
    sigmas = build_sigmas(cfg.sampler, cfg.steps, cfg.diffusion)
    solve = from_noise(run.info["shape"], cfg.sampler.name, sigmas, dict(cfg.sampler.options), device=run.device)
    x = generate(run.ema.averaged, solve, n=cfg.n, labels=labels, null_label=len(run.class_names),
                 guidance=Guidance.from_config(cfg), seed=cfg.seed, batch_size=cfg.batch_size, device=run.device,
                 conditions=conditions, null_conditions=null_conditions)
    if run.prompts:
        labels = index
    data, folder, modality = run.modality.decode(x), grid.parent, run.modality
    modality.write_grid(data, labels, names or None, grid)
    if final:
        modality.write_samples(data, labels, names or None, folder)
    else:
        modality.write_grid(data, labels, names or None, folder / "grid.png")
    history = [(f"step {int(p.stem.removeprefix('step_'))}", p.name)
               for p in sorted(folder.glob("step_*.png"), reverse=True)]
    modality.write_gallery(folder, len(data) if final else 0, labels if final else None, names or None,
                           Page(f"Training preview at step {run.step}", sampler_settings(cfg, ema=True),
                                run.resolved, history))
    if run.loggers and not repeated:
        run.loggers.log_media(modality.media(data, labels, names or None), run.step)
    run.previewed = run.step
    return grid


# --- the loop ----------------------------------------------------------------------------------------

def train(cfg: DictConfig, run_dir: str | Path, prepare: Callable[[Run], None] | None = None) -> Path:
    """Train as ``cfg`` says, writing into ``run_dir``; returns the path of the last checkpoint. ``prepare``
    changes the built run before the loop starts (mode=distill: the student's first weights, its objective)."""
    check_run_config(cfg)
    world = init_world(pick_device(cfg.device))
    finished = False
    try:
        run = build_run(cfg, Path(run_dir), world)
        if prepare is not None:
            prepare(run)
        try:
            last = _loop(run)
            finished = True
            return last
        finally:
            run.loggers.close()
            del run     # the DistributedDataParallel wrapper holds the process group: let it go first
    finally:
        close_world(world, finished)


def _loop(run: Run) -> Path:
    cfg, t, world = run.cfg, run.cfg.trainer, run.world
    if world.is_main:
        (run.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(run.resolved), run.run_dir / "config.yaml")
        run.loggers.log_config(run.resolved, run.step)
    metrics = MetricsLog(run.run_dir / "metrics.csv", run.modality.unit,
                         run.step if t.resume else None) if world.is_main else None
    bar = tqdm(total=t.max_steps, initial=run.step, disable=not (t.progress and world.is_main), dynamic_ncols=True,
               unit="step")
    autocast = torch.autocast(run.device.type, dtype=PRECISIONS[t.precision], enabled=t.precision != "fp32")
    device = run.device
    skipped = torch.zeros((), device=device)        # device-side counters: read at log steps only
    in_a_row = torch.zeros((), device=device)
    loss_sum, good = torch.zeros((), device=device), torch.zeros((), device=device)
    start = window_start = run.started = time.perf_counter()
    window_steps, lr, grad_norm = 0, t.lr, torch.zeros(())
    run.model.train()
    try:
        while run.step < t.max_steps:
            if (not world.distributed or run.step % t.log_every == 0) and \
                    any_true(time.perf_counter() - start >= t.max_seconds, world):
                break
            loss, grad_norm = train_step(run, run.step, autocast)
            # fp16: the scaler skips steps with overflowing gradients by itself; only a non-finite loss
            # means divergence. Otherwise a non-finite gradient does too, and the fused AdamW skips the step.
            bad = ~torch.isfinite(loss) if run.scaler.is_enabled() else ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
            if not run.scaler.is_enabled():
                run.opt.found_inf = bad.float()
            lr = learning_rate(t, run.step, run.samples_seen)
            for group in run.opt.param_groups:
                group["lr"] = lr
            run.scaler.step(run.opt)
            run.scaler.update()
            run.step += 1
            run.samples_seen += run.batch_size
            run.ema.update(run.denoiser, run.batch_size, run.samples_seen)
            if run.power_ema is not None:
                run.power_ema.update(run.denoiser, run.batch_size, run.samples_seen)
                if run.world.is_main and run.step % t.phema.snapshot_every == 0:
                    save_snapshot(run.run_dir / SNAPSHOTS, run.samples_seen,
                                  dict(zip(run.power_ema.sigma_rels, (a.state_dict() for a in run.power_ema.averaged))))
            skipped += bad
            in_a_row = (in_a_row + 1) * bad
            loss_sum += torch.where(bad, 0.0, loss)
            good += ~bad
            window_steps += 1
            bar.update(1)

            if run.step % t.log_every == 0:
                if in_a_row.item() >= t.max_nonfinite:
                    raise UserError(f"training diverged: {int(in_a_row.item())} steps in a row had a non-finite loss "
                                    f"or gradient (step {run.step}); lower trainer.lr (now {t.lr}) or set "
                                    f"trainer.grad_clip. The last good checkpoint is {run.ckpt_path}")
                mean_loss = mean_over_world(loss_sum / good.clamp(min=1), world).item()
                now = time.perf_counter()
                rate = window_steps * run.batch_size / (now - window_start)
                if world.is_main:
                    row = {"step": run.step, "samples_seen": run.samples_seen, "seconds": round(now - start, 3),
                           "loss": f"{mean_loss:.6g}", "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm.item():.4g}",
                           metrics.fields[6]: round(rate, 1), "skipped": int(skipped.item())}
                    metrics.write(row)
                    run.loggers.log_scalars({f"train/{k}": float(v) for k, v in row.items() if k != "step"}, run.step)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", **{f"{run.modality.unit}/s": f"{rate:.0f}"})
                    # with a time budget, show the bar against the steps that will fit in it
                    steps_per_s = window_steps / (now - window_start)
                    bar.total = min(t.max_steps, int(run.step + max(0.0, t.max_seconds - (now - start)) * steps_per_s))
                    bar.refresh()
                window_start, window_steps = now, 0
                loss_sum.zero_(), good.zero_()
            if t.sample_every and run.step % t.sample_every == 0:
                preview(run)
            if t.checkpoint_every and run.step % t.checkpoint_every == 0:
                checkpoint(run)
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: writing a checkpoint before exiting", run.step)
        checkpoint(run)
        raise
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()

    elapsed = time.perf_counter() - start
    if run.power_ema is not None and world.is_main and run.step % t.phema.snapshot_every:  # the end, too
        save_snapshot(run.run_dir / SNAPSHOTS, run.samples_seen,
                      dict(zip(run.power_ema.sigma_rels, (a.state_dict() for a in run.power_ema.averaged))))
    checkpoint(run)
    grid = preview(run, final=True)
    if world.is_main:
        log.info("done: %d steps (%d samples, %d skipped) in %.1f s; checkpoint %s; samples %s", run.step,
                 run.samples_seen, int(skipped.item()), elapsed, run.ckpt_path, grid)
    return run.ckpt_path
