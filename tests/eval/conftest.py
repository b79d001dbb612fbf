"""Fixtures of the evaluation tests: a private evaluator cache per test, small digit subsets."""

import pytest
import torch

from mmdiff.data.images import load_digits


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def digits_subset(per_class: int):
    """The first ``per_class`` digits of each class."""
    ds = load_digits()
    return ds.subset(torch.cat([torch.nonzero(ds.labels == c).reshape(-1)[:per_class] for c in range(10)]))
