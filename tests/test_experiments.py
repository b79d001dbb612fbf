"""The experiment presets (conf/experiment/, ``+experiment=NAME``): each composes, passes the run checks, states
its budgets and quality, and builds its data, modality and model, which then denoise a batch of its data.

MNIST and FSDD are built from the shared copies beside the checkout (skipped with a reason where absent);
Fashion-MNIST, CIFAR-10 and SC09 are not available offline, so their presets are checked against the loader
they name and then built from a few files of the real format made here."""

from __future__ import annotations

import gzip
import inspect
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import get_method
from PIL import Image

from mmdiff.build import (DATASET_KEYS, build_dataset, build_denoiser, build_modality, check_run_config, data_info,
                          resolve_modality_config, resolve_model_config)
from mmdiff.data import splits

from .conftest import CONF, SHARED_DATA, compose_config

# preset -> (the loader its dataset node names, the modality, the data's shape, the shared copy or None)
PRESETS = {
    "mnist": ("mmdiff.data.images.load_mnist", "image", [1, 28, 28], SHARED_DATA / "mnist"),
    "fashion_mnist": ("mmdiff.data.images.load_mnist", "image", [1, 28, 28], None),
    "cifar10": ("mmdiff.data.images.load_image_folder", "image", [3, 32, 32], None),
    "fsdd": ("mmdiff.data.audio.load_fsdd", "audio", [1, 8000], SHARED_DATA / "fsdd"),
    "sc09": ("mmdiff.data.audio.load_audio_folder", "audio", [1, 16000], None),
}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def preset_text(name: str) -> str:
    return (CONF / "experiment" / f"{name}.yaml").read_text()


def test_there_is_a_preset_per_supported_dataset():
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_passes_the_checks_and_states_its_budgets(name):
    loader, modality, _, shared = PRESETS[name]
    cfg = compose_config([f"+experiment={name}"])
    check_run_config(cfg)
    assert cfg.dataset._target_ == loader and cfg.dataset.modality == modality
    assert cfg.modality._target_.rsplit(".", 1)[-1].lower() == f"{modality}modality"
    # every option of the dataset node (but the ones mmdiff reads itself) is an argument of its loader
    takes = set(inspect.signature(get_method(loader)).parameters)
    assert set(cfg.dataset) - {"_target_", *DATASET_KEYS} <= takes
    # mode=eval has held-out data to measure the preset's quality against
    assert splits.held_out(cfg.dataset.split) is not None
    text = preset_text(name)
    assert text.startswith("# @package _global_\n")
    assert "CPU budget: trainer.max_s" in text and "GPU budget: unmeasured: no GPU was available" in text
    assert "Quality:" in text and f"+experiment={name}" in text and "mode=eval" in text
    if shared is None:
        assert "unmeasured here: the dataset is not available offline" in text


def test_command_line_options_still_win_over_a_preset():
    cfg = compose_config(["+experiment=fsdd", "trainer.max_steps=7", "dataset.root=elsewhere", "model.channels=16"])
    assert (cfg.trainer.max_steps, cfg.dataset.root, cfg.model.channels) == (7, "elsewhere", 16)
    assert cfg.modality._target_.endswith("AudioModality")  # the preset's modality, over the default image


def test_fsdd_suggests_its_mel_hop_and_the_command_line_still_wins():
    def hop(overrides):
        return resolve_modality_config(compose_config(overrides))["options"]["mel"]["hop_length"]
    assert hop(["modality=audio"]) == 64  # the built-in notes: the modality's own default
    assert hop(["modality=audio", "dataset=fsdd"]) == hop(["+experiment=fsdd"]) == 128
    assert hop(["modality=audio", "dataset=fsdd", "modality.options.mel.hop_length=32"]) == 32
    assert hop(["+experiment=sc09"]) == 128  # its own mel settings


# --- a few files of each real format, for the datasets that are not here ------------------------------------

def _idx(path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist_layout(root, n: int = 30) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    _idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
    _idx(root / "train-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)


def fake_image_folder(root, per_class: int = 5) -> None:
    rng = np.random.default_rng(0)
    for c in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(root / c / f"{i:05d}.png")


def fake_audio_folder(root, per_class: int = 5) -> None:
    t = np.arange(12000) / 16000  # 0.75 s: SC09 clips are at most 1 s, shorter ones are padded
    for k, word in enumerate(WORDS):
        (root / word).mkdir(parents=True)
        for i in range(per_class):
            sf.write(root / word / f"{i:08x}_nohash_0.wav", 0.5 * np.sin(2 * np.pi * (200 + 50 * k + i) * t), 16000)


def data_overrides(name: str, tmp_path) -> list[str]:
    shared = PRESETS[name][3]
    if shared is not None:
        if not shared.exists():
            pytest.skip(f"the shared copy {shared} is not here")
        return [f"dataset.root={shared}"] + (["dataset.split=test::8000"] if name == "mnist" else [])
    root = tmp_path / name
    {"fashion_mnist": fake_mnist_layout, "cifar10": fake_image_folder, "sc09": fake_audio_folder}[name](root)
    return [f"dataset.root={root}"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_its_data_modality_and_model(name, tmp_path):
    _, _, shape, _ = PRESETS[name]
    cfg = compose_config([f"+experiment={name}", *data_overrides(name, tmp_path), f"data.cache={tmp_path / 'cache'}",
                          "data.workers=0"])
    dataset = build_dataset(cfg)
    assert list(dataset.shape) == shape and dataset.num_classes == 10
    if name == "mnist":
        assert len(dataset) == 8000           # test::8000 of the shared MNIST test set
    if name == "fashion_mnist":
        assert dataset.class_names[0] == "T-shirt/top" and dataset.name == "fashion_mnist"
    if name == "sc09":
        assert dataset.class_names == sorted(WORDS) and len(dataset) == 40  # every 5th clip of a word held out
    modality = build_modality(resolve_modality_config(cfg))
    x = modality.encode(dataset.data[:2].float())
    if name == "fsdd":
        assert x.shape[1:] == (1, 64, 64)  # 1 s at the dataset's suggested hop of 128 samples
    info = data_info(x, dataset)
    denoiser = build_denoiser(cfg, resolve_model_config(cfg.model, info, cfg.get("time_context")), info)
    stated = float(re.search(r"\(([\d.]+)M parameters\)", preset_text(name))[1])
    assert round(sum(p.numel() for p in denoiser.parameters()) / 1e6, 2) == stated  # the comment is the model
    with torch.no_grad():
        out = denoiser(x, torch.full((2,), 1.0), torch.tensor([0, 1]))
    assert out.shape == x.shape and torch.isfinite(out).all()
