"""mode=phema: an EMA of any length after training, from the power-function EMA snapshots training saved
(EDM2's post-hoc EMA: mmdiff.core.phema), written as a checkpoint of its own."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ..checkpoint import load_checkpoint, resolve_checkpoint_path, save_checkpoint
from ..errors import UserError
from ..model import Model

log = logging.getLogger(__name__)


def phema_from_config(cfg: DictConfig) -> Path:
    """Reconstruct the EMA of ``phema.sigma_rel`` (at the last snapshot, or ``phema.at`` samples seen) into
    ``phema.out`` (default: phema-<sigma_rel>.safetensors beside the checkpoint): the checkpoint with its EMA
    weights replaced, recording how they were made; sample from it like any checkpoint."""
    p = cfg.phema
    if p.sigma_rel is None:
        raise UserError("mode=phema needs phema.sigma_rel=..., the relative length of the EMA to reconstruct "
                        "(e.g. 0.08; EDM2's snapshots track 0.05 and 0.10)")
    model = Model.from_checkpoint(cfg.checkpoint, device="cpu")
    record = model.posthoc_ema(float(p.sigma_rel), p.get("at"))
    source = resolve_checkpoint_path(cfg.checkpoint)
    ckpt = load_checkpoint(source)
    ckpt.ema = model.denoiser.state_dict()
    ckpt.extra["phema"] = record | {"from": str(source)}
    out = Path(p.out) if p.get("out") else source.with_name(f"phema-{float(p.sigma_rel):.3f}.safetensors")
    save_checkpoint(out, ckpt)
    print(f"post-hoc EMA sigma_rel={record['sigma_rel']} at {record['samples_seen']} samples from "
          f"{record['snapshots']} snapshots: {out}")
    return out
