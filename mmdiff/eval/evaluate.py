"""Every metric for a kind of data, beside its real-vs-real floor, and ``mode=eval``.

The floor: the real data is split, with a fixed seed, into two disjoint halves A and B. Half B is the
reference of every feature metric: the samples are measured against B, and so is half A, the "real-vs-real
floor" printed beside each number: what real data scores against real data of the same size. A model
cannot be expected to beat it; a number far above it is far from the data. For class accuracy the floor
is the evaluator's accuracy on real data it was not trained on (its held-out accuracy).

Samples and data go in decoded (what the evaluator sees): images [N, C, H, W] in [0, 1] (uint8 0..255 is
accepted and scaled), waveforms [N, 1, T] in [-1, 1] (cropped or zero-padded at the end to the real
clips' length: audio representations pad the time axis).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from ..data.dataset import Dataset
from ..errors import UserError
from .evaluator import Evaluator, load_or_train_evaluator
from .metrics import fd, kid, log_spectral_distance, multires_stft_distance, precision_recall

log = logging.getLogger(__name__)

# metric key -> (label in the table, what it measures); lower is better except where marked
METRICS = {
    "fd": "FD (evaluator features)",
    "fad": "FAD (evaluator features)",
    "kid": "KID x 1e3",
    "precision": "precision (k=3) ^",
    "recall": "recall (k=3) ^",
    "accuracy": "class accuracy ^",
    "fid_inception": "FID (Inception)",
    "multires_stft": "multi-res STFT distance",
    "lsd_db": "log-spectral distance (dB)",
}


# --- inputs --------------------------------------------------------------------------------------

def as_data(x: Tensor, kind: str, like: Tensor | None = None) -> Tensor:
    """Decoded samples -> float32 data in the real data's convention: uint8 images / 255; waveforms
    cropped or zero-padded at the end to ``like``'s length."""
    if kind == "image":
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.float()
    if like is not None and x.shape[-1] != like.shape[-1]:
        T = like.shape[-1]
        x = x[..., :T] if x.shape[-1] > T else torch.nn.functional.pad(x, (0, T - x.shape[-1]))
    return x


def split_halves(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two disjoint random halves (A, B) of range(n), fixed by ``seed`` (B gets the odd one out)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n // 2], perm[n // 2:]


def _check_fake(real: Dataset, fake: Tensor, fake_labels: Tensor | None, kind: str) -> None:
    if kind == "image" and tuple(fake.shape[1:]) != real.shape:
        raise UserError(f"the samples have shape {list(fake.shape[1:])} but the real data {list(real.shape)}: "
                        "evaluate samples against the dataset their model was trained on")
    if kind == "audio" and (fake.ndim != 3 or fake.shape[1] != 1):
        raise UserError(f"audio samples must be mono waveforms [N, 1, T], got shape {list(fake.shape)}")
    if fake_labels is not None and len(fake_labels) != len(fake):
        raise UserError(f"{len(fake)} samples but {len(fake_labels)} labels")
    if len(fake) < 4:
        raise UserError(f"{len(fake)} samples are too few to evaluate: use n=1000 or so (at least 4)")


def _check_inception(weights: str | Path | None, kind: str) -> None:
    """Fail before any work when Inception FID is asked for and cannot be computed."""
    if not weights:
        return
    if kind != "image":
        raise UserError("eval.inception_weights is for images: Inception FID does not apply to audio")
    from .inception import inception_backend
    inception_backend(weights)


# --- the metrics ---------------------------------------------------------------------------------

def _feature_metrics(ref: np.ndarray, other: np.ndarray, fd_key: str, k: int, kid_subsets: int,
                     kid_subset_size: int | None, seed: int) -> dict:
    size = kid_subset_size or min(1000, len(ref), len(other))
    kid_mean, kid_std = kid(ref, other, subsets=kid_subsets, subset_size=size, seed=seed)
    precision, recall = precision_recall(ref, other, k=k)
    return {fd_key: fd(ref, other), "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall}


def evaluate(real: Dataset, fake: Tensor, fake_labels: Tensor | None, kind: str, evaluator: Evaluator, *,
             k: int = 3, kid_subsets: int = 100, kid_subset_size: int | None = None, seed: int = 0,
             inception_weights: str | Path | None = None) -> dict:
    """Every metric of ``kind`` ("image" or "audio") for samples ``fake`` (decoded, see the module
    docstring) against ``real``, each with its real-vs-real floor.

    Feature metrics use the evaluator's features: the Fréchet distance (``fd`` for images, ``fad`` for
    audio), KID and precision/recall with ``k`` neighbours. KID is the mean and std over ``kid_subsets``
    random subsets of ``kid_subset_size`` samples from each set, by default min(1000, both set sizes) as
    in Binkowski et al.'s code (with sets smaller than 1000, the whole smaller set every time: the std then
    shows only the resampling of the larger one). ``fake_labels`` [N] (the classes the samples were
    generated for) add the class accuracy under the evaluator. ``inception_weights`` adds Inception FID
    (images; see mmdiff.eval.inception).

    Returns a JSON-able dict: ``metrics`` maps each metric to {"samples": value, "floor": value} (KID also
    has "samples_std" and "floor_std"), with the set sizes and the evaluator's description."""
    if kind not in ("image", "audio"):
        raise ValueError(f"kind must be 'image' or 'audio', got {kind!r}")
    _check_inception(inception_weights, kind)
    fake = as_data(fake, kind, like=real.data)
    _check_fake(real, fake, fake_labels, kind)
    if len(real) < 2 * (k + 1):
        raise UserError(f"the real data has {len(real)} samples: too few for real-vs-real floors (need {2 * (k + 1)})")
    half_a, half_b = split_halves(len(real), seed)
    feats_real = evaluator.features(real.data).double().numpy()
    feats_fake = evaluator.features(fake).double().numpy()
    ref = feats_real[half_b.numpy()]
    fd_key = "fd" if kind == "image" else "fad"
    samples = _feature_metrics(ref, feats_fake, fd_key, k, kid_subsets, kid_subset_size, seed)
    floor = _feature_metrics(ref, feats_real[half_a.numpy()], fd_key, k, kid_subsets, kid_subset_size, seed)
    metrics = {name: {"samples": samples[name], "floor": floor[name]}
               for name in (fd_key, "kid", "precision", "recall")}
    metrics["kid"] |= {"samples_std": samples["kid_std"], "floor_std": floor["kid_std"]}
    if fake_labels is not None:
        predicted = evaluator.predict(fake)
        metrics["accuracy"] = {"samples": float((predicted == fake_labels.cpu()).float().mean()),
                               "floor": evaluator.held_out_accuracy}
    if inception_weights:
        from .inception import inception_features
        ref_i, fake_i, floor_i = (inception_features(x, inception_weights)
                                  for x in (real.data[half_b], fake, real.data[half_a]))
        metrics["fid_inception"] = {"samples": fd(ref_i, fake_i), "floor": fd(ref_i, floor_i)}
    return {"kind": kind, "dataset": real.name, "n_samples": len(fake), "n_real": len(real),
            "n_reference": len(half_b), "n_floor": len(half_a), "metrics": metrics,
            "evaluator": {"held_out_accuracy": evaluator.held_out_accuracy, "fingerprint": evaluator.fingerprint,
                          "feature_dim": evaluator.feature_dim,
                          "path": str(evaluator.path) if evaluator.path else None, **evaluator.info}}


def evaluate_reconstructions(ref_waves: Tensor, est_waves: Tensor, sample_rate: int) -> dict:
    """Distances between clips and their reconstructions (waveforms [N, 1, T] or [N, T], same shape):
    the multi-resolution STFT distance (Parallel WaveGAN's resolutions) and the log-spectral distance in
    dB (64 ms windows and 16 ms hops at ``sample_rate``), each averaged over clips. Perfect reconstruction
    scores 0; the floor column holds, for scale, what a wrong clip scores: each reference clip against the
    next one (``mismatched``)."""
    if ref_waves.shape != est_waves.shape:
        raise ValueError(f"shapes differ: {tuple(ref_waves.shape)} and {tuple(est_waves.shape)}")
    n_fft = 2 ** round(math.log2(0.064 * sample_rate))
    hop = n_fft // 4
    ref, est = ref_waves.float(), est_waves.float()
    other = ref.roll(1, dims=0)

    def both(fn):
        return {"samples": float(fn(ref, est).mean()), "floor": float(fn(ref, other).mean()) if len(ref) > 1 else None}

    return {"kind": "reconstruction", "n_samples": len(ref), "floor": "mismatched",
            "metrics": {"multires_stft": both(multires_stft_distance),
                        "lsd_db": both(lambda a, b: log_spectral_distance(a, b, n_fft, hop))}}


def _fmt(value, std=None, scale=1.0) -> str:
    if value is None:
        return "-"
    text = f"{value * scale:.4g}"
    if std is not None:
        std = 0.0 if std < 1e-9 * max(1.0, abs(value)) else std  # round-off of identical subsets
        text += f" ± {std * scale:.2g}"
    return text


def format_table(result: dict) -> str:
    """A plain-text table: metric | samples | real-vs-real floor (^ marks higher-is-better metrics)."""
    floor = "mismatched clips" if result.get("floor") == "mismatched" else "real-vs-real floor"
    rows = [("metric", "samples", floor)]
    for name, m in result["metrics"].items():
        scale = 1e3 if name == "kid" else 1.0
        rows.append((METRICS.get(name, name), _fmt(m["samples"], m.get("samples_std"), scale),
                     _fmt(m["floor"], m.get("floor_std"), scale)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    head = f"{result.get('n_samples')} samples"
    if "n_reference" in result:
        head += (f" of {result['kind']} vs {result['n_reference']} real ({result['dataset']}); floor: "
                 f"{result['n_floor']} other real; evaluator held-out accuracy "
                 f"{result['evaluator']['held_out_accuracy']:.4f}")
    return head + "\n" + "\n".join(lines)


# --- a folder of samples -------------------------------------------------------------------------

SAMPLE_NAME = re.compile(r"^sample_(\d+)\.(png|wav)$")


def _labels_json(path: Path, names: list[str], class_names: list[str] | None) -> Tensor:
    """labels.json: a list (one label per sample, in file order) or a dict {file name: label}; a label is
    a class index or a class name."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}): fix or delete it") from None
    values = [raw.get(n) for n in names] if isinstance(raw, dict) else raw
    if not isinstance(values, list) or len(values) != len(names) or any(v is None for v in values):
        raise UserError(f"{path} must hold one label per sample file ({len(names)}): a list in file order, or "
                        "a dict from file name to label")
    out = []
    for v in values:
        if isinstance(v, str) and class_names and v in class_names:
            out.append(class_names.index(v))
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            out.append(v)
        else:
            raise UserError(f"{path}: label {v!r} is neither a class index nor one of {class_names}")
    return torch.tensor(out, dtype=torch.int64)


def read_samples_folder(folder: str | Path, kind: str, sample_rate: int | None = None,
                        class_names: list[str] | None = None) -> tuple[Tensor, Tensor | None]:
    """The samples mmdiff wrote into ``folder`` (sample_00000.png ... or sample_00000.wav ..., in index
    order; grid files and anything else are ignored) -> (data, labels or None). Images come back
    [N, C, H, W] in [0, 1] (C from the PNG mode: L -> 1, RGB -> 3); audio [N, 1, T] in [-1, 1] (every
    file at ``sample_rate`` Hz, shorter ones zero-padded to the longest). Labels come from an optional
    ``labels.json`` (see ``_labels_json``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"samples={folder} is not a folder: pass the folder that mode=sample wrote (out=...)")
    ext = "png" if kind == "image" else "wav"
    files = sorted((int(m[1]), p) for p in folder.iterdir() if (m := SAMPLE_NAME.match(p.name)) and m[2] == ext)
    if not files:
        raise UserError(f"samples={folder} holds no sample_XXXXX.{ext} files: pass the folder that mode=sample "
                        f"wrote for this {kind} model")
    paths = [p for _, p in files]
    items = []
    for p in paths:
        try:
            if kind == "image":
                with Image.open(p) as im:
                    a = np.array(im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode))
                items.append(torch.from_numpy(a).float().div(255).reshape(*a.shape[:2], -1).permute(2, 0, 1))
            else:
                wave, rate = sf.read(p, dtype="float32", always_2d=True)
                if sample_rate is not None and rate != sample_rate:
                    raise UserError(f"{p} is at {rate} Hz but the model's data is at {sample_rate} Hz")
                items.append(torch.from_numpy(wave.mean(axis=1)))
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{p} is unreadable ({e}): delete it or sample again") from None
    if kind == "image":
        shapes = {tuple(x.shape) for x in items}
        if len(shapes) > 1:
            raise UserError(f"the images in {folder} differ in size or mode: {sorted(shapes)}")
        data = torch.stack(items)
    else:
        T = max(len(w) for w in items)
        data = torch.stack([torch.nn.functional.pad(w, (0, T - len(w))) for w in items])[:, None]
    labels_path = folder / "labels.json"
    labels = _labels_json(labels_path, [p.name for p in paths], class_names) if labels_path.is_file() else None
    return data, labels


# --- mode=eval and mode=train_evaluator ----------------------------------------------------------

def _eval_options(cfg: DictConfig) -> dict:
    """The ``eval`` config node (absent keys take their defaults)."""
    node = cfg.get("eval")
    options = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return {"inception_weights": None, "k": 3, "kid_subsets": 100, "kid_subset_size": None, "data_root": None,
            "retrain": False, "evaluator": {}} | options


def _reference(run_cfg: dict, options: dict) -> tuple[Dataset, str, int | None, object, str | None]:
    """The dataset a run trained on, its kind, sample rate, modality and root folder."""
    from ..build import build_dataset, build_modality

    run_cfg = dict(run_cfg)
    if options["data_root"]:
        run_cfg["dataset"] = dict(run_cfg["dataset"]) | {"root": options["data_root"]}
    real = build_dataset(OmegaConf.create(run_cfg))
    modality = build_modality(run_cfg["modality"])
    kind = getattr(modality, "name", "image")
    return real, kind, getattr(modality, "sample_rate", None), modality, run_cfg["dataset"].get("root")


def _evaluator_for(real: Dataset, kind: str, sample_rate: int | None, root: str | None, options: dict) -> Evaluator:
    return load_or_train_evaluator(real, kind=kind, sample_rate=sample_rate, data_root=root,
                                   retrain=bool(options["retrain"]), **dict(options["evaluator"] or {}))


def _generate(cfg: DictConfig) -> tuple[Tensor, Tensor | None]:
    """n samples from the checkpoint, decoded, with the labels they were generated for (as mode=sample)."""
    from ..api import Model
    from ..build import build_sigmas, check_sampling_config
    from ..sample import generate

    check_sampling_config(cfg)
    model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema)
    labels = model.labels(cfg["class"], cfg.n)
    x = generate(model.denoiser, shape=model.shape, labels=labels, n=cfg.n, sampler=cfg.sampler.name,
                 sigmas=build_sigmas(cfg.sampler, cfg.steps, model.config["diffusion"], model.schedules),
                 guidance=cfg.guidance,
                 null_label=model.null_label, seed=cfg.seed, batch_size=cfg.batch_size,
                 sampler_options=dict(cfg.sampler.options), device=model.device, rescale=cfg.guidance_rescale,
                 interval=cfg.guidance_interval, threshold=cfg.dynamic_threshold)
    return model.decode(x), labels


def evaluate_from_config(cfg: DictConfig, out_dir: str | Path) -> dict:
    """``mode=eval``: evaluate ``checkpoint`` (n samples drawn with ``sampler``, ``steps``, ``guidance``,
    ``class``, ``seed``, as mode=sample does) or the folder ``samples`` (then ``checkpoint``, if given,
    names the dataset; else the config's dataset) against the real data, print the table and write
    ``out_dir/eval.json``. Options under ``eval``: inception_weights, k, kid_subsets, kid_subset_size,
    data_root (where the dataset lives now, if it moved since training), retrain (the evaluator) and
    evaluator (options of train_evaluator: epochs, max_seconds, num_threads, ...)."""
    from ..build import resolve_modality_config, to_container
    from ..checkpoint import load_checkpoint

    options = _eval_options(cfg)
    samples_dir = cfg.get("samples")
    ckpt = load_checkpoint(cfg.checkpoint) if cfg.get("checkpoint") or not samples_dir else None
    run_cfg = ckpt.config if ckpt else to_container(cfg) | {"modality": resolve_modality_config(cfg)}
    real, kind, sample_rate, modality, root = _reference(run_cfg, options)
    _check_inception(options["inception_weights"], kind)
    if ckpt and ckpt.data.get("class_names") != real.class_names:
        raise UserError(f"checkpoint {cfg.checkpoint} was trained on classes {ckpt.data.get('class_names')} but the "
                        f"dataset now has {real.class_names}: point eval.data_root at the data it was trained on")
    evaluator = _evaluator_for(real, kind, sample_rate, root, options)
    if samples_dir:
        fake, labels = read_samples_folder(samples_dir, kind, sample_rate, real.class_names)
        source = {"samples": str(samples_dir)}
    else:
        fake, labels = _generate(cfg)
        source = {"checkpoint": str(cfg.checkpoint), "step": ckpt.step, "sampler": cfg.sampler.name,
                  "steps": cfg.steps, "guidance": cfg.guidance, "seed": cfg.seed, "ema": cfg.ema}
    result = evaluate(real, fake, labels, kind, evaluator, k=options["k"], kid_subsets=options["kid_subsets"],
                      kid_subset_size=options["kid_subset_size"], inception_weights=options["inception_weights"])
    result["source"] = source
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    log.info("wrote %s", out / "eval.json")
    return result


def train_evaluator_from_config(cfg: DictConfig) -> Evaluator:
    """``mode=train_evaluator``: train the evaluator of the config's dataset (or ``checkpoint``'s) and cache it
    where ``mode=eval`` will find it, replacing a cached one (``eval.evaluator`` holds the training options)."""
    from ..build import resolve_modality_config, to_container
    from ..checkpoint import load_checkpoint

    options = _eval_options(cfg) | {"retrain": True}
    run_cfg = (load_checkpoint(cfg.checkpoint).config if cfg.get("checkpoint")
               else to_container(cfg) | {"modality": resolve_modality_config(cfg)})
    real, kind, sample_rate, _, root = _reference(run_cfg, options)
    evaluator = _evaluator_for(real, kind, sample_rate, root, options)
    print(f"evaluator for {real.name} ({kind}, {real.num_classes} classes): held-out accuracy "
          f"{evaluator.held_out_accuracy:.4f} on {evaluator.info['n_held_out']} samples"
          + f", trained in {evaluator.info['seconds']} s, cached at {evaluator.path}")
    return evaluator
