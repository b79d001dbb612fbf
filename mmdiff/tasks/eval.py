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

from omegaconf import DictConfig, OmegaConf

from ..build import (build_dataset, build_modality, build_sigmas, check_sampling_config, resolve_modality_config,
                     to_container)
from ..checkpoint import load_checkpoint
from ..data import splits
from ..data.dataset import Dataset
from ..errors import UserError
from ..eval.evaluate import check_inception, evaluate, format_table, read_samples_folder
from ..eval.evaluator import Evaluator, load_or_train_evaluator
from ..generate import Guidance, from_noise, generate
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


def _evaluator(train: Dataset, reference: Dataset | None, modality, run_cfg: dict, options: dict,
               retrain: bool) -> Evaluator:
    return load_or_train_evaluator(train, modality, held_out_data=reference, data_root=run_cfg["dataset"].get("root"),
                                   retrain=retrain, **dict(options["evaluator"] or {}))


def _generate(cfg: DictConfig, model: Model):
    """n samples from the checkpoint, decoded, with the labels they were generated for (as mode=sample)."""
    check_sampling_config(cfg)
    labels = model.labels(cfg["class"], cfg.n)
    sigmas = build_sigmas(cfg.sampler, cfg.steps, model.config["diffusion"], model.schedules)
    solve = from_noise(model.shape, cfg.sampler.name, sigmas, dict(cfg.sampler.options), device=model.device)
    x = generate(model.denoiser, solve, n=cfg.n, labels=labels, null_label=model.null_label,
                 guidance=Guidance.from_config(cfg), seed=cfg.seed, batch_size=cfg.batch_size, device=model.device)
    return model.decode(x), labels


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
    evaluator = _evaluator(train, reference, modality, run_cfg, options, bool(options["retrain"]))
    if samples_dir:
        fake, labels = read_samples_folder(samples_dir, modality, train.class_names)
        source = {"samples": str(samples_dir)}
    else:
        model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema)
        fake, labels = _generate(cfg, model)
        source = {"checkpoint": str(cfg.checkpoint), "step": ckpt.step, "sampler": cfg.sampler.name,
                  "steps": cfg.steps, "guidance": cfg.guidance, "seed": cfg.seed, "ema": cfg.ema}
    result = evaluate(reference if reference is not None else train, fake, labels, modality, evaluator,
                      k=options["k"], kid_subsets=options["kid_subsets"], kid_subset_size=options["kid_subset_size"],
                      inception_weights=options["inception_weights"])
    result |= {"source": source, "split": described}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    log.info("wrote %s", out / "eval.json")
    return result


def train_evaluator_from_config(cfg: DictConfig) -> Evaluator:
    """``mode=train_evaluator``: train the evaluator of the config's dataset (or ``checkpoint``'s) and cache it
    where ``mode=eval`` will find it, replacing a cached one (``eval.evaluator`` holds the training options)."""
    options = OmegaConf.to_container(cfg.eval, resolve=True)
    run_cfg, _ = _run_config(cfg)
    modality = build_modality(run_cfg["modality"])
    train, reference, described = reference_data(run_cfg, options)
    evaluator = _evaluator(train, reference, modality, run_cfg, options, retrain=True)
    print(f"evaluator for {train.name} ({modality.name}, {train.num_classes} classes): accuracy "
          f"{evaluator.held_out_accuracy:.4f} on {evaluator.info['n_held_out']} held-out samples ({described}), "
          f"trained in {evaluator.info['seconds']} s, cached at {evaluator.path}")
    return evaluator
