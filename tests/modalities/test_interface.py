"""The modality interface carries a kind of data mmdiff has never seen: a toy "vector" modality of [C, L]
tensors, defined in this file, trains, samples, edits and evaluates through the CLI (its configs live in a
temporary folder on Hydra's search path) without a line of the package knowing about it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.checkpoint import load_checkpoint
from mmdiff.cli import run
from mmdiff.config import compose
from mmdiff.data.dataset import Dataset
from mmdiff.errors import UserError
from mmdiff.modalities.base import Loaded, Modality

from ..conftest import ROOT

LENGTH = 32


class VectorModality(Modality):
    """Two-channel signals [2, L] in [-1, 1]: data and model space are the same; files are .npy."""

    name = "vector"
    unit = "vectors"
    sample_suffix = "npy"
    fd_name = "fvecd"
    edit_options = ("gap",)
    time_unit = "steps"
    evaluator_channels = (8, 16)

    def encode(self, data):
        return data.float()

    def decode(self, x):
        return x.detach().float().cpu().clamp(-1, 1)

    def axes(self, shape):
        return ("time",)

    def time_steps(self, amount):
        return int(amount)

    def read(self, path, shape):
        data = torch.from_numpy(np.load(path)).float()[None, :, :shape[-1]]
        return Loaded(self.encode(data), data)

    def write_samples(self, data, labels, class_names, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, v in enumerate(data):
            np.save(out_dir / f"sample_{i:05d}.npy", v.numpy())
            paths.append(out_dir / f"sample_{i:05d}.npy")
        return paths + [self.write_grid(data, labels, class_names, out_dir / "grid.png")]

    def write_grid(self, data, labels, class_names, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = ((data.flatten(1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, "L").save(path)
        return path

    def read_samples(self, paths: Sequence[Path]):
        return torch.stack([torch.from_numpy(np.load(p)) for p in paths])

    def edit_mask(self, options, shape):
        if "gap" not in options:
            return None
        a, b = (int(v) for v in options["gap"])
        keep = torch.ones(shape, dtype=torch.bool)
        keep[..., a:b] = False
        return keep


def load_vectors(n: int = 96, length: int = LENGTH, split: str = "train") -> Dataset:
    """Class 0: slow sines, class 1: fast sines, with random phases; "test" draws other phases."""
    g = torch.Generator().manual_seed({"train": 0, "test": 1}[split])
    t = torch.arange(length) / length
    labels = torch.arange(n) % 2
    phase = 2 * math.pi * torch.rand(n, 2, 1, generator=g)
    freq = torch.where(labels == 0, 1.0, 4.0)[:, None, None]
    return Dataset(0.8 * torch.sin(2 * math.pi * freq * t + phase), labels, ["slow", "fast"], "vectors")


@pytest.fixture(scope="module")
def search_path(tmp_path_factory):
    """conf/modality/vector.yaml and conf/dataset/vectors.yaml of a plug-in, outside the package."""
    conf = tmp_path_factory.mktemp("plugin_conf")
    (conf / "modality").mkdir()
    (conf / "dataset").mkdir()
    (conf / "modality" / "vector.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /model: unet1d\n  - override /dataset: vectors\n"
        f"modality:\n  _target_: {__name__}.VectorModality\n")
    (conf / "dataset" / "vectors.yaml").write_text(
        f"_target_: {__name__}.load_vectors\nmodality: vector\nstreaming: auto\nn: 96\nlength: {LENGTH}\n"
        "split: train\n")
    return f"hydra.searchpath=[file://{conf}]"


TINY_1D = ["modality=vector", "model.channels=16", "model.channel_mult=[1,2]", "model.num_blocks=1",
           "model.attn_levels=[1]", "model.head_channels=16", "model.patch_size=1", "model.down_factors=[2]",
           "trainer.batch_size=16", "trainer.log_every=5", "trainer.sample_every=0", "trainer.checkpoint_every=0",
           "trainer.warmup_steps=2", "trainer.progress=false", "n=8", "steps=4", "batch_size=8"]


@pytest.fixture(scope="module")
def checkpoint(search_path, tmp_path_factory):
    """Trained by `python -m mmdiff` itself, in a subprocess that imports this module as the plug-in."""
    out = tmp_path_factory.mktemp("vector_run")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "mmdiff", search_path, *TINY_1D, "trainer.max_steps=40",
                             f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "last.safetensors"


def cli(search_path, *overrides, run_dir):
    return run(compose([search_path, *TINY_1D, *overrides]), run_dir)


def test_trains_through_the_cli(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    assert ckpt.data == {"shape": [2, LENGTH], "class_names": ["slow", "fast"], "dataset": "vectors"}
    assert ckpt.config["modality"]["_target_"].endswith("VectorModality") and ckpt.config["model"]["dims"] == 1
    rows = (checkpoint.parent / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[6] == "vectors_per_s" and len(rows) == 1 + 40 // 5  # its unit names the column
    assert (checkpoint.parent / "samples" / f"step_{40:07d}.png").is_file()  # its own preview


def test_samples_edits_and_extends_through_the_cli(checkpoint, search_path, tmp_path):
    cli(search_path, "mode=sample", f"checkpoint={checkpoint}", f"out={tmp_path / 's'}", "class=fast",
        run_dir=tmp_path)
    samples = sorted((tmp_path / "s").glob("sample_*.npy"))
    assert len(samples) == 8 and json.loads((tmp_path / "s" / "labels.json").read_text()) == ["fast"] * 8
    init = samples[0]
    cli(search_path, "mode=sample", f"checkpoint={checkpoint}", f"out={tmp_path / 'gap'}", f"init={init}",
        "gap=[8,20]", "n=2", "resample=1", run_dir=tmp_path)
    original, edited = np.load(init), np.load(tmp_path / "gap" / "sample_00000.npy")
    assert np.array_equal(edited[:, :8], original[:, :8]) and np.array_equal(edited[:, 20:], original[:, 20:])
    assert not np.array_equal(edited[:, 8:20], original[:, 8:20])
    cli(search_path, "mode=sample", f"checkpoint={checkpoint}", f"out={tmp_path / 'ext'}", f"init={init}",
        "extend=24", "n=1", "resample=1", run_dir=tmp_path)
    longer = np.load(tmp_path / "ext" / "sample_00000.npy")
    assert longer.shape == (2, LENGTH + 24) and np.array_equal(longer[:, :LENGTH], original)
    with pytest.raises(UserError, match="box= is not an editing option of vector data: it takes gap="):
        cli(search_path, "mode=sample", f"checkpoint={checkpoint}", f"out={tmp_path / 'x'}", f"init={init}",
            "box=[0,0,1,1]", run_dir=tmp_path)


def test_evaluates_through_the_cli_against_held_out_vectors(checkpoint, search_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDIFF_CACHE", str(tmp_path / "cache"))
    result = cli(search_path, "mode=eval", f"checkpoint={checkpoint}", "n=24", "eval.kid_subsets=5",
                 "eval.evaluator.epochs=3", run_dir=tmp_path)
    assert result["modality"] == "vector" and result["split"].startswith("split test (held out")
    assert set(result["metrics"]) == {"fvecd", "kid", "precision", "recall", "accuracy"}
    assert result["evaluator"]["n_train"] == 96 and result["n_real"] == 96
    assert all(math.isfinite(m["samples"]) for m in result["metrics"].values())


def test_a_vector_dataset_refuses_another_modality(search_path):
    with pytest.raises(UserError, match="dataset vectors holds vector data but modality=image"):
        run(compose([search_path, "dataset=vectors"]), "/tmp/unused")
