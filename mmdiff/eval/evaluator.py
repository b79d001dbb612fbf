"""The domain classifier whose feature layer is the space that FD, KID and precision/recall measure in.

Inception features (FID, Heusel et al. 2017) describe ImageNet photos, not 8x8 digits or spoken digits,
and need weights from the internet. mmdiff instead trains a small CNN on the reference data itself, once,
and caches it: its 128-d feature layer (the input of the linear head, standardised: ``EvaluatorNet.embed``)
is the feature space, as Inception's pool3 layer is for FID and a VGGish embedding for the Fréchet audio
distance (Kilgour et al. 2019). Its held-out accuracy is recorded, so the space has a known quality.

- Images [N, C, H, W] in [0, 1] go in as they are (standardised by the training data's mean and std).
- Audio [N, 1, T] waveforms in [-1, 1] go in as a log-mel spectrogram [N, 1, n_mels, frames] (torchaudio,
  parameters fixed at training and stored in the evaluator's config), so one 2-D network serves audio
  whatever representation the diffusion model used: the evaluator always sees decoded data.

An evaluator is one safetensors file: the network's weights, with its config, held-out accuracy and
the fingerprint of the data it was trained on in the metadata. ``load_or_train_evaluator`` reuses a
cached file whose fingerprint matches the data, and otherwise trains and writes one atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..data.dataset import Dataset
from ..errors import UserError
from ..models.layers import AVG_POOL, conv_nd, group_norm

log = logging.getLogger(__name__)

FORMAT = "mmdiff-evaluator"
VERSION = "1"
KINDS = ("image", "audio")


# --- the network ----------------------------------------------------------------------------------

class EvaluatorNet(nn.Module):
    """x [B, in_channels, *spatial] -> logits [B, num_classes]; ``features`` gives the feature layer
    [B, feature_dim], ``embed`` the same standardised (what the metrics use).

    Stages of (conv 3, GroupNorm, SiLU) x 2 with ``channels[i]`` channels, each followed by 2x average
    pooling (skipped once a spatial dim is down to 1), then global average pooling, the feature layer
    (linear, ``feature_dim``) and, after a SiLU, the linear head. ``dims`` picks the convolution and
    pooling classes, as in the U-Net (mmdiff.models.layers)."""

    def __init__(self, in_channels: int, num_classes: int, dims: int = 2, channels: tuple[int, ...] = (32, 64, 128),
                 feature_dim: int = 128, groups: int = 8, dropout: float = 0.1):
        super().__init__()
        self.dims = dims
        stages, ch_in = [], in_channels
        for ch in channels:
            stages.append(nn.Sequential(conv_nd(dims, ch_in, ch), group_norm(ch, groups), nn.SiLU(),
                                        conv_nd(dims, ch, ch), group_norm(ch, groups), nn.SiLU()))
            ch_in = ch
        self.stages = nn.ModuleList(stages)
        self.pool = AVG_POOL[dims](2, ceil_mode=True)
        self.feature = nn.Linear(ch_in, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        # set after training (see ``embed``): the training data's mean feature and their RMS about it
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

    def embed(self, x: Tensor) -> Tensor:
        """The feature space of the metrics: ``features`` minus the training data's mean, divided by their
        RMS about it, so real features have zero mean and unit average variance per dimension. FD and KID
        then have one scale whatever the data (KID's kernel (x.y / D + 1)^3 assumes x.y / D of order 1,
        as on Inception features); precision and recall do not change (they ignore shifts and scales)."""
        return (self.features(x) - self.feature_mean) / self.feature_scale

    def features(self, x: Tensor) -> Tensor:
        h = x
        for stage in self.stages:
            h = stage(h)
            if min(h.shape[2:]) >= 2:
                h = self.pool(h)
        return self.feature(h.mean(dim=tuple(range(2, h.ndim))))  # global average pooling -> [B, C]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(F.silu(self.features(x))))


# --- the input transform -------------------------------------------------------------------------

def mel_settings(sample_rate: int) -> dict:
    """Log-mel parameters for audio at ``sample_rate`` Hz: a ~64 ms Hann window (n_fft the nearest power
    of two: 512 at 8 kHz, 1024 at 16 kHz), a half-window hop, 40 mel bands up to Nyquist (a 1 s FSDD clip
    -> 40 x 32: on FSDD this held out 98 % in a minute where 64 bands at a quarter-window hop gave 92 %
    in three, measured on a shared 2-core machine)."""
    n_fft = 2 ** round(math.log2(0.064 * sample_rate))
    return {"sample_rate": int(sample_rate), "n_fft": n_fft, "hop_length": n_fft // 2, "n_mels": 40,
            "f_min": 0.0, "f_max": sample_rate / 2, "log_eps": 1e-3}


class Frontend(nn.Module):
    """Decoded data -> the network's input: images unchanged, waveforms [N, 1, T] -> log(mel + eps)
    [N, 1, n_mels, frames]; then (x - mean) / std with the training data's scalars."""

    def __init__(self, kind: str, mean: float = 0.0, std: float = 1.0, mel: dict | None = None):
        super().__init__()
        self.kind, self.mean, self.std = kind, mean, std
        if kind == "audio":
            m = dict(mel)
            self.log_eps = m.pop("log_eps")
            self.mel = T.MelSpectrogram(m.pop("sample_rate"), power=1.0, center=True, **m)

    def raw(self, x: Tensor) -> Tensor:
        if self.kind == "image":
            return x.float()
        return torch.log(self.mel.to(x.device)(x.float()[:, 0]) + self.log_eps)[:, None]

    def forward(self, x: Tensor) -> Tensor:
        return (self.raw(x) - self.mean) / self.std


# --- the evaluator -------------------------------------------------------------------------------

class Evaluator:
    """A trained domain classifier. ``config`` (JSON-able) rebuilds it: kind, the sample shape and class
    names it was trained on, the network's options, the input normalisation and, for audio, the mel
    parameters. ``info`` holds what training measured (held-out accuracy, sizes, seconds)."""

    def __init__(self, net: EvaluatorNet, config: dict, fingerprint: str, info: dict):
        self.net, self.config, self.fingerprint, self.info = net.eval(), config, fingerprint, info
        self.frontend = Frontend(config["kind"], config["mean"], config["std"], config.get("mel"))
        self.from_cache = False  # set by load_or_train_evaluator when the file was reused
        self.path: Path | None = None  # the file it was loaded from or saved to

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    @property
    def held_out_accuracy(self) -> float:
        return self.info["held_out_accuracy"]

    @property
    def feature_dim(self) -> int:
        return self.config["net"]["feature_dim"]

    def to(self, device: torch.device | str) -> Evaluator:
        self.net.to(device)
        return self

    def _check(self, data: Tensor) -> None:
        shape = tuple(self.config["shape"])
        if self.kind == "image" and tuple(data.shape[1:]) != shape:
            raise ValueError(f"this evaluator was trained on images of shape {list(shape)}, got {list(data.shape[1:])}")
        if self.kind == "audio" and (data.ndim != 3 or data.shape[1] != 1):
            raise ValueError(f"this evaluator takes mono waveforms [N, 1, T], got shape {list(data.shape)}")

    @torch.no_grad()
    def _apply(self, fn, data: Tensor, batch_size: int) -> Tensor:
        self._check(data)
        device = next(self.net.parameters()).device
        out = [fn(self.frontend(data[i:i + batch_size].to(device))).float().cpu()
               for i in range(0, len(data), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def features(self, data: Tensor, batch_size: int = 256) -> Tensor:
        """Decoded data (images [N, C, H, W] in [0, 1], or waveforms [N, 1, T]) -> features [N, feature_dim]
        (the feature layer, standardised: ``EvaluatorNet.embed``)."""
        return self._apply(self.net.embed, data, batch_size)

    def logits(self, data: Tensor, batch_size: int = 256) -> Tensor:
        """-> [N, num_classes]."""
        return self._apply(self.net, data, batch_size)

    def predict(self, data: Tensor, batch_size: int = 256) -> Tensor:
        """-> predicted class indices [N] int64."""
        return self.logits(data, batch_size).argmax(1)

    def save(self, path: str | Path) -> Path:
        """Write the evaluator to ``path`` atomically (a temporary file in the same folder, flushed, then
        renamed over the target, as mmdiff.checkpoint does)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        metadata = {"format": FORMAT, "version": VERSION, "config": json.dumps(self.config),
                    "fingerprint": self.fingerprint, "info": json.dumps(self.info),
                    "held_out_accuracy": repr(self.held_out_accuracy)}
        handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file(tensors, tmp, metadata=metadata)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> Evaluator:
        """Read an evaluator written by :meth:`save`; a damaged or foreign file is a :class:`UserError`."""
        path = Path(path)
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise UserError(f"evaluator {path} is unreadable or truncated ({e}): delete it and it is trained "
                            "again") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise UserError(f"{path} is not an mmdiff evaluator of format version {VERSION}: delete it and it is "
                            "trained again")
        try:
            config = json.loads(meta["config"])
            net = EvaluatorNet(**config["net"])
            net.load_state_dict(tensors)
            evaluator = cls(net, config, meta["fingerprint"], json.loads(meta["info"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"evaluator {path} is damaged ({type(e).__name__}: {e}): delete it and it is trained "
                            "again") from None
        evaluator.path = path
        return evaluator


# --- training ------------------------------------------------------------------------------------

def _check_kind(kind: str, sample_rate: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "audio" and not sample_rate:
        raise ValueError("an audio evaluator needs the sample_rate of the waveforms")


def data_fingerprint(dataset: Dataset, kind: str, sample_rate: int | None = None) -> str:
    """sha256 (hex) of the data and labels tensors' bytes, their shapes and dtypes, the class names, the
    kind and the sample rate: any change to the data gives another fingerprint."""
    h = hashlib.sha256()
    header = {"kind": kind, "sample_rate": sample_rate if kind == "audio" else None,
              "data": [list(dataset.data.shape), str(dataset.data.dtype)],
              "labels": [list(dataset.labels.shape), str(dataset.labels.dtype)], "class_names": dataset.class_names}
    h.update(json.dumps(header, sort_keys=True).encode())
    for t in (dataset.data, dataset.labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _split(labels: Tensor, held_out: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stratified split: a fraction ``held_out`` of each class (at least one sample of any class with
    two or more) is held out. Returns (train indices, held-out indices)."""
    train, test = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).reshape(-1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = min(max(round(held_out * len(idx)), 1), len(idx) - 1) if len(idx) > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(test)


def _augment(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Random translations: images by up to 1/8 of their size in each direction (zero-padded), audio
    spectrograms along time by up to 1/8 of their frames (circularly). Keeps the class, widens the data."""
    if kind == "image":
        pad = max(1, x.shape[-1] // 8)
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    shift = int(torch.randint(-(x.shape[-1] // 8), x.shape[-1] // 8 + 1, (1,), generator=generator))
    return torch.roll(x, shift, dims=-1)


def _lr_factor(progress: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first 5 % of training, then a cosine decay to 0 (Loshchilov & Hutter 2017)."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min((progress - warmup) / (1 - warmup), 1.0)))


def train_evaluator(dataset: Dataset, kind: str = "image", sample_rate: int | None = None, epochs: int = 30,
                    seed: int = 0, held_out: float = 0.2, max_seconds: float = 60.0, batch_size: int = 64,
                    lr: float = 3e-3, weight_decay: float = 1e-4, channels: tuple[int, ...] | None = None,
                    feature_dim: int = 128, augment: bool = True, mel_options: dict | None = None,
                    num_threads: int | None = 1, device: torch.device | str = "cpu") -> Evaluator:
    """Train the domain classifier on ``dataset`` (decoded data: images in [0, 1], waveforms [N, 1, T]
    in [-1, 1] at ``sample_rate`` Hz).

    A stratified fraction ``held_out`` of the data is set aside and never trained on; the accuracy on it
    after training is recorded (``info["held_out_accuracy"]``). AdamW; the learning rate warms up and
    then follows a cosine to 0 over ``epochs`` epochs, or over the steps that fit in ``max_seconds`` when
    fewer (re-estimated every 20 steps from the measured speed), so a run cut short still anneals; the
    training loop stops at ``max_seconds`` in any case (preparing the data and the final pass come on top).
    ``channels`` defaults to (32, 64, 128) for images and (16, 32, 64, 128) for spectrograms;
    ``mel_options`` override :func:`mel_settings` (e.g. {"n_mels": 40}).
    ``num_threads`` sets torch's CPU threads while training (None: leave torch's setting). The default, 1,
    is deliberate: these nets are small enough that thread synchronisation dominates. On a 2-core machine
    shared with another job, digits trained in 7.7 s on 1 thread but managed only 3 epochs in 60 s (84.7 %
    held out) on torch's 2; on the idle machine, 2 threads took 5.4 s and 1 thread 7.5 s. Deterministic for a seed on the CPU unless ``max_seconds`` binds;
    the global RNG state is left untouched."""
    _check_kind(kind, sample_rate)
    if dataset.num_classes < 2:
        raise UserError(f"the dataset has {dataset.num_classes} class(es): the evaluator is a classifier and "
                        "needs at least 2 (one sub-folder per class)")
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _train(dataset, kind, sample_rate, epochs=epochs, seed=seed, held_out=held_out,
                      max_seconds=max_seconds, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      channels=channels or ((32, 64, 128) if kind == "image" else (16, 32, 64, 128)),
                      feature_dim=feature_dim, augment=augment, mel_options=mel_options, device=torch.device(device))
    finally:
        torch.set_num_threads(threads)


def _train(dataset, kind, sample_rate, *, epochs, seed, held_out, max_seconds, batch_size, lr, weight_decay, channels,
           feature_dim, augment, mel_options, device) -> Evaluator:
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    mel = mel_settings(sample_rate) | dict(mel_options or {}) if kind == "audio" else None
    train_idx, test_idx = _split(dataset.labels, held_out, g)
    with torch.no_grad():
        frontend = Frontend(kind, mel=mel)
        x = torch.cat([frontend.raw(dataset.data[i:i + 256].to(device)).cpu() for i in range(0, len(dataset), 256)])
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std().clamp(min=1e-6))
    x, y = (x - mean) / std, dataset.labels
    net_cfg = {"in_channels": x.shape[1], "num_classes": dataset.num_classes, "dims": x.ndim - 2,
               "channels": list(channels), "feature_dim": feature_dim}
    total = planned = epochs * math.ceil(len(train_idx) / batch_size)
    step = 0
    with torch.random.fork_rng(devices=[]):  # weight init and dropout from the seed; global RNG untouched
        torch.manual_seed(seed)
        net = EvaluatorNet(**net_cfg).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        net.train()
        loop_start = time.perf_counter()
        while step < total:
            order = train_idx[torch.randperm(len(train_idx), generator=g)]
            for i in range(0, len(order), batch_size):
                now = time.perf_counter()
                if now - start > max_seconds:
                    total = step
                elif step and step % 20 == 0:  # shorten the schedule to the steps that fit in max_seconds
                    fit = step + int((max_seconds - (now - start)) * step / (now - loop_start))
                    total = max(step, min(planned, fit))
                if step >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr * _lr_factor(step / total)
                idx = order[i:i + batch_size]
                xb = _augment(x[idx], kind, g) if augment else x[idx]
                loss = F.cross_entropy(net(xb.to(device)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    net.eval()
    with torch.no_grad():
        def batched(fn, idx):
            return torch.cat([fn(x[idx[i:i + 256]].to(device)).cpu() for i in range(0, len(idx), 256)])
        pred = batched(net, test_idx).argmax(1)
        feats = batched(net.features, train_idx)
    net.feature_mean.copy_(feats.mean(0))
    net.feature_scale.copy_((feats - feats.mean(0)).pow(2).mean().sqrt().clamp(min=1e-6))
    accuracy = float((pred == y[test_idx]).float().mean()) if len(test_idx) else float("nan")
    config = {"kind": kind, "shape": list(dataset.shape), "class_names": dataset.class_names, "net": net_cfg,
              "mean": mean, "std": std, "mel": mel}
    info = {"held_out_accuracy": accuracy, "n_train": len(train_idx), "n_held_out": len(test_idx),
            "steps": step, "epochs": round(step / max(planned, 1) * epochs, 2),
            "seconds": round(time.perf_counter() - start, 2),
            "cut_by_max_seconds": total < planned, "seed": seed, "dataset": dataset.name}
    log.info("evaluator: %s, %d classes, held-out accuracy %.4f on %d samples, %.1f epochs in %.1f s", kind,
             dataset.num_classes, accuracy, len(test_idx), info["epochs"], info["seconds"])
    return Evaluator(net.cpu(), config, data_fingerprint(dataset, kind, sample_rate), info)


# --- the cache -----------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where evaluators of built-in or read-only data go: $MMDIFF_CACHE/evaluators if MMDIFF_CACHE is set,
    else $XDG_CACHE_HOME/mmdiff/evaluators (default ~/.cache/mmdiff/evaluators)."""
    if os.environ.get("MMDIFF_CACHE"):
        return Path(os.environ["MMDIFF_CACHE"]).expanduser() / "evaluators"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mmdiff" / "evaluators"


def _writable(folder: Path) -> bool:
    """Whether ``folder`` may be written to. Beyond os.access: root passes os.access everywhere, so a folder
    whose permission bits say read-only (like a shared copy of a dataset, dr-xr-xr-x), or a read-only
    mount, counts as read-only too."""
    try:
        return (os.access(folder, os.W_OK | os.X_OK) and bool(folder.stat().st_mode & 0o222)
                and not os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _data_folder(root: str | Path | None) -> Path | None:
    """The data's folder (``root``, or the folder holding it when it is a file), if it exists."""
    if root is None or str(root) in ("", "None", "null", "???"):
        return None
    folder = Path(root).expanduser()
    folder = folder.parent if folder.is_file() else folder
    return folder if folder.is_dir() else None


def evaluator_cache_path(fingerprint: str, data_root: str | Path | None = None) -> Path:
    """``<data_root>/.mmdiff/evaluator-<fingerprint[:12]>.safetensors`` ("next to the data") when the data
    has a writable root folder; for built-in data (no root) or a read-only root, the same name in
    :func:`cache_dir`."""
    name = f"evaluator-{fingerprint[:12]}.safetensors"
    folder = _data_folder(data_root)
    if folder is not None:
        sub = folder / ".mmdiff"
        if _writable(sub if sub.is_dir() else folder):
            return sub / name
    return cache_dir() / name


def load_or_train_evaluator(dataset: Dataset, cache_path: str | Path | None = None, *, kind: str = "image",
                            sample_rate: int | None = None, data_root: str | Path | None = None,
                            retrain: bool = False, **train_options) -> Evaluator:
    """The evaluator for ``dataset``: a cached file whose fingerprint matches the data (then ``from_cache``
    is True), else a new one from :func:`train_evaluator` (``train_options``), written atomically to the
    cache. ``cache_path`` defaults to :func:`evaluator_cache_path` (from the data's fingerprint and
    ``data_root``; :func:`cache_dir` is searched too, and written to if the data's folder turns out not to
    be writable). ``retrain=True`` trains and overwrites whatever is cached. A cache that cannot be
    written is reported with a warning; the evaluator is still returned."""
    _check_kind(kind, sample_rate)
    fingerprint = data_fingerprint(dataset, kind, sample_rate)
    if cache_path is not None:
        paths = [Path(cache_path)]
    else:
        paths = list(dict.fromkeys([evaluator_cache_path(fingerprint, data_root), evaluator_cache_path(fingerprint)]))
    for path in paths if not retrain else []:
        if not path.is_file():
            continue
        try:
            evaluator = Evaluator.load(path)
        except UserError as e:
            warnings.warn(f"{e}; training a new one", stacklevel=2)
            continue
        if evaluator.fingerprint == fingerprint:
            evaluator.from_cache = True
            log.info("evaluator: reusing %s (held-out accuracy %.4f)", path, evaluator.held_out_accuracy)
            return evaluator
        log.info("evaluator: %s was trained on other data; training a new one", path)
    log.info("evaluator: training a %s classifier on %d samples of %s", kind, len(dataset), dataset.name)
    evaluator = train_evaluator(dataset, kind, sample_rate, **train_options)
    errors = []
    for path in paths:
        try:
            evaluator.save(path)
            log.info("evaluator: cached at %s", path)
            break
        except OSError as e:
            errors.append(f"{path}: {e}")
    else:
        warnings.warn(f"could not cache the evaluator ({'; '.join(errors)}): it will be trained again next time; "
                      "set MMDIFF_CACHE to a writable folder", stacklevel=2)
    return evaluator
