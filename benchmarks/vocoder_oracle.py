"""Where a mel decoder's distance comes from: the magnitude it rebuilds from the log-mel, or the phase it finds.

On the held-out clips of a log-mel dataset, the multi-resolution STFT distance (``mmdiff.eval.metrics``, the one
docs/audio.md reports) of waveforms rebuilt from mixes of true and estimated STFT magnitude and phase, at the
representation's own n_fft and hop (an exact inverse STFT: true magnitude and true phase give 0):
- Griffin-Lim from the log-mel (the default decoder: least-squares magnitude, then 64 iterations of phase);
- Griffin-Lim from the true linear magnitude (what phase retrieval alone costs);
- the least-squares magnitude with the true phase (what the mel's lost detail alone costs);
- with ``--vocoder FILE`` (a Vocos file of mode=train_vocoder): its output, its magnitude with the true phase, the
  true magnitude with its phase, and Griffin-Lim run on its magnitude from its phase;
- with ``--regress-seconds S``: Tacotron's post-net recipe, a network of Vocos's size (mmdiff.models.vocoder's
  backbone; its phase outputs unused) trained S seconds on the training split to regress the true STFT
  log-magnitude from the log-mel (L1 on the log plus spectral convergence), then its magnitude with the true phase
  and with Griffin-Lim's.
Prints JSON.

Usage: python benchmarks/vocoder_oracle.py [--dataset fsdd] [--root ../shared/data/fsdd] [--hop 128]
    [--vocoder FILE] [--regress-seconds 150] [--max-clips 300]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf

from mmdiff.build import build_dataset
from mmdiff.config import compose
from mmdiff.eval.metrics import multires_stft_distance
from mmdiff.modalities.spectral import LogMel
from mmdiff.models.vocoder import Vocoder, load_vocoder
from mmdiff.tasks.train_vocoder import evenly_spaced

FLOOR = 1e-4  # the regression's target log-magnitudes are floored here; a prediction near it is silence


def griffin_lim(mag: torch.Tensor, phase: torch.Tensor, stft, istft, iters: int = 64,
                momentum: float = 0.99) -> torch.Tensor:
    """Griffin-Lim with the momentum of Perraudin et al. 2013 (as torchaudio's), from a given starting phase."""
    angles, previous = torch.polar(torch.ones_like(mag), phase), torch.zeros_like(mag, dtype=torch.complex64)
    for _ in range(iters):
        rebuilt = stft(istft(mag * angles))
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return istft(mag * angles)


def regress_magnitude(rep: LogMel, x: torch.Tensor, log_magnitude: torch.Tensor, seconds: float,
                      floor: float = FLOOR) -> tuple[Vocoder, int]:
    """Train Vocos's backbone for ``seconds`` to map log-mels x [N, 1, n_mels, F] to the true STFT log-magnitudes
    [N, bins, F] (floored at ``floor``): the log-magnitude half of :meth:`Vocoder.spectrum`. -> (net, steps)."""
    torch.manual_seed(0)
    net = Vocoder(rep.settings, dim=128, intermediate_dim=384, num_layers=4, kernel_size=7)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, betas=(0.8, 0.9))
    lowest = float(torch.log(torch.tensor(floor))) - 2
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pick = torch.randint(len(x), (16,))
        predicted = net.spectrum(x[pick]).abs().clamp(min=1e-30).log().clamp(min=lowest)
        target = log_magnitude[pick]
        loss = (predicted - target).abs().mean() + (predicted.exp() - target.exp()).norm() / target.exp().norm()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    return net.eval(), steps


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fsdd")
    parser.add_argument("--root", default="../shared/data/fsdd")
    parser.add_argument("--split", default="test")
    parser.add_argument("--hop", type=int, default=128, help="the mel hop (FSDD trains at 128, the notes at 64)")
    parser.add_argument("--vocoder")
    parser.add_argument("--regress-seconds", type=float, default=0.0)
    parser.add_argument("--max-clips", type=int, default=300)
    args = parser.parse_args()
    cfg = compose(["modality=audio", f"dataset={args.dataset}", f"dataset.root={args.root}",
                   f"dataset.split={args.split}"])
    data = build_dataset(OmegaConf.to_container(cfg, resolve=True))
    clips = data.data[evenly_spaced(len(data), args.max_clips)].float()
    rep = LogMel(int(cfg.dataset.sample_rate), n_fft=512, hop_length=args.hop, n_mels=64)
    n_fft, hop, T = 512, args.hop, clips.shape[-1]
    window = torch.hann_window(n_fft)
    stft = lambda w: torch.stft(w, n_fft, hop, window=window, center=True, return_complex=True)  # noqa: E731
    x = rep.encode(clips)
    S = stft(rep._pad(clips).reshape(len(clips), -1))
    length = hop * (S.shape[-1] - 1)
    istft = lambda Z: torch.istft(Z, n_fft, hop, window=window, center=True, length=length)  # noqa: E731

    def distance(wave: torch.Tensor) -> float:
        wave = wave.reshape(len(clips), -1)[:, :T]
        wave = torch.nn.functional.pad(wave, (0, T - wave.shape[-1]))
        return round(float(multires_stft_distance(clips, wave.reshape(clips.shape)).mean()), 4)

    M = (torch.exp(x[:, 0] / rep.scale + rep.offset) - rep.eps).clamp(min=0)
    least_squares = rep.inverse_mel(M)
    rows = {"griffin_lim_from_log_mel": distance(rep.decode(x)),
            "griffin_lim_from_true_magnitude": distance(rep.griffin_lim(S.abs())),
            "least_squares_magnitude_true_phase": distance(istft(torch.polar(least_squares, S.angle()))),
            "true_magnitude_zero_phase": distance(istft(S.abs().to(S.dtype))),
            "silence": distance(torch.zeros_like(clips))}
    if args.vocoder:
        with torch.no_grad():
            V = load_vocoder(args.vocoder).net.spectrum(x)
        rows |= {"vocoder": distance(istft(V)),
                 "vocoder_magnitude_true_phase": distance(istft(torch.polar(V.abs(), S.angle()))),
                 "true_magnitude_vocoder_phase": distance(istft(torch.polar(S.abs(), V.angle()))),
                 "griffin_lim_on_vocoder_magnitude": distance(griffin_lim(V.abs(), V.angle(), stft, istft))}
    if args.regress_seconds > 0:
        train_cfg = compose(["modality=audio", f"dataset={args.dataset}", f"dataset.root={args.root}"])
        train = build_dataset(OmegaConf.to_container(train_cfg, resolve=True)).data.float()
        train_S = stft(rep._pad(train).reshape(len(train), -1))
        net, steps = regress_magnitude(rep, rep.encode(train), train_S.abs().clamp(min=FLOOR).log(),
                                       args.regress_seconds)
        with torch.no_grad():
            mag = net.spectrum(x).abs()
        mag = torch.where(mag <= 1.5 * FLOOR, torch.zeros_like(mag), mag)   # the floor it was trained to is silence
        rows |= {"regression_steps": steps,
                 "regressed_magnitude_true_phase": distance(istft(torch.polar(mag, S.angle()))),
                 "regressed_magnitude_griffin_lim": distance(griffin_lim(mag, torch.zeros_like(mag), stft, istft))}
    result = {"dataset": args.dataset, "split": args.split, "clips": len(clips), "hop": hop,
              "exact_zero_samples": round(float((clips == 0).float().mean()), 3), "multires_stft": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
