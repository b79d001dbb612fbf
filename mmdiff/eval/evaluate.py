"""Every metric for a kind of data, beside its real-vs-real floor.

The floor: the real data is split, with a fixed seed, into two disjoint halves A and B. Half B is the
reference of every feature metric: the samples are measured against B, and so is half A, the "real-vs-real
floor" printed beside each number: what real data scores against real data of the same size. A model
cannot be expected to beat it; a number far above it is far from the data. For class accuracy the floor
is the evaluator's accuracy on real data it was not trained on (its held-out accuracy).

Samples go in decoded, as the modality's ``decode`` gives them; ``Modality.eval_data`` turns them into what
the evaluator sees (images in [0, 1]; waveforms cropped or zero-padded to the real clips' length).
``mode=eval`` itself is mmdiff.tasks.eval.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.dataset import Dataset
from ..errors import UserError
from ..modalities.base import Modality
from .evaluator import Evaluator
from .metrics import fd, kid, log_spectral_distance, multires_stft_distance, precision_recall, wasserstein_1d

# metric key -> (label in the table, what it measures); lower is better except where marked
METRICS = {
    "fd": "FD (evaluator features)",
    "fad": "FAD (evaluator features)",
    "fvd": "FVD (video evaluator features)",
    "kid": "KID x 1e3",
    "precision": "precision (k=3) ^",
    "recall": "recall (k=3) ^",
    "accuracy": "class accuracy ^",
    "fid_inception": "FID (Inception)",
    "multires_stft": "multi-res STFT distance",
    "lsd_db": "log-spectral distance (dB)",
    "frame_fd": "per-frame FD (frame evaluator)",
    "frame_identity": "same class in every frame ^",
    "frame_accuracy": "requested class in every frame ^",
}


# --- inputs ------------------------------------------------------------------------------------

def split_halves(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two disjoint random halves (A, B) of range(n), fixed by ``seed`` (B gets the odd one out)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n // 2], perm[n // 2:]


def check_inception(weights: str | Path | None, modality: Modality) -> None:
    """Fail before any work when Inception FID is asked for and cannot be computed."""
    if not weights:
        return
    if not modality.inception_fid:
        raise UserError(f"eval.inception_weights is for images: Inception FID does not apply to {modality.name} data")
    from .inception import inception_backend
    inception_backend(weights)


# --- the metrics ---------------------------------------------------------------------------------

def _feature_metrics(ref: np.ndarray, other: np.ndarray, fd_key: str, k: int, kid_subsets: int,
                     kid_subset_size: int | None, seed: int) -> dict:
    size = kid_subset_size or min(1000, len(ref), len(other))
    kid_mean, kid_std = kid(ref, other, subsets=kid_subsets, subset_size=size, seed=seed)
    precision, recall = precision_recall(ref, other, k=k)
    return {fd_key: fd(ref, other), "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall}


def evaluate(real: Dataset, fake: Tensor, fake_labels: Tensor | None, modality: Modality, evaluator: Evaluator, *,
             k: int = 3, kid_subsets: int = 100, kid_subset_size: int | None = None, seed: int = 0,
             inception_weights: str | Path | None = None, frame_evaluator: Evaluator | None = None) -> dict:
    """Every metric for samples ``fake`` (decoded data of ``modality``) against ``real`` (data the model
    should never have seen: a held-out split), each with its real-vs-real floor.

    Feature metrics use the evaluator's features: the Fréchet distance (``modality.fd_name``: fd for
    images, fad for audio), KID and precision/recall with ``k`` neighbours. KID is the mean and std over ``kid_subsets``
    random subsets of ``kid_subset_size`` samples from each set, by default min(1000, both set sizes) as
    in Binkowski et al.'s code (with sets smaller than 1000, the whole smaller set every time: the std then
    shows only the resampling of the larger one). ``fake_labels`` [N] (the classes the samples were
    generated for) add the class accuracy under the evaluator. ``inception_weights`` adds Inception FID
    (images; see mmdiff.eval.inception). The modality's ``statistics`` (e.g. a clip's speed) are compared as
    distributions (Wasserstein-1, ``w1_<name>``); for data made of frames, ``frame_evaluator`` (trained on
    real frames) adds the per-frame FD and the share of items whose frames all show one class (and, with
    labels, the requested one).

    Returns a JSON-able dict: ``metrics`` maps each metric to {"samples": value, "floor": value} (KID also
    has "samples_std" and "floor_std"), with the set sizes and the evaluator's description."""
    check_inception(inception_weights, modality)
    fake = modality.eval_data(fake, real.shape)
    if fake_labels is not None and len(fake_labels) != len(fake):
        raise UserError(f"{len(fake)} samples but {len(fake_labels)} labels")
    if len(fake) < 4:
        raise UserError(f"{len(fake)} samples are too few to evaluate: use n=1000 or so (at least 4)")
    if len(real) < 2 * (k + 1):
        raise UserError(f"the real data has {len(real)} samples: too few for real-vs-real floors (need {2 * (k + 1)})")
    half_a, half_b = split_halves(len(real), seed)
    feats_real = evaluator.features(real.data).double().numpy()
    feats_fake = evaluator.features(fake).double().numpy()
    ref = feats_real[half_b.numpy()]
    fd_key = modality.fd_name
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
    stats_fake, stats_real = modality.statistics(fake), modality.statistics(real.data.float())
    for name, values in stats_fake.items():
        ref = stats_real[name][half_b]
        metrics[f"w1_{name}"] = {"samples": wasserstein_1d(values, ref),
                                 "floor": wasserstein_1d(stats_real[name][half_a], ref),
                                 "samples_mean": float(values.mean()), "real_mean": float(stats_real[name].mean())}
    if frame_evaluator is not None:
        metrics |= _frame_metrics(real, fake, fake_labels, modality, frame_evaluator, half_a, half_b)
    return {"modality": modality.name, "dataset": real.name, "n_samples": len(fake), "n_real": len(real),
            "n_reference": len(half_b), "n_floor": len(half_a), "metrics": metrics,
            "evaluator": {"held_out_accuracy": evaluator.held_out_accuracy, "fingerprint": evaluator.fingerprint,
                          "feature_dim": evaluator.feature_dim,
                          "path": str(evaluator.path) if evaluator.path else None, **evaluator.info}}


def _frame_metrics(real: Dataset, fake: Tensor, fake_labels: Tensor | None, modality: Modality,
                   frame_evaluator: Evaluator, half_a: Tensor, half_b: Tensor) -> dict:
    """Per-frame FD, and whether each item keeps one class (the requested one) in every frame."""
    def frames(data: Tensor) -> tuple[Tensor, int]:
        flat, _ = modality.frames(data)
        return flat, len(flat) // len(data)

    real_frames, per_item = frames(real.data.float())
    fake_frames, _ = frames(fake)
    feats = frame_evaluator.features(real_frames).double().numpy().reshape(len(real), per_item, -1)
    ref = feats[half_b.numpy()].reshape(-1, feats.shape[-1])
    fake_feats = frame_evaluator.features(fake_frames).double().numpy()
    floor_feats = feats[half_a.numpy()].reshape(-1, feats.shape[-1])

    def classes(flat: Tensor, n: int) -> Tensor:
        return frame_evaluator.predict(flat).view(n, per_item)
    fake_classes, real_classes = classes(fake_frames, len(fake)), classes(real_frames, len(real))[half_a]
    same = lambda c: float((c == c[:, :1]).all(1).float().mean())  # noqa: E731
    out = {"frame_fd": {"samples": fd(ref, fake_feats), "floor": fd(ref, floor_feats)},
           "frame_identity": {"samples": same(fake_classes), "floor": same(real_classes)}}
    if fake_labels is not None:
        out["frame_accuracy"] = {"samples": float((fake_classes == fake_labels.cpu()[:, None]).all(1).float().mean()),
                                 "floor": float((real_classes == real.labels[half_a][:, None]).all(1).float().mean())}
    return out


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

    return {"modality": "reconstruction", "n_samples": len(ref), "floor": "mismatched",
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
        label = METRICS.get(name) or (f"W1 of {name[3:]} (mean {m['samples_mean']:.3g}, real {m['real_mean']:.3g})"
                                      if name.startswith("w1_") else name)
        rows.append((label, _fmt(m["samples"], m.get("samples_std"), scale),
                     _fmt(m["floor"], m.get("floor_std"), scale)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    if "prediction" in result:
        p = result["prediction"]
        lines.append(f"prediction of {p['predicted']} frames from {p['context']} ({p['n']} held-out clips, {p['k']} "
                     f"samples each, {p['how']}): PSNR best {p['psnr_best']:.2f} dB / mean {p['psnr_mean']:.2f} dB "
                     f"vs copying the last frame {p['psnr_copy_last']:.2f} dB; SSIM best {p['ssim_best']:.3f} / "
                     f"mean {p['ssim_mean']:.3f} vs {p['ssim_copy_last']:.3f}")
    if "prompts" in result:
        lines += prompt_table(result["prompts"])
    head = f"{result.get('n_samples')} samples"
    if "n_reference" in result:
        head += (f" of {result['modality']} vs {result['n_reference']} real ({result['dataset']}"
                 f"{', ' + result['split'] if result.get('split') else ''}); floor: "
                 f"{result['n_floor']} other real; evaluator held-out accuracy "
                 f"{result['evaluator']['held_out_accuracy']:.4f}")
    return head + "\n" + "\n".join(lines)


def prompt_table(prompts: dict) -> list[str]:
    """Attribute accuracy (mmdiff.eval.prompts.attribute_accuracy) as lines: one per part (seen, held-out), and
    the contrastive alignment (mmdiff.eval.alignment.prompt_alignment)."""
    lines = []
    if "alignment" in prompts:
        a = prompts["alignment"]
        lines.append("text-sample alignment (contrastive model trained on real pairs): " + "; ".join(
            f"{name} score {a[name]['clip_score']:.1f}, retrieval {a[name]['retrieval']:.1%}"
            for name in ("samples", "real", "mismatched")) + f" (retrieval chance {a['samples']['chance']:.0%})")
    for part, label in (("seen", "seen combinations"), ("held_out", "held-out combinations")):
        if part in prompts:
            r, real = prompts[part], prompts.get("ceiling", {}).get(part, {})
            cells = ", ".join(f"{k} {v:.1%} (chance {r['chance'][k]:.1%}"
                              + (f", real {real[k]:.1%})" if k in real else ")")
                              for k, v in r.items() if k not in ("n", "chance", "by_combination"))
            lines.append(f"prompt following, {label} ({r['n']} samples): {cells}")
            for name, c in r.get("by_combination", {}).items():
                lines.append(f"  {name} ({c['n']} samples): " + ", ".join(
                    f"{k} {v:.1%}" for k, v in c.items() if k != "n"))
    return lines


# --- a folder of samples -------------------------------------------------------------------------

SAMPLE_NAME = re.compile(r"^sample_(\d+)\.([A-Za-z0-9]+)$")


def labels_json(path: Path, names: list[str], class_names: list[str] | None) -> Tensor:
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


def read_samples_folder(folder: str | Path, modality: Modality,
                        class_names: list[str] | None = None) -> tuple[Tensor, Tensor | None]:
    """The samples mmdiff wrote into ``folder`` (sample_00000.<modality.sample_suffix> ..., in index order;
    grid files and anything else are ignored) -> (decoded data from ``modality.read_samples``, labels or
    None). Labels come from an optional ``labels.json`` (see :func:`labels_json`)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"samples={folder} is not a folder: pass the folder that mode=sample wrote (out=...)")
    ext = modality.sample_suffix
    files = sorted((int(m[1]), p) for p in folder.iterdir() if (m := SAMPLE_NAME.match(p.name)) and m[2] == ext)
    if not files:
        raise UserError(f"samples={folder} holds no sample_XXXXX.{ext} files: pass the folder that mode=sample "
                        f"wrote for this {modality.name} model")
    paths = [p for _, p in files]
    data = modality.read_samples(paths)
    labels_path = folder / "labels.json"
    labels = labels_json(labels_path, [p.name for p in paths], class_names) if labels_path.is_file() else None
    return data, labels
