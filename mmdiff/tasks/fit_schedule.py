"""mode=fit_schedule: fit a step schedule for ``sampler`` and ``steps`` to a checkpoint's model and store it
in the checkpoint (or ``fit.out``), where ``sampler.schedule=fitted`` finds it."""

from __future__ import annotations

import time

from omegaconf import DictConfig

from ..build import schedule_key
from ..core.schedules import FITTED
from ..model import Model, sampler_defaults
from .sample import read_prompts


def fit_schedule_from_config(cfg: DictConfig) -> dict:
    """Fit, store, and print the error before and after on the fitting and held-out noises."""
    model = Model.from_checkpoint(cfg.checkpoint, device=cfg.device, ema=cfg.ema)
    prompts = read_prompts(cfg)   # a caption model: the prompts it will be sampled with
    f = cfg.fit
    start = (sampler_defaults(cfg.sampler.name)["schedule"] if cfg.sampler.schedule == FITTED  # refit from scratch
             else cfg.sampler.schedule)
    t0 = time.perf_counter()
    result = model.fit_schedule(cfg.sampler.name, cfg.steps, guidance=cfg.guidance, start=start, seed=cfg.seed,
                                n=f.n, held_out=f.held_out, reference_steps=f.reference_steps, sweeps=f.sweeps,
                                iters=f.iters, teacher=f.get("teacher"), prompts=prompts)
    path = model.save_schedules(f.out)
    record = model.schedules[schedule_key(cfg.sampler.name, cfg.steps)]
    print(f"fitted a {cfg.steps}-step schedule for {cfg.sampler.name} (guidance {cfg.guidance}) in "
          f"{time.perf_counter() - t0:.0f} s, {result.evaluations} solves of {f.n} samples")
    what = ("energy distance to the teacher's" if result.objective == "energy" else "RMS error vs a") + \
        f" {f.reference_steps}-step Heun solve"
    print(f"  {what:<40} {start:>12}   fitted")
    print(f"  fitting batch ({f.n:>4})                  {result.error[0]:12.5f} {result.error[1]:9.5f}")
    if result.held_out:
        print(f"  held-out noises ({f.held_out:>4})              {result.held_out[0]:12.5f} {result.held_out[1]:9.5f}")
    print("  sigmas " + " ".join(f"{s:.4g}" for s in record["sigmas"]))
    print(f"stored in {path}; sample with: sampler={cfg.sampler.name} steps={cfg.steps} sampler.schedule=fitted")
    return record
