"""Streaming: data decoded once into a disk cache, read in batches by a DataLoader in the order fixed by
(seed, step), with exact resume."""

import csv
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.checkpoint import load_checkpoint
from mmdiff.data import stream as stream_module
from mmdiff.data.images import load_digits, load_image_folder
from mmdiff.data.order import Batches
from mmdiff.data.stream import batch_loader, prepare
from mmdiff.errors import UserError
from mmdiff.tasks.train import train

from ..conftest import TINY, compose_config

STREAM = ["dataset.streaming=true", "data.workers=1"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def test_a_streamed_dataset_is_a_memory_map_of_the_same_data(cache):
    digits = load_digits(split="all")
    streamed = prepare(digits, True)
    assert streamed.cache is not None and streamed.cache.parent == cache and streamed.cache.is_file()
    assert streamed.cache.stat().st_size == digits.data.numel() * 4
    assert torch.equal(streamed.data, digits.data) and torch.equal(streamed.labels, digits.labels)
    assert streamed.class_names == digits.class_names and prepare(digits, False) is digits
    again = prepare(digits, True)  # found in the cache: not written again
    assert again.cache == streamed.cache and len(list(cache.iterdir())) == 2  # the array and its metadata


def test_auto_streams_above_the_threshold(cache):
    digits = load_digits(split="all")  # 1797 x 64 floats: 0.46 MB
    assert prepare(digits, "auto", stream_above_gb=1.0).cache is None
    assert prepare(digits, "auto", stream_above_gb=0.0004).cache is not None
    with pytest.raises(UserError, match="dataset.streaming=maybe is invalid"):
        prepare(digits, "maybe")


def test_the_loader_reads_each_step_s_part_of_its_batch_in_order(cache):
    digits = prepare(load_digits(split="all"), True)
    batches = Batches(len(digits), 12, seed=3)
    for workers in (0, 2):
        loader = batch_loader(digits, batches, start=5, part=slice(4, 12), workers=workers)
        for step in range(5, 9):
            assert torch.equal(next(loader), digits.data[batches.indices(step)[4:12]])


def write_images(root, broken=0):
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((12, 10, 3), colour, dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    for i in range(broken):
        (root / "class1" / f"broken{i}.png").write_bytes(b"not a png")


def test_folders_are_decoded_once_by_workers_skipping_broken_files(tmp_path, cache, monkeypatch):
    write_images(tmp_path / "data", broken=2)
    files = load_image_folder(str(tmp_path / "data"), size=8, channels=3)
    with pytest.warns(UserWarning, match="skipped 2 of 12 image files"):
        streamed = prepare(files, True, workers=2)
    in_memory = load_image_folder(str(tmp_path / "data"), size=8, channels=3)
    with pytest.warns(UserWarning):
        in_memory = in_memory.load()
    assert torch.equal(streamed.data, in_memory.data) and torch.equal(streamed.labels, in_memory.labels)
    assert streamed.cache.parent == tmp_path / "data" / ".mmdiff"  # next to the data, which is writable
    calls = []
    monkeypatch.setattr(stream_module, "try_load", lambda *a: calls.append(a) or (None, "decoded again"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing decoded, nothing skipped: the cache answers
        assert torch.equal(prepare(files, True, workers=0).data, streamed.data) and not calls
    (tmp_path / "data" / "class0" / "0.png").touch()  # a changed file: decoded again
    with pytest.raises(UserError, match="none of the 12 image files could be read"):
        prepare(load_image_folder(str(tmp_path / "data"), size=8, channels=3), True, workers=0)


def test_a_folder_of_nothing_readable_is_one_error(tmp_path, cache):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="none of the 1 image files could be read"):
        prepare(load_image_folder(str(tmp_path / "data"), size=8, channels=1), True, workers=0)
    assert not list((tmp_path / "data").rglob("*.f32"))  # no half-written cache left behind


def losses(run):
    return [float(r["loss"]) for r in csv.DictReader(open(run / "metrics.csv"))]


def test_streamed_training_resumes_bit_for_bit(tmp_path, cache):
    steps = ["trainer.log_every=1", "model.dropout=0.2"]
    full = load_checkpoint(train(compose_config(TINY + STREAM + steps), tmp_path / "full"))
    train(compose_config(TINY + STREAM + steps + ["trainer.max_steps=3"]), tmp_path / "part")
    resumed = load_checkpoint(train(compose_config(TINY + STREAM + steps + [
        f"trainer.resume={tmp_path / 'part' / 'last.safetensors'}"]), tmp_path / "part"))
    assert resumed.step == full.step == 6
    for group in ("model", "ema"):
        for k, v in getattr(full, group).items():
            assert torch.equal(getattr(resumed, group)[k], v), (group, k)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # the rows up to step 3 kept, none twice


def test_streamed_and_in_memory_training_take_the_same_steps(tmp_path, cache):
    train(compose_config(TINY + STREAM + ["trainer.log_every=1"]), tmp_path / "streamed")
    train(compose_config(TINY + ["trainer.log_every=1"]), tmp_path / "memory")
    # the same batches, noise and labels; only the encoding is done per batch (the same arithmetic per item)
    assert losses(tmp_path / "streamed") == pytest.approx(losses(tmp_path / "memory"), rel=1e-5)
