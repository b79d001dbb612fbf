"""mode=fit_schedule: a few-step schedule fitted to a checkpoint, stored in it, used by sampler.schedule=fitted."""

import shutil

import pytest
import torch

from mmdiff.model import Model
from mmdiff.checkpoint import load_checkpoint
from mmdiff.core.samplers import SAMPLERS
from mmdiff.core.schedules import karras
from mmdiff.cli import run
from mmdiff.errors import UserError
from mmdiff.tasks.train import train

from .conftest import TINY, compose_config

FIT = ["fit.n=16", "fit.held_out=8", "fit.reference_steps=20", "fit.sweeps=1", "fit.iters=3", "steps=4"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    path = train(compose_config(TINY + ["trainer.max_steps=3"]), run_dir)
    copy = run_dir / "fitted.safetensors"
    record = run(compose_config(["mode=fit_schedule", f"checkpoint={path}", "sampler=dpmpp_2m", *FIT]), run_dir)
    shutil.copy(path, copy)
    return path, copy, record


def test_the_fit_is_stored_in_the_checkpoint_and_leaves_the_weights_alone(checkpoint, tmp_path):
    path, _, record = checkpoint
    ckpt = load_checkpoint(path)
    stored = ckpt.extra["schedules"]["dpmpp_2m/4"]
    assert stored["sigmas"] == record["sigmas"] and len(stored["sigmas"]) == 5 and stored["sigmas"][-1] == 0
    assert stored["sigmas"] != stored["start"]  # the fit moved some level
    assert stored["guidance"] == 1.5 and stored["n"] == 16
    # the record is true: solving the held-out noises (seed + n, labels n, n + 1, ... in turn) with the stored
    # levels lands at the stored distance from a 20-step Heun solve, recomputed here from the samplers alone
    model = Model.from_checkpoint(path)
    k = len(model.class_names)
    noise = torch.randn(8, *model.shape, generator=torch.Generator().manual_seed(16))
    denoiser = model.guided(torch.arange(16, 24) % k, 1.5)
    x = noise * stored["sigmas"][0]
    reference = SAMPLERS["heun"](denoiser, x, karras(20, 0.002, stored["sigmas"][0]))
    for sigmas, error in ((stored["start"], stored["held_out"][0]), (stored["sigmas"], stored["held_out"][1])):
        out = SAMPLERS["dpmpp_2m"](denoiser, x.clone(), torch.tensor(sigmas, dtype=torch.float64))
        assert (out.double() - reference.double()).pow(2).mean().sqrt().item() == pytest.approx(error, rel=1e-6)
    fresh = train(compose_config(TINY + ["trainer.max_steps=3"]), tmp_path)  # same seed: same weights
    for key, value in load_checkpoint(fresh).model.items():
        assert torch.equal(value, ckpt.model[key])


def test_sampling_with_the_fitted_schedule_uses_its_levels(checkpoint, tmp_path):
    path, _, record = checkpoint
    model = Model.from_checkpoint(path)
    sigmas = model.sigmas(4, "fitted", sampler="dpmpp_2m")
    assert sigmas.tolist() == record["sigmas"]
    seen = []
    run(compose_config(["mode=sample", f"checkpoint={path}", f"out={tmp_path}", "n=4", "steps=4",
                        "sampler.schedule=fitted"]), tmp_path)
    assert (tmp_path / "grid.png").is_file()
    model.sample(n=2, steps=4, callback=lambda info: seen.append(float(info["sigma"])), schedule="fitted")
    assert seen == pytest.approx(record["sigmas"][:-1])


def test_a_missing_fit_names_the_command_that_makes_it(checkpoint, tmp_path):
    path = checkpoint[0]
    with pytest.raises(UserError, match="mode=fit_schedule checkpoint=... sampler=heun steps=4"):
        run(compose_config(["mode=sample", f"checkpoint={path}", f"out={tmp_path}", "sampler=heun", "steps=4",
                            "sampler.schedule=fitted"]), tmp_path)


def test_fit_out_writes_elsewhere(checkpoint, tmp_path):
    _, copy, _ = checkpoint
    out = tmp_path / "other.safetensors"
    run(compose_config(["mode=fit_schedule", f"checkpoint={copy}", "sampler=euler", f"fit.out={out}", *FIT]), tmp_path)
    assert "euler/4" in load_checkpoint(out).extra["schedules"]
    assert "euler/4" not in load_checkpoint(copy).extra["schedules"]


@pytest.mark.parametrize("overrides, message", [
    (["mode=fit_schedule", "sampler=euler_ancestral"], "no deterministic form"),
    (["mode=train", "sampler.schedule=fitted"], "sampler.schedule=fitted is unknown"),
])
def test_refusals(checkpoint, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(compose_config([f"checkpoint={checkpoint[0]}", *FIT, *overrides]), tmp_path)
