"""Samplers: pure functions ``fn(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x``.

The convention (k-diffusion; Karras et al. 2022):
- ``denoiser(x, sigma)`` returns the denoised estimate D(x; sigma), with ``sigma`` of shape [B];
- ``sigmas`` is a decreasing 1-D tensor ending in 0 (see ``mmdiff.core.schedules``);
- ``x`` enters as noise already scaled by ``sigmas[0]`` and leaves as a sample;
- ``generator`` is a ``torch.Generator`` or a sequence of them, one per sample (the latter keeps
  "same seed, same sample" true whatever the batch size; EDM's StackedRandomGenerator);
- ``callback``, if given, is called after every step with a dict of ``i``, ``x`` (after the
  step), ``sigma``, ``sigma_next`` and ``denoised``.

The probability-flow ODE in this convention is dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 3).
Every sampler's last step, from the smallest non-zero sigma to 0, returns D there.
Samplers are registered by name in ``SAMPLERS``; the names are what ``sampler=`` accepts.

- ``euler.py``: euler, heun, dpm_2, lms, and the ancestral family (euler_ancestral = ddim(eta) = ddpm at eta 1)
- ``dpmpp.py``: dpmpp_2s_ancestral, dpmpp_2m_sde (dpmpp_2m is its eta = 0 case), dpmpp_3m_sde
- ``unipc.py``: unipc;  ``adaptive.py``: adaptive (step sizes from an error tolerance)
- ``consistency.py``: consistency (multistep sampling of a consistency model: mode=distill)
"""

from collections.abc import Callable

import torch

from .adaptive import sample_adaptive
from .consistency import sample_consistency
from .common import ancestral_step, churn, randn_like, to_d
from .dpmpp import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde
from .euler import (sample_ddim, sample_ddpm, sample_dpm_2, sample_euler, sample_euler_ancestral, sample_heun,
                    sample_lms)
from .unipc import sample_unipc

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "adaptive": sample_adaptive,
    "consistency": sample_consistency,
}

# The deterministic samplers (with the options that make them so) and their order of convergence
# on the probability-flow ODE: tested against an exact denoiser in tests/core/test_samplers.py, measured
# by benchmarks/sampler_orders.py.
ORDERS: dict[str, tuple[int, dict]] = {
    "euler": (1, {}),
    "ddim": (1, {}),
    "heun": (2, {}),
    "dpm_2": (2, {}),
    "lms": (4, {}),
    "dpmpp_2s_ancestral": (2, {"eta": 0.0}),
    "dpmpp_2m": (2, {}),
    "dpmpp_2m_sde": (2, {"eta": 0.0}),
    "dpmpp_3m_sde": (3, {"eta": 0.0}),
    "unipc": (3, {}),
}

__all__ = ["SAMPLERS", "ORDERS", "ancestral_step", "churn", "randn_like", "to_d"] + [f.__name__ for f in SAMPLERS.values()]
