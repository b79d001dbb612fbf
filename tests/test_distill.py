"""mode=distill (Easy Consistency Tuning) and the consistency student: the loss against its formula, a tiny
distillation through the CLI that brings the 1-step sample closer to the teacher's ODE, sampling and editing
with the student, and the refusals."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from mmdiff.checkpoint import load_checkpoint
from mmdiff.cli import run
from mmdiff.core.samplers import SAMPLERS
from mmdiff.core.schedules import consistency, karras
from mmdiff.errors import UserError
from mmdiff.model import Model
from mmdiff.tasks.distill import ConsistencyObjective
from mmdiff.tasks.train import Batch, train

from .conftest import TINY, compose_config

OPTIONS = {"guidance": 1.0, "q": 2, "k": 8, "b": 1, "double_every": 10, "huber_c": 0.01,
           "max_stages": 5}


def toy_denoiser(x, sigma, labels=None):
    """A fixed smooth 'network': D(x, sigma, label) = x / (1 + sigma^2) + 0.1 (label + 1) sigma / (1 + sigma)."""
    s = sigma.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)
    shift = 0.0 if labels is None else 0.1 * (labels.to(x.dtype) + 1).view(-1, *[1] * (x.ndim - 1))
    return x / (1 + s ** 2) + shift * s / (1 + s)


def toy_run():
    return SimpleNamespace(denoiser=toy_denoiser, model=toy_denoiser)


def test_the_schedule_of_ect_shrinks_the_gap_by_q_per_stage():
    objective = ConsistencyObjective(torch.nn.Identity(), OPTIONS, None)
    t = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    for step, stage in ((0, 0), (9, 0), (10, 1), (35, 3)):
        sig = 1 / (1 + torch.exp(t))  # sigmoid(-t)
        expected = (t * (1 - 2.0 ** -(stage + 1) * (1 + 8 * sig))).clamp(min=0)
        assert torch.allclose(objective.r_of(t, step), expected, rtol=1e-12, atol=0)
    assert objective.r_of(t, 0)[0] == 0 and objective.r_of(t, 35)[0] > 0  # small t: at the data end at first
    assert float(objective.r_of(t, 0)[-1]) == pytest.approx(40.0, rel=1e-12)  # t = 80: half the way
    # stage 4 is the last (max_stages 5): a long run keeps a gap of t (1 + 8 sigmoid(-t)) / 32, never 0 / 0
    last = (t * (1 - 2.0 ** -5 * (1 + 8 / (1 + torch.exp(t))))).clamp(min=0)
    assert torch.equal(objective.r_of(t, 40), last) and torch.equal(objective.r_of(t, 10 ** 6), last)
    assert bool((objective.r_of(t.float(), 10 ** 6) < t.float()).all())


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_the_consistency_loss_matches_its_formula(guidance):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.003, 0.2, 0.9, 2.5, 11.0, 80.0], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    objective = ConsistencyObjective(torch.nn.Identity(), OPTIONS | {"guidance": guidance}, 3)
    objective.teacher = toy_denoiser
    batch = Batch(x0, t, noise, labels)
    step = 5  # stage 0: small t reach the data end (r = 0), large ones do not
    got = objective(toy_run(), batch, slice(0, 6), step)

    expected = []
    for i in range(6):
        ti = float(t[i])
        ri = max(0.0, ti * (1 - 2.0 ** -1 * (1 + 8 / (1 + math.exp(ti)))))
        xt = x0[i:i + 1] + ti * noise[i:i + 1]
        y = labels[i:i + 1]
        if guidance == 1.0:
            xr = x0[i:i + 1] + ri * noise[i:i + 1]
        else:  # one Euler step of the guided ODE from t to r
            d_null = toy_denoiser(xt, t[i:i + 1], torch.tensor([3]))
            d_cond = toy_denoiser(xt, t[i:i + 1], y)
            guided = d_null + guidance * (d_cond - d_null)
            xr = xt + (ri - ti) * (xt - guided) / ti
        target = toy_denoiser(xr, torch.tensor([ri], dtype=torch.float64), y) if ri > 0 else xr
        ft = toy_denoiser(xt, t[i:i + 1], y)
        dist = float(((ft - target) ** 2).mean())
        expected.append((math.sqrt(dist + 0.01 ** 2) - 0.01) / (ti - ri))
    r = objective.r_of(t, step)
    assert (r == 0).any() and (r > 0).any()  # both branches are covered
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_the_consistency_schedule_skips_sigma_min():
    assert consistency(1, 0.002, 80.0).tolist() == [80.0, 0.0]
    two = consistency(2, 0.002, 80.0)
    assert torch.equal(two[:2], karras(3, 0.002, 80.0)[:2]) and two[-1] == 0 and len(two) == 3


def one_step_error(model: Model, teacher: Model, noise: torch.Tensor, labels, guidance: float) -> float:
    """RMS distance of the 1-step sample (a consistency step: the denoiser at sigma_max) from the teacher's
    guided probability-flow ODE solved finely from the same noise."""
    reference = teacher.sample(n=len(noise), labels=labels, sampler="heun", steps=40, guidance=guidance, noise=noise)
    one = model.sample(n=len(noise), labels=labels, sampler="consistency", steps=1, guidance=guidance, noise=noise)
    return (one - reference).pow(2).mean().sqrt().item()


def test_a_tiny_distillation_through_the_cli_improves_the_one_step_sample(tmp_path):
    teacher_path = train(compose_config(TINY + ["trainer.max_steps=30"]), tmp_path / "teacher")
    student_dir = tmp_path / "student"
    student_path = run(compose_config(TINY + [
        "mode=distill", f"checkpoint={teacher_path}", "trainer.max_steps=80", "trainer.max_seconds=600",
        "distill.double_every=20", "distill.lr_scale=1.0"]), student_dir)
    ckpt = load_checkpoint(student_path)
    record = ckpt.config["distill"]
    assert record["from"] == str(teacher_path.resolve()) and record["teacher_step"] == 30 and ckpt.step == 80
    assert ckpt.config["trainer"]["label_dropout"] == 0 and ckpt.config["sampler"]["name"] == "consistency"
    assert ckpt.config["trainer"]["lr"] == pytest.approx(0.002)  # the teacher's 0.002 times lr_scale
    assert ckpt.config["diffusion"]["noise"]["P_mean"] == -1.1  # ECT's training levels
    assert ckpt.extra["train_seconds"] > 0
    teacher, student = Model.from_checkpoint(teacher_path), Model.from_checkpoint(student_path)
    noise = torch.randn(64, *teacher.shape, generator=torch.Generator().manual_seed(123))
    labels = torch.arange(64) % 10
    before = one_step_error(teacher, teacher, noise, labels, 1.5)
    after = one_step_error(student, teacher, noise, labels, 1.5)
    assert after < 0.8 * before, (before, after)  # measured: 0.57 -> 0.37


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distilled")
    teacher_path = train(compose_config(TINY + ["trainer.max_steps=2"]), tmp / "teacher")
    return run(compose_config(TINY + ["mode=distill", f"checkpoint={teacher_path}", "trainer.max_steps=2"]),
               tmp / "student")


def test_a_student_samples_at_guidance_one_with_consistency_by_default(student_path, tmp_path, caplog):
    student = Model.from_checkpoint(student_path)
    assert student.distilled["guidance"] == 1.5
    plain = student.sample(n=4, labels=1, guidance=1.0)
    with caplog.at_level("INFO"):
        assert torch.equal(student.sample(n=4, labels=1, guidance=4.0), plain)  # its guidance is in its weights
    assert "sampling it at guidance 1" in caplog.text
    assert torch.equal(plain, student.sample(n=4, labels=1, sampler="consistency", steps=2, guidance=1.0))
    with caplog.at_level("WARNING"):
        student.sample(n=2, labels=1, sampler="euler", steps=3)
    assert "sample it with sampler=consistency" in caplog.text
    # the CLI: sampling and editing (SDEdit, inpainting with a box) with the consistency sampler
    out = tmp_path / "samples"
    run(compose_config(["mode=sample", f"checkpoint={student_path}", "sampler=consistency", "steps=2", "n=4",
                        "class=1", f"out={out}"]), tmp_path)
    files = sorted(out.glob("sample_*.png"))
    assert torch.equal(student.modality.read_samples(files), student.decode(plain))
    box = tmp_path / "box"
    run(compose_config(["mode=sample", f"checkpoint={student_path}", "sampler=consistency", "steps=2", "n=2",
                        f"init={files[0]}", "box=[0,0,4,8]", f"out={box}"]), tmp_path)
    edited = student.modality.read_samples(sorted(box.glob("sample_*.png")))
    original = student.modality.read_samples(files[:1])
    assert torch.equal(edited[:, :, 4:], original.expand(2, -1, -1, -1)[:, :, 4:])  # outside the box: untouched
    sdedit = tmp_path / "sdedit"
    run(compose_config(["mode=sample", f"checkpoint={student_path}", "sampler=consistency", "steps=2", "n=2",
                        f"init={files[0]}", "strength=0.5", f"out={sdedit}"]), tmp_path)
    assert len(list(sdedit.glob("sample_*.png"))) == 2


def test_consistency_levels_are_fitted_through_the_cli(student_path, tmp_path, capsys):
    copy = tmp_path / "student.safetensors"
    copy.write_bytes(student_path.read_bytes())
    fit = ["fit.n=16", "fit.held_out=8", "fit.reference_steps=10", "fit.sweeps=1", "fit.iters=3"]
    record = run(compose_config(["mode=fit_schedule", f"checkpoint={copy}", "sampler=consistency", "steps=2", *fit]),
                 tmp_path)
    assert record["objective"] == "energy" and record["start"] == consistency(2, 0.002, 80.0).tolist()
    assert "energy distance to the teacher's 10-step Heun solve" in capsys.readouterr().out
    student = Model.from_checkpoint(copy)
    seen = []
    student.sample(n=2, labels=0, steps=2, schedule="fitted", callback=lambda info: seen.append(float(info["sigma"])))
    assert seen == pytest.approx(record["sigmas"][:2], rel=1e-6)  # the levels, as float32 sigmas
    teacher = Path(student.distilled["from"])
    moved = teacher.with_name("moved.safetensors")
    teacher.rename(moved)
    try:
        with pytest.raises(UserError, match="is gone: give fit.teacher=CHECKPOINT"):
            run(compose_config(["mode=fit_schedule", f"checkpoint={copy}", "sampler=consistency", "steps=2", *fit]),
                tmp_path)
        record = run(compose_config(["mode=fit_schedule", f"checkpoint={copy}", "sampler=consistency", "steps=2",
                                     f"fit.teacher={moved}", *fit]), tmp_path)
        assert record["objective"] == "energy"
    finally:
        moved.rename(teacher)


def test_distill_refusals(tmp_path):
    with pytest.raises(UserError, match="give its checkpoint=PATH"):
        run(compose_config(["mode=distill"]), tmp_path)
    with pytest.raises(UserError, match="no checkpoint|does not exist|not found"):
        run(compose_config(["mode=distill", f"checkpoint={tmp_path / 'missing.safetensors'}"]), tmp_path)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="not an mmdiff checkpoint"):
        run(compose_config(["mode=distill", f"checkpoint={other}"]), tmp_path)
    uncond = train(compose_config(TINY + ["trainer.max_steps=1", "model.num_classes=0"]), tmp_path / "u")
    with pytest.raises(UserError, match="teacher is unconditional, .* set distill.guidance=1"):
        run(compose_config(["mode=distill", f"checkpoint={uncond}"]), tmp_path)
    with pytest.raises(UserError, match="distill.q=0 must be positive"):
        run(compose_config(["mode=distill", f"checkpoint={uncond}", "distill.guidance=1", "distill.q=0"]), tmp_path)
