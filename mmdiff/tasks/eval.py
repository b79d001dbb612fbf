"""mode=eval and mode=train_evaluator: sample quality against data the model never saw.

The reference is the held-out counterpart of the split the model trained on (mmdiff.data.splits.held_out:
``test`` for ``train``, the other end of a sliced split), chosen with ``eval.split`` (auto: that one). The
evaluator is trained on the training split and its accuracy measured on the reference (the class-accuracy
floor). A model whose dataset has no held-out part is compared with its training data, and the table and
eval.json say so.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from omegaconf import DictConfig, OmegaConf

from ..build import (build_dataset, build_modality, build_sigmas, check_sampling_config, resolve_modality_config,
                     to_container)
from ..checkpoint import load_checkpoint, save_checkpoint
from ..core.editing import continuation_mask
from ..data import splits
from ..data.captions import caption_dataset
from ..data.dataset import Dataset
from ..errors import UserError
from ..eval.evaluate import check_inception, evaluate, format_table, read_samples_folder
from ..eval.evaluator import Evaluator, load_or_train_evaluator
from ..eval.metrics import psnr, ssim
from ..eval.alignment import Aligner, load_or_train_aligner, prompt_alignment
from ..eval.prompts import MEASURERS, PromptSet, attribute_accuracy, measurable, prompt_set
from ..generate import from_noise, generate
from ..loggers import build_loggers
from ..model import Model

log = logging.getLogger(__name__)

NO_HELD_OUT = "the training data (this dataset has no held-out split: the figures cannot tell generalisation " \
              "from memorisation)"


def _run_config(cfg: DictConfig) -> tuple[dict, object]:
    """The config of the run being measured: the checkpoint's, or (no checkpoint) this command's."""
    if cfg.get("checkpoint"):
        ckpt = load_checkpoint(cfg.checkpoint)
        return ckpt.config, ckpt
    return to_container(cfg) | {"modality": resolve_modality_config(cfg)}, None


def reference_data(run_cfg: dict, options: dict) -> tuple[Dataset, Dataset | None, str]:
    """(training data, held-out reference or None, a description of the reference) for a run's config;
    ``options`` is the ``eval`` node (``split``: auto or a split; ``data_root``: where the data is now)."""
    dataset = dict(run_cfg["dataset"])
    if options.get("data_root"):
        dataset["root"] = options["data_root"]
    trained = dataset.get("split")
    wanted = options.get("split") or "auto"
    split = (splits.held_out(trained) if trained is not None else None) if wanted == "auto" else wanted
    train = build_dataset({**run_cfg, "dataset": dataset})
    if split is None or split == trained:
        return train, None, NO_HELD_OUT
    reference = build_dataset({**run_cfg, "dataset": dataset | {"split": split}})
    return train, reference, f"split {split} (held out; the model trained on {trained})"


def evaluator_for(train: Dataset, reference: Dataset | None, modality, run_cfg: dict, options: dict,
               retrain: bool) -> Evaluator:
    return load_or_train_evaluator(train, modality, held_out_data=reference, data_root=run_cfg["dataset"].get("root"),
                                   retrain=retrain, **dict(options["evaluator"] or {}))


def _as_frames(dataset: Dataset | None, modality) -> tuple[Dataset | None, object]:
    """A dataset of the frames of ``dataset``'s items (each labelled like its item), and their modality."""
    if dataset is None:
        return None, None
    found = modality.frames(dataset.data)
    if found is None:
        return None, None
    frames, frame_modality = found
    per_item = len(frames) // len(dataset)
    return Dataset(frames, dataset.labels.repeat_interleave(per_item), dataset.class_names,
                   f"{dataset.name} frames"), frame_modality


def frame_evaluator_for(train: Dataset, reference: Dataset | None, modality, run_cfg: dict, options: dict,
                     retrain: bool) -> Evaluator | None:
    """For data made of frames (video): an evaluator of single frames, trained on the training items' frames
    for as many steps as the clip evaluator takes (its epochs divided by the frames per item)."""
    frames, frame_modality = _as_frames(train, modality)
    if frames is None:
        return None
    train_options = dict(options["evaluator"] or {})
    per_item = len(frames) // len(train)
    train_options["epochs"] = max(1, round(int(train_options.get("epochs", 30)) / per_item))
    return evaluator_for(frames, _as_frames(reference, modality)[0], frame_modality, run_cfg,
                         options | {"evaluator": train_options}, retrain)


def _generate(cfg: DictConfig, model: Model, asked: PromptSet | None = None):
    """Samples from the checkpoint, decoded, with the labels they were generated for (as mode=sample): n of
    them, or (a model trained with captions) one per prompt of ``asked``, labelled with the class it asks for."""
    check_sampling_config(cfg)
    model.check_sampler(cfg.sampler.name)
    n = cfg.n if asked is None else len(asked.prompts)
    labels, conditions, null = model.labels(cfg["class"], n), None, None
    if asked is not None:
        _, conditions, null = model.prompt_inputs(asked.prompts, n, cfg.get("negative_prompt"))
    sigmas = build_sigmas(cfg.sampler, cfg.steps, model.config["diffusion"], model.schedules)
    solve = from_noise(model.shape, cfg.sampler.name, sigmas, dict(cfg.sampler.options), device=model.device)
    x = generate(model.denoiser, solve, n=n, labels=labels, null_label=model.null_label,
                 guidance=model.guidance_from_config(cfg), seed=cfg.seed, batch_size=cfg.batch_size, device=model.device,
                 conditions=conditions, null_conditions=null)
    return model.decode(x), (labels if asked is None else asked.labels)


def prompts_for(cfg: DictConfig, model: Model, train: Dataset, reference: Dataset | None, options: dict
                ) -> PromptSet | None:
    """A model trained with captions: the prompts mode=eval samples it with (mmdiff/eval/prompts.py); None for
    one trained with labels."""
    if not model.config["model"].get("text"):
        return None
    if cfg["class"] is not None:
        raise UserError("this checkpoint was trained with captions (conditioning=text): mode=eval asks for the "
                        "held-out items' own attributes; drop class=")
    if not measurable(train):
        raise UserError(f"mode=eval measures prompt following on datasets with measured captions "
                        f"({', '.join(sorted(MEASURERS))}; moving digits with one digit per clip), and {train.name} "
                        "as configured has none yet: sample it with mode=sample prompts=FILE and measure the folder "
                        "with mode=eval samples=FOLDER")
    hold_out = list((model.config.get("conditioning") or {}).get("hold_out") or [])
    return prompt_set(train, reference if reference is not None else train, hold_out, cfg.n,
                      int(options["held_out_per_combination"]), cfg.seed)


def prediction(cfg: DictConfig, model: Model, reference: Dataset, options: dict) -> dict | None:
    """``eval.predict.context`` > 0 (data made of frames: video): the first ``context`` frames of ``n`` held-out
    clips are given, ``k`` continuations of each are generated (conditioned on them, or inpainted: as
    mode=sample does with ``context``), and the predicted frames are scored against the true ones: PSNR and
    SSIM of the best and the mean of the k, beside copying the last given frame (the baseline a model must
    beat)."""
    p = options.get("predict") or {}
    known = int(p.get("context") or 0)
    if not known:
        return None
    modality, shape = model.modality, model.shape
    dim = modality.time_dim(shape)
    if modality.frames(reference.data[:1].float()) is None or dim is None:
        raise UserError(f"eval.predict.context scores predicted frames, and {modality.name} data has none: drop it")
    steps = shape[dim - 1]
    if not 0 < known < steps:
        raise UserError(f"eval.predict.context={known} must leave frames to predict: use 1 to {steps - 1}")
    n, k = min(int(p["n"]), len(reference)), int(p["k"])
    truth = reference.data[:n].float()
    x_known = model.encode(truth).repeat_interleave(k, 0)
    sigmas = build_sigmas(cfg.sampler, cfg.steps, model.config["diffusion"], model.schedules)
    solve, conditions, how = model.completion(x_known, continuation_mask(shape, known, time_dim=dim - 1),
                                              cfg.sampler.name, sigmas, dict(cfg.sampler.options),
                                              method=cfg.get("edit_method") or "auto", resample=cfg.resample)
    labels = reference.labels[:n].repeat_interleave(k) if model.class_names else None
    x = generate(model.denoiser, solve, n=n * k, labels=labels, null_label=model.null_label,
                 guidance=model.guidance_from_config(cfg), seed=cfg.seed, batch_size=cfg.batch_size, device=model.device,
                 conditions=conditions)

    def per_frame(data: torch.Tensor) -> torch.Tensor:  # [m, ...] -> [m, T, *frame]
        flat, _ = modality.frames(data)
        return flat.view(len(data), steps, *flat.shape[1:])
    truth_frames = per_frame(truth)
    fake = per_frame(modality.eval_data(model.decode(x), reference.shape)).view(n, k, *truth_frames.shape[1:])
    fake, real = fake[:, :, known:], truth_frames[:, known:]
    copy = truth_frames[:, known - 1:known].expand_as(real)

    def scores(guess: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PSNR over all predicted frames, and SSIM averaged over them, per clip."""
        frames = target.shape[1]
        s = ssim(guess.flatten(0, 1), target.flatten(0, 1)).view(-1, frames).mean(1)
        return psnr(guess, target), s
    psnr_k, ssim_k = scores(fake.flatten(0, 1), real.repeat_interleave(k, 0))
    psnr_k, ssim_k = psnr_k.view(n, k), ssim_k.view(n, k)
    psnr_copy, ssim_copy = scores(copy, real)
    finite = lambda v: float(v[torch.isfinite(v)].mean())  # noqa: E731 - a perfect copy scores +inf dB
    return {"context": known, "predicted": steps - known, "n": n, "k": k, "how": how,
            "psnr_best": finite(psnr_k.max(1).values), "psnr_mean": finite(psnr_k.mean(1)),
            "psnr_copy_last": finite(psnr_copy), "ssim_best": float(ssim_k.max(1).values.mean()),
            "ssim_mean": float(ssim_k.mean()), "ssim_copy_last": float(ssim_copy.mean())}


def prompt_following(fake: torch.Tensor, asked: PromptSet, train: Dataset, real: Dataset, evaluator: Evaluator,
                     modality, sample_rate: int | None, aligner: Aligner) -> dict:
    """Attribute accuracy of the samples (decoded, as the modality's ``decode`` gives them), beside the same
    figures for the real items their prompts were made of (the ceiling); the contrastive alignment of samples
    and prompts (mmdiff/eval/alignment.py) beside real and mismatched pairs; a few of the prompts."""
    fake, items = modality.eval_data(fake, real.shape), real.data[asked.items]
    return attribute_accuracy(fake, asked, train, evaluator.predict(fake), sample_rate) | {
        "ceiling": attribute_accuracy(items, asked, train, evaluator.predict(items), sample_rate),
        "alignment": prompt_alignment(aligner, fake, asked.prompts, items),
        "examples": asked.prompts[:3]}


def aligner_for(train: Dataset, modality, run_cfg: dict, options: dict, retrain: bool) -> Aligner:
    """The contrastive text-sample model for ``train``'s built-in captions (every item, held-out combinations
    included, seed 0: one cached model per data set and options), trained or loaded from the cache."""
    opts = dict(options.get("aligner") or {})
    k = int(opts.pop("phrasings", 8))
    return load_or_train_aligner(train, caption_dataset(train, k, seed=0), modality,
                                 data_root=run_cfg["dataset"].get("root"), retrain=retrain, **opts)


def evaluate_from_config(cfg: DictConfig, out_dir: str | Path) -> dict:
    """``mode=eval``: evaluate ``checkpoint`` (n samples drawn with ``sampler``, ``steps``, ``guidance``,
    ``class``, ``seed``, as mode=sample does) or the folder ``samples`` (then ``checkpoint``, if given, names
    the dataset; else the config's dataset) against held-out real data, print the table and write
    ``out_dir/eval.json``. The ``eval`` node holds the options (conf/config.yaml)."""
    options = OmegaConf.to_container(cfg.eval, resolve=True)
    samples_dir = cfg.get("samples")
    if not samples_dir and not cfg.get("checkpoint"):
        raise UserError("mode=eval measures a model or a folder of samples: give checkpoint=PATH or samples=FOLDER")
    run_cfg, ckpt = _run_config(cfg)
    modality = build_modality(run_cfg["modality"])
    check_inception(options["inception_weights"], modality)
    train, reference, described = reference_data(run_cfg, options)
    if ckpt and ckpt.data.get("class_names") != train.class_names:
        raise UserError(f"checkpoint {cfg.checkpoint} was trained on classes {ckpt.data.get('class_names')} but the "
                        f"dataset now has {train.class_names}: point eval.data_root at the data it was trained on")
    if reference is None:
        warnings.warn(f"mode=eval compares with {described}", stacklevel=2)
    evaluator = evaluator_for(train, reference, modality, run_cfg, options, bool(options["retrain"]))
    frame_evaluator = frame_evaluator_for(train, reference, modality, run_cfg, options, bool(options["retrain"]))

    def measure(fake: torch.Tensor, labels: torch.Tensor | None) -> dict:
        return evaluate(reference if reference is not None else train, fake, labels, modality, evaluator,
                        k=options["k"], kid_subsets=options["kid_subsets"], kid_subset_size=options["kid_subset_size"],
                        inception_weights=options["inception_weights"], frame_evaluator=frame_evaluator)
    if (sweep := sweep_options(options, cfg)) is not None:
        if samples_dir:
            raise UserError("eval.sweep samples the checkpoint at each EMA length and guidance: drop samples=")
        model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema, decoder=cfg.get("vocoder"))
        return ema_guidance_sweep(cfg, model, measure, sweep, described, out_dir)
    if samples_dir:
        fake, labels = read_samples_folder(samples_dir, modality, train.class_names)
        asked = None
        source = {"samples": str(samples_dir)}
    else:
        model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema, decoder=cfg.get("vocoder"))
        asked = prompts_for(cfg, model, train, reference, options)
        fake, labels = _generate(cfg, model, asked)
        source = {"checkpoint": str(cfg.checkpoint), "step": ckpt.step, "sampler": cfg.sampler.name,
                  "steps": cfg.steps, "guidance": cfg.guidance, "seed": cfg.seed, "ema": cfg.ema}
        if model.decoder is not None:
            source["decoder"] = str(model.decoder)
    if asked is not None:   # the first n samples follow the reference's distribution; the held-out extras do not
        result = measure(fake[:cfg.n], labels[:cfg.n]) | {"source": source, "split": described}
    else:
        result = measure(fake, labels) | {"source": source, "split": described}
    if asked is not None:
        result["prompts"] = prompt_following(fake, asked, train, reference if reference is not None else train,
                                             evaluator, modality, run_cfg["dataset"].get("sample_rate"),
                                             aligner_for(train, modality, run_cfg, options, bool(options["retrain"])))
    if not samples_dir and (predicted := prediction(cfg, model, reference if reference is not None else train,
                                                    options)) is not None:
        result["prediction"] = predicted
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    log.info("wrote %s", out / "eval.json")
    if cfg.get("logger"):
        log_result(result, to_container(cfg), out, ckpt.step if ckpt else 0)
    return result


def sweep_options(options: dict, cfg: DictConfig) -> dict | None:
    """``eval.sweep`` checked, with the guidance scales filled in; None when there is nothing to sweep."""
    s = options.get("sweep") or {}
    lengths, scales = s.get("sigma_rel"), s.get("guidance")
    if not lengths and not scales:
        return None
    for name, values, low in (("sigma_rel", lengths or [], 0.0), ("guidance", scales or [], -1e9)):
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and v > low for v in values):
            raise UserError(f"eval.sweep.{name}={values!r} is invalid: give a list of numbers"
                            + (" above 0, e.g. [0.05,0.1,0.15]" if name == "sigma_rel" else ", e.g. [1.0,1.5,2.0]"))
    return {"sigma_rel": [float(v) for v in lengths or []], "guidance": [float(v) for v in scales or [cfg.guidance]],
            "store": bool(s.get("store", True))}


def ema_guidance_sweep(cfg: DictConfig, model: Model, measure, sweep: dict, described: str,
                       out_dir: str | Path) -> dict:
    """``eval.sweep``: every pair of EMA length (the checkpoint's own EMA, then each ``sigma_rel`` reconstructed
    by EDM2's post-hoc EMA: Model.posthoc_ema) and guidance scale, sampled as mode=eval samples and measured by
    ``measure(fake, labels)``; prints the table of the Fréchet distance (and the class accuracy), writes it to
    ``out_dir/eval.json`` and, with ``store``, the best pair (lowest distance) into the checkpoint
    (``best_sampling``, atomically)."""
    model.refuse_text("eval with eval.sweep")   # the sweep samples with class labels; plain mode=eval takes captions
    trained = {k: v.detach().clone() for k, v in model.denoiser.state_dict().items()}
    fd_key, rows = model.modality.fd_name, []
    for sigma_rel in [None, *sweep["sigma_rel"]]:  # the checkpoint's own EMA first, then each reconstruction
        if sigma_rel is not None:
            model.posthoc_ema(sigma_rel)
        for guidance in sweep["guidance"]:
            fake, labels = _generate(OmegaConf.merge(cfg, {"guidance": guidance}), model)
            metrics = measure(fake, labels)["metrics"]
            rows.append({"sigma_rel": sigma_rel, "guidance": guidance, fd_key: metrics[fd_key]["samples"],
                         "floor": metrics[fd_key]["floor"], "accuracy": metrics.get("accuracy", {}).get("samples")})
            log.info("sweep: EMA %s, guidance %s: %s %.4g", sigma_rel or "of the checkpoint", guidance, fd_key,
                     rows[-1][fd_key])
    model.denoiser.load_state_dict(trained)
    best = min(rows, key=lambda r: r[fd_key])
    result = {"sweep": {"metric": fd_key, "rows": rows, "best": best}, "split": described,
              "source": {"checkpoint": str(cfg.checkpoint), "sampler": cfg.sampler.name, "steps": cfg.steps,
                         "n": cfg.n, "seed": cfg.seed}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_sweep(result["sweep"]))
    if sweep["store"]:
        ckpt = load_checkpoint(model.path)
        ckpt.extra["best_sampling"] = best | {"n": cfg.n, "steps": cfg.steps, "sampler": cfg.sampler.name,
                                              "split": described}
        save_checkpoint(model.path, ckpt)
        log.info("stored the best pair in %s%s", model.path, "" if best["sigma_rel"] is None else
                 f": mode=phema checkpoint={model.path} phema.sigma_rel=best writes that EMA")
    return result


def format_sweep(sweep: dict) -> str:
    """The sweep as a table: a row per EMA length, a column per guidance scale, each cell the Fréchet distance
    (and the class accuracy); the best cell starred."""
    key, rows, best = sweep["metric"], sweep["rows"], sweep["best"]
    scales = list(dict.fromkeys(r["guidance"] for r in rows))
    lengths = list(dict.fromkeys(r["sigma_rel"] for r in rows))
    cell = {(r["sigma_rel"], r["guidance"]): r for r in rows}

    def text(r: dict) -> str:
        acc = "" if r["accuracy"] is None else f" ({100 * r['accuracy']:.1f} %)"
        return f"{r[key]:.4g}{acc}{' *' if r is best else ''}"
    lines = [f"{key.upper()} (class accuracy) by EMA length and guidance; real-vs-real floor {rows[0]['floor']:.4g}",
             " | ".join(["EMA"] + [f"guidance {g:g}" for g in scales])]
    for s in lengths:
        lines.append(" | ".join([f"sigma_rel {s:g}" if s is not None else "checkpoint's"]
                                + [text(cell[(s, g)]) for g in scales]))
    return "\n".join(lines)


def log_result(result: dict, config: dict, out_dir: Path, step: int) -> None:
    """mode=eval's table to the loggers of ``config["logger"]``, in ``out_dir``, at ``step`` (the checkpoint's):
    each metric and its real-vs-real floor as scalars ``eval/<metric>`` and ``eval/<metric>_floor``, the
    prediction scores as ``eval/prediction/<score>``, the table (metric, samples, floor), and this command's
    config with what was measured."""
    metrics = result["metrics"]
    scalars = {f"eval/{name}{suffix}": m[key] for name, m in metrics.items()
               for key, suffix in (("samples", ""), ("floor", "_floor")) if isinstance(m.get(key), (int, float))}
    scalars |= {f"eval/prediction/{k}": v for k, v in (result.get("prediction") or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
    rows = [[name, m.get("samples"), m.get("floor")] for name, m in metrics.items()]
    with build_loggers(config["logger"], out_dir) as loggers:
        loggers.log_config(config | {"source": result["source"], "split": result["split"]}, step)
        loggers.log_scalars(scalars, step)
        loggers.log_table("eval", ["metric", "samples", "floor"], rows, step)


def train_evaluator_from_config(cfg: DictConfig) -> Evaluator:
    """``mode=train_evaluator``: train the evaluator of the config's dataset (or ``checkpoint``'s) and cache it
    where ``mode=eval`` will find it, replacing a cached one (``eval.evaluator`` holds the training options)."""
    options = OmegaConf.to_container(cfg.eval, resolve=True)
    run_cfg, _ = _run_config(cfg)
    modality = build_modality(run_cfg["modality"])
    train, reference, described = reference_data(run_cfg, options)
    evaluator = evaluator_for(train, reference, modality, run_cfg, options, retrain=True)
    print(f"evaluator for {train.name} ({modality.name}, {train.num_classes} classes): accuracy "
          f"{evaluator.held_out_accuracy:.4f} on {evaluator.info['n_held_out']} held-out samples ({described}), "
          f"trained in {evaluator.info['seconds']} s"
          + (" (cut short by eval.evaluator.max_seconds)" if evaluator.info.get("cut_by_max_seconds") else "")
          + (f", cached at {evaluator.path}" if evaluator.path else ", not cached"))
    return evaluator
