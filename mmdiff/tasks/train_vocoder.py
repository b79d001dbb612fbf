"""mode=train_vocoder: a learned vocoder (mmdiff.models.vocoder, Vocos) for a log-mel model space, trained on
the data the generator trains on.

The dataset and the modality are built as mode=train builds them (the ``dataset`` group, the modality config
with its mel settings). Each step draws ``batch_size`` random segments of ``segment`` frames from the
training clips, encodes them with the modality (the log-mels the generator denoises), vocodes them back and
compares the result with the segments (:class:`Objective`): the multi-resolution STFT loss plus
``mel_weight`` times the L1 distance between the output's log-mel and the input's. AdamW, a linear warm-up,
then a cosine decay over the budget (``max_steps`` or ``max_seconds``, whichever ends first).

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
from ..data import splits
from ..data.dataset import Dataset
from ..errors import UserError
from ..eval.evaluate import evaluate_reconstructions
from ..eval.metrics import multires_stft_loss
from ..modalities.base import Modality
from ..models.vocoder import Vocoder, save_vocoder

log = logging.getLogger(__name__)

BETAS = (0.8, 0.9)  # AdamW's, as Vocos trains its generator
FIELDS = ["step", "seconds", "loss", "stft", "mel_l1", "lr", "segments_per_s"]
COMPARED = ["original", "vocoder", "griffin_lim"]  # the rows of held_out/grid.png


@dataclass
class Objective:
    """The vocoder's training loss on waveforms [B, 1, T] (the modality's data):

        multi-resolution STFT loss(w', v(x)) + mel_weight * mean |encode(v(x)) - x| / scale

    with x = encode(w) the model-space log-mel, w' the waveform zero-padded as encode pads it
    (T' = hop * (frames - 1)), v the vocoder, and the mel term in natural-log units (the model space is
    scale * (log mel - offset))."""

    modality: Modality
    resolutions: list[tuple[int, int, int]]
    mel_weight: float

    def __post_init__(self) -> None:
        self.settings = self.modality.decoder_settings()

    def __call__(self, vocoder: Vocoder, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"loss", "stft", "mel"} for the waveforms ``wave`` [B, 1, T]."""
        x = self.modality.encode(wave)
        target = F.pad(wave, (0, self.settings["hop_length"] * (x.shape[-1] - 1) - wave.shape[-1]))
        est = vocoder(x)
        stft = multires_stft_loss(target, est, self.resolutions)
        mel = (self.modality.encode(est) - x).abs().mean() / self.settings["scale"]
        return {"loss": stft + self.mel_weight * mel, "stft": stft, "mel": mel}


def random_segments(data: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` segments [n, 1, length] cut at random from random clips of ``data`` [N, 1, T] (clips shorter than
    ``length`` are zero-padded at the end first)."""
    clips = data[torch.randint(len(data), (n,), generator=generator)].float()
    if clips.shape[-1] < length:
        clips = F.pad(clips, (0, length - clips.shape[-1]))
    starts = torch.randint(clips.shape[-1] - length + 1, (n,), generator=generator)
    return torch.stack([clip[:, s:s + length] for clip, s in zip(clips, starts.tolist())])


def learning_rate(o: DictConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 0 as ``progress`` (the share of the budget
    used, by steps or seconds) reaches 1."""
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    return o.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def check_options(o: DictConfig) -> None:
    """The ``train_vocoder`` node's values, before anything is loaded."""
    for key in ("max_steps", "batch_size", "segment", "log_every", "held_out"):
        if not isinstance(o[key], int) or isinstance(o[key], bool) or o[key] <= 0:
            raise UserError(f"train_vocoder.{key}={o[key]!r} is invalid: it must be a positive integer")
    for key in ("max_seconds", "lr", "grad_clip"):
        if not isinstance(o[key], (int, float)) or o[key] <= 0:
            raise UserError(f"train_vocoder.{key}={o[key]!r} is invalid: it must be a positive number")
    for key in ("warmup_steps", "examples", "mel_weight"):
        if not isinstance(o[key], (int, float)) or o[key] < 0:
            raise UserError(f"train_vocoder.{key}={o[key]!r} is invalid: it must be a non-negative number")
    bad = [r for r in o.resolutions if len(r) != 3 or not all(isinstance(v, int) and v > 0 for v in r) or r[2] > r[0]]
    if not o.resolutions or bad:
        raise UserError(f"train_vocoder.resolutions holds {bad[0] if bad else 'nothing'}: give [n_fft, hop, window] "
                        "triples of positive integers with window <= n_fft, e.g. [[512,128,512]]")


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
    objective = Objective(modality, [tuple(r) for r in o.resolutions], float(o.mel_weight))
    settings = objective.settings
    if o.num_threads:
        torch.set_num_threads(int(o.num_threads))
    device = pick_device(cfg.device)
    train = build_dataset(cfg)
    reference, described = held_out_data(cfg, train)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(to_container(cfg) | {"modality": modality_cfg}), run_dir / "config.yaml")

    torch.manual_seed(cfg.seed)
    vocoder = Vocoder(settings, **to_container(o.net)).to(device)
    opt = torch.optim.AdamW(vocoder.parameters(), lr=o.lr, betas=BETAS)
    generator = torch.Generator().manual_seed(cfg.seed)
    length = settings["hop_length"] * (o.segment - 1)
    log.info("training a vocoder (%.2fM parameters) on %s: %d clips, segments of %d frames (%.2f s), %s mel "
             "settings %s; run folder %s", sum(p.numel() for p in vocoder.parameters()) / 1e6, train.name, len(train),
             o.segment, length / settings["sample_rate"], modality.name, settings, run_dir)
    step, start = 0, time.perf_counter()
    window = (start, 0)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        metrics = csv.DictWriter(f, FIELDS)
        metrics.writeheader()
        while step < o.max_steps and (elapsed := time.perf_counter() - start) < o.max_seconds:
            lr = learning_rate(o, step, max(step / o.max_steps, elapsed / o.max_seconds))
            for group in opt.param_groups:
                group["lr"] = lr
            losses = objective(vocoder, random_segments(train.data, o.batch_size, length, generator).to(device))
            if not torch.isfinite(losses["loss"]):
                raise UserError(f"vocoder training diverged at step {step} (a non-finite loss): lower "
                                f"train_vocoder.lr (now {o.lr})")
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(vocoder.parameters(), o.grad_clip)
            opt.step()
            step += 1
            if step % o.log_every == 0:
                now = time.perf_counter()
                rate = (step - window[1]) * o.batch_size / (now - window[0])
                values = {"loss": losses["loss"].item(), "stft": losses["stft"].item(), "mel_l1": losses["mel"].item()}
                metrics.writerow({"step": step, "seconds": round(now - start, 3), "lr": f"{lr:.4g}",
                                  "segments_per_s": round(rate, 1)} | {k: f"{v:.5g}" for k, v in values.items()})
                f.flush()
                window = (now, step)
    seconds = time.perf_counter() - start

    vocoder = vocoder.cpu().eval().requires_grad_(False)
    clips = reference.data[evenly_spaced(len(reference), o.held_out)].float()
    x = modality.encode(clips)
    with torch.no_grad():
        decoded = {"vocoder": vocoder(x).clamp(-1, 1), "griffin_lim": modality.decode(x)}  # no vocoder loaded yet
    scores = {name: reconstruction_scores(modality, clips, waves) for name, waves in decoded.items()}
    path = save_vocoder(run_dir / modality.decoder_file, vocoder, settings, step, seconds,
                        {"held_out": scores | {"n": len(clips), "clips": described}})
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
