import csv

import pytest
import torch
from omegaconf import OmegaConf

from mmdiff.tasks import train as train_module
from mmdiff.checkpoint import load_checkpoint
from mmdiff.errors import UserError
from mmdiff.data.order import Batches
from mmdiff.tasks.train import train

from .conftest import SHARED_DATA


def test_a_tiny_run_writes_config_metrics_samples_and_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.sample_every=3")
    path = train(cfg, tmp_path)
    assert path == tmp_path / "last.safetensors"
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert set(rows[0]) >= {"step", "loss", "lr", "images_per_s"}
    assert all(float(r["loss"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)
    assert float(rows[0]["lr"]) == pytest.approx(0.002)  # warm-up of 2 steps is over at step 2
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.model.in_channels == 1 and saved.model.num_classes == 10  # "auto" resolved from the data
    # every preview's grid; the last one's samples, cell by cell, on the page that shows them all
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == sorted(
        ["step_0000003.png", "step_0000006.png", "grid.png", "index.html"] + [f"sample_{i:05d}.png" for i in range(10)])
    ckpt = load_checkpoint(path)
    assert ckpt.step == 6 and ckpt.samples_seen == 96 and ckpt.data["shape"] == [1, 8, 8]
    assert ckpt.config["model"]["num_classes"] == 10 and ckpt.config["modality"]["_target_"].endswith("ImageModality")


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_cfg, tmp_path):
    # dropout on, so that the global RNG state matters too
    full = load_checkpoint(train(tiny_cfg("trainer.max_steps=5", "model.dropout=0.2"), tmp_path / "full"))
    train(tiny_cfg("trainer.max_steps=3", "model.dropout=0.2"), tmp_path / "part")
    resumed = load_checkpoint(train(tiny_cfg("trainer.max_steps=5", "model.dropout=0.2",
                                             f"trainer.resume={tmp_path / 'part' / 'last.safetensors'}"),
                                    tmp_path / "part"))
    assert resumed.step == full.step == 5
    for group in ("model", "ema"):
        for k, v in getattr(full, group).items():
            assert torch.equal(getattr(resumed, group)[k], v), (group, k)
    for i, state in full.optimizer["state"].items():
        for key, v in state.items():
            assert torch.equal(resumed.optimizer["state"][i][key], v)
    rows = list(csv.DictReader(open(tmp_path / "part" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]  # appended after the resume


def test_resuming_with_another_model_is_refused(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_steps=1"), tmp_path / "a")
    cfg = tiny_cfg("model.channels=32", f"trainer.resume={tmp_path / 'a'}")
    with pytest.raises(UserError, match="different model config"):
        train(cfg, tmp_path / "b")


def test_max_seconds_ends_training(tiny_cfg, tmp_path):
    path = train(tiny_cfg("trainer.max_steps=100000", "trainer.max_seconds=0.5"), tmp_path)
    assert 0 < load_checkpoint(path).step < 100000


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_cfg, tmp_path, monkeypatch):
    real = train_module.denoising_loss
    calls = {"n": 0}

    def sometimes_nan(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(train_module, "denoising_loss", sometimes_nan)
    # steps 3, 4, ... are bad; the count is read at log steps (every 2): 4 in a row at step 6
    with pytest.raises(UserError, match="diverged: 4 steps in a row"):
        train(tiny_cfg("trainer.max_nonfinite=3", "trainer.checkpoint_every=1"), tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.safetensors")
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(int(r["step"]), int(r["skipped"])) for r in rows] == [(2, 0), (4, 2)]
    # the bad steps were skipped on the device: the weights are still those after step 2
    monkeypatch.setattr(train_module, "denoising_loss", real)
    good = load_checkpoint(train(tiny_cfg("trainer.max_steps=2"), tmp_path / "good"))
    assert ckpt.step == 5
    for k, v in good.model.items():
        assert torch.equal(ckpt.model[k], v), k


def test_batches_cover_each_epoch_once_and_depend_only_on_the_step():
    b = Batches(10, 3, seed=0)
    epoch0 = torch.cat([b.indices(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # 3 batches of 3, the last partial batch dropped
    assert not torch.equal(b.indices(3), b.indices(0))  # a new order next epoch
    assert torch.equal(Batches(10, 3, seed=0).indices(4), b.indices(4))


def test_trains_on_a_folder_of_rgb_images(tiny_cfg, tmp_path):
    import numpy as np
    from PIL import Image
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((20, 30, 3), colour, dtype=np.uint8)).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    cfg = tiny_cfg("dataset=image_folder", f"dataset.root={tmp_path / 'data'}", "dataset.size=16",
                   "trainer.max_steps=2")
    ckpt = load_checkpoint(train(cfg, tmp_path / "run"))
    assert ckpt.data == {"shape": [3, 16, 16], "class_names": ["class0", "class1"], "dataset": "image_folder"}
    assert ckpt.config["model"]["in_channels"] == 3 and ckpt.config["model"]["num_classes"] == 2


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="../shared/data/mnist is absent")
def test_trains_on_the_real_mnist_files(tiny_cfg, tmp_path):
    cfg = tiny_cfg("dataset=mnist", f"dataset.root={SHARED_DATA / 'mnist'}", "dataset.split=test::8000",
                   "trainer.max_steps=1")
    ckpt = load_checkpoint(train(cfg, tmp_path))
    assert ckpt.data["shape"] == [1, 28, 28] and ckpt.data["dataset"] == "mnist"
