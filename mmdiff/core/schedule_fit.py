"""Step schedules fitted to a trained model, for few-step sampling (in the spirit of "Align Your Steps",
Sabour et al. 2024).

AYS picks the n noise levels that minimise a bound on the mismatch between the sampler's discretised
process and the true one. Here the quantity that bound stands for is measured directly: the mean squared
distance, over a batch of starting noises, between the n-step solve and a fine reference solve of the
probability-flow ODE from the same noises. It is minimised by coordinate descent on log sigma, one level at
a time, with a golden-section search between the level's neighbours.

- The end points stay: sigma_max (where the noise starts) and the final 0. The smallest non-zero level is
  free, above a floor (the model's sigma_min).
- A move is kept only when it lowers the objective, so the fit is never worse than its starting schedule
  on the fitting batch; a held-out batch measures whether the gain generalises.
- Stochastic samplers are fitted through their deterministic form (``ORDERS`` holds the options, e.g.
  eta = 0); ddpm, euler_ancestral and adaptive have none and are refused.
- Consistency sampling (a distilled student's: ``DISTRIBUTIONAL``) re-noises between its steps, so its samples
  leave the trajectory they started on and a per-sample distance means nothing. Its levels are fitted to the
  energy distance (Szekely & Rizzo 2013) between its samples and the teacher's fine ODE solves from the same
  noises, with the re-noising draws held fixed (common random numbers) so that the objective is a
  deterministic function of the levels.

Everything works on tensors of any rank; nothing here knows what the data is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .samplers import ORDERS, SAMPLERS
from .schedules import karras

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
INV_PHI = (math.sqrt(5) - 1) / 2  # golden ratio conjugate, 0.618...


def golden_section(f: Callable[[float], float], lo: float, hi: float, iters: int = 8) -> tuple[float, float]:
    """Minimise a unimodal f on [lo, hi] (golden-section search: iters + 2 evaluations); returns (x, f(x))
    at the best point evaluated."""
    a, b = lo, hi
    c, d = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    best = (c, fc) if fc <= fd else (d, fd)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - INV_PHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + INV_PHI * (b - a)
            fd = f(d)
        for x, fx in ((c, fc), (d, fd)):
            if fx < best[1]:
                best = (x, fx)
    return best


def fit_levels(objective: Callable[[torch.Tensor], float], sigmas: torch.Tensor, *, floor: float,
               sweeps: int = 3, iters: int = 8, margin: float = 0.05) -> tuple[torch.Tensor, list[float]]:
    """Coordinate descent on the free levels of ``sigmas`` (all but the first and the final 0) in log sigma.

    Level i moves within its neighbours' interval (shrunk by ``margin`` of its log-width at each end, so the
    schedule stays strictly decreasing); the last non-zero level moves between ``floor`` and its upper
    neighbour. Returns the fitted sigmas and the objective after each sweep (first entry: the start).
    """
    sigmas = sigmas.detach().to(torch.float64).clone()
    n = len(sigmas) - 1
    if n < 2:
        return sigmas, [objective(sigmas)]
    if not 0 < floor <= float(sigmas[n - 1]) or float(sigmas[-1]) != 0:
        raise ValueError(f"need sigmas ending in 0 with the last non-zero level >= floor={floor}")
    current = objective(sigmas)
    history = [current]
    for _ in range(sweeps):
        for i in range(1, n):
            hi = math.log(sigmas[i - 1])
            lo = math.log(sigmas[i + 1]) if i + 1 < n else math.log(floor)
            pad = margin * (hi - lo)
            if i + 1 == n:  # the floor itself is allowed
                lo_i, hi_i = lo, hi - pad
            else:
                lo_i, hi_i = lo + pad, hi - pad
            if not lo_i < hi_i:
                continue

            def at(u: float, i: int = i) -> float:
                trial = sigmas.clone()
                trial[i] = math.exp(u)
                return objective(trial)
            u, value = golden_section(at, lo_i, hi_i, iters)
            if value < current:
                sigmas[i], current = math.exp(u), value
        history.append(current)
        if history[-2] - current <= 1e-3 * history[-2]:  # converged: the last sweep gained < 0.1 %
            break
    return sigmas, history


# samplers fitted to a distance between sample sets rather than per-sample errors
DISTRIBUTIONAL = ("consistency",)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance between the sample sets x [n, ...] and y [m, ...] (the V-statistic, in float64):
    2 E|X - Y| - E|X - X'| - E|Y - Y'|, with |.| the Euclidean norm of the flattened samples. It is 0 for
    identical sets and 2 |a - b| between point masses at a and b."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


def fit_options(sampler: str) -> dict:
    """The options that make ``sampler`` deterministic, for fitting; a clear error for those that have none."""
    if sampler in DISTRIBUTIONAL:
        return {}
    if sampler not in ORDERS:
        raise ValueError(f"sampler {sampler!r} has no deterministic form to fit a schedule to; fit one of "
                         f"{', '.join([*ORDERS, *DISTRIBUTIONAL])} (ddim is euler_ancestral's and ddpm's "
                         "deterministic form)")
    return dict(ORDERS[sampler][1])


@torch.no_grad()
def reference_solve(denoiser: Denoiser, x: torch.Tensor, sigma_max: float, sigma_min: float,
                    steps: int = 200) -> torch.Tensor:
    """The probability-flow ODE solved finely (EDM's Heun, Karras schedule) from x at sigma_max to sigma 0."""
    return SAMPLERS["heun"](denoiser, x, karras(steps, sigma_min, sigma_max).to(x.device))


@torch.no_grad()
def solve_error(denoiser: Denoiser, sampler: str, x: torch.Tensor, sigmas: torch.Tensor, reference: torch.Tensor,
                options: dict | None = None) -> float:
    """Root-mean-square distance between the solve over ``sigmas`` (from x, noise at sigmas[0]) and ``reference``."""
    out = SAMPLERS[sampler](denoiser, x.clone(), sigmas.to(x.device), **(options or {}))
    return (out.double() - reference.double()).pow(2).mean().sqrt().item()


@dataclass
class FitResult:
    sigmas: torch.Tensor              # the fitted schedule, n + 1 levels ending in 0 (float64)
    start: torch.Tensor               # the schedule the fit started from
    error: tuple[float, float]        # RMS error vs the reference on the fitting batch: (start, fitted)
    held_out: tuple[float, float] | None = None   # the same on held-out noises
    history: list[float] = field(default_factory=list)
    evaluations: int = 0              # objective evaluations (each one solve of the batch)
    objective: str = "rms"            # rms: per-sample error vs the reference; energy: energy distance of the sets

    def to_dict(self) -> dict:
        return {"sigmas": self.sigmas.tolist(), "start": self.start.tolist(), "error": list(self.error),
                "held_out": None if self.held_out is None else list(self.held_out), "history": self.history,
                "evaluations": self.evaluations, "objective": self.objective}


def fit_schedule(denoiser: Denoiser, noise: torch.Tensor, start: torch.Tensor, sampler: str, *, floor: float,
                 reference_steps: int = 200, held_out: tuple[Denoiser, torch.Tensor] | None = None,
                 sweeps: int = 3, iters: int = 8, reference: Denoiser | tuple[Denoiser, Denoiser] | None = None,
                 seed: int = 0) -> FitResult:
    """Fit the levels of ``start`` (n + 1 sigmas ending in 0) for ``sampler`` on ``denoiser``.

    ``noise`` is unit-variance noise [B, ...] (scaled by start[0] here); ``held_out`` is another
    (denoiser, noise) pair, e.g. other noises with other labels, scored before and after. For a sampler in
    ``DISTRIBUTIONAL``, ``reference`` is the teacher whose ODE solves the samples are compared with (a pair: the
    teacher for the fitting noises and for the held-out ones) and ``seed`` seeds the fixed re-noising draws.
    """
    options = fit_options(sampler)
    start = start.detach().to(torch.float64)
    sigma_max = float(start[0])
    distributional = sampler in DISTRIBUTIONAL
    if distributional and reference is None:
        raise ValueError(f"fitting {sampler} compares its samples with a teacher's ODE solves: pass reference=")
    teachers = reference if isinstance(reference, tuple) else (reference, reference)

    def problem(d: Denoiser, z: torch.Tensor, teacher: Denoiser | None, offset: int):
        x = z * sigma_max
        ref = reference_solve(teacher if distributional else d, x, sigma_max, floor, reference_steps)
        if not distributional:
            return lambda s: solve_error(d, sampler, x, s, ref, options)

        def distance(s: torch.Tensor) -> float:
            gens = [torch.Generator(x.device).manual_seed(seed + offset + i) for i in range(len(x))]
            with torch.no_grad():
                out = SAMPLERS[sampler](d, x.clone(), s.to(x.device), generator=gens, **options)
            return energy_distance(out, ref)
        return distance

    objective = problem(denoiser, noise, teachers[0], 0)
    count = 0

    def counted(s: torch.Tensor) -> float:
        nonlocal count
        count += 1
        return objective(s)
    fitted, history = fit_levels(counted, start, floor=floor, sweeps=sweeps, iters=iters)
    result = FitResult(fitted, start, (history[0], history[-1]), history=history, evaluations=count,
                       objective="energy" if distributional else "rms")
    if held_out is not None:
        check = problem(*held_out, teachers[1], len(noise))
        result.held_out = (check(start), check(fitted))
    return result
