"""Where generated notes' artefacts come from: the decoder, guidance, steps (docs/audio.md, "Where the notes'
bursts and FAD gap came from").

    python benchmarks/audio_artefacts.py CKPT [--vocoder PATH] [--n 48] [--folders OUT]

CKPT: a notes generator on log-mels (the default `python -m mmdiff modality=audio` run). Prints, for sine notes
(the first class: a 262-988 Hz sine has nothing at 2-3.5 kHz), the level of the 2-3.5 kHz band relative to the
clip's loudest frame (the maximum over frames, in dB) and the share of notes with a burst (a frame above -40 dB),
for the held-out test notes as they are, through Griffin-Lim, through Griffin-Lim after Gaussian noise in model
space, and for generated notes at several guidance scales and step counts, through Griffin-Lim and (with
--vocoder) the vocoder. With --vocoder it also prints how the vocoder and Griffin-Lim fare on held-out notes
resampled up by 0, 25 and 50 cents (their RMS level and multi-resolution STFT distance per timbre). With
--folders it writes 400 real training notes as they are, through Griffin-Lim and through the vocoder, into
OUT/{raw,griffin_lim,vocoder} for `python -m mmdiff mode=eval checkpoint=CKPT samples=OUT/raw` etc.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmdiff.api import Model
from mmdiff.build import build_dataset
from mmdiff.eval.metrics import multires_stft_distance

BAND = (2000.0, 3500.0)  # Hz
BURST_DB = -40.0


def band_level_db(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """[N, 1, T] -> [N]: the maximum over frames of the BAND's energy relative to the loudest frame's, in dB."""
    power = torch.stft(wave[:, 0], 512, 64, window=torch.hann_window(512), return_complex=True).abs() ** 2
    freqs = torch.linspace(0, sample_rate / 2, power.shape[1])
    band = power[:, (freqs >= BAND[0]) & (freqs <= BAND[1])].sum(1)
    return (10 * torch.log10(band / power.sum(1).amax(1, keepdim=True) + 1e-12)).amax(1)


def report(name: str, wave: torch.Tensor, sample_rate: int) -> None:
    level = band_level_db(wave, sample_rate)
    print(f"| {name} | {level.median():.1f} | {(level > BURST_DB).float().mean() * 100:.1f} % |")


def decoded(model: Model, x: torch.Tensor, vocoder: str | None) -> torch.Tensor:
    model.use_decoder(vocoder if vocoder else False)
    return model.decode(x)


def pitch_shifted(waves: torch.Tensor, cents: float) -> torch.Tensor:
    """Resample [N, 1, T] so every frequency rises by ``cents`` (linear interpolation, same length)."""
    T = waves.shape[-1]
    t = np.arange(T) * 2 ** (cents / 1200)
    return torch.stack([torch.from_numpy(np.interp(t, np.arange(T), w[0].numpy())).float()[None] for w in waves])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--vocoder", default=None)
    ap.add_argument("--n", type=int, default=48, help="generated sine notes per setting")
    ap.add_argument("--folders", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = Model.from_checkpoint(args.checkpoint)
    sr = model.modality.sample_rate
    run_cfg = dict(model.config)
    test = build_dataset({**run_cfg, "dataset": {**run_cfg["dataset"], "split": "test"}})
    sine = test.data[test.labels == 0].float()
    x_real = model.encode(sine)

    print(f"sine notes: {len(sine)} held-out, {args.n} generated per row\n")
    print("| sine notes, decoder | 2-3.5 kHz level (dB, median) | with a burst |")
    print("| --- | --- | --- |")
    report("held-out, as they are", sine, sr)
    report("held-out, Griffin-Lim", decoded(model, x_real, None), sr)
    for std in (0.05, 0.1):
        noisy = x_real + std * torch.randn(x_real.shape, generator=torch.Generator().manual_seed(0))
        report(f"held-out + N(0, {std}) in model space, Griffin-Lim", decoded(model, noisy, None), sr)
    if args.vocoder:
        report("held-out, vocoder", decoded(model, x_real, args.vocoder), sr)
    labels = torch.zeros(args.n, dtype=torch.long)
    for guidance, steps in ((1.0, 20), (1.5, 20), (2.5, 20), (1.5, 50)):
        x = model.sample(n=args.n, labels=labels, steps=steps, guidance=guidance, seed=0)
        report(f"generated, guidance {guidance}, {steps} steps, Griffin-Lim", decoded(model, x, None), sr)
        if args.vocoder:
            report(f"generated, guidance {guidance}, {steps} steps, vocoder", decoded(model, x, args.vocoder), sr)

    if args.vocoder:
        names = model.class_names
        pick = torch.cat([(test.labels == c).nonzero().flatten()[:24] for c in range(len(names))])
        waves, labels = test.data[pick].float(), test.labels[pick]
        print("\nheld-out notes resampled up: RMS level and multi-resolution STFT distance per timbre")
        for cents in (0, 25, 50):
            shifted = pitch_shifted(waves, cents)
            x = model.encode(shifted)
            for name in ("griffin_lim", "vocoder"):
                out = decoded(model, x, args.vocoder if name == "vocoder" else None)
                ref = F.pad(shifted, (0, max(0, out.shape[-1] - shifted.shape[-1])))[..., :out.shape[-1]]
                rms, dist = out.pow(2).mean((1, 2)).sqrt(), multires_stft_distance(ref, out)
                print(f"+{cents} cents {name:11s} " + " | ".join(
                    f"{names[c]} RMS {rms[labels == c].median():.3f} (real {ref[labels == c].pow(2).mean((1, 2)).sqrt().median():.3f})"
                    f" STFT {dist[labels == c].median():.2f}" for c in range(len(names))))

    if args.folders:
        train = build_dataset(run_cfg)
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:400]
        waves, labels = train.data[idx].float(), train.labels[idx]
        out = Path(args.folders)
        model.modality.write_samples(waves, labels, model.class_names, out / "raw")
        model.modality.write_samples(decoded(model, model.encode(waves), None), labels, model.class_names,
                                     out / "griffin_lim")
        if args.vocoder:
            model.modality.write_samples(decoded(model, model.encode(waves), args.vocoder), labels,
                                         model.class_names, out / "vocoder")
        print(f"\nwrote {out}/raw, griffin_lim{', vocoder' if args.vocoder else ''}: score each with "
              f"python -m mmdiff mode=eval checkpoint={args.checkpoint} samples=FOLDER")


if __name__ == "__main__":
    main()
