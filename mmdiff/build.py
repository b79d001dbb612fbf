"""Config -> objects, and every check that spans config groups, in one place (STYLE habit 17).

Hydra composes any combination of groups; this module turns the composed config into a dataset,
a modality adapter, a denoiser and a sampling plan, and rejects combinations that cannot work
(a 2-D network on 1-D data, an image size the U-Net cannot take, an unknown sampler) with a
:class:`UserError` that names the fix, before any work starts.
"""

from __future__ import annotations

import copy
import inspect
import os
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .core.context import channels as context_channels
from .core.precond import Precond
from .core.samplers import SAMPLERS
from .core.schedules import DISCRETE, FITTED, SCHEDULES, get_sigmas, respaced
from .data.dataset import Dataset
from .errors import UserError
from .modalities.base import Modality
from .models.unet import Resampling

MODES = ("train", "sample", "eval", "train_evaluator", "fit_schedule", "phema", "distill", "train_vocoder")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}  # memory format by the model's dims


def to_container(cfg: DictConfig | dict) -> dict:
    """A plain, resolved dict of a config (what is saved beside runs and inside checkpoints)."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def _instantiate(node: Any, where: str, **kwargs) -> Any:
    """hydra.utils.instantiate, with the user's mistakes turned into one clear message."""
    try:
        return instantiate(node, **kwargs)
    except MissingMandatoryValue as e:
        key = f"{where}.{e.key}" if getattr(e, "key", None) else where
        raise UserError(f"{key} is required but not set: add {key}=... to the command line") from None
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, MissingMandatoryValue):
            raise UserError(f"{where}.{cause.key} is required but not set: add {where}.{cause.key}=... "
                            "to the command line") from None
        raise UserError(f"could not build {where} from its config: {cause or e}") from None
    except TypeError as e:  # an option the target does not take
        raise UserError(f"could not build {where} from its config: {e}") from None


# --- checks on single values ---------------------------------------------------------------------

def _positive(value, key: str, integer: bool = True, allow_zero: bool = False) -> None:
    kind = int if integer else (int, float)
    bad = not isinstance(value, kind) or isinstance(value, bool) or (value < 0 if allow_zero else value <= 0)
    if bad:
        need = "a non-negative" if allow_zero else "a positive"
        raise UserError(f"{key}={value!r} is invalid: it must be {need} {'integer' if integer else 'number'}")


def check_run_config(cfg: DictConfig) -> None:
    """Checks of the top-level and trainer options, before anything is loaded."""
    if cfg.mode not in MODES:
        raise UserError(f"mode={cfg.mode} is unknown: use one of {', '.join(MODES)}")
    if cfg.mode in ("train", "sample", "eval", "fit_schedule"):
        check_sampling_config(cfg)
    if cfg.mode == "train":
        t = cfg.trainer
        for key in ("max_steps", "batch_size", "grad_accum", "warmup_steps", "log_every", "sample_every",
                    "checkpoint_every", "max_nonfinite"):
            _positive(t[key], f"trainer.{key}", allow_zero=key in ("warmup_steps", "sample_every", "checkpoint_every"))
        for key in ("max_seconds", "lr"):
            _positive(t[key], f"trainer.{key}", integer=False)
        if not 0 <= t.label_dropout < 1:
            raise UserError(f"trainer.label_dropout={t.label_dropout} must be in [0, 1)")
        for sigma_rel in t.phema.sigma_rels:
            if not 0 < sigma_rel < 12 ** -0.5:
                raise UserError(f"trainer.phema.sigma_rels holds {sigma_rel}: a relative EMA length must be in (0, 0.2887), "
                                "e.g. [0.05, 0.1]")
        if t.phema.sigma_rels:
            _positive(t.phema.snapshot_every, "trainer.phema.snapshot_every")
        if t.lr_decay_samples is not None:
            _positive(t.lr_decay_samples, "trainer.lr_decay_samples")
        if t.precision not in PRECISIONS:
            raise UserError(f"trainer.precision={t.precision} is unknown: use one of {', '.join(PRECISIONS)}")
        if t.channels_last and cfg.model.get("dims") not in CHANNELS_LAST:
            raise UserError(f"trainer.channels_last=true is for 2-D and 3-D models (model.dims={cfg.model.get('dims')}): "
                            "drop it")
        if t.channels_last and cfg.model.get("dims") == 3 and cfg.model.get("temporal") == "factorized":
            raise UserError("trainer.channels_last=true is for networks whose convolutions have the data's rank; a "
                            "factorized video net runs 2-D convolutions on frames: drop it, or use model=video_unet_3d")
    if cfg.mode in ("train", "train_evaluator"):
        check_dataset_modality(cfg)


def check_sampling_config(cfg: DictConfig) -> None:
    s = cfg.sampler
    if s.name not in SAMPLERS:
        raise UserError(f"sampler.name={s.name} is unknown: use one of {', '.join(sorted(SAMPLERS))}")
    if s.schedule not in SCHEDULES and s.schedule != DISCRETE and not (s.schedule == FITTED and cfg.mode != "train"):
        others = (f", {DISCRETE} (a DDPM-style model's own discrete levels, respaced) or {FITTED} (sampling from "
                  "a checkpoint holding a fitted schedule)")
        raise UserError(f"sampler.schedule={s.schedule} is unknown: use one of {', '.join(sorted(SCHEDULES))}{others}")
    _positive(cfg.steps, "steps")
    _positive(cfg.n, "n")
    _positive(cfg.batch_size, "batch_size")
    _positive(cfg.guidance, "guidance", integer=False, allow_zero=True)


# --- data and modality ---------------------------------------------------------------------------

def total_downsampling(model_cfg: DictConfig | dict) -> int | tuple[int, ...]:
    """The factor by which a U-Net config shrinks each spatial dim (what inputs must be a multiple of): an
    int, or a tuple of per-axis totals when the config gives ``down_factors`` or ``patch_size`` per axis
    (video: ``[[1, 2, 2]]`` keeps time). The U-Net's own rule (``mmdiff.models.unet.Resampling``)."""
    try:
        return Resampling.from_config(model_cfg.get("dims", 2), len(model_cfg["channel_mult"]),
                                      model_cfg.get("down_factors", 2), model_cfg.get("patch_size", 1)).total
    except ValueError as e:
        raise UserError(str(e)) from None


def target_class(target: Any, key: str, base: type, choices: str) -> type:
    """The class a config's ``_target_`` names (imported, not constructed), checked to be a ``base``; the error
    names the key and the ``choices`` to use instead."""
    try:
        cls = get_class(str(target))
    except Exception as e:  # noqa: BLE001 - Hydra reports import problems with several exception types
        raise UserError(f"{key}._target_={target} cannot be imported ({e}): use {choices}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(f"{key}._target_={target} is not a subclass of {base.__module__}.{base.__name__}")
    return cls


def modality_class(modality_cfg: DictConfig | dict) -> type[Modality]:
    """The class a modality config's ``_target_`` names (imported, not constructed)."""
    return target_class(modality_cfg.get("_target_") if modality_cfg else None, "modality", Modality,
                        "modality=image, audio or video, or the import path of your own Modality subclass")


def resolve_modality_config(cfg: DictConfig) -> dict:
    """The modality config with its ``auto`` options filled in from the model (``Modality.resolve_config``)."""
    model = to_container(cfg.model)
    model["total_downsampling"] = total_downsampling(cfg.model)
    return modality_class(cfg.modality).resolve_config(to_container(cfg.modality), model)


def build_modality(modality_cfg: DictConfig | dict) -> Modality:
    """The modality from its (resolved) config node."""
    return _instantiate(modality_cfg, "modality")


# Keys of a dataset config that mmdiff reads itself; the others go to the loader named by _target_.
# modality_options: representation settings that suit the data, read by the modality's config (conf/modality/).
DATASET_KEYS = ("modality", "streaming", "modality_options")


def check_dataset_modality(cfg: DictConfig) -> None:
    """A dataset config names the modality that reads its data (``dataset.modality``); refuse a mismatch
    before anything is loaded (Hydra composes modality=audio dataset=digits without complaint)."""
    wanted = cfg.dataset.get("modality") if cfg.get("dataset") is not None else None
    have = modality_class(cfg.modality).name
    if wanted is not None and wanted != have:
        name = cfg.dataset.get("name") or str(cfg.dataset.get("_target_")).rsplit(".", 1)[-1].removeprefix("load_")
        article = "an" if have[:1] in "aeiou" else "a"
        raise UserError(f"dataset {name} holds {wanted} data but modality={have}: use modality={wanted}, or {article} "
                        f"{have} dataset (dataset=...)")


def build_dataset(cfg: DictConfig | dict) -> Dataset:
    """The dataset of a (run) config, in memory or streamed from a disk cache (mmdiff.data.stream)."""
    from .data import splits
    from .data.stream import prepare
    node = to_container(cfg["dataset"])
    options = {k: node.pop(k) for k in DATASET_KEYS if k in node}
    split = node.get("split")
    if split is not None:  # "test::8000": the loader reads "test", the slice is taken here
        node["split"] = splits.parse(split)[0]
    loaded = _instantiate(node, "dataset")
    if split is not None:
        loaded = loaded.subset(splits.select(len(loaded), split))
    if len(loaded) == 0:
        raise UserError("the dataset is empty: check dataset.root and the dataset options")
    data_cfg = to_container(cfg["data"]) if cfg.get("data") is not None else {}
    return prepare(loaded, options.get("streaming", False), **data_cfg)


def data_info(x: torch.Tensor, dataset) -> dict:
    """What a checkpoint must remember about its data: the model-space shape and the class names."""
    return {"shape": list(x.shape[1:]), "class_names": list(dataset.class_names), "dataset": dataset.name}


# --- model and denoiser --------------------------------------------------------------------------

CONDITIONINGS = ("label", "text")


def conditioning_kind(cfg: DictConfig | dict) -> str:
    """``conditioning.kind`` of a run config: label (class labels) or text (captions); a run or checkpoint from before
    the conditioning group has labels."""
    kind = (cfg.get("conditioning") or {}).get("kind", "label")
    if kind not in CONDITIONINGS:
        raise UserError(f"conditioning.kind={kind} is unknown: use conditioning=label or conditioning=text")
    return kind


def text_encoder_config(conditioning: DictConfig | dict) -> dict:
    """``model.text`` of conditioning=text: the trained encoder's {width, layers, heads, max_length}, or with
    ``conditioning.encoder.path`` the pretrained one's (:func:`pretrained_text_config`). Without a path the config
    is what it was before paths existed, so older checkpoints resume."""
    encoder = to_container(conditioning["encoder"])
    path = encoder.pop("path", None)
    if path:
        return pretrained_text_config(path, conditioning["max_length"])
    return encoder | {"max_length": int(conditioning["max_length"])}


def pretrained_text_config(path, max_length: int) -> dict:
    """``model.text`` of a pretrained text encoder in the folder ``path``: {path, max_length}, the path made absolute
    (a checkpoint is sampled from anywhere), the trained encoder's sizes left out (they would not describe it)."""
    return {"path": os.path.abspath(os.path.expanduser(str(path))), "max_length": int(max_length)}


def resolve_model_config(model_cfg: DictConfig | dict, info: dict, context: DictConfig | dict | None = None,
                         conditioning: DictConfig | dict | None = None) -> dict:
    """Fill the model's ``auto`` options from the data (the ``time_context`` node: the extra input channels
    of conditioning on known time steps; the ``conditioning`` node: class labels, or captions through a text
    encoder, ``model.text``) and check that the network can take it."""
    m = to_container(model_cfg)
    shape = info["shape"]
    if m.get("in_channels") == "auto":
        m["in_channels"] = shape[0]
    text = conditioning_kind({"conditioning": conditioning}) == "text"
    if text:
        if m.get("num_classes") not in ("auto", 0):
            raise UserError(f"conditioning=text conditions on captions instead of class labels, and "
                            f"model.num_classes={m.get('num_classes')}: drop model.num_classes (or use "
                            "conditioning=label)")
        if not m.get("attn_levels"):
            raise UserError("conditioning=text feeds the caption to the U-Net's attention layers, and this model has "
                            "none: set model.attn_levels, e.g. model.attn_levels=[1]")
        m["num_classes"] = 0
        m["text"] = text_encoder_config(conditioning)
    if m.get("num_classes") == "auto":
        m["num_classes"] = len(info["class_names"])
    wants_context = bool(context and context.get("enabled"))
    if m.get("cond_channels") == "auto":
        m["cond_channels"] = context_channels(shape[0]) if wants_context else 0
    if wants_context and m.get("cond_channels") != context_channels(shape[0]):
        raise UserError(f"time_context.enabled=true needs a model with model.cond_channels=auto "
                        f"({context_channels(shape[0])} extra input channels), this one has "
                        f"{m.get('cond_channels', 0)}: use a model config with cond_channels (e.g. model=video_unet) or "
                        "drop time_context.enabled")
    if m.get("in_channels") != shape[0]:
        raise UserError(f"model.in_channels={m.get('in_channels')} but the data has {shape[0]} channel(s): "
                        "use model.in_channels=auto")
    dims = m.get("dims")
    if dims is not None and dims != len(shape) - 1:
        raise UserError(f"model.dims={dims} but the data has {len(shape) - 1} spatial dim(s) (shape {shape}): "
                        f"choose a model for {len(shape) - 1}-D data")
    return m


def build_net(model_cfg: dict, info: dict) -> torch.nn.Module:
    net = _instantiate(model_cfg, "model")
    try:
        net.check_input_shape(info["shape"][1:])
    except ValueError as e:
        raise UserError(str(e)) from None
    return net


def build_denoiser(cfg: DictConfig | dict, model_cfg: dict, info: dict) -> Precond:
    """The raw network wrapped in the diffusion config's parametrization."""
    net = build_net(model_cfg, info)
    make_precond = _instantiate(cfg["diffusion"]["precond"], "diffusion.precond")
    return make_precond(net)


# --- sampling plan -------------------------------------------------------------------------------

def schedule_key(sampler: str, steps: int) -> str:
    """Where a checkpoint keeps the schedule fitted for a sampler and number of steps."""
    return f"{sampler}/{int(steps)}"


def build_sigmas(sampler_cfg: DictConfig | dict, steps: int, diffusion_cfg: DictConfig | dict,
                 fitted: dict | None = None) -> torch.Tensor:
    """The decreasing noise levels a sampler visits, ending in 0. ``fitted``: the schedules a checkpoint
    holds (``sampler.schedule=fitted`` picks the one for this sampler and number of steps)."""
    name = sampler_cfg["schedule"]
    if name == FITTED:
        key = schedule_key(sampler_cfg["name"], steps)
        if key not in (fitted or {}):
            have = ", ".join(sorted(fitted or {})) or "none"
            raise UserError(f"sampler.schedule={FITTED}: the checkpoint holds no schedule fitted for {key} (it has: "
                            f"{have}); fit one with `python -m mmdiff mode=fit_schedule checkpoint=... "
                            f"sampler={sampler_cfg['name']} steps={int(steps)}`, or use another sampler.schedule")
        return torch.tensor(fitted[key]["sigmas"], dtype=torch.float64)
    options = dict(sampler_cfg.get("schedule_options") or {})
    if name == DISCRETE:
        levels = getattr(_instantiate(diffusion_cfg["noise"], "diffusion.noise"), "sigmas", None)
        if levels is None:
            raise UserError(f"sampler.schedule={DISCRETE} samples a model's discrete training levels, but this "
                            "diffusion draws continuous ones: use it with diffusion=ddpm or diffusion=v_cosine, or "
                            "another sampler.schedule")
        try:
            return respaced(int(steps), levels, **options)
        except (TypeError, ValueError) as e:
            raise UserError(f"bad sampling schedule (sampler.schedule={DISCRETE}, sampler.schedule_options={options}, "
                            f"steps={steps}): {e}") from None
    if name in SCHEDULES:  # options another schedule takes (karras's rho) must not reach this one
        takes = list(inspect.signature(SCHEDULES[name]).parameters)[3:]  # after n, sigma_min, sigma_max
        unknown = [k for k in options if k not in takes]
        if unknown:
            raise UserError(f"bad sampling schedule (sampler.schedule={name}, sampler.schedule_options={options}): "
                            f"the {name} schedule takes {', '.join(takes) or 'no options'}: drop the others with "
                            + " ".join(f"~sampler.schedule_options.{k}" for k in unknown))
    try:
        return get_sigmas(name, int(steps), float(diffusion_cfg["sigma_min"]),
                          float(diffusion_cfg["sigma_max"]), **options)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad sampling schedule (sampler.schedule={name}, "
                        f"sampler.schedule_options={options}, steps={steps}): {e}") from None


def resolve_labels(value: Any, n: int, class_names: list[str]) -> torch.Tensor | None:
    """Labels for n samples: None (unconditional model), the classes in turn (value null), or the
    class(es) a user asked for by index or name."""
    k = len(class_names)
    if k == 0:
        if value is not None:
            raise UserError(f"class={value} was given but the model is unconditional (it has no classes)")
        return None
    if value is None:
        per_class = -(-n // k)  # ceil: a grid row per class
        return torch.arange(n) // per_class
    wanted = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
    labels = []
    for v in wanted:
        if str(v) in class_names:
            labels.append(class_names.index(str(v)))
        elif isinstance(v, int) and 0 <= v < k:
            labels.append(v)
        else:
            raise UserError(f"class={v} is not a class of this model: use an index 0..{k - 1} or one of {class_names}")
    return torch.tensor(labels).repeat_interleave(-(-n // len(labels)))[:n]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name} is not a device: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here: use device=cpu or device=auto")
    return device


def sampler_settings(cfg: DictConfig, ema: bool) -> dict:
    """How samples are drawn (sampler, schedule, steps, guidance, seed, ...): the top of the gallery page."""
    def plain(value):
        return to_container(value) if OmegaConf.is_config(value) else value
    keys = ("steps", "guidance", "guidance_rescale", "guidance_interval", "dynamic_threshold", "guide", "n", "seed")
    settings = {"sampler": cfg.sampler.name, "schedule": cfg.sampler.schedule, "options": plain(cfg.sampler.options)}
    settings |= {k: plain(cfg.get(k)) for k in keys}
    settings |= {k: plain(cfg.get(k)) for k in ("prompt", "prompts", "negative_prompt") if cfg.get(k) is not None}
    return settings | {"class": "the classes in turn" if cfg["class"] is None else plain(cfg["class"]), "ema": ema}
