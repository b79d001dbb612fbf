"""Video: prediction against the truth for three ways of conditioning, and drift when extending.

Against held-out clips (the test split of the checkpoint's dataset: moving digits of digits the model never
saw), all from the same starting noises:

1. Prediction from the first ``--context`` frames (default 4 of 8), ``--k`` samples per clip: PSNR and SSIM of
   the predicted frames, best of k and mean, for
   - the checkpoint conditioned on the known frames (its ``time_context`` channels: ``edit_method=condition``),
   - the same checkpoint with RePaint replacement instead (``edit_method=repaint``),
   - ``--plain``: a checkpoint trained without ``time_context`` for the same budget, with RePaint (the
     existing inpainting path on an unconditional-in-frames model),
   - copying the last given frame (the baseline).
2. Extension: ``--n`` class-conditional clips (the classes in turn), each extended window by window to
   ``--windows`` times the training length (``Model.extend``); the FVD (mode=eval's video evaluator) of each
   window of 8 frames against half B of the held-out clips, beside the real-vs-real floor (half A), the class
   accuracy and the share of clips whose frames all show one digit (the frame evaluator).

Usage: python benchmarks/video_quality.py --checkpoint RUN/last.safetensors [--plain PLAIN/last.safetensors]
       [--n 200] [--n-predict 200] [--k 4] [--context 4] [--windows 3] [--parts prediction,extension] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf

from mmdiff.config import compose
from mmdiff.eval.evaluate import split_halves
from mmdiff.eval.metrics import fd
from mmdiff.model import Model
from mmdiff.tasks.eval import evaluator_for, frame_evaluator_for, prediction, reference_data


def prediction_rows(args, checkpoint: str, plain: str | None) -> list[dict]:
    rows = []
    runs = [(checkpoint, "condition", "conditioned on the known frames"),
            (checkpoint, "repaint", "RePaint, same checkpoint")]
    if plain:
        runs.append((plain, "auto", "RePaint, checkpoint trained without time_context"))
    for path, method, name in runs:
        model = Model.from_checkpoint(path)
        _, reference, _ = reference_data(model.config, {})
        cfg = compose(["mode=eval", f"edit_method={method}", f"seed={args.seed}", f"steps={args.steps}",
                       "resample=1"])
        t0 = time.perf_counter()
        p = prediction(cfg, model, reference, {"predict": {"context": args.context, "n": args.n_predict, "k": args.k}})
        p |= {"model": name, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(p)
        print(f"{name}: PSNR best {p['psnr_best']:.2f} / mean {p['psnr_mean']:.2f} (copy-last "
              f"{p['psnr_copy_last']:.2f}); SSIM best {p['ssim_best']:.3f} / mean {p['ssim_mean']:.3f} "
              f"(copy-last {p['ssim_copy_last']:.3f}); {p['seconds']} s", flush=True)
    return rows


def extension_rows(args, checkpoint: str) -> dict:
    model = Model.from_checkpoint(checkpoint)
    train, reference, described = reference_data(model.config, {})
    options = OmegaConf.to_container(compose(["mode=eval"]).eval, resolve=True)
    evaluator = evaluator_for(train, reference, model.modality, model.config, options, retrain=False)
    frames = frame_evaluator_for(train, reference, model.modality, model.config, options, retrain=False)
    half_a, half_b = split_halves(len(reference))
    feats = evaluator.features(reference.data).double().numpy()
    ref, floor = feats[half_b.numpy()], fd(feats[half_b.numpy()], feats[half_a.numpy()])
    labels = model.labels(None, args.n)
    window = model.shape[1]
    t0 = time.perf_counter()
    start = model.sample(n=args.n, labels=labels, steps=args.steps, seed=args.seed)
    sigmas = model.sigmas(args.steps)
    clips = torch.cat([model.extend(start[i:i + 1], (args.windows - 1) * window, labels=labels[i:i + 1],
                                    guidance=1.5, sigmas=sigmas, seed=args.seed + 1000 * i) for i in range(args.n)])
    seconds = time.perf_counter() - t0
    out = {"reference": described, "n": args.n, "floor": floor, "seconds": round(seconds, 1), "windows": []}
    data = model.modality.eval_data(model.decode(clips), [*reference.shape[:1], clips.shape[2], *reference.shape[2:]])
    for w in range(args.windows):
        part = data[:, :, w * window:(w + 1) * window]
        flat, _ = model.modality.frames(part)
        per_frame = frames.predict(flat).view(args.n, window)
        row = {"window": w, "fvd": fd(ref, evaluator.features(part).double().numpy()),
               "accuracy": float((evaluator.predict(part) == labels).float().mean()),
               "same_digit_in_every_frame": float((per_frame == per_frame[:, :1]).all(1).float().mean())}
        out["windows"].append(row)
        print(f"window {w} (frames {w * window}-{(w + 1) * window - 1}): FVD {row['fvd']:.3f} (floor {floor:.3f}), "
              f"class accuracy {row['accuracy']:.3f}, same digit in every frame {row['same_digit_in_every_frame']:.3f}",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a video checkpoint trained with time_context")
    parser.add_argument("--plain", help="a video checkpoint trained without time_context (RePaint comparison)")
    parser.add_argument("--n", type=int, default=200, help="clips to extend")
    parser.add_argument("--n-predict", type=int, default=200, help="held-out clips to predict")
    parser.add_argument("--k", type=int, default=4, help="samples per predicted clip (best of k)")
    parser.add_argument("--context", type=int, default=4, help="frames given when predicting")
    parser.add_argument("--windows", type=int, default=3, help="extend to this many times the training length")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (dpmpp_2m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="prediction,extension", help="which measurements, comma-separated")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"prediction", "extension"}:
        parser.error(f"--parts takes prediction and/or extension, not {args.parts}")
    result = {}
    if "prediction" in parts:
        result["prediction"] = prediction_rows(args, args.checkpoint, args.plain)
    if "extension" in parts:
        result["extension"] = extension_rows(args, args.checkpoint)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
