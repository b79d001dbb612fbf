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
    """Reconstruct the EMA of ``phema.sigma_rel`` (a number, or ``best``: the length a mode=eval sweep stored in
    the checkpoint; at the last snapshot, or ``phema.at`` samples seen) into
    ``phema.out`` (default: phema-<sigma_rel>.safetensors beside the checkpoint): the checkpoint with its EMA
    weights replaced, recording how they were made; sample from it like any checkpoint."""
    p = cfg.phema
    if p.sigma_rel is None:
        raise UserError("mode=phema needs phema.sigma_rel=..., the relative length of the EMA to reconstruct "
                        "(e.g. 0.08; EDM2's snapshots track 0.05 and 0.10)")
    model = Model.from_checkpoint(cfg.checkpoint, device="cpu")
    source = resolve_checkpoint_path(cfg.checkpoint)
    ckpt = load_checkpoint(source)
    sigma_rel = p.sigma_rel
    if sigma_rel == "best":  # the EMA length of the best pair a mode=eval sweep stored (eval.sweep)
        sigma_rel = (ckpt.extra.get("best_sampling") or {}).get("sigma_rel")
        if sigma_rel is None:
            raise UserError(f"{source} holds no best EMA length: run mode=eval checkpoint={source} "
                            "eval.sweep.sigma_rel=[0.05,0.1,0.15] first (its best may also be the checkpoint's own EMA)")
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or sigma_rel <= 0:
        raise UserError(f"phema.sigma_rel={sigma_rel!r} is invalid: give a number above 0 (e.g. 0.08) or best")
    record = model.posthoc_ema(float(sigma_rel), p.get("at"))
    ckpt.ema = model.denoiser.state_dict()
    ckpt.extra["phema"] = record | {"from": str(source)}
    out = Path(p.out) if p.get("out") else source.with_name(f"phema-{float(sigma_rel):.3f}.safetensors")
    save_checkpoint(out, ckpt)
    print(f"post-hoc EMA sigma_rel={record['sigma_rel']} at {record['samples_seen']} samples from "
          f"{record['snapshots']} snapshots: {out}")
    return out
