"""The domain classifier whose feature layer is the space that FD, KID and precision/recall measure in.

Inception features (FID, Heusel et al. 2017) describe ImageNet photos, not 8x8 digits or spoken digits,
and need weights from the internet. mmdiff instead trains a small CNN on the reference data itself, once,
and caches it: its 128-d feature layer (the input of the linear head, standardised: ``EvaluatorNet.embed``)
is the feature space, as Inception's pool3 layer is for FID and a VGGish embedding for the Fréchet audio
distance (Kilgour et al. 2019). Its held-out accuracy is recorded, so the space has a known quality.

The input is decoded data through the modality's evaluator front end (``Modality.evaluator_frontend``:
images as they are, audio as a log-mel spectrogram whose parameters are stored in the evaluator's config),
standardised by the training data's mean and std: the evaluator always sees decoded data, whatever
representation the diffusion model used.

An evaluator is one safetensors file: the network's weights, with its config, held-out accuracy and
the fingerprint of the data it was trained on in the metadata. ``load_or_train_evaluator`` reuses a
cached file whose fingerprint matches the data, and otherwise trains and writes one atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..atomic import atomic_path
from ..data import cache as data_cache
from ..data.dataset import Dataset
from ..errors import UserError
from ..modalities.base import Modality
from ..models.layers import AVG_POOL, conv_nd, group_norm

log = logging.getLogger(__name__)

FORMAT = "mmdiff-evaluator"
VERSION = "2"  # 2: the front end comes from the modality
MAX_SECONDS = 60.0  # train_evaluator's default time budget


# --- the network ----------------------------------------------------------------------------------

class EvaluatorNet(nn.Module):
    """x [B, in_channels, *spatial] -> logits [B, num_classes]; ``features`` gives the feature layer
    [B, feature_dim], ``embed`` the same standardised (what the metrics use).

    Stages of (conv 3, GroupNorm, SiLU) x 2 with ``channels[i]`` channels, each followed by 2x average
    pooling (skipped once a spatial dim is down to 1), then global average pooling, the feature layer
    (linear, ``feature_dim``) and, after a SiLU, the linear head. ``dims`` picks the convolution and
    pooling classes, as in the U-Net (mmdiff.models.layers). ``factorized`` (3 dims, video): every 3x3x3
    convolution becomes a 1x3x3 spatial one followed by a 3x1x1 temporal one ((2+1)-D, Tran et al. 2018).
    ``aux_classes``: more linear heads on the same feature layer (e.g. a clip's direction of motion), trained
    jointly so that the features describe what they predict too (``aux_logits``)."""

    def __init__(self, in_channels: int, num_classes: int, dims: int = 2, channels: tuple[int, ...] = (32, 64, 128),
                 feature_dim: int = 128, groups: int = 8, dropout: float = 0.1, factorized: bool = False,
                 aux_classes: tuple[int, ...] = ()):
        super().__init__()
        self.dims = dims

        def conv(a: int, b: int) -> nn.Module:
            if not (factorized and dims == 3):
                return conv_nd(dims, a, b)
            return nn.Sequential(nn.Conv3d(a, b, (1, 3, 3), padding=(0, 1, 1)), nn.Conv3d(b, b, (3, 1, 1), padding=(1, 0, 0)))

        stages, ch_in = [], in_channels
        for ch in channels:
            stages.append(nn.Sequential(conv(ch_in, ch), group_norm(ch, groups), nn.SiLU(),
                                        conv(ch, ch), group_norm(ch, groups), nn.SiLU()))
            ch_in = ch
        self.stages = nn.ModuleList(stages)
        self.pool = AVG_POOL[dims](2, ceil_mode=True)
        self.feature = nn.Linear(ch_in, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.aux = nn.ModuleList(nn.Linear(feature_dim, k) for k in aux_classes)
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

    def all_logits(self, x: Tensor) -> list[Tensor]:
        """[the class logits, then each auxiliary head's], from one pass."""
        h = self.dropout(F.silu(self.features(x)))
        return [self.head(h)] + [head(h) for head in self.aux]


class Standardised(nn.Module):
    """The modality's front end, then (x - mean) / std with the training data's scalars."""

    def __init__(self, frontend: nn.Module, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.raw, self.mean, self.std = frontend, mean, std

    def forward(self, x: Tensor) -> Tensor:
        return (self.raw(x) - self.mean) / self.std


# --- the evaluator -------------------------------------------------------------------------------

class Evaluator:
    """A trained domain classifier. ``config`` (JSON-able) rebuilds it: the modality's name and front-end
    config, the sample shape and class names it was trained on, the network's options and the input
    normalisation. ``info`` holds what training measured (held-out accuracy, sizes, seconds)."""

    def __init__(self, net: EvaluatorNet, config: dict, fingerprint: str, info: dict, modality: Modality):
        if modality.name != config["modality"]:
            raise ValueError(f"this evaluator is for {config['modality']} data, not {modality.name}")
        self.net, self.config, self.fingerprint, self.info = net.eval(), config, fingerprint, info
        self.frontend = Standardised(modality.evaluator_frontend(config["frontend"])[1], config["mean"], config["std"])
        self.from_cache = False  # set by load_or_train_evaluator when the file was reused
        self.path: Path | None = None  # the file it was loaded from or saved to

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
        shape = list(self.config["shape"])
        if list(data.shape[1:]) != shape:
            raise ValueError(f"this evaluator was trained on {self.config['modality']} data of shape {shape}, "
                             f"got {list(data.shape[1:])}")

    @torch.no_grad()
    def _apply(self, fn, data: Tensor, batch_size: int) -> Tensor:
        self._check(data)
        device = next(self.net.parameters()).device
        out = [fn(self.frontend(data[i:i + batch_size].to(device))).float().cpu()
               for i in range(0, len(data), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def features(self, data: Tensor, batch_size: int = 256) -> Tensor:
        """Decoded float data of the trained shape (``Modality.eval_data``) -> features [N, feature_dim]
        (the feature layer, standardised: ``EvaluatorNet.embed``)."""
        return self._apply(self.net.embed, data, batch_size)

    def logits(self, data: Tensor, batch_size: int = 256) -> Tensor:
        """-> [N, num_classes]."""
        return self._apply(self.net, data, batch_size)

    def predict(self, data: Tensor, batch_size: int = 256) -> Tensor:
        """-> predicted class indices [N] int64."""
        return self.logits(data, batch_size).argmax(1)

    def save(self, path: str | Path) -> Path:
        """Write the evaluator to ``path`` atomically (mmdiff.atomic)."""
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        metadata = {"format": FORMAT, "version": VERSION, "config": json.dumps(self.config),
                    "fingerprint": self.fingerprint, "info": json.dumps(self.info),
                    "held_out_accuracy": repr(self.held_out_accuracy)}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, modality: Modality) -> Evaluator:
        """Read an evaluator written by :meth:`save` for ``modality``'s data; a damaged or foreign file is a
        :class:`UserError`."""
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
            evaluator = cls(net, config, meta["fingerprint"], json.loads(meta["info"]), modality)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"evaluator {path} is damaged or for other data ({type(e).__name__}: {e}): delete it "
                            "and it is trained again") from None
        evaluator.path = path
        return evaluator


# --- training ------------------------------------------------------------------------------------

def data_fingerprint(dataset: Dataset, modality: Modality, held_out: Dataset | None = None) -> str:
    """sha256 (hex) of the data and labels tensors' bytes (and of the held-out set's), their shapes and
    dtypes, the class names, the modality and its evaluator front end: any change gives another fingerprint."""
    h = hashlib.sha256()
    sets = [dataset] + ([held_out] if held_out is not None else [])
    header = {"modality": modality.name, "frontend": modality.evaluator_frontend()[0],
              "sets": [[list(d.data.shape), str(d.data.dtype), list(d.labels.shape)] for d in sets],
              "class_names": dataset.class_names}
    h.update(json.dumps(header, sort_keys=True).encode())
    for d in sets:
        for t in (d.data, d.labels):
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


def _lr_factor(progress: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first 5 % of training, then a cosine decay to 0 (Loshchilov & Hutter 2017)."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min((progress - warmup) / (1 - warmup), 1.0)))


def train_evaluator(dataset: Dataset, modality: Modality, held_out_data: Dataset | None = None, epochs: int = 30,
                    seed: int = 0, held_out: float = 0.2, max_seconds: float = MAX_SECONDS, batch_size: int = 64,
                    lr: float = 3e-3, weight_decay: float = 1e-4, channels: tuple[int, ...] | None = None,
                    feature_dim: int = 128, augment: bool = True, num_threads: int | None = 1,
                    device: torch.device | str = "cpu") -> Evaluator:
    """Train the domain classifier on ``dataset`` (decoded float data of ``modality``: images in [0, 1],
    waveforms [N, 1, T] in [-1, 1]).

    Its accuracy on data it never trained on is recorded (``info["held_out_accuracy"]``): on
    ``held_out_data`` when given (a held-out split: then all of ``dataset`` trains), else on a stratified
    fraction ``held_out`` of ``dataset`` set aside. AdamW; the learning rate warms up and then follows a
    cosine to 0 over ``epochs`` epochs, or over the steps that fit in ``max_seconds`` when fewer
    (re-estimated every 20 steps from the measured speed), so a run cut short still anneals; the training
    loop stops at ``max_seconds`` in any case (preparing the data and the final pass come on top).
    ``channels`` defaults to ``modality.evaluator_channels``; ``augment`` applies ``modality.augment``.
    ``num_threads`` sets torch's CPU threads while training (None: leave torch's setting). The default, 1,
    is deliberate: these nets are small enough that thread synchronisation dominates. On a 2-core machine
    shared with another job, digits trained in 7.7 s on 1 thread but managed only 3 epochs in 60 s (84.7 %
    held out) on torch's 2; on the idle machine, 2 threads took 5.4 s and 1 thread 7.5 s. Deterministic for a
    seed on the CPU unless ``max_seconds`` binds; the global RNG state is left untouched."""
    if dataset.num_classes < 2:
        raise UserError(f"the dataset has {dataset.num_classes} class(es): the evaluator is a classifier and "
                        "needs at least 2 (one sub-folder per class)")
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _train(dataset, modality, held_out_data, epochs=epochs, seed=seed, held_out=held_out,
                      max_seconds=max_seconds, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      channels=channels or modality.evaluator_channels, feature_dim=feature_dim, augment=augment,
                      device=torch.device(device))
    finally:
        torch.set_num_threads(threads)


def _inputs(frontend: nn.Module, dataset: Dataset, device: torch.device) -> Tensor:
    with torch.no_grad():
        return torch.cat([frontend(dataset.data[i:i + 256].float().to(device)).cpu() for i in range(0, len(dataset), 256)])


def _train(dataset, modality, held_out_data, *, epochs, seed, held_out, max_seconds, batch_size, lr, weight_decay,
           channels, feature_dim, augment, device) -> Evaluator:
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    frontend_cfg, frontend = modality.evaluator_frontend()
    x = _inputs(frontend, dataset, device)
    # the class, then every auxiliary target the modality names and the data has (e.g. a clip's direction)
    targets = [t for t in modality.evaluator_targets if t in dataset.extras
               and (held_out_data is None or t in held_out_data.extras)]
    ys = [dataset.labels] + [dataset.extras[t].long() for t in targets]
    if held_out_data is None:
        train_idx, test_idx = _split(dataset.labels, held_out, g)
        x_test, ys_test = x[test_idx], [y[test_idx] for y in ys]
    else:
        train_idx = torch.arange(len(dataset))
        x_test = _inputs(frontend, held_out_data, device)
        ys_test = [held_out_data.labels] + [held_out_data.extras[t].long() for t in targets]
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std().clamp(min=1e-6))
    x, x_test = (x - mean) / std, (x_test - mean) / std
    net_cfg = {"in_channels": x.shape[1], "num_classes": dataset.num_classes, "dims": x.ndim - 2,
               "channels": list(channels), "feature_dim": feature_dim,
               "aux_classes": [int(max(y.max(), yt.max() if len(yt) else 0)) + 1 for y, yt in zip(ys[1:], ys_test[1:])],
               **modality.evaluator_net}
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
                xb = modality.augment(x[idx], g) if augment else x[idx]
                logits = net.all_logits(xb.to(device))
                loss = sum(F.cross_entropy(out, y[idx].to(device)) for out, y in zip(logits, ys))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    net.eval()
    with torch.no_grad():
        def batched(fn, inputs):
            return torch.cat([fn(inputs[i:i + 256].to(device)).cpu() for i in range(0, len(inputs), 256)])
        preds = ([batched(lambda b, k=k: net.all_logits(b)[k], x_test).argmax(1) for k in range(len(ys))]
                 if len(x_test) else [torch.zeros(0, dtype=torch.long)] * len(ys))
        feats = batched(net.features, x[train_idx])
    net.feature_mean.copy_(feats.mean(0))
    net.feature_scale.copy_((feats - feats.mean(0)).pow(2).mean().sqrt().clamp(min=1e-6))
    accuracies = [float((p == y).float().mean()) if len(y) else float("nan") for p, y in zip(preds, ys_test)]
    accuracy, y_test = accuracies[0], ys_test[0]
    config = {"modality": modality.name, "frontend": frontend_cfg, "shape": list(dataset.shape), "targets": targets,
              "class_names": dataset.class_names, "net": net_cfg, "mean": mean, "std": std}
    info = {"held_out_accuracy": accuracy, "n_train": len(train_idx), "n_held_out": len(y_test),
            "held_out_from": "split" if held_out_data is not None else "fraction",
            "aux_accuracy": dict(zip(targets, accuracies[1:])),
            "steps": step, "epochs": round(step / max(planned, 1) * epochs, 2),
            "seconds": round(time.perf_counter() - start, 2),
            "cut_by_max_seconds": total < planned, "max_seconds": max_seconds, "seed": seed,
            "dataset": dataset.name}
    log.info("evaluator: %s, %d classes, held-out accuracy %.4f on %d samples, %.1f epochs in %.1f s", modality.name,
             dataset.num_classes, accuracy, len(y_test), info["epochs"], info["seconds"])
    return Evaluator(net.cpu(), config, data_fingerprint(dataset, modality, held_out_data), info, modality)


# --- the cache -----------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where evaluators of built-in or read-only data go (mmdiff.data.cache.cache_dir("evaluators"))."""
    return data_cache.cache_dir("evaluators")


def evaluator_cache_path(fingerprint: str, data_root: str | Path | None = None) -> Path:
    """``<data_root>/.mmdiff/evaluator-<fingerprint[:12]>.safetensors`` ("next to the data") when the data
    has a writable root folder; for built-in data (no root) or a read-only root, the same name in
    :func:`cache_dir`."""
    return data_cache.cache_path(f"evaluator-{fingerprint[:12]}.safetensors", "evaluators", data_root)


def load_or_train_evaluator(dataset: Dataset, modality: Modality, cache_path: str | Path | None = None, *,
                            held_out_data: Dataset | None = None, data_root: str | Path | None = None,
                            retrain: bool = False, **train_options) -> Evaluator:
    """The evaluator for ``dataset`` (and ``held_out_data``, see :func:`train_evaluator`): a cached file whose
    fingerprint matches the data (then ``from_cache`` is True), else a new one from :func:`train_evaluator`
    (``train_options``), written atomically to the cache. ``cache_path`` defaults to
    :func:`evaluator_cache_path` (from the data's fingerprint and ``data_root``; :func:`cache_dir` is searched
    too, and written to if the data's folder turns out not to be writable). ``retrain=True`` trains and
    overwrites whatever is cached. An evaluator cut short by ``max_seconds`` is cached too (with a warning: every
    later call with the same budget then measures with the same classifier, where one trained again would differ
    with the machine's speed); a call with a larger ``max_seconds`` trains it again. A cache that cannot be
    written is reported with a warning; the evaluator is still returned."""
    fingerprint = data_fingerprint(dataset, modality, held_out_data)
    if cache_path is not None:
        paths = [Path(cache_path)]
    else:
        paths = list(dict.fromkeys([evaluator_cache_path(fingerprint, data_root), evaluator_cache_path(fingerprint)]))
    for path in paths if not retrain else []:
        if not path.is_file():
            continue
        try:
            evaluator = Evaluator.load(path, modality)
        except UserError as e:
            warnings.warn(f"{e}; training a new one", stacklevel=2)
            continue
        if evaluator.fingerprint == fingerprint:
            budget = float(train_options.get("max_seconds", MAX_SECONDS))
            if evaluator.info.get("cut_by_max_seconds") and budget > float(evaluator.info.get("max_seconds", 0.0)):
                log.info("evaluator: %s was cut short by a budget of %s s; not reused for %s s", path,
                         evaluator.info.get("max_seconds"), budget)
                continue
            evaluator.from_cache = True
            log.info("evaluator: reusing %s (held-out accuracy %.4f)", path, evaluator.held_out_accuracy)
            return evaluator
        log.info("evaluator: %s was trained on other data; training a new one", path)
    log.info("evaluator: training a %s classifier on %d samples of %s", modality.name, len(dataset), dataset.name)
    evaluator = train_evaluator(dataset, modality, held_out_data, **train_options)
    if evaluator.info.get("cut_by_max_seconds"):
        # a classifier cut short by a slow or busy machine measures less reliably, and one trained again would differ
        # (the cut depends on the machine's speed): say so, and cache it all the same, so that every later run with
        # this budget measures with the same one and their figures compare; a larger budget trains it again
        warnings.warn(f"the {modality.name} evaluator trained only {evaluator.info['epochs']} of its "
                      f"{train_options.get('epochs', 30)} epochs within eval.evaluator.max_seconds="
                      f"{train_options.get('max_seconds', MAX_SECONDS)} (held-out accuracy "
                      f"{evaluator.held_out_accuracy:.3f}): its metrics are less reliable; it is cached for runs "
                      "with this budget, so that their figures compare; raise eval.evaluator.max_seconds to train "
                      "a full one", stacklevel=2)
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
