"""The dataset every loader returns, whatever the modality: in memory, or memory-mapped from a disk cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Dataset:
    """A whole labelled dataset (in memory, or memory-mapped: see ``cache``).

    data:        [N, C, *spatial] float32, in the modality's natural range (images: [0, 1]).
    labels:      [N] int64, each in [0, len(class_names)).
    class_names: the name of class i at index i.
    name:        what it is, e.g. "digits", "mnist", "image_folder".
    cache:       the file ``data`` is memory-mapped from when the dataset is streamed (mmdiff.data.stream),
                 else None.
    extras:      per-item attributes a loader knows besides the label, each [N, ...] (e.g. the velocity of
                 a moving digit), for metrics and captions; carried by ``subset``.
    window:      for data with a time axis whose items are longer than what the model trains on: the
                 number of steps of the training window, drawn afresh per epoch (None: the whole item).
    texts:       a caption per item from the files themselves (a sidecar .txt, metadata.jsonl; None where an
                 item has none), or None: mmdiff.data.captions; carried by ``subset``.
    """

    data: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    cache: Path | None = field(default=None, compare=False)
    extras: dict[str, torch.Tensor] = field(default_factory=dict, compare=False)
    window: int | None = None
    texts: list[str | None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.data.ndim < 2:
            raise ValueError(f"data must be [N, C, *spatial], got shape {list(self.data.shape)}")
        if not self.data.is_floating_point():
            raise ValueError(f"data must be floating point, got {self.data.dtype}")
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be a 1-D int64 tensor, got {self.labels.dtype} {list(self.labels.shape)}")
        if len(self.data) != len(self.labels):
            raise ValueError(f"{len(self.data)} samples but {len(self.labels)} labels")
        bad = [k for k, v in self.extras.items() if len(v) != len(self.labels)]
        if bad:
            raise ValueError(f"extras {bad} do not have one entry per sample ({len(self.labels)})")
        if self.texts is not None and len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts for {len(self.labels)} samples")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")
        self.class_names = list(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (1, 8, 8)."""
        return tuple(self.data.shape[1:])

    def class_counts(self) -> list[int]:
        """How many samples each class has, in class order (zeros included)."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: Sequence[int] | torch.Tensor | slice) -> Dataset:
        """The samples at ``indices`` (positions in that order, a boolean mask or a slice),
        with the same classes and name."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices)
            if indices.dtype != torch.bool:
                indices = indices.to(torch.int64).reshape(-1)
        texts = None if self.texts is None else [self.texts[i] for i in torch.arange(len(self))[indices].tolist()]
        return Dataset(self.data[indices], self.labels[indices], self.class_names, self.name,
                       extras={k: v[indices] for k, v in self.extras.items()}, window=self.window, texts=texts)
