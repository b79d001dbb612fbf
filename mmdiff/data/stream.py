"""Data that does not fit in memory: decoded once into an on-disk array, then read in batches by a
DataLoader with workers, in an order fixed by (seed, step).

A loader returns either a :class:`~mmdiff.data.dataset.Dataset` held in memory (the built-in sets) or
:class:`Files`, a list of files that nothing has decoded yet (the folder loaders). :func:`prepare` decides
where the data lives (``dataset.streaming``: true, false, or auto: streamed above ``data.stream_above_gb``):

- in memory: the files are decoded into one tensor (the trainer then puts the whole set, encoded, on the
  training device: the fastest path for small sets);
- streamed: every item is decoded once, by DataLoader workers, into a float32 array on disk (a cache keyed
  by the files' names, sizes and modification times and the loader's options, reused by later runs), and
  the Dataset's ``data`` is a memory map of it: pages are read when a batch needs them. The trainer reads
  batches with :func:`batch_loader` and encodes them on the training device.

Files that cannot be decoded are skipped and counted in both cases, before training starts, so the set of
items (and with it the data order and exact resume) is fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..atomic import atomic_path, write_text
from ..errors import UserError
from .cache import cache_path
from .dataset import Dataset
from .order import Batches
from .scan import report_failures, try_load

log = logging.getLogger(__name__)

FORMAT = 2  # of the cache's metadata file (2: window and extras)


@dataclass
class Files:
    """Labelled files not decoded yet. ``load_one(path)`` -> one item [C, *spatial] float32 in the
    modality's natural range (it must be picklable: a module-level function or a functools.partial of one,
    since DataLoader workers call it); ``options`` describes it for the cache key (the loader's options)."""

    items: list[tuple[Path, int]]
    load_one: Callable[[Path], torch.Tensor]
    class_names: list[str]
    name: str
    what: str                          # "image", "audio", ...: in messages about unreadable files
    root: Path | None = None           # where a cache may go (next to the data)
    options: dict = field(default_factory=dict)
    window: int | None = None          # see Dataset.window
    texts: list[str | None] | None = None  # a caption per file (see Dataset.texts), or None

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, positions: slice) -> Files:
        """The files at ``positions`` (a slice of the list)."""
        return dataclasses.replace(self, items=self.items[positions],
                                   texts=None if self.texts is None else self.texts[positions])

    def fingerprint(self) -> str:
        """sha256 of what decoding depends on: the files (name, size, modification time, class), the class
        names and the loader's options."""
        h = hashlib.sha256(json.dumps({"name": self.name, "classes": self.class_names, "options": self.options,
                                       "window": self.window,
                                       "load": f"{getattr(self.load_one, 'func', self.load_one).__module__}."
                                               f"{getattr(self.load_one, 'func', self.load_one).__qualname__}"},
                                      sort_keys=True, default=str).encode())
        for path, label in self.items:
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
        if self.texts is not None:  # the cache holds the captions too: an edited one makes a new cache
            h.update(json.dumps(self.texts).encode())
        return h.hexdigest()

    def load(self) -> Dataset:
        """Decode every file into memory (unreadable ones skipped with one warning)."""
        loaded, labels, failures, kept = [], [], [], []
        for i, (path, label) in enumerate(self.items):
            value, why = try_load(self.load_one, path)
            if why is None:
                loaded.append(value)
                labels.append(label)
                kept.append(i)
            else:
                failures.append((path, why))
        report_failures(len(loaded), failures, self.what)
        return Dataset(torch.stack(loaded).to(torch.float32), torch.tensor(labels, dtype=torch.int64),
                       self.class_names, self.name, window=self.window, texts=self.texts_of(kept))

    def texts_of(self, kept: list[int]) -> list[str | None] | None:
        """The captions of the files at positions ``kept`` (those that decoded), or None without captions."""
        return None if self.texts is None else [self.texts[i] for i in kept]


def prepare(loaded: Dataset | Files, streaming: bool | str = "auto", *, stream_above_gb: float = 2.0,
            workers: int = 2, cache: str | None = None) -> Dataset:
    """The dataset in memory, or streamed from a disk cache (see the module docstring). ``streaming``: true,
    false or "auto" (streamed when the decoded data would take more than ``stream_above_gb`` GB);
    ``workers``: DataLoader processes that decode files into the cache; ``cache``: the folder of the cache
    (None: next to the data if writable, else $MMDIFF_CACHE/data or ~/.cache/mmdiff/data)."""
    if streaming not in (True, False, "auto"):
        raise UserError(f"dataset.streaming={streaming} is invalid: use true, false or auto")
    if isinstance(loaded, Dataset):
        big = loaded.data.numel() * 4 > stream_above_gb * 1e9
        return to_disk(loaded, cache) if streaming is True or (streaming == "auto" and big) else loaded
    if streaming == "auto":
        first = next((v for p, _ in loaded.items[:16] if (v := try_load(loaded.load_one, p)[0]) is not None), None)
        streaming = first is not None and first.numel() * 4 * len(loaded) > stream_above_gb * 1e9
    return decode_to_disk(loaded, workers, cache) if streaming else loaded.load()


# --- the cache: a float32 array on disk and a JSON file that says it is complete -----------------------

def _paths(fingerprint: str, root, cache: str | None) -> tuple[Path, Path]:
    name = f"data-{fingerprint[:16]}"
    base = Path(cache).expanduser() / f"{name}.f32" if cache else cache_path(f"{name}.f32", "data", root)
    return base, base.with_suffix(".json")


def _open(array: Path, meta: dict, name: str) -> Dataset:
    shape = (meta["n"], *meta["shape"])
    data = torch.from_numpy(np.memmap(array, np.float32, "c", shape=shape))  # "c": pages stay shared until written
    extras = {k: torch.tensor(v["values"], dtype=getattr(torch, v["dtype"])) for k, v in meta["extras"].items()}
    return Dataset(data, torch.tensor(meta["labels"], dtype=torch.int64), meta["class_names"], name, cache=array,
                   extras=extras, window=meta["window"], texts=meta.get("texts"))


def _meta(dataset_like, n: int, shape, labels: list[int], skipped: int, extras: dict | None = None,
          texts: list | None = None) -> dict:
    return {"format": FORMAT, "n": n, "shape": list(shape), "labels": labels, "class_names": dataset_like.class_names,
            "skipped": skipped, "window": dataset_like.window, "texts": texts,
            "extras": {k: {"values": v.tolist(), "dtype": str(v.dtype).removeprefix("torch.")}
                       for k, v in (extras or {}).items()}}


def _cached(array: Path, meta_path: Path, name: str) -> Dataset | None:
    if not (array.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or array.stat().st_size != meta["n"] * math.prod(meta["shape"]) * 4:
            return None
        log.info("streaming %s from its cache %s (%d items)", name, array, meta["n"])
        return _open(array, meta, name)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finish(array: Path, meta_path: Path, meta: dict, name: str) -> Dataset:
    write_text(meta_path, json.dumps(meta) + "\n")  # written last: its presence marks a complete cache
    log.info("decoded %s once into %s (%d items, %.2f GB)", name, array, meta["n"],
             meta["n"] * math.prod(meta["shape"]) * 4 / 1e9)
    return _open(array, meta, name)


def to_disk(dataset: Dataset, cache: str | None = None) -> Dataset:
    """An in-memory dataset written to (or found in) the disk cache, as a memory-mapped Dataset."""
    h = hashlib.sha256(json.dumps([dataset.name, dataset.class_names, list(dataset.data.shape), dataset.window,
                                   sorted(dataset.extras)]).encode())
    for t in (dataset.data, dataset.labels, *dataset.extras.values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    if dataset.texts is not None:
        h.update(json.dumps(dataset.texts).encode())
    array, meta_path = _paths(h.hexdigest(), None, cache)
    found = _cached(array, meta_path, dataset.name)
    if found is not None:
        return found
    with atomic_path(array) as tmp:
        dataset.data.detach().cpu().to(torch.float32).contiguous().numpy().tofile(tmp)
    meta = _meta(dataset, len(dataset), dataset.shape, dataset.labels.tolist(), 0, dataset.extras, dataset.texts)
    return _finish(array, meta_path, meta, dataset.name)


class _Decode(torch.utils.data.Dataset):
    """Item i of ``files``: (its decoded tensor, or None and why not) -- for DataLoader workers."""

    def __init__(self, files: Files):
        self.items, self.load_one = files.items, files.load_one

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return try_load(self.load_one, self.items[i][0])


def _unbatched(item):
    return item


def decode_to_disk(files: Files, workers: int = 2, cache: str | None = None) -> Dataset:
    """Decode every file once, ``workers`` at a time, into the disk cache (or find it there); unreadable
    files are skipped and counted in one warning."""
    array, meta_path = _paths(files.fingerprint(), files.root, cache)
    found = _cached(array, meta_path, files.name)
    if found is not None:
        return found
    loader = DataLoader(_Decode(files), batch_size=None, num_workers=workers, collate_fn=_unbatched,
                        generator=torch.Generator())  # leaves the global RNG alone: a cache hit trains the same
    labels, failures, shape, kept = [], [], None, []
    with atomic_path(array) as tmp, open(tmp, "wb") as out:
        for i, ((path, label), (value, why)) in enumerate(zip(files.items, loader)):
            if why is None and shape is not None and list(value.shape) != shape:
                why = f"decoded to shape {list(value.shape)}, not {shape} like the others"
            if why is not None:
                failures.append((path, why))
                continue
            shape = shape or list(value.shape)
            out.write(value.to(torch.float32).contiguous().numpy().tobytes())
            labels.append(label)
            kept.append(i)
        out.flush()
        report_failures(len(labels), failures, files.what)
    meta = _meta(files, len(labels), shape, labels, len(failures), texts=files.texts_of(kept))
    return _finish(array, meta_path, meta, files.name)


# --- reading batches for training ---------------------------------------------------------------------

class _Rows(torch.utils.data.Dataset):
    """Rows of a cached array, opened lazily in each worker; ``__getitems__`` reads a whole batch at once."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape, self._data = path, shape, None

    def __len__(self) -> int:
        return self.shape[0]

    def _array(self) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.path, np.float32, "r", shape=self.shape)
        return self._data

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._array()[i]))

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(self._array()[np.asarray(indices)])  # fancy indexing copies just these rows


class StepSampler(Sampler):
    """The indices a process reads at each step from ``start``: the ``part`` of step s's global batch
    (``Batches.indices(s)``), so that the data order stays a function of (seed, step)."""

    def __init__(self, batches: Batches, start: int, part: slice):
        self.batches, self.start, self.part = batches, start, part

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.batches.indices(step)[self.part].tolist()
            step += 1


def batch_loader(dataset: Dataset, batches: Batches, start: int, part: slice, workers: int,
                 pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Data batches [len(part), *shape] of a streamed dataset, step after step from ``start`` (read ahead
    by ``workers`` processes; 0 reads in this process)."""
    if getattr(dataset, "cache", None) is None:
        raise ValueError("batch_loader reads streamed datasets (mmdiff.data.stream.prepare(..., streaming=True))")
    rows = _Rows(dataset.cache, (len(dataset), *dataset.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns when a loader's length is unknown
        # a generator of its own: creating the iterator must not draw from the global RNG (dropout's), or a
        # resumed run would drift from an uninterrupted one
        return iter(DataLoader(rows, batch_sampler=StepSampler(batches, start, part), num_workers=workers,
                               collate_fn=_unbatched, pin_memory=pin_memory, generator=torch.Generator(),
                               persistent_workers=workers > 0, prefetch_factor=4 if workers else None))
