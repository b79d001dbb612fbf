"""mode=train_vocoder: a learned vocoder for a log-mel model space, trained on the data the generator trains on,
of one of two kinds (``train_vocoder.kind``):

- ``vocos`` (mmdiff.models.vocoder.Vocoder): the direct kind. Each step vocodes the log-mels of the segments and
  compares the result with them (:class:`Objective`): the multi-resolution STFT loss plus ``mel_weight`` times
  the L1 distance between the output's log-mel and the input's.
- ``diffusion`` (mmdiff.models.diffusion_vocoder.DiffusionVocoder): DiffWave's kind on the core. Each step
  denoises the segments, noised at levels from the core's log-normal distribution, given their log-mels, with
  the core's denoising loss (:class:`DenoisingObjective`, EDM Eq. 2, as mode=train), plus optionally the
  multi-resolution STFT loss of the denoised estimate; an EMA of the weights (mmdiff.core.ema) is what is kept.
  At the end a few-step schedule is fitted to it (mmdiff.core.schedule_fit) and stored in its file.

The dataset and the modality are built as mode=train builds them (the ``dataset`` group, the modality config
with its mel settings). Each step draws ``batch_size`` random segments of ``segment`` frames from the
training clips and encodes them with the modality (the log-mels the generator denoises). AdamW, a linear
warm-up, then a cosine decay over the budget (``max_steps`` or ``max_seconds``, whichever ends first).

Into the run folder: ``vocoder.safetensors`` (atomically; mmdiff.models.vocoder.save_vocoder), ``config.yaml``,
``metrics.csv``, and ``held_out/``: a few held-out clips as they are, vocoded, and decoded by Griffin-Lim
(WAVs, spectrograms and an index.html to listen), after ``held_out`` clips were scored both ways
(multi-resolution STFT distance, log-spectral distance: mmdiff.eval.evaluate_reconstructions).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ..build import (build_dataset, build_modality, check_dataset_modality, pick_device, resolve_modality_config,
                     to_container)
from ..core.ema import EMA
from ..core.losses import WEIGHTINGS, denoising_loss
from ..core.precond import PRECONDS
from ..core.samplers import SAMPLERS
from ..core.schedule_fit import fit_options
from ..core.schedules import FITTED, SCHEDULES, LogNormalSigma, append_dims, karras
from ..data import splits
from ..data.dataset import Dataset
from ..errors import UserError
from ..eval.evaluate import evaluate_reconstructions
from ..eval.metrics import multires_stft_loss
from ..modalities.base import Modality
from ..models.diffusion_vocoder import DiffusionVocoder
from ..models.vocoder import KINDS, Vocoder, save_vocoder

log = logging.getLogger(__name__)

BETAS = (0.8, 0.9)  # AdamW's, as Vocos trains its generator
COMPARED = ["original", "vocoder", "griffin_lim"]  # the rows of held_out/grid.png


@dataclass
class Objective:
    """The Vocos vocoder's training loss on waveforms [B, 1, T] (the modality's data):

        multi-resolution STFT loss(w', v(x)) + mel_weight * mean |encode(v(x)) - x| / scale

    with x = encode(w) the model-space log-mel, w' the waveform zero-padded as encode pads it
    (T' = hop * (frames - 1)), v the vocoder, and the mel term in natural-log units (the model space is
    scale * (log mel - offset))."""

    modality: Modality
    resolutions: list[tuple[int, int, int]]
    mel_weight: float
    columns = {"loss": "loss", "stft": "stft", "mel": "mel_l1"}  # metrics.csv's column of each term

    def __post_init__(self) -> None:
        self.settings = self.modality.decoder_settings()

    def __call__(self, vocoder: Vocoder, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"loss", "stft", "mel"} for the waveforms ``wave`` [B, 1, T]."""
        x, target = encoded(self.modality, wave)
        est = vocoder(x)
        stft = multires_stft_loss(target, est, self.resolutions)
        mel = (self.modality.encode(est) - x).abs().mean() / self.settings["scale"]
        return {"loss": stft + self.mel_weight * mel, "stft": stft, "mel": mel}


@dataclass
class DenoisingObjective:
    """The diffusion vocoder's training loss on waveforms [B, 1, T]: the core's denoising loss (EDM Eq. 2)

        lambda(sigma) * ||D(y + sigma n; sigma, x) - y||^2 + stft_weight * multi-resolution STFT loss(w', S(D))

    with x = encode(w) the log-mel it is conditioned on, w' the waveform padded as encode pads it, y = S^-1(w')
    the diffused variable (the vocoder's ``whiten``: w' itself unless its noise is shaped), ln(sigma) ~
    N(P_mean, P_std^2) (the core's LogNormalSigma), lambda the core's ``weighting``, and the noise levels and
    noises drawn from ``generator``."""

    modality: Modality
    noise_levels: LogNormalSigma
    weighting: object                      # (sigma [B], precond) -> lambda [B]: mmdiff.core.losses.WEIGHTINGS
    resolutions: list[tuple[int, int, int]]
    stft_weight: float
    generator: torch.Generator
    columns = {"loss": "loss", "denoising": "denoising", "stft": "stft"}

    def __call__(self, vocoder: DiffusionVocoder, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"loss", "denoising", "stft"} for the waveforms ``wave`` [B, 1, T]."""
        x, target = encoded(self.modality, wave)
        sigma = self.noise_levels(len(wave), self.generator).to(wave.device)
        noise = torch.randn(target.shape, generator=self.generator).to(wave.device)
        precond, y = vocoder.denoiser, vocoder.whiten(target, x)
        denoised = precond(y + append_dims(sigma, y.ndim) * noise, sigma, mel=x)
        loss = denoising_loss(denoised, y, self.weighting(sigma, precond), logvar=precond.logvar(sigma)).mean()
        stft = (multires_stft_loss(target, vocoder.shape(denoised, x), self.resolutions) if self.stft_weight
                else torch.zeros(()))
        return {"loss": loss + self.stft_weight * stft, "denoising": loss, "stft": stft}


def encoded(modality: Modality, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model-space log-mel x of ``wave`` [B, 1, T], the waveform zero-padded as encode pads it:
    [B, 1, hop * (frames - 1)], what a vocoder should give back for x)."""
    x = modality.encode(wave)
    return x, F.pad(wave, (0, modality.decoder_settings()["hop_length"] * (x.shape[-1] - 1) - wave.shape[-1]))


def random_segments(data: torch.Tensor, n: int, length: int, generator: torch.Generator,
                    pitch_shift: float = 0.0) -> torch.Tensor:
    """``n`` segments [n, 1, length] cut at random from random clips of ``data`` [N, 1, T] (clips shorter than
    ``length`` are zero-padded at the end first). ``pitch_shift`` > 0: each clip is first resampled (linear
    interpolation) by a random factor 2^(u / 12), u uniform in [-pitch_shift, pitch_shift] semitones, which
    moves every frequency by u semitones (and the clip's length by the inverse factor)."""
    clips = data[torch.randint(len(data), (n,), generator=generator)].float()
    if pitch_shift:
        factors = 2 ** ((2 * torch.rand(n, generator=generator) - 1) * pitch_shift / 12)
        T = clips.shape[-1]
        clips = torch.stack([F.pad(F.interpolate(clip[None], size=max(2, round(T / r)), mode="linear"),
                                   (0, max(0, T - round(T / r))))[0, :, :T] for clip, r in zip(clips, factors.tolist())])
    if clips.shape[-1] < length:
        clips = F.pad(clips, (0, length - clips.shape[-1]))
    starts = torch.randint(clips.shape[-1] - length + 1, (n,), generator=generator)
    return torch.stack([clip[:, s:s + length] for clip, s in zip(clips, starts.tolist())])


def learning_rate(o: DictConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 0 as ``progress`` (the share of the budget
    used, by steps or seconds) reaches 1."""
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    return o.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


RULES = {"a positive integer": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
         "a non-negative integer": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
         "a positive number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
         "a non-negative number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}


def require(node: DictConfig, where: str, rule: str, keys: tuple[str, ...]) -> None:
    """A UserError naming ``where.key`` for the first of ``keys`` whose value breaks ``rule`` (a key of RULES)."""
    for key in keys:
        if not RULES[rule](node[key]):
            raise UserError(f"{where}.{key}={node[key]!r} is invalid: it must be {rule}")


def check_options(o: DictConfig) -> None:
    """The ``train_vocoder`` node's values, before anything is loaded."""
    if o.kind not in KINDS:
        raise UserError(f"train_vocoder.kind={o.kind} is unknown: use one of {', '.join(KINDS)}")
    require(o, "train_vocoder", "a positive integer", ("max_steps", "batch_size", "segment", "log_every", "held_out"))
    require(o, "train_vocoder", "a positive number", ("max_seconds", "lr", "grad_clip"))
    require(o, "train_vocoder", "a non-negative number", ("warmup_steps", "examples", "mel_weight", "pitch_shift"))
    bad = [r for r in o.resolutions if len(r) != 3 or not all(isinstance(v, int) and v > 0 for v in r) or r[2] > r[0]]
    if not o.resolutions or bad:
        raise UserError(f"train_vocoder.resolutions holds {bad[0] if bad else 'nothing'}: give [n_fft, hop, window] "
                        "triples of positive integers with window <= n_fft, e.g. [[512,128,512]]")
    if o.kind == DiffusionVocoder.kind:
        check_diffusion_options(o.diffusion)


def check_diffusion_options(d: DictConfig) -> None:
    """The ``train_vocoder.diffusion`` node's values."""
    where = "train_vocoder.diffusion"
    require(d, where, "a positive integer", ("steps",))
    require(d, where, "a positive number", ("sigma_data", "sigma_min", "sigma_max", "P_std"))
    require(d, where, "a non-negative number", ("stft_weight", "ema_halflife"))
    if d.shaping_floor_db is not None and not (isinstance(d.shaping_floor_db, (int, float)) and d.shaping_floor_db < 0):
        raise UserError(f"{where}.shaping_floor_db={d.shaping_floor_db!r} is invalid: give a level in dB below 0 "
                        "(e.g. -80), or null for unshaped noise")
    require(d.fit, where + ".fit", "a positive integer", ("n", "reference_steps", "sweeps", "iters"))
    require(d.fit, where + ".fit", "a non-negative integer", ("held_out",))
    if d.sigma_min >= d.sigma_max:
        raise UserError(f"{where}.sigma_min={d.sigma_min} must be below sigma_max={d.sigma_max}")
    for key, choices in (("precond", PRECONDS), ("weighting", WEIGHTINGS), ("sampler", SAMPLERS)):
        if d[key] not in choices:
            raise UserError(f"{where}.{key}={d[key]} is unknown: use one of {', '.join(choices)}")
    if d.schedule not in SCHEDULES and d.schedule != FITTED:
        raise UserError(f"{where}.schedule={d.schedule} is unknown: use {FITTED} (fitted to the trained vocoder) or "
                        f"one of {', '.join(SCHEDULES)}")
    if d.schedule == FITTED:
        try:
            fit_options(d.sampler)
        except ValueError as e:
            raise UserError(f"{where}.schedule={FITTED}: {e}; or give {where}.schedule=karras") from None


def build_vocoder(o: DictConfig, modality: Modality, settings: dict, seed: int):
    """(the untrained vocoder of kind ``o.kind`` for the mel ``settings``, its training objective)."""
    resolutions = [tuple(r) for r in o.resolutions]
    if o.kind == Vocoder.kind:
        return Vocoder(settings, **to_container(o.net)), Objective(modality, resolutions, float(o.mel_weight))
    d = o.diffusion
    start = karras if d.schedule == FITTED else SCHEDULES[d.schedule]  # a fitted schedule starts from Karras's
    decoding = {"sampler": d.sampler, "options": to_container(d.options), "seed": int(d.seed),
                "sigmas": start(d.steps, d.sigma_min, d.sigma_max).tolist()}
    try:
        vocoder = DiffusionVocoder(settings, net=to_container(d.net), precond=d.precond, sigma_data=d.sigma_data,
                                   shaping_floor_db=d.shaping_floor_db, decoding=decoding)
    except (TypeError, ValueError) as e:
        raise UserError(f"train_vocoder.diffusion.net does not describe a U-Net: {e}") from None
    objective = DenoisingObjective(modality, LogNormalSigma(d.P_mean, d.P_std), WEIGHTINGS[d.weighting](), resolutions,
                                   float(d.stft_weight), torch.Generator().manual_seed(seed + 1))
    return vocoder, objective


def held_out_data(cfg: DictConfig, train: Dataset) -> tuple[Dataset, str]:
    """The held-out counterpart of the training split (mmdiff.data.splits.held_out), or the training clips
    themselves where the dataset has none, with a description of which it is."""
    split = cfg.dataset.get("split")
    other = splits.held_out(split) if split is not None else None
    if other is None:
        log.warning("dataset.split=%s has no held-out part: the vocoder is scored on clips it trained on", split)
        return train, "the training clips (no held-out split)"
    dataset = build_dataset({"dataset": to_container(cfg.dataset) | {"split": other}, "data": to_container(cfg.data)})
    return dataset, f"split {other} (held out)"


def train_vocoder_from_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    """``mode=train_vocoder``: train a vocoder for the config's audio model space on its dataset, write it and
    its record into ``run_dir``; returns the path of vocoder.safetensors."""
    o = cfg.train_vocoder
    check_options(o)
    check_dataset_modality(cfg)
    modality_cfg = resolve_modality_config(cfg)
    modality = build_modality(modality_cfg)
    settings = modality.decoder_settings()
    if o.num_threads:
        torch.set_num_threads(int(o.num_threads))
    device = pick_device(cfg.device)
    train = build_dataset(cfg)
    reference, described = held_out_data(cfg, train)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(to_container(cfg) | {"modality": modality_cfg}), run_dir / "config.yaml")

    torch.manual_seed(cfg.seed)
    vocoder, objective = build_vocoder(o, modality, settings, cfg.seed)
    vocoder = vocoder.to(device)
    opt = torch.optim.AdamW(vocoder.parameters(), lr=o.lr, betas=BETAS)
    diffusion = o.kind == DiffusionVocoder.kind
    ema = EMA(vocoder, o.diffusion.ema_halflife) if diffusion and o.diffusion.ema_halflife else None
    generator = torch.Generator().manual_seed(cfg.seed)
    length = settings["hop_length"] * (o.segment - 1)
    log.info("training a %s vocoder (%.2fM parameters) on %s: %d clips, segments of %d frames (%.2f s), %s mel "
             "settings %s; run folder %s", o.kind, sum(p.numel() for p in vocoder.parameters()) / 1e6, train.name,
             len(train), o.segment, length / settings["sample_rate"], modality.name, settings, run_dir)
    step, start = 0, time.perf_counter()
    window = (start, 0)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        metrics = csv.DictWriter(f, ["step", "seconds", *objective.columns.values(), "lr", "segments_per_s"])
        metrics.writeheader()
        while step < o.max_steps and (elapsed := time.perf_counter() - start) < o.max_seconds:
            lr = learning_rate(o, step, max(step / o.max_steps, elapsed / o.max_seconds))
            for group in opt.param_groups:
                group["lr"] = lr
            losses = objective(vocoder, random_segments(train.data, o.batch_size, length, generator,
                                                        o.pitch_shift).to(device))
            if not torch.isfinite(losses["loss"]):
                raise UserError(f"vocoder training diverged at step {step} (a non-finite loss): lower "
                                f"train_vocoder.lr (now {o.lr})")
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(vocoder.parameters(), o.grad_clip)
            opt.step()
            step += 1
            if ema is not None:
                ema.update(vocoder, o.batch_size, step * o.batch_size)
            if step % o.log_every == 0:
                now = time.perf_counter()
                rate = (step - window[1]) * o.batch_size / (now - window[0])
                values = {column: f"{losses[key].item():.5g}" for key, column in objective.columns.items()}
                metrics.writerow({"step": step, "seconds": round(now - start, 3), "lr": f"{lr:.4g}",
                                  "segments_per_s": round(rate, 1)} | values)
                f.flush()
                window = (now, step)
    seconds = time.perf_counter() - start

    vocoder = (vocoder if ema is None else ema.averaged).cpu().eval().requires_grad_(False)
    clips = reference.data[evenly_spaced(len(reference), o.held_out)].float()
    x = modality.encode(clips)
    extra = {}
    if diffusion and o.diffusion.schedule == FITTED:
        extra["fit"] = fit_decoding(vocoder, o, modality, train, x, generator)
    with torch.no_grad():
        decoded = {"vocoder": vocoder(x).clamp(-1, 1), "griffin_lim": modality.decode(x)}  # no vocoder loaded yet
    scores = {name: reconstruction_scores(modality, clips, waves) for name, waves in decoded.items()}
    path = save_vocoder(run_dir / modality.decoder_file, vocoder, settings, step, seconds,
                        {"held_out": scores | {"n": len(clips), "clips": described}} | extra)
    modality.use_decoder(path)  # the file as users load it: the examples are decoded through it
    pick = evenly_spaced(len(clips), o.examples)
    if len(pick):
        write_examples(modality, clips[pick], modality.decode(x[pick]), decoded["griffin_lim"][pick],
                       run_dir / "held_out")
    log.info("done: %d steps in %.1f s; %s; on %d clips of %s, multi-resolution STFT distance %.3f (Griffin-Lim "
             "%.3f), log-spectral distance %.2f dB (Griffin-Lim %.2f dB); use it with vocoder=%s", step, seconds, path,
             len(clips), described, scores["vocoder"]["multires_stft"], scores["griffin_lim"]["multires_stft"],
             scores["vocoder"]["lsd_db"], scores["griffin_lim"]["lsd_db"], path)
    return path


def fit_decoding(vocoder: DiffusionVocoder, o: DictConfig, modality: Modality, train: Dataset, held_out: torch.Tensor,
                 generator: torch.Generator) -> dict:
    """Fit the diffusion vocoder's decoding schedule (``o.diffusion.fit``) on the log-mels of ``fit.n`` random
    training segments, scored before and after on the first ``fit.held_out`` of the ``held_out`` log-mels; returns
    the record kept in the vocoder's file (the RMS errors against a fine solve, the sigmas before and after)."""
    d, f = o.diffusion, o.diffusion.fit
    length = modality.decoder_settings()["hop_length"] * (o.segment - 1)
    mel = modality.encode(random_segments(train.data, f.n, length, generator))
    t0 = time.perf_counter()
    result = vocoder.fit_schedule(mel, held_out[:f.held_out] if f.held_out else None, floor=float(d.sigma_min),
                                  seed=int(d.seed), reference_steps=f.reference_steps, sweeps=f.sweeps, iters=f.iters)
    log.info("fitted a %d-step schedule for %s in %.0f s (%d solves): RMS error against a %d-step Heun solve %.5f -> "
             "%.5f on %d training segments%s; sigmas %s", d.steps, d.sampler, time.perf_counter() - t0,
             result.evaluations, f.reference_steps, *result.error, f.n,
             "" if result.held_out is None else ", %.5f -> %.5f on held-out clips" % result.held_out,
             " ".join(f"{s:.4g}" for s in result.sigmas.tolist()))
    return {k: v for k, v in result.to_dict().items() if k != "history"}


def evenly_spaced(n_items: int, n: int) -> torch.Tensor:
    """Indices of up to ``n`` of ``n_items`` items, spread over them (datasets hold their classes in blocks:
    every class is met)."""
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.linspace(0, n_items - 1, min(n, n_items)).round().long().unique()


def reconstruction_scores(modality: Modality, clips: torch.Tensor, decoded: torch.Tensor) -> dict[str, float]:
    """The multi-resolution STFT distance and the log-spectral distance (dB) of ``clips`` [N, 1, T] from their
    reconstructions ``decoded`` [N, 1, T'] (cut to T), each the mean over clips."""
    result = evaluate_reconstructions(clips, modality.eval_data(decoded, clips.shape[1:]), modality.sample_rate)
    return {name: m["samples"] for name, m in result["metrics"].items()}


def write_examples(modality: Modality, clips: torch.Tensor, vocoded: torch.Tensor, griffin_lim: torch.Tensor,
                   out_dir: Path) -> list[Path]:
    """``out_dir``: the clips [n, 1, T] as they are, vocoded, and by Griffin-Lim, written as the modality writes
    samples: sample_00000... in that order (the n originals, then the n vocoded, then Griffin-Lim's), a row of
    grid.png per way, and index.html to listen to them."""
    waves = [modality.eval_data(w, clips.shape[1:]) for w in (clips, vocoded, griffin_lim)]
    labels = torch.arange(len(COMPARED)).repeat_interleave(len(clips))
    return modality.write_samples(torch.cat(waves), labels, COMPARED, out_dir)
