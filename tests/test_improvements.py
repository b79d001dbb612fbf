"""Training-side improvements from after EDM, through the CLI: flow matching, post-hoc EMA (EDM2), the
learned uncertainty weighting and inverse square-root learning-rate decay, and autoguidance."""

import csv

import pytest
import torch

from mmdiff.checkpoint import load_checkpoint, load_snapshots
from mmdiff.cli import run
from mmdiff.core.phema import reconstruct
from mmdiff.core.samplers import SAMPLERS
from mmdiff.errors import UserError
from mmdiff.model import Model
from mmdiff.tasks import eval as eval_task
from mmdiff.tasks.train import train

from .conftest import TINY, compose_config

PHEMA = ["trainer.phema.sigma_rels=[0.05,0.1]", "trainer.phema.snapshot_every=2"]


def test_a_flow_model_trains_and_samples_with_every_sampler(tmp_path):
    ckpt = train(compose_config(TINY + ["diffusion=flow", "trainer.max_steps=3"]), tmp_path)
    model = Model.from_checkpoint(ckpt)
    assert model.config["diffusion"]["precond"]["_target_"].endswith("FlowPrecond")
    for sampler in sorted(SAMPLERS):
        x = model.sample(n=2, labels=3, sampler=sampler, steps=3)
        assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all(), sampler
    uniform = train(compose_config(TINY + ["diffusion=flow_uniform", "trainer.max_steps=2"]), tmp_path / "u")
    assert Model.from_checkpoint(uniform).config["diffusion"]["noise"]["_target_"].endswith("UniformTimeSigma")


def test_post_hoc_ema_snapshots_and_reconstruction(tmp_path):
    ckpt_path = train(compose_config(TINY + PHEMA + ["trainer.max_steps=5"]), tmp_path)
    snaps = load_snapshots(tmp_path / "phema")
    assert [(t, s) for t, s, _ in snaps] == [(32, 0.05), (32, 0.1), (64, 0.05), (64, 0.1), (80, 0.05), (80, 0.1)]
    ckpt = load_checkpoint(ckpt_path)
    assert set(ckpt.averages) == {"0.05", "0.1"}  # kept for resuming
    for k, v in ckpt.averages["0.1"].items():      # the last snapshot is the averages at the end
        assert torch.equal(snaps[-1][2][k], v)
    # reconstructing a tracked profile at the last snapshot gives it back (to the solve's precision)
    rebuilt = reconstruct([s for _, _, s in snaps], [(t, s) for t, s, _ in snaps], (80, 0.05))
    assert all(torch.allclose(rebuilt[k], ckpt.averages["0.05"][k], atol=1e-5) for k in rebuilt)
    out = run(compose_config(["mode=phema", f"checkpoint={ckpt_path}", "phema.sigma_rel=0.08"]), tmp_path)
    assert out == tmp_path / "phema-0.080.safetensors"
    made = load_checkpoint(out)
    assert made.extra["phema"]["sigma_rel"] == 0.08 and made.extra["phema"]["snapshots"] == 6
    assert any(not torch.equal(made.ema[k], ckpt.ema[k]) for k in ckpt.ema)  # other weights than the plain EMA
    assert torch.isfinite(Model.from_checkpoint(out).sample(n=2, labels=1, steps=3)).all()
    with pytest.raises(UserError, match="needs phema.sigma_rel"):
        run(compose_config(["mode=phema", f"checkpoint={ckpt_path}"]), tmp_path)


def test_eval_sweeps_ema_length_and_guidance_and_stores_the_best_pair(tmp_path, capsys):
    ckpt_path = train(compose_config(TINY + PHEMA + ["trainer.max_steps=5"]), tmp_path)
    before = load_checkpoint(ckpt_path)
    cfg = compose_config(["mode=eval", f"checkpoint={ckpt_path}", "n=24", "steps=3", "eval.sweep.sigma_rel=[0.05,0.1]",
                          "eval.sweep.guidance=[1.0,2.0]", "eval.evaluator.epochs=2", "eval.kid_subsets=5"])
    result = run(cfg, tmp_path / "sweep")
    rows = result["sweep"]["rows"]
    assert [(r["sigma_rel"], r["guidance"]) for r in rows] == [
        (None, 1.0), (None, 2.0), (0.05, 1.0), (0.05, 2.0), (0.1, 1.0), (0.1, 2.0)]
    fds = [r["fd"] for r in rows]
    assert len(set(fds)) == len(fds)  # every EMA length and every scale sampled something else
    # the checkpoint's own row is what a plain mode=eval at that guidance measures
    plain = run(compose_config(["mode=eval", f"checkpoint={ckpt_path}", "n=24", "steps=3", "guidance=2.0",
                                "eval.evaluator.epochs=2", "eval.kid_subsets=5"]), tmp_path / "plain")
    assert plain["metrics"]["fd"]["samples"] == rows[1]["fd"]
    best = min(rows, key=lambda r: r["fd"])
    assert result["sweep"]["best"] == best and "guidance 2" in capsys.readouterr().out
    stored = load_checkpoint(ckpt_path)
    assert stored.extra["best_sampling"]["fd"] == best["fd"] and stored.extra["best_sampling"]["n"] == 24
    assert all(torch.equal(stored.ema[k], before.ema[k]) for k in before.ema)  # the weights are untouched
    if best["sigma_rel"] is not None:  # mode=phema phema.sigma_rel=best writes that EMA
        out = run(compose_config(["mode=phema", f"checkpoint={ckpt_path}", "phema.sigma_rel=best"]), tmp_path)
        assert load_checkpoint(out).extra["phema"]["sigma_rel"] == best["sigma_rel"]
    with pytest.raises(UserError, match=r"eval.sweep.sigma_rel=.* is invalid"):
        run(compose_config(["mode=eval", f"checkpoint={ckpt_path}", "eval.sweep.sigma_rel=[0]"]), tmp_path / "bad")


def test_phema_best_needs_a_sweep_first(tmp_path):
    ckpt_path = train(compose_config(TINY + PHEMA + ["trainer.max_steps=3"]), tmp_path)
    with pytest.raises(UserError, match="holds no best EMA length: run mode=eval"):
        run(compose_config(["mode=phema", f"checkpoint={ckpt_path}", "phema.sigma_rel=best"]), tmp_path)


def test_post_hoc_ema_needs_snapshots(tmp_path):
    ckpt = train(compose_config(TINY + ["trainer.max_steps=2"]), tmp_path)
    with pytest.raises(UserError, match="no post-hoc EMA snapshots .* train with trainer.phema.sigma_rels"):
        run(compose_config(["mode=phema", f"checkpoint={ckpt}", "phema.sigma_rel=0.08"]), tmp_path)


def test_resume_with_post_hoc_ema_is_exact(tmp_path):
    full = load_checkpoint(train(compose_config(TINY + PHEMA + ["trainer.max_steps=5"]), tmp_path / "full"))
    train(compose_config(TINY + PHEMA + ["trainer.max_steps=3"]), tmp_path / "part")
    resumed = load_checkpoint(train(compose_config(TINY + PHEMA + [
        "trainer.max_steps=5", f"trainer.resume={tmp_path / 'part' / 'last.safetensors'}"]), tmp_path / "part"))
    for name in ("0.05", "0.1"):
        for k, v in full.averages[name].items():
            assert torch.equal(resumed.averages[name][k], v), (name, k)


def test_learned_uncertainty_weighting_trains_its_head(tmp_path):
    ckpt = load_checkpoint(train(compose_config(TINY + ["diffusion.precond.uncertainty=8", "trainer.max_steps=4"]),
                                 tmp_path))
    fresh = load_checkpoint(train(compose_config(TINY + ["diffusion.precond.uncertainty=8", "trainer.max_steps=1",
                                                         "trainer.lr=1e-12"]), tmp_path / "init"))
    assert "logvar_head.weight" in ckpt.model
    assert not torch.equal(ckpt.model["logvar_head.weight"], fresh.model["logvar_head.weight"])  # it learned


def test_inverse_square_root_decay_is_counted_in_samples(tmp_path):
    train(compose_config(TINY + ["trainer.lr_decay_samples=32", "trainer.log_every=1", "trainer.warmup_steps=0"]),
          tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    # the lr of step s (0-based) uses the samples seen before it: max(16 s / 32, 1)
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [0.002 / max(16 * s / 32, 1) ** 0.5 for s in range(6)], rel=1e-5)


def test_autoguidance_through_the_cli(tmp_path):
    main = train(compose_config(TINY + ["trainer.max_steps=4"]), tmp_path / "main")
    weak = train(compose_config(TINY + ["trainer.max_steps=1"]), tmp_path / "weak")
    common = ["mode=sample", f"checkpoint={main}", "n=4", "steps=3", "class=2", "guidance=2.0"]
    run(compose_config(common + [f"out={tmp_path / 'cfg'}"]), tmp_path)
    run(compose_config(common + [f"out={tmp_path / 'auto'}", f"guide={weak}"]), tmp_path)
    model = Model.from_checkpoint(main)
    cfg_files, auto_files = (sorted((tmp_path / d).glob("sample_*.png")) for d in ("cfg", "auto"))
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(cfg_files, auto_files))  # the guide was used
    by_api = model.decode(model.sample(n=4, labels=2, steps=3, guidance=2.0, guide=weak))
    assert torch.equal(model.modality.read_samples(auto_files), by_api)
    # mode=eval samples with the guide too (it once ignored guide= and scored plain CFG)
    evaluated, _ = eval_task._generate(compose_config(common[1:] + ["mode=eval", f"guide={weak}"]), model)
    assert torch.equal(evaluated, by_api)
    plain, _ = eval_task._generate(compose_config(common[1:] + ["mode=eval"]), model)
    assert not torch.equal(plain, by_api)
    other = train(compose_config(TINY + ["trainer.max_steps=1", "dataset.size=16"]), tmp_path / "other")
    with pytest.raises(UserError, match="guide with a weaker model of the same data"):
        model.sample(n=2, labels=2, steps=3, guide=other)
