"""mode=distill: a one- to four-step model from any diffusion checkpoint, by consistency tuning.

Easy Consistency Tuning (Geng et al. 2024, "Consistency models made easy", ECT; the facts below are from its
reference code, locuslab/ect ``training/loss.py``) starts the consistency function f from the diffusion model's
weights (EDM's preconditioning already gives f(x, sigma) -> x as sigma -> 0) and trains f(x_t, t) to agree with
the stop-gradient f(x_r, r) of the same weights at a smaller level r on the same trajectory, the gap t - r
shrinking stage by stage:

    t ~ exp(N(P_mean, P_std^2)),   r = max(0, t (1 - q^-(stage + 1) (1 + k sigmoid(-b t)))),
    stage = min(step // double_every, max_stages - 1),  f(x, 0) = x,
    loss = (sqrt(mean (f(x_t, t) - f(x_r, r))^2 + c^2) - c) / (t - r)

with the pseudo-Huber distance (Song & Dhariwal 2023, "Improved techniques for training consistency models",
whose c = 0.00054 sqrt(d) for a squared distance summed over d dimensions is c = 0.00054 for the mean taken
here; ECT divides by t - r), no EMA teacher, and the same dropout mask in both evaluations.

The pair (x_t, x_r): ECT takes x_t = x0 + t n and x_r = x0 + r n with the same noise n. To distill
classifier-free guidance into the student (``distill.guidance`` != 1, the default), x_r instead comes from x_t
by one Euler step of the frozen starting model's guided probability-flow ODE (the pair of consistency
distillation, Song et al. 2023), so that the student's one step lands where the guided teacher's trajectory
does and samples with guidance 1.

The student keeps the teacher's modality, model config, classes and run options (its trainer too, with this
command's ``trainer.*`` overrides on top); by default it trains for ``distill.budget`` of the teacher's training
time. It is an ordinary checkpoint: ``distill`` in its config records the teacher, its step and the guidance.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import load_checkpoint, resolve_checkpoint_path
from ..config import defaults
from ..core.schedules import append_dims
from ..errors import UserError
from ..generate import Guidance
from .train import Batch, Run, train

log = logging.getLogger(__name__)

# what the student takes from this command rather than from the teacher's run config
OWN = ("seed", "device", "logger", "data", "batch_size", "distill")


def explicit(cfg: DictConfig, node: str) -> dict:
    """The keys of ``cfg[node]`` that differ from the composed defaults: what this command set (flattened to
    dotted keys)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out |= flat(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
        return out
    mine, base = flat(OmegaConf.to_container(cfg[node], resolve=True)), flat(defaults()[node])
    return {k: v for k, v in mine.items() if base.get(k, object()) != v}


def student_config(cfg: DictConfig, teacher: dict, teacher_seconds: float | None) -> DictConfig:
    """The student's run config: the teacher's, with this command's run options and explicit trainer
    settings on top; previews drawn the way the student samples (2 consistency steps, guidance 1)."""
    # today's defaults under the teacher's config: an older teacher lacks the options added since
    student = OmegaConf.create(defaults())
    for key, value in teacher.items():
        if key not in OWN:
            student[key] = OmegaConf.merge(student[key], value) if key == "trainer" else value
    for key in OWN:
        if key in cfg:
            value = cfg[key]
            student[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    trainer = student.trainer
    trainer.label_dropout = 0.0          # the student learns the guided teacher's outputs for the real labels
    trainer.phema.sigma_rels = []
    trainer.resume = None
    budget = float(cfg.distill.budget) * (teacher_seconds or float(teacher["trainer"]["max_seconds"]))
    trainer.max_seconds = max(1.0, round(budget, 1))
    trainer.lr = float(teacher["trainer"]["lr"]) * float(cfg.distill.lr_scale)
    for key, value in explicit(cfg, "trainer").items():  # what the user asked for wins
        OmegaConf.update(student, f"trainer.{key}", value, force_add=True)
    student.diffusion.noise = {"_target_": "mmdiff.core.schedules.LogNormalSigma",
                               "P_mean": float(cfg.distill.P_mean), "P_std": float(cfg.distill.P_std)}
    student.mode, student.steps, student.guidance = "train", 2, 1.0
    student.sampler = {"name": "consistency", "schedule": "consistency", "schedule_options": {}, "options": {}}
    return student


class ConsistencyObjective:
    """The consistency loss of a micro-batch, per sample (see the module docstring). ``teacher``: a frozen copy
    of the starting weights, used for the pair only when guidance is distilled."""

    def __init__(self, teacher: torch.nn.Module, options: DictConfig | dict, null_label: int | None):
        self.teacher = teacher.eval().requires_grad_(False)
        o = options
        self.q, self.k, self.b = (float(o[k]) for k in ("q", "k", "b"))
        self.double_every, self.c, self.guidance = int(o["double_every"]), float(o["huber_c"]), float(o["guidance"])
        self.max_stages = int(o["max_stages"])
        self.null_label = null_label

    def r_of(self, t: torch.Tensor, step: int) -> torch.Tensor:
        """ECT's smaller level for t at ``step``: the gap shrinks by q each stage, up to ``max_stages`` stages
        (past ~q^-24 the gap would vanish in float32 and the loss divide 0 by 0); r = 0 is the data end."""
        stage = min(step // self.double_every, self.max_stages - 1)
        shrink = self.q ** -(stage + 1) * (1 + self.k * torch.sigmoid(-self.b * t))
        return (t * (1 - shrink)).clamp(min=0)

    def loss(self, f_t: torch.Tensor, target: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Pseudo-Huber distance of each sample's pair, divided by t - r."""
        dtype = torch.promote_types(f_t.dtype, torch.float32)  # at least float32 under autocast
        distance = (f_t.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(1)
        return ((distance + self.c ** 2).sqrt() - self.c) / (t - r)

    def __call__(self, run: Run, b: Batch, part: slice, step: int) -> torch.Tensor:
        x0, n = b.x0[part], b.noise[part]
        labels = None if b.labels is None else b.labels[part]
        conditions = b.conditions(part)
        t = b.sigma[part]  # the student's diffusion.noise draws ECT's log-normal levels (student_config)
        r = self.r_of(t, step)
        x_t = x0 + append_dims(t, x0.ndim) * n
        devices = [x0.device] if x0.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # the same dropout mask for both calls
            if self.guidance != 1.0:   # captions: the unconditional branch gets the empty caption's tokens
                null = {"tokens": run.captions_empty.to(x0.device).expand(len(x0), -1)} if "tokens" in conditions \
                    else None
                guided = Guidance(self.guidance).bind(self.teacher, labels, self.null_label, conditions, null)
                d = (x_t - guided(x_t, t)) / append_dims(t, x0.ndim)               # dx/dsigma of the guided ODE
                x_r = x_t + append_dims(r - t, x0.ndim) * d                         # one Euler step to r
            else:
                x_r = x0 + append_dims(r, x0.ndim) * n
            target = run.denoiser(x_r, r.clamp(min=1e-6), labels, **conditions)
            target = torch.where(append_dims(r > 0, x0.ndim), target, x_r)     # f(x, 0) = x
        f_t = run.model(x_t, t, labels, **conditions)
        return self.loss(f_t, target, t, r)


def distill_from_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    """mode=distill: tune a few-step student from ``checkpoint`` (its EMA weights) into ``run_dir``."""
    if not cfg.get("checkpoint"):
        raise UserError("mode=distill tunes a few-step student from a trained model: give its checkpoint=PATH")
    source = resolve_checkpoint_path(cfg.checkpoint)
    teacher = load_checkpoint(source)
    if not teacher.ema or "diffusion" not in teacher.config:
        raise UserError(f"{source} is not an mmdiff diffusion checkpoint (no EMA weights or diffusion config): "
                        "distill a checkpoint written by mmdiff training (RUN/last.safetensors)")
    if (teacher.config.get("distill") or {}).get("from"):
        log.info("%s is itself a distilled student; tuning it further", source)
    if float(cfg.distill.guidance) != 1.0 and not (teacher.config["model"].get("num_classes")
                                                   or teacher.config["model"].get("text")):
        raise UserError(f"distill.guidance={cfg.distill.guidance}: the teacher is unconditional, so there is no "
                        "classifier-free guidance to distill: set distill.guidance=1")
    for key in ("budget", "lr_scale", "q", "double_every", "max_stages", "P_std"):
        if not float(cfg.distill[key]) > 0:
            raise UserError(f"distill.{key}={cfg.distill[key]} must be positive")
    seconds = teacher.extra.get("train_seconds")
    student_cfg = student_config(cfg, teacher.config, seconds)
    record = {"from": str(source), "teacher_step": teacher.step, "teacher_seconds": seconds}
    OmegaConf.update(student_cfg, "distill", OmegaConf.to_container(cfg.distill) | record, merge=False,
                     force_add=True)

    def prepare(run: Run) -> None:
        if run.step == 0:  # a fresh student starts from the teacher's EMA weights (a resumed one from its own)
            run.denoiser.load_state_dict(teacher.ema)
            run.ema.averaged.load_state_dict(teacher.ema)
        frozen = copy.deepcopy(run.denoiser)
        frozen.load_state_dict(teacher.ema)
        null_label = len(run.class_names) if run.conditional else None
        run.objective = ConsistencyObjective(frozen, cfg.distill, null_label)
        log.info("distilling %s (step %d) into a consistency model: guidance %.2f, lr %.3g, %.0f s budget, "
                 "stages of %d steps", source, teacher.step, float(cfg.distill.guidance), run.cfg.trainer.lr,
                 run.cfg.trainer.max_seconds, int(cfg.distill.double_every))

    return train(student_cfg, run_dir, prepare)
