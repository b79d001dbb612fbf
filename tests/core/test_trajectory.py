"""The reverse process recorded by a callback, and the forward process, against their definitions."""

import math

import pytest
import torch

from mmdiff.core import schedules
from mmdiff.core.analytic import GaussianMixture
from mmdiff.core.editing import inpaint
from mmdiff.core.samplers import SAMPLERS
from mmdiff.core.trajectory import Trajectory, forward_process, spread

SIGMA_MIN, SIGMA_MAX = 0.005, 40.0


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(0)
    return GaussianMixture(torch.randn(3, 1, 2, 3, generator=g, dtype=torch.float64),
                           torch.tensor([0.3, 0.5, 0.4]), torch.tensor([0.5, 0.3, 0.2]))


def start(n=2):
    return torch.randn(n, 1, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX


def test_records_x_and_the_denoised_estimate_of_every_step(mixture):
    sigmas, x_T, traj = schedules.karras(6, SIGMA_MIN, SIGMA_MAX), start(), Trajectory()
    out = SAMPLERS["euler"](mixture.denoise, x_T, sigmas, callback=traj)
    xs, ds = traj.stack("x"), traj.stack("denoised")
    assert xs.shape == (6, 2, 1, 2, 3) and torch.equal(xs[-1], out)
    assert torch.equal(traj.levels("x"), sigmas[1:]) and torch.equal(traj.levels("denoised"), sigmas[:-1])
    before = torch.cat([x_T[None], xs[:-1]])  # the x each estimate was made from
    for i in range(6):
        assert torch.equal(ds[i], mixture.denoise(before[i], sigmas[i].expand(2)))


def test_records_are_copies():
    traj, x = Trajectory(), torch.zeros(1, 3)
    traj({"i": 0, "x": x, "sigma": torch.tensor(1.0), "sigma_next": torch.tensor(0.5), "denoised": x})
    x += 1
    assert not traj.stack("x").any() and not traj.stack("denoised").any()


def test_spread_keeps_first_and_last():
    assert spread(10, 4).tolist() == [0, 3, 6, 9]
    assert spread(5, 5).tolist() == [0, 1, 2, 3, 4] and spread(3, 8).tolist() == [0, 1, 2]
    assert spread(7, 1).tolist() == [6]
    for n in range(1, 40):
        for k in range(2, n + 1):
            idx = spread(n, k)
            assert len(idx.unique()) == k and idx[0] == 0 and idx[-1] == n - 1


def test_subsampling_while_recording_equals_subsampling_afterwards(mixture):
    sigmas, x_T = schedules.karras(10, SIGMA_MIN, SIGMA_MAX), start()
    known_steps, all_steps, full = Trajectory(frames=4, steps=10), Trajectory(frames=4), Trajectory()
    for traj in (known_steps, all_steps, full):
        SAMPLERS["heun"](mixture.denoise, x_T, sigmas, callback=traj)
    assert len(known_steps.records) == 4 and len(all_steps.records) == 10
    for key in ("x", "denoised"):
        assert torch.equal(known_steps.stack(key), all_steps.stack(key))
        assert torch.equal(known_steps.stack(key), full.stack(key)[[0, 3, 6, 9]])
    assert torch.equal(known_steps.levels(), sigmas[[1, 4, 7, 10]])


def test_subsamples_an_adaptive_run_whose_steps_are_unknown_in_advance(mixture):
    traj = Trajectory(frames=3)
    out = SAMPLERS["adaptive"](mixture.denoise, start(), schedules.karras(4, SIGMA_MIN, SIGMA_MAX), callback=traj)
    assert len(traj.records) > 3 and traj.stack().shape[0] == 3
    assert torch.equal(traj.stack()[-1], out) and traj.levels()[-1] == 0


def test_records_an_inpainting_run(mixture):
    traj, known = Trajectory(), start() / SIGMA_MAX
    mask = torch.tensor([True, False, True]).view(1, 1, 1, 3)
    out = inpaint(mixture.denoise, known, mask, schedules.karras(5, SIGMA_MIN, SIGMA_MAX), resample=2,
                  generator=torch.Generator().manual_seed(0), callback=traj)
    assert traj.stack().shape == (5,) + tuple(known.shape) and torch.equal(traj.stack()[-1], out)


def test_forward_process_adds_the_same_noise_at_every_level():
    x0 = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = torch.tensor([0.0, 0.1, 1.0, 10.0], dtype=torch.float64)
    frames, snr = forward_process(x0, sigmas, [torch.Generator().manual_seed(s) for s in range(3)])
    n = torch.stack([torch.randn(2, 4, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                     for s in range(3)])
    assert frames.shape == (4, 3, 2, 4) and torch.equal(frames[0], x0)
    for i, s in enumerate(sigmas):
        assert torch.equal(frames[i], x0 + s * n)
    # 1 / sigma^2 of the rounded 0.1: <= 4 roundings of u = eps / 2, 4.4e-16 < 1e-15
    assert snr.tolist() == pytest.approx([math.inf, 100.0, 1.0, 0.01], rel=1e-15)


def test_forward_process_same_seed_same_frames_whatever_the_batch():
    x0 = torch.randn(4, 1, 5)
    sigmas = schedules.karras(5, SIGMA_MIN, SIGMA_MAX).flip(0)
    a = forward_process(x0, sigmas, [torch.Generator().manual_seed(s) for s in range(4)]).frames
    b = forward_process(x0[2:], sigmas, [torch.Generator().manual_seed(s) for s in (2, 3)]).frames
    assert a.dtype == torch.float32 and torch.equal(a[:, 2:], b)
