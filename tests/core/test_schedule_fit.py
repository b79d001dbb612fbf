import math

import pytest
import torch

from mmdiff.core.analytic import GaussianMixture
from mmdiff.core.samplers import SAMPLERS
from mmdiff.core.schedule_fit import (energy_distance, fit_levels, fit_options, fit_schedule, golden_section,
                                      reference_solve)
from mmdiff.core.schedules import consistency, get_sigmas, karras, log_uniform


def test_golden_section_finds_the_minimum_of_a_parabola():
    x, fx = golden_section(lambda u: (u - 0.3) ** 2 + 1.0, -1.0, 2.0, iters=40)
    assert x == pytest.approx(0.3, abs=1e-6) and fx == pytest.approx(1.0, abs=1e-10)


def test_coordinate_descent_recovers_a_known_schedule():
    target = karras(8, 0.01, 50.0)  # the optimum of a separable objective in log sigma
    start = log_uniform(8, 0.02, 50.0)

    def objective(s):
        return float(((s[1:-1].log() - target[1:-1].log()) ** 2).sum())
    fitted, history = fit_levels(objective, start, floor=0.005, sweeps=20, iters=40, margin=0.0)
    assert torch.allclose(fitted, target, rtol=1e-5)
    assert fitted[0] == start[0] and fitted[-1] == 0
    assert all(b <= a for a, b in zip(history, history[1:]))


def test_the_fitted_levels_stay_strictly_decreasing_above_the_floor():
    start = karras(6, 0.1, 20.0)
    # an objective that pulls every level below the floor: the floor and the ordering hold it back
    fitted, _ = fit_levels(lambda s: float(s[1:-1].sum()), start, floor=0.05, sweeps=5)
    assert (fitted[:-1].diff() < 0).all() and fitted[-2] >= 0.05 and fitted[-1] == 0


@pytest.fixture(scope="module")
def mixture():
    torch.manual_seed(0)
    means = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.4]), torch.tensor([0.5, 0.3, 0.2]))


def test_a_fitted_schedule_beats_karras_on_held_out_noise(mixture):
    gen = torch.Generator().manual_seed(0)
    noise, other = (torch.randn(64, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    start = karras(6, 0.002, 80.0)
    fit = fit_schedule(mixture.denoise, noise, start, "dpmpp_2m", floor=0.002, held_out=(mixture.denoise, other))
    assert fit.error[1] < 0.8 * fit.error[0]            # the fitting batch
    assert fit.held_out[1] < 0.8 * fit.held_out[0]      # and noises it never saw
    assert fit.sigmas[0] == 80.0 and fit.sigmas[-1] == 0 and (fit.sigmas[:-1].diff() < 0).all()
    assert fit.sigmas[-2] >= 0.002 and fit.evaluations > 10
    assert fit.to_dict()["sigmas"] == fit.sigmas.tolist()


def test_the_reference_solve_is_converged(mixture):
    x = torch.randn(16, 2, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80.0
    a, b = reference_solve(mixture.denoise, x, 80.0, 0.002), reference_solve(mixture.denoise, x, 80.0, 0.002, 800)
    # the default 200 steps: far below the 5-10 step errors the fit works on (~1e-2 and above here)
    assert (a - b).pow(2).mean().sqrt() < 2e-4


def test_stochastic_samplers_are_fitted_in_their_deterministic_form():
    assert fit_options("dpmpp_2m_sde") == {"eta": 0.0}
    with pytest.raises(ValueError, match="ddim is euler_ancestral's"):
        fit_options("euler_ancestral")


def test_uniform_time_is_linear_in_sigma():
    s = get_sigmas("uniform_time", 4, 1.0, 10.0)
    assert s.tolist() == [10.0, 7.0, 4.0, 1.0, 0.0]
    assert math.isclose(float(karras(4, 1.0, 10.0, rho=1.0)[1]), 7.0)


def test_energy_distance_of_point_masses_and_of_a_set_with_itself():
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([4.0, -2.0, 2.0])
    assert energy_distance(a.expand(5, 3), b.expand(7, 3)) == pytest.approx(2 * 5.0, rel=1e-12)  # 2 |a - b|
    x = torch.randn(20, 2, 3, generator=torch.Generator().manual_seed(0))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x + 1.0) > energy_distance(x, x + 0.1) > 0


def test_consistency_levels_are_fitted_to_the_teachers_samples(mixture):
    """A posterior-mean 'student' (the mixture's denoiser used as a consistency function): its 2-step samples
    depend on the re-noising level, and the fit finds the level a grid search finds, with fixed re-noising
    draws (the same fit twice is the same fit)."""
    gen = torch.Generator().manual_seed(0)
    noise, other = (torch.randn(128, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    start = consistency(2, 0.002, 80.0)
    kwargs = dict(floor=0.002, reference=mixture.denoise, held_out=(mixture.denoise, other), sweeps=2, iters=12,
                  reference_steps=100)
    fit = fit_schedule(mixture.denoise, noise, start, "consistency", **kwargs)
    assert fit.objective == "energy" and fit.error[1] <= fit.error[0] and fit.held_out is not None
    assert fit_schedule(mixture.denoise, noise, start, "consistency", **kwargs).sigmas.tolist() == fit.sigmas.tolist()
    reference = reference_solve(mixture.denoise, noise * 80.0, 80.0, 0.002, 100)

    def objective(level: float) -> float:
        gens = [torch.Generator().manual_seed(i) for i in range(128)]
        out = SAMPLERS["consistency"](mixture.denoise, noise * 80.0, torch.tensor([80.0, level, 0.0],
                                      dtype=torch.float64), generator=gens)
        return energy_distance(out, reference)
    assert objective(float(fit.sigmas[1])) == pytest.approx(fit.error[1], rel=1e-9)
    grid = min(objective(float(s)) for s in torch.logspace(math.log10(0.002), math.log10(79.0), 60))
    assert fit.error[1] <= grid * 1.01
    with pytest.raises(ValueError, match="pass reference="):
        fit_schedule(mixture.denoise, noise, start, "consistency", floor=0.002)
