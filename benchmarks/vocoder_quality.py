"""Held-out real clips rebuilt from their log-mels: Griffin-Lim against a learned vocoder (mode=train_vocoder, of
either kind: vocos or diffusion).

The vocoder's run folder holds the config it was trained with (config.yaml: the dataset and the mel settings).
On up to ``max_clips`` clips of that dataset's held-out split (evenly spaced over it, so every class is met),
each clip is encoded to the log-mel the generator denoises and decoded back by Griffin-Lim (the modality's
default) and by the vocoder, then measured against the clip:
- the multi-resolution STFT distance (Parallel WaveGAN's resolutions) and the log-spectral distance in dB
  (``mmdiff.eval.evaluate_reconstructions``), means over clips, with its "mismatched clips" floor for scale
  (each clip against the next one: what an unrelated clip scores);
- for labelled data (FSDD's digits, the notes' timbres) the class accuracy of mmdiff's own evaluator (the
  classifier mode=eval trains on the training split and caches: ``tasks.eval.evaluator_for``) on the original
  clips (the ceiling) and on each reconstruction;
- the decoding time per second of audio: one clip per call, the median over clips, on the CPU with torch's
  current threads (pin them with OMP_NUM_THREADS=1 taskset -c 1 on a shared machine).
Prints JSON, then a markdown table.

Usage: python benchmarks/vocoder_quality.py VOCODER_OR_ITS_RUN_FOLDER [max_clips] [data_root]
  (data_root: where the dataset is now, if it moved since the vocoder was trained)
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mmdiff.build import build_modality
from mmdiff.eval.evaluate import evaluate_reconstructions
from mmdiff.models.vocoder import load_vocoder
from mmdiff.tasks.eval import evaluator_for, reference_data
from mmdiff.tasks.train_vocoder import evenly_spaced


def decode_each(modality, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Decode the log-mels x [N, ...] one clip per call: (waveforms [N, 1, T'], median seconds per clip)."""
    waves, seconds = [], []
    for item in x:
        start = time.perf_counter()
        waves.append(modality.decode(item[None]))
        seconds.append(time.perf_counter() - start)
    return torch.cat(waves), statistics.median(seconds)


def main(path: str, max_clips: int = 300, data_root: str | None = None) -> dict:
    path = Path(path)
    vocoder_file = path / "vocoder.safetensors" if path.is_dir() else path
    run_cfg = OmegaConf.to_container(OmegaConf.load(vocoder_file.parent / "config.yaml"), resolve=True)
    options = run_cfg["eval"] | {"split": "auto", "data_root": data_root}
    train, reference, described = reference_data(run_cfg, options)
    modality = build_modality(run_cfg["modality"])
    labelled = bool(train.class_names)
    evaluator = evaluator_for(train, reference, modality, run_cfg, options, retrain=False) if labelled else None
    reference = reference if reference is not None else train
    pick = evenly_spaced(len(reference), max_clips)
    clips, labels = reference.data[pick].float(), reference.labels[pick]
    x = modality.encode(clips)
    clip_seconds = clips.shape[-1] / modality.sample_rate

    decoded, per_clip = {}, {}
    decoded["griffin_lim"], per_clip["griffin_lim"] = decode_each(modality, x)
    modality.use_decoder(vocoder_file)
    decoded["vocoder"], per_clip["vocoder"] = decode_each(modality, x)

    record = load_vocoder(vocoder_file)
    result = {"vocoder": str(vocoder_file), "kind": record.kind, "steps": record.steps, "train_seconds": record.seconds,
              "parameters": sum(p.numel() for p in record.net.parameters()), "dataset": reference.name,
              "clips": f"{len(clips)} of {described}", "clip_seconds": clip_seconds,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
              "decoders": {}}
    if hasattr(record.net, "decoding"):  # a diffusion vocoder: how it samples
        result["decoding"] = record.net.decoding
    if evaluator is not None:
        result["original_accuracy"] = float((evaluator.predict(clips) == labels).float().mean())
    for name, waves in decoded.items():
        waves = modality.eval_data(waves, clips.shape[1:])
        metrics = evaluate_reconstructions(clips, waves, modality.sample_rate)["metrics"]
        row = {k: m["samples"] for k, m in metrics.items()} | {"floor_" + k: m["floor"] for k, m in metrics.items()}
        row["seconds_per_audio_second"] = per_clip[name] / clip_seconds
        if evaluator is not None:
            row["accuracy"] = float((evaluator.predict(waves) == labels).float().mean())
        result["decoders"][name] = row
    return result


def table(result: dict) -> str:
    lines = ["| decoder | multi-res STFT distance | LSD (dB) | class accuracy | decoding (s per s of audio) |",
             "| --- | --- | --- | --- | --- |"]
    acc = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    for name, row in result["decoders"].items():
        label = f"vocoder ({result['kind']})" if name == "vocoder" else name.replace("_", "-")
        lines.append(f"| {label} | {row['multires_stft']:.3f} | {row['lsd_db']:.2f} | "
                     f"{acc(row.get('accuracy'))} | {row['seconds_per_audio_second']:.4f} |")
    floor = next(iter(result["decoders"].values()))
    num = lambda v, digits: "-" if v is None else f"{v:.{digits}f}"  # noqa: E731 - no floor from one clip
    lines.append(f"| the original clips | 0 | 0 | {acc(result.get('original_accuracy'))} | |")
    lines.append(f"| floor: the next clip instead | {num(floor['floor_multires_stft'], 3)} | "
                 f"{num(floor['floor_lsd_db'], 2)} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    out = main(args[0], int(args[1]) if len(args) > 1 else 300, args[2] if len(args) > 2 else None)
    print(json.dumps(out, indent=2))
    print()
    print(table(out))
