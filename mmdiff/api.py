"""The Python API: what the CLI does, for notebooks and scripts.

    from mmdiff import api
    ckpt = api.train(["trainer.max_steps=300"], run_dir="runs/digits")   # any CLI overrides
    model = api.Model.from_checkpoint(ckpt)
    x = model.sample(n=20, labels="7", steps=20, guidance=1.5, seed=0)   # model space [20, *shape]
    data = model.decode(x)                                               # uint8 images, waveforms, ...
    model.save(x, "samples/", labels=model.labels("7", 20))             # the files mode=sample writes

The diffusion core (mmdiff.core: schedules, samplers, guidance, editing, trajectories) works on the
model-space tensors directly; ``Model.guided`` gives the denoiser(x, sigma) the samplers expect.
"""

from __future__ import annotations

from pathlib import Path

from .build import check_run_config
from .config import compose as config
from .model import Model

__all__ = ["Model", "config", "train"]


def train(overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path = "outputs/api") -> Path:
    """Train as ``python -m mmdiff OVERRIDES`` would, into ``run_dir``; returns the checkpoint's path."""
    from .tasks.train import train as train_run
    cfg = config(list(overrides) + ["mode=train"])
    check_run_config(cfg)
    return train_run(cfg, run_dir)
