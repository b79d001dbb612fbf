"""Noise levels: one convention, x_sigma = x_0 + sigma * noise (Karras et al. 2022, "EDM").

Variance-preserving (VP) processes write x_t = alpha_t * x_0 + s_t * noise. Dividing by alpha_t
gives the convention above with sigma = s_t / alpha_t, i.e. alpha_bar = 1 / (1 + sigma^2)
(EDM, Eq. 4 and Table 1). Every VP schedule here is expressed through that map.

Two kinds of objects live here:
- sampling schedules: ``fn(n, sigma_min, sigma_max, **params) -> sigmas`` with n + 1 entries,
  strictly decreasing, the last one exactly 0 (the sampler's final step lands on the data);
- training noise levels: small callables ``noise(batch_size, generator=None) -> sigma [B]``.
"""

from __future__ import annotations

import math

import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so that ``x`` ([B]) broadcasts against a rank-``ndim`` tensor."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target ndim is {ndim}, which is less")
    return x[(...,) + (None,) * missing]


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# --- VP processes in sigma coordinates ---------------------------------------------------------

def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar)  (EDM, Table 1: sigma(t) for VP)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + sigma**2)


def ddpm_linear_alpha_bar(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alpha_bar_t for DDPM's linear beta schedule (Ho et al. 2020, Sec. 4), t = 0..T-1, float64."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Continuous cosine schedule, t in [0, 1] (Nichol & Dhariwal 2021, Eq. 17)."""
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(torch.zeros_like(t))


def cosine_discrete_alpha_bar(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_bar_t of the discrete cosine schedule with betas clipped at ``max_beta``
    (Nichol & Dhariwal 2021, Sec. 3.2), t = 0..T-1, float64."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    ab = cosine_alpha_bar(t, s)
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def vp_sigma(t: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> torch.Tensor:
    """sigma(t) of the continuous VP-linear process (Song et al. 2021; EDM Table 1), t in (0, 1]."""
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_sigma_inv(sigma: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> torch.Tensor:
    """Inverse of :func:`vp_sigma`: solves 0.5 beta_d t^2 + beta_min t = log(1 + sigma^2) for t."""
    return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


def cosine_sigma(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """sigma(t) of the continuous cosine process, t in [0, 1)."""
    return sigma_from_alpha_bar(cosine_alpha_bar(t, s))


def cosine_sigma_inv(sigma: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Inverse of :func:`cosine_sigma`: cos(pi/2 (t+s)/(1+s)) = sqrt(alpha_bar) cos(pi/2 s/(1+s))."""
    c0 = math.cos(s / (1 + s) * math.pi / 2)
    return torch.acos(alpha_bar_from_sigma(sigma).sqrt() * c0) * 2 / math.pi * (1 + s) - s


# --- sampling schedules --------------------------------------------------------------------------

def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"a sampling schedule needs at least 1 step, got steps={n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule (Karras et al. 2022, Eq. 5): uniform steps in sigma^(1/rho)."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def log_uniform(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform steps in log sigma (uniform in log-SNR)."""
    _check(n, sigma_min, sigma_max)
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def uniform_time(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform steps in the time of EDM's ODE, where t = sigma (Karras with rho = 1). Uniform steps in
    the time of a VP process are :func:`vp_linear` and :func:`cosine`."""
    _check(n, sigma_min, sigma_max)
    return append_zero(torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64))


def vp_linear(n: int, sigma_min: float, sigma_max: float, beta_d: float = 19.9, beta_min: float = 0.1) -> torch.Tensor:
    """Uniform steps in the time of the VP-linear process between sigma_max and sigma_min
    (EDM Table 1, "VP" column, with the end points taken from sigma_min/sigma_max)."""
    _check(n, sigma_min, sigma_max)
    lim = torch.tensor([sigma_max, sigma_min], dtype=torch.float64)
    t_max, t_min = vp_sigma_inv(lim, beta_d, beta_min).tolist()
    return append_zero(vp_sigma(torch.linspace(t_max, t_min, n, dtype=torch.float64), beta_d, beta_min))


def cosine(n: int, sigma_min: float, sigma_max: float, s: float = 0.008) -> torch.Tensor:
    """Uniform steps in the time of the cosine process between sigma_max and sigma_min."""
    _check(n, sigma_min, sigma_max)
    lim = torch.tensor([sigma_max, sigma_min], dtype=torch.float64)
    t_max, t_min = cosine_sigma_inv(lim, s).tolist()
    return append_zero(cosine_sigma(torch.linspace(t_max, t_min, n, dtype=torch.float64), s))


def consistency(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The levels of n-step consistency sampling (mmdiff.core.samplers.consistency): Karras's n + 1 levels
    without the last, sigma_min, where a consistency function is the identity, so an evaluation there would
    be wasted: 1 step is [sigma_max, 0]; 2 steps re-noise once, to the middle of Karras's 3-level ramp."""
    return append_zero(karras(n + 1, sigma_min, sigma_max, rho)[:n])


def respaced(n: int, levels: torch.Tensor, spacing: str = "trailing") -> torch.Tensor:
    """n of the T discrete training levels of a VP process (``DiscreteVPSigma.sigmas``, increasing), as
    DDPM/DDIM sampling visits them, decreasing, then 0: n + 1 float64 sigmas.

    Uniform respacing of the timesteps (Song et al. 2021a, Sec. 4.2; diffusers' ``timestep_spacing``):
    - ``"trailing"`` (the default): t_i = round(T (n - i) / n) - 1, i = 0..n-1, so it starts at the top
      level t = T - 1 (sigma_max) and ends at round(T / n) - 1. Starting at sigma_max is what the model
      was trained to denoise from (Lin et al. 2024, "Common diffusion noise schedules and sample steps
      are flawed", Sec. 3.3); with n = T it visits every level.
    - ``"leading"``: t_i = (n - 1 - i) floor(T / n), diffusers' "leading" with steps_offset 0 (where n
      divides T, the original DDIM code's ``range(0, T, T // n)`` reversed): it ends at t = 0 (sigma_min)
      but skips the top levels, starting at (n - 1) floor(T / n) < T - 1 unless n = T.
    Ties in the rounding go to the even integer (numpy's and torch's round).
    """
    T = len(levels)
    if not 1 <= n <= T:
        raise ValueError(f"a respaced schedule visits 1 to T = {T} of the training levels, got steps={n}: "
                         f"choose steps between 1 and {T}")
    k = torch.arange(n, 0, -1, dtype=torch.float64)  # n - i for i = 0..n-1
    if spacing == "trailing":
        t = torch.round(k * T / n).long() - 1
    elif spacing == "leading":
        t = (k.long() - 1) * (T // n)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose 'trailing' or 'leading'")
    return append_zero(levels.to(torch.float64)[t.to(levels.device)])


SCHEDULES = {"karras": karras, "log_uniform": log_uniform, "uniform_time": uniform_time, "vp_linear": vp_linear,
             "cosine": cosine, "consistency": consistency}
# respaced(n, levels) is not in SCHEDULES: it takes the diffusion's discrete levels, not (sigma_min, sigma_max).
# A schedule fitted to a trained model (mmdiff.core.schedule_fit) is data, not a formula: it is stored
# in the checkpoint and chosen with sampler.schedule=fitted (mmdiff.build.build_sigmas).
FITTED = "fitted"
# The discrete levels a DDPM-style model was trained on, respaced (:func:`respaced`): they come from the
# diffusion's training noise (DiscreteVPSigma), so the build step passes them (sampler.schedule=discrete).
DISCRETE = "discrete"


def get_sigmas(name: str, n: int, sigma_min: float, sigma_max: float, **params) -> torch.Tensor:
    """Look up a sampling schedule by name; returns float64 sigmas of length n + 1 ending in 0."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](n, sigma_min, sigma_max, **params)


# --- training noise levels -----------------------------------------------------------------------

class LogNormalSigma:
    """EDM's training distribution: ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Sec. 5)."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2):
        self.P_mean, self.P_std = P_mean, P_std

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return (torch.randn(batch_size, generator=generator) * self.P_std + self.P_mean).exp()


class UniformTimeSigma:
    """Flow matching's uniform training times (Lipman et al. 2023): t ~ U(eps, 1 - eps), sigma = t / (1 - t)
    (mmdiff.core.precond.FlowPrecond). Its logit-normal alternative (Esser et al. 2024, "SD3") is
    LogNormalSigma, since logit(t) = ln sigma: P_mean = ln(shift) adds SD3's resolution shift
    t -> shift t / (1 + (shift - 1) t), which is sigma -> shift sigma."""

    def __init__(self, eps: float = 1e-5):
        self.eps = float(eps)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.eps + (1 - 2 * self.eps) * torch.rand(batch_size, generator=generator)
        return t / (1 - t)


class DiscreteVPSigma:
    """DDPM's training distribution: t ~ U{0..T-1}, sigma = sigma(alpha_bar_t).

    ``schedule`` is ``"linear"`` (Ho et al. 2020) or ``"cosine"`` (Nichol & Dhariwal 2021).
    ``sigmas`` holds the T discrete levels, increasing; ``sigma_min``/``sigma_max`` their range.
    """

    def __init__(self, schedule: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 s: float = 0.008):
        if schedule == "linear":
            alpha_bar = ddpm_linear_alpha_bar(T, beta_start, beta_end)
        elif schedule == "cosine":
            alpha_bar = cosine_discrete_alpha_bar(T, s)
        else:
            raise ValueError(f"unknown VP schedule {schedule!r}; choose 'linear' or 'cosine'")
        self.sigmas = sigma_from_alpha_bar(alpha_bar).float()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = torch.randint(0, len(self.sigmas), (batch_size,), generator=generator)
        return self.sigmas[t]
