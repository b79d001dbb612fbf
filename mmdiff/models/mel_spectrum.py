"""From a model-space log-mel frame back to an estimate of the STFT magnitude it was measured from: where both
learned vocoders start (Vocos's log-magnitude skip, mmdiff.models.vocoder; the diffusion vocoder's noise shaping,
mmdiff.models.diffusion_vocoder)."""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor


def mel_to_linear(mel: dict) -> tuple[Tensor, Tensor]:
    """(W [n_fft // 2 + 1, n_mels], b [n_fft // 2 + 1]) with W x + b ~ log |X| per STFT bin from a model-space
    log-mel frame x = scale * (log(M + eps) - offset) (``LogMel``'s, settings ``mel``).

    If |X| is flat (= a) over band m, M_m = a * w_m with w_m the sum of the band's triangle weights
    (torchaudio's HTK filterbank, unnormalised, as LogMel uses); so log a = log M_m - log w_m. Bin k takes the
    mean of that over the bands covering it, weighted by their triangles (rows of the filterbank, normalised;
    a bin no band covers, such as 0 Hz or Nyquist, takes the nearest covered bin's)."""
    fb = torchaudio.functional.melscale_fbanks(mel["n_fft"] // 2 + 1, mel["f_min"], mel["f_max"], mel["n_mels"],
                                               mel["sample_rate"], norm=None, mel_scale="htk")    # [K, n_mels]
    covered = torch.nonzero(fb.sum(1) > 0)[:, 0]
    nearest = covered[(torch.arange(len(fb))[:, None] - covered[None]).abs().argmin(1)]
    A = fb[nearest] / fb[nearest].sum(1, keepdim=True)
    # log M = x / scale + offset (eps is below any level that matters here)
    return A / mel["scale"], A @ (mel["offset"] - fb.sum(0).log())
