"""Splits: which part of a dataset trains and which part measures.

A dataset config's ``split`` names a part of the data its loader knows (``train``, ``test``, ``all``), and may
take a slice of it in file order, written ``base:start:stop`` like a Python slice (the command line takes it
unquoted): ``test::8000`` (the first 8,000), ``test:8000:`` (the rest), ``train::80%``. Evaluation measures
samples against the *held-out* counterpart of the split a model trained on (:func:`held_out`): ``test`` for
``train``, the other end of a sliced split; a split without one (``all``, ``test``) has none, and evaluation
then says that it compares with the training data.

The built-in sets have held-out parts of their own: datasets without an official test split (the built-in
digits, image and audio folders) hold out every ``HOLD_OUT_EVERY``-th item of each class (:func:`every_kth`).
"""

from __future__ import annotations

import re

import torch

from ..errors import UserError

SPLITS = ("train", "test", "all")
HOLD_OUT_EVERY = 5      # 20 % of each class, in file order, when a dataset has no test split of its own
_SPEC = re.compile(r"^(?P<base>[a-z_]+)(?::(?P<lo>-?\d+%?)?:(?P<hi>-?\d+%?)?)?$")


def parse(spec: str) -> tuple[str, str | None, str | None]:
    """``"test::8000"`` -> ("test", None, "8000"); ``"train"`` -> ("train", None, None)."""
    m = _SPEC.match(str(spec).replace(" ", ""))
    if m is None or m["base"] not in SPLITS:
        raise UserError(f"dataset.split={spec} is not a split: use train, test or all, optionally sliced like "
                        "test::8000 (the first 8,000), test:8000: (the rest) or train::80%")
    return m["base"], m["lo"], m["hi"]


def _bound(value: str | None, n: int) -> int | None:
    if value is None:
        return None
    return round(n * int(value[:-1]) / 100) if value.endswith("%") else int(value)


def select(n: int, spec: str) -> slice:
    """The positions of ``spec``'s slice among the n items of its base split (all of them if unsliced)."""
    _, lo, hi = parse(spec)
    return slice(_bound(lo, n), _bound(hi, n))


def held_out(spec: str) -> str | None:
    """The split that holds what ``spec`` never trained on: ``train`` -> ``test``; ``X::k`` -> ``X:k:`` and
    ``X:k:`` -> ``X::k``; None when there is none (``all``, ``test``, a slice with both ends)."""
    base, lo, hi = parse(spec)
    if lo is None and hi is None:
        return "test" if base == "train" else None
    if lo is not None and hi is not None:
        return None
    return f"{base}:{hi}:" if lo is None else f"{base}::{lo}"


def every_kth(labels: torch.Tensor, split: str, k: int = HOLD_OUT_EVERY) -> torch.Tensor:
    """Indices of ``split`` (train, test or all) for a dataset without a test split of its own: the test part
    is every k-th item of each class in file order (the 1st, the (k+1)-th, ...), the train part the rest."""
    if split not in SPLITS:
        raise UserError(f"dataset.split={split} is not a split of this dataset: use train, test or all")
    if split == "all":
        return torch.arange(len(labels))
    rank = torch.zeros(len(labels), dtype=torch.long)
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    test = rank % k == 0
    return (test if split == "test" else ~test).nonzero().flatten()


def split_items(items: list[tuple], split: str) -> list[tuple]:
    """The (path, class) items of a folder in ``split`` (train, test or all; see :func:`every_kth`)."""
    if split not in SPLITS:
        raise UserError(f"dataset.split={split} is not a split of a folder: use train, test or all")
    labels = torch.tensor([c for _, c in items], dtype=torch.long)
    return [items[i] for i in every_kth(labels, split).tolist()]
