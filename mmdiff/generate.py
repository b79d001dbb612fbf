"""Generation from a denoiser: guidance bound once, batches with one seeded generator per sample.

No config and no checkpoint here: ``mmdiff.model.Model`` and the tasks call these with what they read
from a checkpoint or the command line. Every way of generating (plain sampling, SDEdit, inpainting,
interpolation, the previews written during training) goes through :func:`generate`, which binds the
labels and the guidance options into the ``denoiser(x, sigma)`` the samplers call (STYLE habit 12)
and runs the batches; only what happens inside a batch (``solve``) differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .core.guidance import CFGDenoiser, DynamicThreshold
from .core.samplers import SAMPLERS


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance and its options (mmdiff.core.guidance). The values here are the neutral
    ones (the conditional model, nothing else); the defaults users get live in conf/config.yaml."""

    scale: float = 1.0                            # 1: the conditional model; 0: the unconditional one
    rescale: float = 0.0                          # Lin et al. 2023's phi
    interval: tuple[float, float] | None = None   # guide only for sigma in (lo, hi]
    threshold: float | None = None                # Imagen's dynamic-thresholding percentile
    guide: object = None                          # autoguidance: a weaker denoiser instead of the null label

    @classmethod
    def from_config(cls, cfg, guide=None) -> Guidance:
        """From the top-level options guidance, guidance_rescale, guidance_interval, dynamic_threshold (and the
        denoiser of ``guide=CHECKPOINT``, loaded by the caller)."""
        interval = cfg.get("guidance_interval")
        return cls(float(cfg["guidance"]), float(cfg.get("guidance_rescale") or 0.0),
                   None if interval is None else (float(interval[0]), float(interval[1])),
                   cfg.get("dynamic_threshold"), guide)

    def bind(self, denoiser, labels: torch.Tensor | None, null_label: int | None,
             conditions: dict[str, torch.Tensor] | None = None, null_conditions: dict[str, torch.Tensor] | None = None):
        """The ``denoiser(x, sigma)`` the samplers call, with ``labels``, other per-sample ``conditions`` and the
        unconditional branch's ``null_conditions`` (see CFGDenoiser) and these options bound in."""
        d = CFGDenoiser(denoiser, labels, self.scale, null_label, rescale=self.rescale, interval=self.interval,
                        conditions=conditions, guide=self.guide, null_conditions=null_conditions)
        return DynamicThreshold(d, percentile=self.threshold) if self.threshold else d


def prompt_conditions(tokenizer, prompts: list[str], index: torch.Tensor, negative: str | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(conditions, null_conditions) for :func:`generate` when sample i asks for ``prompts[index[i]]``: its tokens,
    and for the unconditional branch the ``negative`` prompt's (None: the empty caption's, what caption dropout
    trained as unconditional)."""
    tokens = tokenizer.encode(list(prompts))[index]
    null = tokenizer.encode([negative or ""]).expand(len(index), -1)
    return {"tokens": tokens}, {"tokens": null}


def batched(n: int, batch_size: int, seed: int, run: Callable[[slice, list[torch.Generator]], torch.Tensor]):
    """Call ``run(part, generators)`` on consecutive parts of n samples; sample i gets its own generator
    seeded with seed + i, so a sample does not depend on the batch it is made in (EDM's
    StackedRandomGenerator; STYLE habit 15). Results are gathered on the CPU."""
    out = []
    for start in range(0, n, batch_size):
        part = slice(start, min(start + batch_size, n))
        out.append(run(part, [torch.Generator().manual_seed(seed + i) for i in range(part.start, part.stop)]).cpu())
    return torch.cat(out)


def initial_noise(shape, gens: list[torch.Generator], sigma_max, device) -> torch.Tensor:
    """Unit noise [len(gens), *shape], one draw per generator, scaled to the first noise level."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device) * float(sigma_max)


Solve = Callable[[Callable, slice, list[torch.Generator]], torch.Tensor]


@torch.no_grad()
def generate(denoiser, solve: Solve, *, n: int, labels: torch.Tensor | None, null_label: int | None,
             guidance: Guidance, seed: int, batch_size: int, device: torch.device | str,
             conditions: dict[str, torch.Tensor] | None = None,
             null_conditions: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """n results of ``solve(model, part, generators)`` for consecutive batches (see :func:`batched`),
    where ``model`` is the denoiser with labels[part], conditions[...][part] (other per-sample inputs, e.g.
    known frames or caption tokens), null_conditions[...][part] (what the unconditional branch gets instead:
    :func:`prompt_conditions`) and ``guidance`` bound in. Returns [n, ...] on the CPU."""
    device = torch.device(device)

    def run(part, gens):
        y = None if labels is None else labels[part].to(device)
        bound = {k: v[part].to(device) for k, v in (conditions or {}).items()}
        null = {k: v[part].to(device) for k, v in (null_conditions or {}).items()}
        return solve(guidance.bind(denoiser, y, null_label, bound, null), part, gens)

    return batched(n, batch_size, seed, run)


def from_noise(shape: list[int], sampler: str, sigmas: torch.Tensor, options: dict | None = None, *,
               device: torch.device | str = "cpu", noise: torch.Tensor | None = None, callback=None) -> Solve:
    """The ``solve`` of plain sampling: each sample starts from its own seeded unit noise (or from
    ``noise`` [n, *shape] at unit variance), scaled to sigmas[0], and is solved by ``sampler``.
    Stochastic samplers draw their per-step noise from the same per-sample generators."""
    def solve(model, part, gens):
        x = (initial_noise(shape, gens, sigmas[0], device) if noise is None
             else noise[part].to(device, torch.float32) * float(sigmas[0]))
        return SAMPLERS[sampler](model, x, sigmas, generator=gens, callback=callback, **(options or {}))
    return solve
