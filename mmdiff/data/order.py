"""The order in which training reads the data: a function of (seed, step) alone, so a resumed run reads
what an uninterrupted one would have, in memory or streamed."""

from __future__ import annotations

import torch


class Batches:
    """Deterministic mini-batches without replacement: epoch e is a permutation drawn from seed + e,
    and step s reads batch s % per_epoch of epoch s // per_epoch (the last partial batch is dropped)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = max(1, n // batch_size)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        """The global batch of ``step``: [batch_size] int64 indices into the dataset."""
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return self._perm[k * self.batch_size:(k + 1) * self.batch_size]
