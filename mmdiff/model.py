"""A checkpoint made usable: :class:`Model` samples, fits step schedules, encodes, decodes and writes files.

    from mmdiff.model import Model
    model = Model.from_checkpoint("outputs/.../last.safetensors")
    x = model.sample(n=20, labels="7", steps=20, guidance=1.5, seed=0)   # model space [20, *shape]
    model.save(x, "samples/", labels=model.labels("7", 20))             # files, as mode=sample writes them

Every option a method leaves out takes the value conf/ gives it (``mmdiff.config.defaults``): the
Python API and the command line sample the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from .build import (build_denoiser, build_modality, build_sigmas, pick_device, pretrained_text_config, resolve_labels,
                    schedule_key)
from .checkpoint import SNAPSHOTS, load_checkpoint, load_snapshots, resolve_checkpoint_path, save_checkpoint
from .config import defaults
from .core.context import context_input
from .core.editing import continuation_input, inpaint
from .core.samplers import SAMPLERS
from .errors import UserError
from .generate import Guidance, from_noise, generate, prompt_conditions
from .models.text import text_tokenizer


EDIT_METHODS = ("auto", "condition", "repaint")
log = logging.getLogger(__name__)


def known_steps(keep: torch.Tensor, shape, time_dim: int | None) -> torch.Tensor | None:
    """[T] bool when the mask ``keep`` (broadcastable to [*shape]) keeps whole steps of the time axis, else None."""
    if time_dim is None:
        return None
    full = keep.expand(*shape) if keep.ndim == len(shape) else keep.expand(1, *shape)[0]
    steps = full.movedim(time_dim - 1, 0).flatten(1)
    return steps[:, 0].cpu() if bool((steps == steps[:, :1]).all()) else None


def sampler_defaults(sampler: str) -> dict:
    """conf/sampler/<sampler>.yaml as a dict (schedule, schedule_options, options); a UserError listing the
    samplers for an unknown name."""
    if sampler not in SAMPLERS:
        raise UserError(f"sampler {sampler!r} is unknown: use one of {', '.join(sorted(SAMPLERS))}")
    return defaults(f"sampler={sampler}")["sampler"]


def _with_text_encoder(config: dict, path, text_encoder: str | Path | None) -> dict:
    """A checkpoint's config with its pretrained text encoder's folder (``model.text.path``) moved to
    ``text_encoder``; a UserError naming the folder and both fixes when the recorded one is gone."""
    text = config["model"].get("text") or {}
    if text_encoder is not None:
        if not text.get("path"):
            raise UserError(f"checkpoint {path} has no pretrained text encoder (it was trained without "
                            "conditioning.encoder.path): drop text_encoder=")
        return config | {"model": config["model"] | {"text": pretrained_text_config(text_encoder, text["max_length"])}}
    if text.get("path") and not Path(text["path"]).is_dir():
        raise UserError(f"checkpoint {path} conditions on captions through the pretrained text encoder in "
                        f"{text['path']} (model.text.path in its config; the encoder's weights are not in the "
                        "checkpoint), and that folder is gone: put the model and its tokenizer back there (a copy or a "
                        "symlink), or give their new place with Model.from_checkpoint(..., text_encoder=FOLDER)")
    return config


class Model:
    """A trained denoiser with what it needs to sample: its modality, data shape, classes and the step
    schedules fitted to it."""

    def __init__(self, denoiser: torch.nn.Module, run_cfg: dict, info: dict, step: int = 0,
                 schedules: dict | None = None, path: Path | None = None):
        self.denoiser, self.config, self.info, self.step = denoiser, run_cfg, info, step
        self.schedules: dict = dict(schedules or {})   # fitted step schedules, "sampler/steps" -> fit record
        self.path = path
        self.modality = build_modality(run_cfg["modality"])
        self.decoder: Path | None = None    # the learned decoder's file the modality decodes with (use_decoder)
        self.shape: list[int] = info["shape"]
        self.class_names: list[str] = info["class_names"] if run_cfg["model"].get("num_classes") else []
        # conditioning=text: captions are tokenized by the network's own encoder (bytes, or a pretrained model's)
        self.tokenizer = text_tokenizer(denoiser.net)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", ema: bool = True,
                        decoder: str | Path | bool | None = None, text_encoder: str | Path | None = None) -> Model:
        """Rebuild the model from a checkpoint's own config (EMA weights unless ema=False). ``decoder``: a learned
        decoder's file for the modality to decode with (audio: a vocoder, ``vocoder=PATH``); None: the modality's
        ``decoder_file`` if it lies beside the checkpoint; False: none (audio: Griffin-Lim). ``text_encoder``: where
        the pretrained text encoder of a model trained with ``conditioning.encoder.path`` is now, if it moved (its
        weights are not in the checkpoint; None: the folder the config records)."""
        ckpt = load_checkpoint(path)
        config = _with_text_encoder(ckpt.config, path, text_encoder)
        denoiser = build_denoiser(config, config["model"], ckpt.data)
        try:
            denoiser.load_state_dict(ckpt.ema if ema and ckpt.ema else ckpt.model)
        except RuntimeError as e:
            raise UserError(f"checkpoint {path} does not match the model its config describes ({e}): the file is "
                            "damaged or was edited; use an intact checkpoint") from None
        model = cls(denoiser.to(pick_device(device)).eval(), config, ckpt.data, ckpt.step,
                    ckpt.extra.get("schedules"), resolve_checkpoint_path(path))
        model.use_decoder(decoder)
        return model

    def use_decoder(self, decoder: str | Path | bool | None) -> Path | None:
        """Decode with the learned decoder in the file ``decoder`` (None: the modality's ``decoder_file`` beside
        the checkpoint, if there is one; False: none). Returns the file used, also kept in ``self.decoder``."""
        found = None
        if decoder is None and self.modality.decoder_file and self.path is not None:
            beside = self.path.parent / self.modality.decoder_file
            if beside.is_file():
                log.info("decoding with %s, found beside the checkpoint (vocoder=PATH picks another, vocoder=false "
                         "none)", beside)
                found = beside
        elif decoder is not None and decoder is not False:
            found = Path(decoder)
        if found is not None or self.decoder is not None:  # load one, or drop the one in use
            self.modality.use_decoder(found)
        self.decoder = found
        return found

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def distilled(self) -> dict | None:
        """What a consistency student was tuned from (mode=distill: teacher, its step, the guidance in its
        weights), or None for a diffusion model (whose config holds the ``distill`` defaults, without ``from``)."""
        record = self.config.get("distill") or {}
        return record if record.get("from") else None

    def guidance_for(self, guidance: Guidance) -> Guidance:
        """``guidance`` as this model takes it: a distilled student has its guidance in its weights and never
        learnt the null label, so it samples at scale 1, without a guide."""
        if self.distilled and (guidance.scale != 1.0 or guidance.guide is not None):
            log.info("this consistency student has guidance %s distilled into its weights: sampling it at "
                     "guidance 1 (not %s)", self.distilled.get("guidance"), guidance.scale)
            return dataclasses.replace(guidance, scale=1.0, guide=None)
        return guidance

    def guidance_from_config(self, cfg) -> Guidance:
        """The guidance a run config asks for (scale, rescale, interval, thresholding and ``guide=CHECKPOINT``,
        loaded and checked), as this model takes it: what mode=sample and mode=eval sample with."""
        return self.guidance_for(Guidance.from_config(cfg, self.guide(cfg.get("guide"))))

    def check_sampler(self, sampler: str) -> None:
        """Warn when a distilled student is sampled by an ODE solver instead of consistency sampling."""
        if self.distilled and sampler != "consistency":
            log.warning("this model is a consistency student (mode=distill): sample it with sampler=consistency "
                        "steps=1 or 2; %s integrates an ODE it was not tuned for", sampler)

    @property
    def null_label(self) -> int:
        return len(self.class_names)

    def posthoc_ema(self, sigma_rel: float, at: int | None = None) -> dict:
        """Replace the weights by the EMA of relative length ``sigma_rel`` (EDM2's post-hoc EMA), reconstructed
        from the power-function EMA snapshots training saved beside the checkpoint (``trainer.phema``), at the
        last snapshot (or at ``at`` samples seen). Returns what was used (snapshots, time, coefficients)."""
        from .core.phema import coefficients, reconstruct
        folder = (self.path.parent if self.path else Path(".")) / SNAPSHOTS
        snaps = load_snapshots(folder) if folder.is_dir() else []
        if at is not None:
            snaps = [s for s in snaps if s[0] <= at]
        if not snaps:
            raise UserError(f"no post-hoc EMA snapshots in {folder}: train with trainer.phema.sigma_rels=[0.05,0.1] "
                            "(snapshots every trainer.phema.snapshot_every steps), then reconstruct")
        t = at if at is not None else snaps[-1][0]
        at_list = [(s[0], s[1]) for s in snaps]
        try:
            weights = reconstruct([s[2] for s in snaps], at_list, (t, float(sigma_rel)))
            coeff = coefficients(at_list, (t, float(sigma_rel))).tolist()
        except ValueError as e:
            raise UserError(f"post-hoc EMA: {e}") from None
        self.denoiser.load_state_dict(weights)
        return {"sigma_rel": float(sigma_rel), "samples_seen": t, "snapshots": len(snaps), "coefficients": coeff}

    def guide(self, path: str | Path | None) -> torch.nn.Module | None:
        """The denoiser of a weaker model of the same data to guide with (autoguidance; ``guide=CHECKPOINT``),
        checked to make the same kind of samples; None for None."""
        if path is None or str(path) in ("", "None", "null"):
            return None
        other = Model.from_checkpoint(path, device=str(self.device), decoder=False)
        mine = (self.modality.name, self.shape, self.class_names)
        theirs = (other.modality.name, other.shape, other.class_names)
        if mine != theirs:
            raise UserError(f"guide={path} makes {theirs[0]} samples of shape {theirs[1]} with classes {theirs[2]}, this "
                            f"model {mine[0]} of shape {mine[1]} with classes {mine[2]}: guide with a weaker model of "
                            "the same data (an earlier checkpoint of this run, or a smaller model trained on it)")
        return other.denoiser

    @property
    def takes_context(self) -> bool:
        """Whether the model was trained to condition on known time steps (``time_context``)."""
        return bool((self.config.get("time_context") or {}).get("enabled"))

    def labels(self, value: Any, n: int) -> torch.Tensor | None:
        """Labels for n samples: None (a block of ceil(n / classes) per class: the grid rows), or a class index
        or name, or a list."""
        return resolve_labels(value, n, self.class_names)

    def sigmas(self, steps: int, schedule: str = "karras", sampler: str = "dpmpp_2m",
               **schedule_options) -> torch.Tensor:
        """The noise levels of a sampling schedule over this model's range, ending in 0 (schedule="fitted":
        the one fitted for ``sampler`` and ``steps``, see :meth:`fit_schedule`)."""
        return build_sigmas({"name": sampler, "schedule": schedule, "schedule_options": schedule_options}, steps,
                            self.config["diffusion"], self.schedules)

    def guided(self, labels: torch.Tensor | None, guidance: Guidance | float = 1.0,
               conditions: dict[str, torch.Tensor] | None = None,
               null_conditions: dict[str, torch.Tensor] | None = None):
        """The denoiser(x, sigma) the samplers call, with labels, other conditions (``cond``: see
        :meth:`context`; ``tokens``: a caption's), what the unconditional branch gets instead (``null_conditions``:
        the empty caption's tokens, :func:`mmdiff.generate.prompt_conditions`) and guidance bound in."""
        guidance = self.guidance_for(guidance if isinstance(guidance, Guidance) else Guidance(float(guidance)))
        bound = {k: v.to(self.device) for k, v in (conditions or {}).items()}
        null = {k: v.to(self.device) for k, v in (null_conditions or {}).items()}
        return guidance.bind(self.denoiser, None if labels is None else labels.to(self.device), self.null_label, bound,
                             null)

    def completion(self, x_known: torch.Tensor, keep: torch.Tensor, sampler: str, sigmas: torch.Tensor,
                   options: dict | None = None, *, method: str = "auto", resample: int = 1, callback=None):
        """How to fill in the parts of ``x_known`` [n, *shape] (model space) that the mask ``keep`` (True = known,
        broadcastable to [*shape]) leaves out: (solve, conditions, description) for
        :func:`mmdiff.generate.generate`. A mask of whole time steps is filled by conditioning on them when the
        model was trained with ``time_context``; anything else by RePaint inpainting (Lugmayr et al. 2022).
        ``method``: auto, condition or repaint."""
        if method not in EDIT_METHODS:
            raise UserError(f"edit_method={method} is unknown: use one of {', '.join(EDIT_METHODS)}")
        if method == "condition" and not self.takes_context:
            raise UserError("edit_method=condition needs a model trained with time_context.enabled=true; this one was "
                            "not: use edit_method=repaint (or auto)")
        known = known_steps(keep, self.shape, self.modality.time_dim(self.shape))
        if method != "repaint" and self.takes_context and known is not None:
            conditions = self.context(x_known, known)
            solve = from_noise(self.shape, sampler, sigmas, options, device=self.device, callback=callback)
            return solve, conditions, "conditioned on the known steps"
        if method == "condition":
            raise UserError("edit_method=condition conditions on whole known time steps: this mask is not one")
        keep = keep.to(self.device)

        def solve(denoiser, part, gens):
            return inpaint(denoiser, x_known[part].to(self.device), keep, sigmas, resample=resample, sampler=sampler,
                           generator=gens, callback=callback, **(options or {}))
        return solve, None, "inpainted (RePaint)"

    @torch.no_grad()
    def fill(self, x_known: torch.Tensor, keep: torch.Tensor, *, labels: Any = None, sampler: str = "dpmpp_2m",
             steps: int = 20, guidance: float = 1.5, seed: int = 0, method: str = "auto") -> torch.Tensor:
        """Samples [n, *shape] (model space) that keep what the mask ``keep`` marks of ``x_known`` [n, *shape],
        exactly, and generate the rest (:meth:`completion`: conditioned on known time steps, or inpainted);
        sample i draws from seed + i. ``labels`` as in :meth:`sample`. (To put a file's data back where it is
        kept, in data space, mode=sample uses ``Modality.restore``.)"""
        n = len(x_known)
        solve, conditions, _ = self.completion(x_known, keep, sampler, self.sigmas(steps, sampler=sampler),
                                               sampler_defaults(sampler)["options"], method=method)
        x = generate(self.denoiser, solve, n=n, labels=self._labels(labels, n), null_label=self.null_label,
                     guidance=self.guidance_for(Guidance(float(guidance))), seed=seed, batch_size=n, device=self.device,
                     conditions=conditions)
        return torch.where(keep.cpu(), x_known.cpu().to(x.dtype), x)

    @torch.no_grad()
    def extend(self, x: torch.Tensor, steps: int, *, labels: torch.Tensor | None = None,
               guidance: Guidance | float = 1.0, sampler: str = "dpmpp_2m", sigmas: torch.Tensor | None = None,
               options: dict | None = None, seed: int = 0, method: str = "auto", resample: int = 1) -> torch.Tensor:
        """Continue ``x`` [1, *shape] (model space) by ``steps`` steps of its time axis, window by window: the
        last half of what exists is the known start of the next window, whose rest is generated (by
        conditioning on it, or inpainted: :meth:`completion`); window k draws from the generator seeded with
        ``seed + k``. Returns [1, ..., T + steps, ...] on the CPU (``x`` itself is its start, unchanged)."""
        dim = self.modality.time_dim(self.shape)
        if dim is None:
            takes = ", ".join(f"{k}=" for k in self.modality.edit_options) or "strength="
            raise UserError(f"extend= continues data along its time axis, and {self.modality.name} data has none: "
                            f"for edits use {takes}")
        guidance = self.guidance_for(guidance if isinstance(guidance, Guidance) else Guidance(float(guidance)))
        sigmas = self.sigmas(20) if sigmas is None else sigmas
        window = self.shape[dim - 1]
        keep, wanted = window // 2, x.shape[dim] + int(steps)
        x, k = x.to(self.device), 0
        while x.shape[dim] < wanted:
            x_known, mask = continuation_input(x.narrow(dim, x.shape[dim] - keep, keep), window, time_dim=dim)
            solve, conditions, _ = self.completion(x_known, mask, sampler, sigmas, options, method=method,
                                                   resample=resample)
            new = generate(self.denoiser, solve, n=1, labels=labels, null_label=self.null_label, guidance=guidance,
                           seed=seed + k, batch_size=1, device=self.device, conditions=conditions)
            x, k = torch.cat([x, new.to(x.device).narrow(dim, keep, window - keep)], dim=dim), k + 1
        return x.narrow(dim, 0, wanted).cpu()

    def context(self, x_known: torch.Tensor, known: torch.Tensor) -> dict[str, torch.Tensor]:
        """The conditions that give a model trained with ``time_context`` the steps ``known`` ([B, T] or [T]
        bool, along the model space's time axis) of ``x_known`` [B, *shape] (model space): pass them to
        :meth:`guided` or generate(conditions=...)."""
        if not self.takes_context:
            raise UserError("this model was trained without time_context: it cannot condition on known steps (use "
                            "inpainting, or train with time_context.enabled=true)")
        known = known.expand(x_known.shape[0], -1) if known.ndim == 1 else known
        return {"cond": context_input(x_known, known, self.modality.time_dim(self.shape))}

    def _check_prompts(self, prompts: list[str] | None, why: str) -> None:
        """Prompts given exactly when the model was trained with captions; else one UserError naming the fix."""
        if self.tokenizer is not None and not prompts:
            raise UserError(f"this checkpoint was trained with captions (conditioning=text), and {why}: give them "
                            "with prompts=FILE (one per line) or prompt=\"...\"")
        if self.tokenizer is None and prompts:
            raise UserError("this checkpoint was trained without captions: drop prompt=/prompts=")

    def refuse_text(self, mode: str) -> None:
        """A UserError for the modes that do not take prompts yet, rather than running them unconditionally."""
        if self.tokenizer is not None:
            raise UserError(f"mode={mode} does not take prompts yet, and this checkpoint was trained with captions "
                            "(conditioning=text): use mode=sample with prompt=... (or a conditioning=label model)")

    def prompt_inputs(self, prompts: list[str] | None, n: int, negative: str | None = None, labels: Any = None):
        """For a model trained with conditioning=text: (index [n] of each sample's prompt, conditions,
        null_conditions) for :func:`mmdiff.generate.generate`, the prompts taking turns (a block of ceil(n / P) each,
        as classes do); ``negative`` replaces the empty caption in the unconditional branch. For a model trained with
        class labels: None, after refusing prompts. Either kind refuses the other's inputs (``labels``: a class)."""
        if self.tokenizer is None:
            if prompts is not None or negative is not None:
                raise UserError("this checkpoint was trained with class labels (conditioning=label), not captions: "
                                "drop prompt=/prompts=/negative_prompt= and choose classes with class=..., or train "
                                "a model with conditioning=text")
            return None
        if labels is not None:
            raise UserError(f"class={labels} was given but this checkpoint was trained with captions "
                            "(conditioning=text), not class labels: describe the samples with prompt=\"...\" (or "
                            "prompts=FILE) instead")
        if not prompts:
            raise UserError("this checkpoint was trained with captions (conditioning=text): give prompt=\"...\" or "
                            "prompts=FILE (one prompt per line)")
        index = resolve_labels(None, n, list(prompts))
        return (index, *prompt_conditions(self.tokenizer, list(prompts), index, negative))

    def _labels(self, labels: Any, n: int) -> torch.Tensor | None:
        if isinstance(labels, torch.Tensor) or (labels is None and not self.class_names):
            return labels
        return self.labels(labels, n)

    @torch.no_grad()
    def sample(self, n: int | None = None, labels: Any = None, sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None, seed: int | None = None, batch_size: int | None = None, callback=None,
               schedule: str | None = None, noise: torch.Tensor | None = None, guidance_rescale: float | None = None,
               guidance_interval: tuple[float, float] | None = None, dynamic_threshold: float | None = None,
               guide: str | Path | None = None, prompts: str | list[str] | None = None,
               negative_prompt: str | None = None, **sampler_options) -> torch.Tensor:
        """n samples in model space [n, *shape]; sample i draws its noise from seed + i (``mode=sample``'s
        options, the same names; anything left out takes conf/'s default, and the sampler's options and
        schedule those of conf/sampler/<sampler>.yaml). ``schedule``: a step schedule's name, or "fitted"
        (see :meth:`fit_schedule`). ``noise``: your own starting noise [n, *shape] at unit variance (e.g. to
        compare samplers or checkpoints from the same draws); the seed then only drives stochastic
        samplers' noise. ``guide``: a checkpoint of a weaker model of the same data to guide away from
        (autoguidance) instead of the unconditional branch. ``prompts`` (a model trained with conditioning=text,
        instead of ``labels``): a caption, or a list taking turns; ``negative_prompt`` replaces the empty caption of
        the unconditional branch. A distilled student (:attr:`distilled`) samples
        with sampler="consistency", 2 steps and guidance 1 unless told otherwise."""
        top = defaults()
        if self.distilled:
            sampler, steps = sampler or "consistency", steps or 2
        sampler = sampler or top["sampler"]["name"]
        spec = sampler_defaults(sampler)
        self.check_sampler(sampler)
        pick = lambda value, key: top[key] if value is None else value  # noqa: E731
        n, steps, seed, batch_size = (int(pick(v, k)) for v, k in
                                      ((n, "n"), (steps, "steps"), (seed, "seed"), (batch_size, "batch_size")))
        guide = Guidance.from_config({"guidance": pick(guidance, "guidance"),
                                      "guidance_rescale": pick(guidance_rescale, "guidance_rescale"),
                                      "guidance_interval": pick(guidance_interval, "guidance_interval"),
                                      "dynamic_threshold": pick(dynamic_threshold, "dynamic_threshold")},
                                     self.guide(pick(guide, "guide")))
        guide = self.guidance_for(guide)
        if noise is not None and tuple(noise.shape) != (n, *self.shape):
            raise UserError(f"noise has shape {list(noise.shape)}; this model samples [n, *shape] = {[n, *self.shape]}")
        sigmas = self.sigmas(steps, schedule or spec["schedule"], sampler,
                             **(spec["schedule_options"] if schedule is None else {}))
        solve = from_noise(self.shape, sampler, sigmas, spec["options"] | sampler_options, device=self.device,
                           noise=noise, callback=callback)
        text = self.prompt_inputs([prompts] if isinstance(prompts, str) else prompts, n, negative_prompt, labels)
        return generate(self.denoiser, solve, n=n, labels=self._labels(labels, n) if text is None else None,
                        null_label=self.null_label, guidance=guide, seed=seed, batch_size=batch_size,
                        device=self.device, conditions=None if text is None else text[1],
                        null_conditions=None if text is None else text[2])

    def fit_schedule(self, sampler: str = "dpmpp_2m", steps: int = 10, *, guidance: float | None = None,
                     start: str = "karras", seed: int = 0, save: bool = False, prompts: list[str] | None = None,
                     **fit_options):
        """Fit a few-step schedule for ``sampler`` to this model (mmdiff.core.schedule_fit), keep it in
        ``self.schedules`` (and in the checkpoint file if ``save``); returns the FitResult. ``fit_options``:
        n, held_out, reference_steps, sweeps, iters, teacher (conf/config.yaml's ``fit`` node gives the rest).
        The noises take the classes in turn, or for a model trained with captions the ``prompts`` (the ones it
        will be sampled with: the schedule is fitted to the guided ODE of those).
        ``sampler="consistency"`` (a distilled student) fits its levels to the teacher's ODE samples (see
        mmdiff.core.schedule_fit): ``teacher`` is that checkpoint, by default the one the student records."""
        from .core.schedule_fit import DISTRIBUTIONAL, fit_schedule
        top = defaults()
        unknown = set(fit_options) - (set(top["fit"]) - {"out"})
        if unknown:
            raise UserError(f"fit_schedule takes no option {', '.join(sorted(unknown))}: use "
                            f"{', '.join(sorted(set(top['fit']) - {'out'}))}")
        f = top["fit"] | fit_options
        guidance = top["guidance"] if guidance is None else guidance
        sampler_defaults(sampler)
        k = len(self.class_names)
        self._check_prompts(prompts, "mode=fit_schedule fits the schedule to the guided ODE of the prompts the model "
                                     "will be sampled with")
        teacher = self._fit_teacher(f.get("teacher")) if sampler in DISTRIBUTIONAL else None

        def problem(count: int, offset: int):
            gen = torch.Generator().manual_seed(seed + offset)
            noise = torch.randn(count, *self.shape, generator=gen).to(self.device)
            if prompts:
                index = torch.arange(offset, offset + count) % len(prompts)
                reference = None if teacher is None else teacher.guided(
                    None, teacher_guidance, *prompt_conditions(teacher.tokenizer, list(prompts), index))
                return (self.guided(None, guidance, *prompt_conditions(self.tokenizer, list(prompts), index)), noise,
                        reference)
            labels = (torch.arange(offset, offset + count) % k) if k else None
            reference = None if teacher is None else teacher.guided(labels, teacher_guidance)
            return self.guided(labels, guidance), noise, reference
        teacher_guidance = float((self.distilled or {}).get("guidance", guidance))
        denoiser, noise, reference = problem(f["n"], 0)
        held = problem(f["held_out"], f["n"]) if f["held_out"] else None
        try:
            result = fit_schedule(denoiser, noise, self.sigmas(steps, start, sampler), sampler,
                                  floor=float(self.config["diffusion"]["sigma_min"]),
                                  reference_steps=f["reference_steps"],
                                  held_out=held[:2] if held else None, sweeps=f["sweeps"], iters=f["iters"],
                                  reference=None if teacher is None else (reference, held[2] if held else None),
                                  seed=seed)
        except ValueError as e:
            raise UserError(str(e)) from None
        record = result.to_dict() | {"guidance": guidance, "start_schedule": start, "n": f["n"], "seed": seed,
                                     "model_step": self.step} | ({"prompts": len(prompts)} if prompts else {})
        self.schedules[schedule_key(sampler, steps)] = record
        if save:
            self.save_schedules()
        return result

    def _fit_teacher(self, path: str | Path | None) -> Model:
        """The model whose ODE a consistency student's levels are fitted to."""
        path = path or (self.distilled or {}).get("from")
        if path is None:
            raise UserError("fitting sampler=consistency compares its samples with a teacher's ODE solves, and this "
                            "model records none (it was not made by mode=distill): give fit.teacher=CHECKPOINT")
        if not Path(path).exists():
            raise UserError(f"the teacher {path} this student was distilled from is gone: give fit.teacher=CHECKPOINT "
                            "(the teacher, or another model of the same data)")
        teacher = Model.from_checkpoint(path, device=str(self.device), decoder=False)
        if teacher.shape != self.shape or teacher.class_names != self.class_names:
            raise UserError(f"fit.teacher={path} models other data (shape {teacher.shape}, classes "
                            f"{teacher.class_names}) than this model: give the teacher of this student")
        return teacher

    def save_schedules(self, path: str | Path | None = None) -> Path:
        """Write the fitted schedules into this model's checkpoint, or into a copy of it at ``path``
        (atomically; the weights and training state are carried over untouched)."""
        if self.path is None:
            raise UserError("this model was not loaded from a checkpoint, so there is none to store schedules in: "
                            "load it with Model.from_checkpoint")
        ckpt = load_checkpoint(self.path)
        ckpt.extra["schedules"] = self.schedules
        return save_checkpoint(path or self.path, ckpt)

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Data (the modality's natural range: images in [0, 1], waveforms in [-1, 1]) -> model space."""
        return self.modality.encode(data)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> data (uint8 images [N, C, H, W], float waveforms [N, 1, T], ...)."""
        return self.modality.decode(x)

    def read(self, path: str | Path) -> torch.Tensor:
        """A file of this model's modality -> model space [1, *shape], prepared like the training data."""
        return self.modality.read(path, self.shape).x

    def save(self, x: torch.Tensor, out_dir: str | Path, labels: torch.Tensor | None = None) -> list[Path]:
        """Write samples (model space) as the CLI does: one file per sample and whatever shows them."""
        return self.modality.write_samples(self.decode(x), labels, self.class_names or None, Path(out_dir))
