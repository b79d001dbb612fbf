"""Video through the CLI: a tiny model trained with conditioning on known frames generates, predicts,
interpolates and extends clips, and mode=eval scores it against held-out clips."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.checkpoint import load_checkpoint
from mmdiff.cli import run
from mmdiff.core.context import KINDS, context_input, draw_masks
from mmdiff.data.order import Windows
from mmdiff.errors import UserError
from mmdiff.modalities.video import read_gif

from .conftest import compose_config

TINY_TRAINING = ["modality=video", "model.channels=16", "model.head_channels=16", "model.num_blocks=1",
                 "trainer.max_steps=4", "trainer.batch_size=8", "trainer.log_every=2", "trainer.sample_every=0",
                 "trainer.checkpoint_every=0", "trainer.warmup_steps=2", "trainer.progress=false", "n=4", "steps=3",
                 "batch_size=8"]
TINY_VIDEO = TINY_TRAINING + ["dataset.size=12", "dataset.frames=4", "dataset.per_digit=1"]


def cli(*overrides, run_dir):
    return run(compose_config(list(overrides)), run_dir)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_run")
    return cli(*TINY_VIDEO, run_dir=out)


@pytest.fixture(scope="module")
def clip(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("video_samples")
    cli("mode=sample", f"checkpoint={checkpoint}", f"out={out}", "n=4", "steps=3", "class=3", run_dir=out)
    return out


def sample(checkpoint, out, *extra):
    return cli("mode=sample", f"checkpoint={checkpoint}", f"out={out}", "steps=3", *extra, run_dir=out)


def test_train_writes_a_context_conditioned_video_model(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    assert ckpt.data["shape"] == [1, 4, 12, 12] and ckpt.config["modality"]["_target_"].endswith("VideoModality")
    assert ckpt.config["time_context"]["enabled"] and ckpt.config["model"]["cond_channels"] == 2  # C + the mask
    assert (checkpoint.parent / "samples" / "step_0000004.gif").is_file()


def test_sample_writes_gifs_labels_grid_and_page(clip):
    names = sorted(p.name for p in clip.iterdir())
    assert names == sorted([f"sample_{i:05d}.gif" for i in range(4)] + ["grid.png", "grid.gif", "index.html",
                                                                         "labels.json"])
    assert json.loads((clip / "labels.json").read_text()) == ["3"] * 4
    assert read_gif(clip / "sample_00000.gif").shape == (1, 4, 12, 12)


@pytest.mark.parametrize("context,method", [("[0,1]", "auto"), ("[0,-1]", "auto"), ("[0,1]", "repaint")])
def test_context_frames_come_back_unchanged(checkpoint, clip, tmp_path, context, method):
    init = clip / "sample_00000.gif"
    sample(checkpoint, tmp_path, f"init={init}", f"context={context}", "n=2", f"edit_method={method}")
    original = read_gif(init)
    kept = [0, 1] if context == "[0,1]" else [0, 3]
    for i in range(2):
        out = read_gif(tmp_path / f"sample_{i:05d}.gif")
        assert torch.equal(out[:, kept], original[:, kept])                     # bit for bit
    fresh = [t for t in range(4) if t not in kept]
    assert not torch.equal(read_gif(tmp_path / "sample_00000.gif")[:, fresh], original[:, fresh])


def test_extend_continues_a_clip_window_by_window(checkpoint, clip, tmp_path):
    init = clip / "sample_00001.gif"
    sample(checkpoint, tmp_path, f"init={init}", "extend=6", "n=1")
    longer, original = read_gif(tmp_path / "sample_00000.gif"), read_gif(init)
    assert longer.shape == (1, 10, 12, 12) and torch.equal(longer[:, :4], original)


def test_conditioning_needs_a_model_trained_for_it(tmp_path, clip):
    plain = cli(*TINY_VIDEO, "time_context.enabled=false", "model.cond_channels=0", run_dir=tmp_path / "plain")
    assert load_checkpoint(plain).config["model"]["cond_channels"] == 0
    init = clip / "sample_00000.gif"
    with pytest.raises(UserError, match="edit_method=condition needs a model trained with time_context"):
        sample(plain, tmp_path / "x", f"init={init}", "context=[0,1]", "edit_method=condition", "n=1")
    sample(plain, tmp_path / "auto", f"init={init}", "context=[0,1]", "n=1")  # auto: RePaint, context kept
    assert torch.equal(read_gif(tmp_path / "auto" / "sample_00000.gif")[:, :2], read_gif(init)[:, :2])


def test_eval_scores_clips_frames_motion_and_prediction(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDIFF_CACHE", str(tmp_path / "cache"))
    result = cli(*TINY_VIDEO, "mode=eval", f"checkpoint={checkpoint}", "n=12", "eval.kid_subsets=5",
                 "eval.evaluator.epochs=2", "eval.predict.context=2", "eval.predict.n=6", "eval.predict.k=2",
                 run_dir=tmp_path)
    assert result["split"].startswith("split test (held out") and result["n_real"] == 364
    assert {"fvd", "accuracy", "w1_speed", "w1_change", "frame_fd", "frame_identity", "frame_accuracy"} <= set(
        result["metrics"])
    assert result["evaluator"]["aux_accuracy"].keys() == {"direction"}  # the motion head
    p = result["prediction"]
    assert (p["context"], p["predicted"], p["n"], p["k"]) == (2, 2, 6, 2) and p["how"] == "conditioned on the known steps"
    assert p["psnr_best"] >= p["psnr_mean"] and np.isfinite(p["psnr_copy_last"])


def test_training_on_windows_of_longer_clips(tmp_path):
    for c in range(2):
        (tmp_path / "clips" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            frames = [Image.fromarray(np.full((12, 12), 20 * t + 80 * c, np.uint8), "L") for t in range(8)]
            frames[0].save(tmp_path / "clips" / f"class{c}" / f"{i}.gif", save_all=True, append_images=frames[1:],
                           duration=100, loop=0)
    ckpt = cli(*TINY_TRAINING, "dataset=video_folder", f"dataset.root={tmp_path / 'clips'}", "dataset.frames=4",
               "dataset.max_frames=8", "dataset.size=12", "trainer.batch_size=6", run_dir=tmp_path / "run")
    assert load_checkpoint(ckpt).data["shape"] == [1, 4, 12, 12]  # trained on 4-frame windows of 8-frame clips


def test_windows_are_drawn_per_epoch_and_cut_exactly():
    w = Windows(n=3, length=8, window=4, seed=0)
    x = torch.arange(3 * 8, dtype=torch.float32).view(3, 1, 8, 1, 1).expand(3, 2, 8, 2, 2)
    offsets = w.offsets(0)
    assert torch.equal(w.offsets(0), offsets) and ((0 <= offsets) & (offsets <= 4)).all()
    assert not all(torch.equal(w.offsets(e), offsets) for e in range(1, 6))  # other epochs, other windows
    cut = w.cut(x, offsets)
    for b in range(3):
        assert torch.equal(cut[b], x[b, :, offsets[b]:offsets[b] + 4])
    with pytest.raises(ValueError, match="does not fit"):
        Windows(3, 4, 5, 0)


def test_context_masks_cover_every_kind_and_never_every_step():
    g = torch.Generator().manual_seed(0)
    masks = draw_masks(4000, 8, {k: 1.0 for k in KINDS}, g)
    counts = masks.sum(1)
    assert counts.max() < 8 and (counts == 0).float().mean() > 0.15       # none known for about 1/5
    prefixes = masks & ~masks[:, :1].logical_not()                         # rows starting with a known frame
    assert (masks[:, 0] & ~masks[:, -1]).any() and (~masks[:, 0] & masks[:, -1]).any() and prefixes.any()
    only_prefix = draw_masks(50, 8, {"prefix": 1.0}, g)
    assert all(row[:int(row.sum())].all() for row in only_prefix)          # known steps form a prefix
    x = torch.randn(2, 3, 8, 4, 4)
    cond = context_input(x, only_prefix[:2], time_dim=2)
    assert cond.shape == (2, 4, 8, 4, 4)
    for b in range(2):
        k = int(only_prefix[b].sum())
        assert torch.equal(cond[b, :3, :k], x[b, :, :k]) and (cond[b, :3, k:] == 0).all()
        assert (cond[b, 3, :k] == 1).all() and (cond[b, 3, k:] == 0).all()


def test_the_frame_evaluator_trains_as_many_steps_as_the_clip_evaluator(monkeypatch):
    """8 frames per clip: the frame evaluator's epochs are the clip evaluator's divided by 8."""
    from mmdiff.data.dataset import Dataset
    from mmdiff.modalities.video import VideoModality
    from mmdiff.tasks import eval as eval_task
    seen = {}
    monkeypatch.setattr(eval_task, "load_or_train_evaluator", lambda data, modality, **kw: seen.update(n=len(data), **kw))
    clips = Dataset(torch.rand(6, 1, 8, 12, 12), torch.arange(6) % 2, ["a", "b"], "clips")
    options = {"evaluator": {"epochs": 32, "max_seconds": 60}}
    eval_task.frame_evaluator_for(clips, None, VideoModality(fps=10, mp4=False), {"dataset": {}}, options, False)
    assert seen["n"] == 48 and seen["epochs"] == 4 and seen["max_seconds"] == 60
    assert options["evaluator"]["epochs"] == 32  # the clip evaluator's options are left alone
