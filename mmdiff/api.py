"""The Python API: what the CLI does, for notebooks and scripts.

    from mmdiff import api
    ckpt = api.train(["trainer.max_steps=300"], run_dir="runs/digits")   # any CLI overrides
    model = api.Model.from_checkpoint(ckpt)
    x = model.sample(n=20, labels="7", steps=20, guidance=1.5, seed=0)   # model space [20, *shape]
    images = model.decode(x)                                             # uint8 images / waveforms
    model.save(x, "samples/", labels=model.labels("7", 20))             # PNGs / WAVs + grid (+ index.html)

The diffusion core (mmdiff.core: schedules, samplers, guidance, editing, trajectories) works on the
model-space tensors directly; ``Model.guided`` gives the denoiser(x, sigma) the samplers expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from omegaconf import DictConfig

from .build import build_denoiser, build_modality, build_sigmas, pick_device, resolve_labels, schedule_key
from .checkpoint import load_checkpoint, resolve_checkpoint_path
from .errors import UserError


def config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config that ``python -m mmdiff OVERRIDES`` would run with."""
    from .cli import config_path
    path = config_path()
    init = (initialize_config_module("mmdiff.conf", version_base="1.3") if path.startswith("pkg://")
            else initialize_config_dir(config_dir=path, version_base="1.3"))
    with init:
        return compose("config", overrides=list(overrides))


def train(overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path = "outputs/api") -> Path:
    """Train as ``python -m mmdiff OVERRIDES`` would, into ``run_dir``; returns the checkpoint's path."""
    from .build import check_run_config
    from .train import train as train_run
    cfg = config(list(overrides) + ["mode=train"])
    check_run_config(cfg)
    return train_run(cfg, run_dir)


class Model:
    """A trained denoiser with what it needs to sample: its modality, data shape and classes."""

    def __init__(self, denoiser: torch.nn.Module, run_cfg: dict, info: dict, step: int = 0,
                 schedules: dict | None = None, path: Path | None = None):
        self.denoiser, self.config, self.info, self.step = denoiser, run_cfg, info, step
        self.schedules: dict = dict(schedules or {})   # fitted step schedules, "sampler/steps" -> fit record
        self.path = path
        self.modality = build_modality(run_cfg["modality"])
        self.shape: list[int] = info["shape"]
        self.class_names: list[str] = info["class_names"] if run_cfg["model"].get("num_classes") else []

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", ema: bool = True) -> Model:
        """Rebuild the model from a checkpoint's own config (EMA weights unless ema=False)."""
        ckpt = load_checkpoint(path)
        denoiser = build_denoiser(ckpt.config, ckpt.config["model"], ckpt.data)
        try:
            denoiser.load_state_dict(ckpt.ema if ema and ckpt.ema else ckpt.model)
        except RuntimeError as e:
            raise UserError(f"checkpoint {path} does not match the model its config describes ({e}): the file is "
                            "damaged or was edited; use an intact checkpoint") from None
        return cls(denoiser.to(pick_device(device)).eval(), ckpt.config, ckpt.data, ckpt.step,
                   ckpt.extra.get("schedules"), resolve_checkpoint_path(path))

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def null_label(self) -> int:
        return len(self.class_names)

    def labels(self, value: Any, n: int) -> torch.Tensor | None:
        """Labels for n samples: None (a block of ceil(n / classes) per class: the grid rows), or a class index
        or name, or a list."""
        return resolve_labels(value, n, self.class_names)

    def sigmas(self, steps: int = 20, schedule: str = "karras", sampler: str = "dpmpp_2m",
               **schedule_options) -> torch.Tensor:
        """The noise levels of a sampling schedule over this model's range, ending in 0 (schedule="fitted":
        the one fitted for ``sampler`` and ``steps``, see :meth:`fit_schedule`)."""
        return build_sigmas({"name": sampler, "schedule": schedule, "schedule_options": schedule_options}, steps,
                            self.config["diffusion"], self.schedules)

    def fit_schedule(self, sampler: str = "dpmpp_2m", steps: int = 10, *, n: int = 256, held_out: int = 256,
                     guidance: float = 1.5, start: str = "karras", reference_steps: int = 200, sweeps: int = 3,
                     iters: int = 8, seed: int = 0, save: bool = False):
        """Fit a few-step schedule for ``sampler`` to this model (mmdiff.core.schedule_fit), keep it in
        ``self.schedules`` (and in the checkpoint file if ``save``); returns the FitResult."""
        from .core.schedule_fit import fit_schedule
        k = len(self.class_names)

        def problem(count: int, offset: int):
            gen = torch.Generator().manual_seed(seed + offset)
            noise = torch.randn(count, *self.shape, generator=gen).to(self.device)
            labels = (torch.arange(offset, offset + count) % k) if k else None
            return self.guided(labels, guidance), noise
        denoiser, noise = problem(n, 0)
        try:
            result = fit_schedule(denoiser, noise, self.sigmas(steps, start, sampler), sampler,
                                  floor=float(self.config["diffusion"]["sigma_min"]), reference_steps=reference_steps,
                                  held_out=problem(held_out, n) if held_out else None, sweeps=sweeps, iters=iters)
        except ValueError as e:
            raise UserError(str(e)) from None
        record = result.to_dict() | {"guidance": guidance, "start_schedule": start, "n": n, "seed": seed,
                                     "model_step": self.step}
        self.schedules[schedule_key(sampler, steps)] = record
        if save:
            self.save_schedules()
        return result

    def save_schedules(self, path: str | Path | None = None) -> Path:
        """Write the fitted schedules into this model's checkpoint, or into a copy of it at ``path``
        (atomically; the weights and training state are carried over untouched)."""
        from .checkpoint import save_checkpoint
        if self.path is None:
            raise UserError("this model was not loaded from a checkpoint, so there is none to store schedules in: "
                            "load it with Model.from_checkpoint")
        ckpt = load_checkpoint(self.path)
        ckpt.extra["schedules"] = self.schedules
        return save_checkpoint(path or self.path, ckpt)

    def guided(self, labels: torch.Tensor | None, guidance: float = 1.0, **options):
        """The denoiser(x, sigma) the samplers call: labels and guidance bound in (see sample.guided)."""
        from .sample import guided
        y = None if labels is None else labels.to(self.device)
        return guided(self.denoiser, y, self.null_label, guidance, **options)

    @torch.no_grad()
    def sample(self, n: int = 16, labels: Any = None, sampler: str = "dpmpp_2m", steps: int = 20,
               guidance: float = 1.5, seed: int = 0, batch_size: int = 256, callback=None,
               schedule: str = "karras", noise: torch.Tensor | None = None, **sampler_options) -> torch.Tensor:
        """n samples in model space [n, *shape]; sample i draws its noise from seed + i.
        ``schedule``: a step schedule's name, or "fitted" (see :meth:`fit_schedule`).
        ``noise``: your own starting noise [n, *shape] at unit variance (e.g. to compare samplers or
        checkpoints from the same draws); the seed then only drives stochastic samplers' noise."""
        from .sample import generate
        y = labels if isinstance(labels, torch.Tensor) or labels is None and not self.class_names else \
            self.labels(labels, n)
        return generate(self.denoiser, shape=self.shape, labels=y, n=n, sampler=sampler,
                        sigmas=self.sigmas(steps, schedule, sampler),
                        guidance=guidance, null_label=self.null_label, seed=seed, batch_size=batch_size,
                        sampler_options=sampler_options, device=self.device, callback=callback, noise=noise)

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Data (images in [0, 1], waveforms in [-1, 1]) -> model space."""
        return self.modality.encode(data)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> data: uint8 images [N, C, H, W], or float waveforms [N, 1, T]."""
        return self.modality.decode(x)

    def read(self, path: str | Path) -> torch.Tensor:
        """An image or audio file -> model space [1, *shape], prepared like the training data."""
        return self.modality.read(path, self.shape)

    def save(self, x: torch.Tensor, out_dir: str | Path, labels: torch.Tensor | None = None) -> list[Path]:
        """Write samples as the CLI does (one file per sample, a grid, and for audio index.html)."""
        return self.modality.save_samples(x, labels, self.class_names or None, Path(out_dir))
