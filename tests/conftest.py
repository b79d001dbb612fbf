"""Shared fixtures: composing configs through Hydra's API, tiny settings, the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# A model and budget small enough for a test to train in a second or two on 2 CPU cores.
TINY = [
    "model.channels=16", "model.channel_mult=[1,2]", "model.num_blocks=1", "model.attn_levels=[1]",
    "model.head_channels=16", "model.groups=8", "model.dropout=0.0",
    "trainer.max_steps=6", "trainer.batch_size=16", "trainer.log_every=2", "trainer.sample_every=0",
    "trainer.checkpoint_every=0", "trainer.warmup_steps=2", "trainer.progress=false",
    "n=10", "steps=3", "batch_size=8",
]


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where CUDA is present."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Evaluators trained by any test are cached in a temporary folder, never in ~/.cache."""
    import os
    os.environ["MMDIFF_CACHE"] = str(tmp_path_factory.mktemp("mmdiff-cache"))


def compose_config(overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def tiny_cfg():
    """compose(extra overrides) -> a tiny training config."""
    return lambda *extra: compose_config(TINY + list(extra))
