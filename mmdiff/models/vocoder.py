"""A learned mel-to-waveform vocoder: Vocos (Siuzdak 2023), the direct Fourier-domain kind.

Model-space log-mel [B, 1, n_mels, F] (``mmdiff.modalities.spectral.LogMel``) -> a ConvNeXt-1D backbone
over the F frames (Liu et al. 2022's block, 1-D: depthwise convolution, LayerNorm, an inverted bottleneck
MLP, a per-channel layer scale) -> per frame, a linear head that predicts the STFT log-magnitude (on top of
a linear map of the frame's log-mel: :class:`Vocoder` says why) and the phase of that frame -> ``torch.istft`` with the representation's own n_fft and hop (Hann window,
center=True). STFT frame k is centred on sample k * hop, exactly as the mel frame k it comes from
(``LogMel.encode`` is a centred STFT too), so each mel frame drives the n_fft samples around its own hop
and the output has ``LogMel.decode``'s length, hop * (F - 1). Predicting the spectrum instead of samples
(no transposed convolutions) is what makes Vocos small and fast: the inverse FFT does the upsampling.

The file a trained vocoder lives in (``vocoder.safetensors``, written by mode=train_vocoder) holds its
weights and, as string metadata, its kind (``KINDS``: this module's Vocos, or the diffusion vocoder of
mmdiff.models.diffusion_vocoder), the mel settings it was trained for, its architecture, how it decodes (a
diffusion vocoder's sampler, fitted schedule and seed) and how long it trained (:func:`save_vocoder`,
:func:`load_vocoder`); loading never unpickles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import read_tensors, write_tensors
from ..errors import UserError
from .diffusion_vocoder import DiffusionVocoder
from .mel_spectrum import mel_to_linear

FORMAT = "mmdiff-vocoder"
VERSION = "1"
# The mel settings a vocoder is trained for, as LogMel.settings gives them: a vocoder is used only where all match.
MEL_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "eps", "offset", "scale")


class ConvNeXtBlock(nn.Module):
    """[B, dim, F] -> [B, dim, F]: x + gamma * MLP(LayerNorm(depthwise conv(x))) (ConvNeXt, 1-D, as in Vocos).

    The depthwise convolution is centred (``kernel_size`` odd, zero padding on both sides), so frame k sees
    frames k - kernel_size // 2 ... k + kernel_size // 2 and nothing shifts along time."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(x).transpose(1, 2)                      # [B, F, dim]
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class Vocoder(nn.Module):
    """Vocos: model-space log-mel [B, 1, n_mels, F] -> waveform [B, 1, hop_length * (F - 1)].

    ``mel`` holds the settings of the LogMel representation it decodes (MEL_KEYS: ``LogMel.settings``);
    ``dim``, ``intermediate_dim``, ``num_layers`` and ``kernel_size`` size the backbone (conf/config.yaml's
    ``train_vocoder.net`` gives them: no defaults here). :meth:`spectrum` is the network, :meth:`synthesize`
    the fixed inverse STFT; ``forward`` is both.

    One departure from Vocos, for training budgets of minutes: the log-magnitude is the head's output plus
    ``skip``, a linear map of the frame's log-mel initialised to spread each band's level evenly over the
    STFT bins it covers (:func:`mel_to_linear`), so that training starts from roughly the right magnitudes
    and spends its steps on the phase and the detail; the map is trained with the rest."""

    kind = "vocos"

    def __init__(self, mel: dict, *, dim: int, intermediate_dim: int, num_layers: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={kernel_size} must be odd (a centred convolution keeps frames aligned)")
        n_mels, n_fft, hop_length = mel["n_mels"], mel["n_fft"], mel["hop_length"]
        self.n_fft, self.hop_length = n_fft, hop_length
        self.architecture = {"dim": dim, "intermediate_dim": intermediate_dim, "num_layers": num_layers,
                             "kernel_size": kernel_size}
        self.embed = nn.Conv1d(n_mels, dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, kernel_size, 1 / num_layers)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 2 * (n_fft // 2 + 1))   # log-magnitude and phase of every STFT bin
        self.skip = nn.Linear(n_mels, n_fft // 2 + 1)     # the log-magnitude's start from the log-mel
        # |X_k| <= sum of the window = n_fft / 2 for a waveform in [-1, 1]: no real frame is louder
        self.log_mag_max = math.log(n_fft / 2)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.apply(_init_weights)
        weight, bias = mel_to_linear(mel)
        with torch.no_grad():
            self.skip.weight.copy_(weight)
            self.skip.bias.copy_(bias)

    @property
    def receptive_field(self) -> int:
        """How many frames on each side of frame k can change the spectrum predicted for frame k."""
        return (len(self.blocks) + 1) * (self.architecture["kernel_size"] // 2)

    def spectrum(self, x: Tensor) -> Tensor:
        """Model-space log-mel [B, 1, n_mels, F] -> complex STFT [B, n_fft // 2 + 1, F]: magnitude
        exp(log-magnitude) (clamped at the loudest possible frame), phase the predicted angle, as in Vocos."""
        h = self.norm(self.embed(x[:, 0]).transpose(1, 2)).transpose(1, 2)   # [B, dim, F]
        for block in self.blocks:
            h = block(h)
        log_mag, phase = self.head(self.final_norm(h.transpose(1, 2))).transpose(1, 2).chunk(2, dim=1)
        log_mag = log_mag + self.skip(x[:, 0].transpose(1, 2)).transpose(1, 2)
        return torch.polar(torch.exp(log_mag.clamp(max=self.log_mag_max)), phase)

    def synthesize(self, S: Tensor) -> Tensor:
        """Complex STFT [B, n_fft // 2 + 1, F] -> waveform [B, 1, hop * (F - 1)]: the inverse of a centred
        Hann STFT (overlap-add divided by the summed squared window), frame k centred on sample k * hop."""
        length = self.hop_length * (S.shape[-1] - 1)
        wave = torch.istft(S, self.n_fft, self.hop_length, window=self.window.to(S.real.dtype), center=True,
                           length=length)
        return wave[:, None]

    def forward(self, x: Tensor) -> Tensor:
        return self.synthesize(self.spectrum(x))


def _init_weights(module: nn.Module) -> None:
    """Vocos's initialisation: truncated normal weights (std 0.02), zero biases."""
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


# --- the file ----------------------------------------------------------------------------------------

# The kinds a file may hold: the class is rebuilt from the file's mel settings, its architecture and (for a kind
# that samples) its decoding settings, all as keyword arguments.
KINDS: dict[str, type[nn.Module]] = {Vocoder.kind: Vocoder, DiffusionVocoder.kind: DiffusionVocoder}


@dataclass
class VocoderFile:
    """A vocoder as read from its file: the network (eval mode, no gradients) and what the file records."""

    net: Vocoder | DiffusionVocoder
    mel: dict          # the mel settings it was trained for (MEL_KEYS)
    steps: int
    seconds: float
    extra: dict        # anything else training recorded (e.g. held-out scores)

    @property
    def kind(self) -> str:
        return self.net.kind


def save_vocoder(path: str | Path, net: Vocoder | DiffusionVocoder, mel: dict, steps: int, seconds: float,
                 extra: dict | None = None) -> Path:
    """Write ``net``'s weights with its kind, ``mel`` (the settings it was trained for), architecture, decoding
    settings (a diffusion vocoder's), steps and training seconds in the metadata, atomically."""
    metadata = {"format": FORMAT, "version": VERSION, "kind": net.kind,
                "mel": json.dumps({k: mel[k] for k in MEL_KEYS}), "architecture": json.dumps(net.architecture),
                "steps": str(int(steps)), "seconds": str(round(float(seconds), 3)), "extra": json.dumps(extra or {})}
    if hasattr(net, "decoding"):
        metadata["decoding"] = json.dumps(net.decoding)
    return write_tensors(path, net.state_dict(), metadata)


def load_vocoder(path: str | Path) -> VocoderFile:
    """Read a file written by :func:`save_vocoder`; a missing, pickled, corrupt or foreign file is a UserError."""
    fix = "give vocoder=PATH to a vocoder.safetensors written by mode=train_vocoder (or vocoder=false for Griffin-Lim)"
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"vocoder={path} does not exist: {fix}")
    tensors, meta = read_tensors(path, FORMAT, "an mmdiff vocoder", fix)
    kind = meta.get("kind")
    if meta.get("version") != VERSION or kind not in KINDS:
        raise UserError(f"{path} is an mmdiff vocoder of kind {kind} version {meta.get('version')}; this mmdiff reads "
                        f"kinds {', '.join(KINDS)} version {VERSION}: train it again with mode=train_vocoder")
    try:
        mel = json.loads(meta["mel"])
        options = json.loads(meta["architecture"])
        if "decoding" in meta:
            options["decoding"] = json.loads(meta["decoding"])
        net = KINDS[kind](mel, **options)
        net.load_state_dict(tensors)
        record = VocoderFile(net.eval().requires_grad_(False), mel, int(meta["steps"]), float(meta["seconds"]),
                             json.loads(meta.get("extra", "{}")))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is damaged: its metadata or weights do not describe a vocoder ({e}); {fix}") from None
    return record
