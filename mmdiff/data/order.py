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


class Windows:
    """Training windows of ``window`` steps in items of ``length`` steps along the first spatial axis (the time
    axis of video data): item i's window in epoch e starts at an offset drawn from (seed, e), so every epoch
    sees other windows and a resumed run the same ones."""

    def __init__(self, n: int, length: int, window: int, seed: int):
        if not 0 < window <= length:
            raise ValueError(f"a window of {window} steps does not fit items of {length}")
        self.n, self.length, self.window, self.seed = n, length, window, seed
        self._epoch, self._offsets = -1, None

    def offsets(self, epoch: int) -> torch.Tensor:
        """[n] int64 window starts of every item in ``epoch``."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_019 + epoch + 7)
            self._epoch, self._offsets = epoch, torch.randint(0, self.length - self.window + 1, (self.n,), generator=g)
        return self._offsets

    def cut(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """x [B, C, length, ...] -> [B, C, window, ...], item b from offsets[b]."""
        t = (offsets.to(x.device)[:, None] + torch.arange(self.window, device=x.device))      # [B, window]
        index = t.view(x.shape[0], 1, self.window, *[1] * (x.ndim - 3)).expand(-1, x.shape[1], -1, *x.shape[3:])
        return torch.gather(x, 2, index)
