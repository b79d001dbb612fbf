"""The modality interface: everything the rest of mmdiff may ask of a kind of data.

The diffusion core, the trainer, the sampling and evaluation tasks and the build step know data only
through this class: model-space tensors [B, C, *spatial] and the methods below. Images, audio (and
video) implement it in their own modules; a third-party modality is a subclass named by ``_target_``
in a config file (tests/modalities/test_interface.py builds one in the test file and trains, samples,
edits and evaluates it through the CLI).

Three spaces:
- *data*: what a person sees or hears, as the modality's files hold it (images: uint8 [N, C, H, W];
  audio: float waveforms [N, 1, T] in [-1, 1]). ``decode`` returns it, ``write_samples`` writes it.
- *model space*: what the network denoises, [N, C, *spatial] with about unit scale (``encode``).
- *evaluator input*: what the evaluation classifier sees (:meth:`evaluator_frontend`).
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import UserError
from .gallery import Cell, Page, Shown, write_page
from .grid import label_names
from .media import Media, Picture


# The top-level options that mark what an edit regenerates, over all built-in modalities; each modality
# takes some of them (``Modality.edit_options``), and mode=sample names the right ones when another is given.
MASK_OPTIONS = ("mask", "box", "gap", "context")


@dataclass
class Loaded:
    """A file read for editing: ``x`` [1, *shape] in model space, prepared like the training data;
    ``data`` [1, ...] the file's content in data space as it was (what :meth:`Modality.restore` puts
    back outside the edited part); ``gain`` the factor the preparation applied to ``data`` (audio's
    loudness normalisation), undone on the way out."""

    x: torch.Tensor
    data: torch.Tensor
    gain: float = 1.0


class Modality(ABC):
    """A kind of data. Subclasses set the class attributes and implement the abstract methods.

    Class attributes:
    - ``name``: what the data is called in messages and tables ("image", "audio").
    - ``unit``: what training counts per second (metrics.csv's ``<unit>_per_s`` column).
    - ``sample_suffix``: the file extension of one written sample; ``mode=eval samples=FOLDER`` reads
      ``sample_XXXXX.<suffix>``.
    - ``fd_name``: the key of the Fréchet distance in evaluation tables ("fd", "fad", "fvd").
    - ``edit_options``: the top-level options whose masks :meth:`edit_mask` builds (e.g. box, mask).
    - ``time_unit``: the unit of time values (gap=, extend=) for data with a time axis, else None.
    - ``inception_fid``: whether Inception FID applies (2-D images).
    - ``evaluator_channels``: the widths of the evaluation classifier's stages for this kind of data;
      ``evaluator_net``: its other options (mmdiff.eval.evaluator.EvaluatorNet); ``evaluator_targets``: the
      dataset ``extras`` it also learns to predict where the data has them (e.g. a clip's direction).
    - ``decoder_file``: the name of a learned decoder's file (audio: "vocoder.safetensors"), picked up when it
      lies beside a checkpoint (mmdiff.model.Model.from_checkpoint); None where the modality has none.
    """

    name: ClassVar[str]
    unit: ClassVar[str]
    sample_suffix: ClassVar[str]
    fd_name: ClassVar[str] = "fd"
    edit_options: ClassVar[tuple[str, ...]] = ()
    time_unit: ClassVar[str | None] = None
    inception_fid: ClassVar[bool] = False
    evaluator_channels: ClassVar[tuple[int, ...]] = (32, 64, 128)
    evaluator_net: ClassVar[dict] = {}
    evaluator_targets: ClassVar[tuple[str, ...]] = ()
    decoder_file: ClassVar[str | None] = None

    # --- configuration ---------------------------------------------------------------------------

    @classmethod
    def resolve_config(cls, cfg: dict, model: dict) -> dict:
        """The modality config with ``auto`` options filled in from the model config (``model`` has the
        model node's keys plus ``total_downsampling``). Called by mmdiff.build before construction."""
        return cfg

    # --- model space -----------------------------------------------------------------------------

    @abstractmethod
    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Data [N, ...] (the dataset's natural range) -> model space [N, C, *spatial]."""

    @abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> data (on the CPU), what :meth:`write_samples` writes."""

    @abstractmethod
    def axes(self, shape: Sequence[int]) -> tuple[str, ...]:
        """Names of the spatial axes of model-space items of shape [C, *spatial], e.g. ("height",
        "width"); "time" names the time axis, if any."""

    def time_dim(self, shape: Sequence[int]) -> int | None:
        """The dim of the time axis in a batch [B, C, *spatial] of items of ``shape``, or None."""
        axes = self.axes(shape)
        return 2 + axes.index("time") if "time" in axes else None

    def time_steps(self, amount: float) -> int:
        """How many steps of the model-space time axis ``amount`` (in ``time_unit``) takes."""
        takes = ", ".join(f"{k}=" for k in self.edit_options) or "strength="
        raise UserError(f"{self.name} data has no time axis to continue or count along (extend=): for edits use "
                        f"{takes}")

    # --- learned decoders (audio: a vocoder instead of Griffin-Lim) ---------------------------------

    def decoder_settings(self) -> dict:
        """What a learned decoder of this model space must be trained for (JSON-able; audio: the log-mel
        settings). The default: a UserError, the modality has no learned decoder."""
        raise UserError(f"{self.name} data has no learned decoder: mode=train_vocoder is for audio with the mel "
                        "representation (modality=audio)")

    def use_decoder(self, path: str | Path | None) -> None:
        """Decode with the learned decoder in the file ``path`` from now on (None: with the built-in decoder
        again); a file trained for other settings than :meth:`decoder_settings` is a UserError. The default:
        a UserError for a file, the modality has no learned decoder."""
        if path is not None:
            raise UserError(f"{self.name} data has no learned decoder to load from {path}: drop vocoder=")

    def decoder_hint(self) -> str | None:
        """A line for the log when a learned decoder would decode better than the one in use (audio: log-mel
        decoded by Griffin-Lim), else None."""
        return None

    # --- files -----------------------------------------------------------------------------------

    @abstractmethod
    def read(self, path: str | Path, shape: Sequence[int]) -> Loaded:
        """A file (e.g. one to edit) -> :class:`Loaded`, prepared like the training data so that it
        encodes to model-space items of ``shape``. A missing or unreadable file is a UserError."""

    @abstractmethod
    def write_samples(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                      out_dir: Path) -> list[Path]:
        """Write decoded samples into ``out_dir`` (created): ``sample_00000.<sample_suffix>`` ... in batch
        order, a grid, and whatever else shows them (the built-in modalities: the gallery page index.html,
        :meth:`write_gallery`, last). Returns the paths written."""

    @abstractmethod
    def write_grid(self, data: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                   path: Path) -> Path:
        """One preview image of decoded samples at ``path`` (a row per class when labelled), with any
        companion file beside it (audio: a WAV). Returns ``path``."""

    @abstractmethod
    def read_samples(self, paths: Sequence[Path]) -> torch.Tensor:
        """Sample files written by :meth:`write_samples` -> data [N, ...], in the given order. A file that
        cannot be read, or does not fit the others, is a UserError."""

    # --- previews: what loggers show and what the gallery page holds ------------------------------

    def media(self, data: torch.Tensor, labels: torch.Tensor | None,
              class_names: list[str] | None) -> list[Media]:
        """Decoded samples -> what a logger shows of them (mmdiff.modalities.media: pictures, sounds, clips),
        each with a name that stays the same from one preview to the next. The default: the preview image of
        :meth:`write_grid`, as one picture named "grid"."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.write_grid(data, labels, class_names, Path(tmp) / "grid.png")
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("L" if im.mode == "L" else "RGB"))
        return [Picture("grid", pixels.reshape(*pixels.shape[:2], -1))]

    def gallery_cells(self, n: int, labels: torch.Tensor | None,
                      class_names: list[str] | None) -> tuple[list[Shown], list[Cell]]:
        """The gallery page's content for ``n`` samples as :meth:`write_samples` names its files: the overview
        items (the grid) and a cell per sample (its files, its class name). The default: grid.png and
        ``sample_XXXXX.<sample_suffix>``, each shown by the kind its suffix says."""
        names = label_names(labels, class_names, n)
        cells = [Cell(i, names[i] if names else None,
                      (Shown.of(f"sample_{i:05d}.{self.sample_suffix}", f"sample {i}"),)) for i in range(n)]
        return [Shown("image", "grid.png", "All samples, a row per class" if names else "All samples")], cells

    def write_gallery(self, out_dir: Path, n: int, labels: torch.Tensor | None, class_names: list[str] | None,
                      page: Page | None = None) -> Path:
        """``out_dir``/index.html (mmdiff.modalities.gallery): the ``n`` samples that :meth:`write_samples` wrote
        there, cell by cell, under ``page``'s sampler settings and run config. Returns its path."""
        overview, cells = self.gallery_cells(n, labels, class_names)
        page = page or Page()
        if page.title is None:
            page = replace(page, title=f"{n} {self.name} samples")
        return write_page(Path(out_dir) / "index.html", overview, cells, page)

    # --- editing ---------------------------------------------------------------------------------

    def edit_mask(self, options: dict[str, Any], shape: Sequence[int]) -> torch.Tensor | None:
        """The inpainting mask (bool, True = keep, broadcastable to [1, *shape]) that ``options`` (the
        given ones among ``edit_options``, at most one) describe, or None when none is given."""
        if options:
            raise UserError(f"{self.name} data has no editing masks: drop {', '.join(options)}")
        return None

    def restore(self, edited: torch.Tensor, original: Loaded, keep: torch.Tensor) -> torch.Tensor:
        """Decoded edited samples [N, ...] with the original's data put back where ``keep`` (a model-space
        mask as :meth:`edit_mask` gives, over the edited samples' model-space shape) says, exactly; where
        the model-space mask maps onto data one to one this is a plain selection."""
        source = torch.zeros(edited.shape[1:], dtype=edited.dtype)
        inside = torch.zeros(edited.shape[1:], dtype=torch.bool)  # an extension: the original covers the start
        covered = tuple(slice(0, s) for s in original.data.shape[1:])
        source[covered], inside[covered] = original.data[0].to(edited.dtype), True
        return torch.where(keep.cpu() & inside, source, edited.cpu())

    # --- evaluation ------------------------------------------------------------------------------

    def eval_data(self, data: torch.Tensor, reference_shape: Sequence[int]) -> torch.Tensor:
        """Decoded samples -> float data comparable with real data items of ``reference_shape`` (what
        the evaluator reads). A shape that cannot be compared is a UserError."""
        data = data.float()
        if tuple(data.shape[1:]) != tuple(reference_shape):
            raise UserError(f"the samples have shape {list(data.shape[1:])} but the real data {list(reference_shape)}: "
                            "evaluate samples against the dataset their model was trained on")
        return data

    def evaluator_frontend(self, config: dict | None = None) -> tuple[dict, nn.Module]:
        """The evaluation classifier's input transform: (its JSON-able config, the module mapping float
        data [N, ...] -> [N, C, *spatial]). ``config`` rebuilds a stored one; None makes the default.
        The default is the identity."""
        return dict(config or {}), nn.Identity()

    def frames(self, data: torch.Tensor) -> tuple[torch.Tensor, Modality] | None:
        """Data whose items are sequences of pictures (video) -> (every frame as an item of its own [N * T, ...],
        the modality of a frame), for per-frame metrics; None for data without frames (the default)."""
        return None

    def statistics(self, data: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-item summary statistics of float data [N, ...] (``eval_data``'s), each [N]: evaluation compares
        their distributions in samples and real data (Wasserstein-1, beside the real-vs-real floor). None by
        default; video measures motion (the speed and frame-to-frame change of clips)."""
        return {}

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random class-preserving change of evaluator inputs [N, C, *spatial] for its training: a
        translation by up to 1/8 of each spatial size, zero-padded (subclasses may choose otherwise)."""
        return translate(x, generator)


def translate(x: torch.Tensor, generator: torch.Generator, dims: Sequence[int] | None = None) -> torch.Tensor:
    """Shift [N, C, *spatial] by a random offset of up to 1/8 of each size along ``dims`` (default: every
    spatial dim), filling with zeros."""
    dims = list(range(2, x.ndim)) if dims is None else [d % x.ndim for d in dims]
    for d in dims:
        size = x.shape[d]
        pad = max(1, size // 8)
        shift = int(torch.randint(-pad, pad + 1, (1,), generator=generator))
        if shift:
            x = torch.roll(x, shift, dims=d)
            index = torch.arange(size, device=x.device)
            outside = (index < shift) if shift > 0 else (index >= size + shift)
            view = [1] * x.ndim
            view[d] = size
            x = x.masked_fill(outside.view(view), 0)
    return x


def pad_or_crop(x: torch.Tensor, length: int) -> torch.Tensor:
    """[..., T] cropped or zero-padded at the end to [..., length]."""
    T = x.shape[-1]
    return x[..., :length] if T >= length else F.pad(x, (0, length - T))
