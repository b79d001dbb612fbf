"""Experiment trackers beside metrics.csv: the ``logger`` config group (conf/logger/).

``metrics.csv`` is always written by training (mmdiff.tasks.train.MetricsLog); these join it, as
lightning-hydra-template's logger group does (``logger=tensorboard``, ``logger=wandb``, several with
``'logger=[tensorboard,wandb]'`` or ``logger=many``):

- :class:`TensorBoardLogger`: event files in ``<run>/tensorboard`` (the offline convention: diffusers' and
  Lightning's default); a resumed run writes into the same folder and purges whatever was logged after its
  checkpoint, so every step appears once.
- :class:`WandbLogger`: Weights & Biases, offline by default (``<run>/wandb``, ``wandb sync`` uploads it
  later; ``logger.wandb.mode=online`` after ``wandb login``); the run id is stored in the checkpoint and a
  resumed run reopens the same run.
- :class:`CSVLogger`: tables (mode=eval's) as ``<run>/<name>.csv``; training's scalars are metrics.csv.

Every logger takes the same calls: the resolved config as hyper-parameters, scalars at a step, media (the
pictures, sounds and clips of mmdiff.modalities.media: what a preview is, said by the modality) and tables.
:func:`build_loggers` builds them from the config node; :class:`Loggers` fans a call out to all of them.
Only process 0 of a distributed run builds any (the tasks call :func:`build_loggers` there only).
"""

from __future__ import annotations

import csv
import importlib
import inspect
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .errors import UserError
from .modalities.media import Clip, Media, Picture, Sound


def require(module: str, extra: str):
    """Import an optional dependency, or one UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"logger={extra} needs the {extra} package, which is not installed ({e}): "
                        f'pip install "mmdiff[{extra}]"') from None


def flatten(config: Mapping, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config -> {"trainer/lr": 0.002, ...}: scalars as they are, None and lists as text
    (what TensorBoard's hyper-parameter table takes)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}/")
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class Logger:
    """One tracker. ``run_dir`` is the run folder; ``resume_step`` the step of the checkpoint a resumed run
    starts from (None for a new run); ``state`` what :meth:`state` returned when that checkpoint was
    written. The methods are no-ops here: a backend overrides what it shows."""

    extra: ClassVar[str | None] = None  # the optional dependency (mmdiff[extra]) it needs, imported under that name

    def log_config(self, config: Mapping, step: int) -> None:
        """The run's resolved config, as hyper-parameters."""

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Scalars by name (e.g. ``train/loss``) at ``step``."""

    def log_media(self, items: Sequence[Media], step: int, prefix: str) -> None:
        """Pictures, sounds and clips, each under ``prefix/name``."""

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence], step: int) -> None:
        """A table (e.g. mode=eval's metrics)."""

    def state(self) -> dict:
        """What a resumed run needs to continue this logger's run (stored in the checkpoint), JSON-able."""
        return {}

    def close(self) -> None:
        """Flush and release."""


class CSVLogger(Logger):
    """Tables as ``<run>/<name>.csv`` (a header row, then the rows). Training's scalars are metrics.csv, which
    every run writes whatever ``logger`` says; media are the files in ``<run>/samples``."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, state: dict | None = None):
        self.run_dir = Path(run_dir)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence], step: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``<run>/<subdir>`` (torch.utils.tensorboard's SummaryWriter). A resumed run
    writes into the same folder with ``purge_step`` one past its checkpoint: TensorBoard hides what a crashed
    run logged after the checkpoint, so the steps it logs again appear once. Clips are animated GIF image
    summaries (TensorBoard's image dashboard plays them), written with Pillow."""

    extra = "tensorboard"

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, state: dict | None = None, *,
                 subdir: str = "tensorboard", flush_secs: int = 30):
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = Path(run_dir) / subdir
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=flush_secs,
                                    purge_step=None if resume_step is None else resume_step + 1)

    def log_config(self, config: Mapping, step: int) -> None:
        from torch.utils.tensorboard.summary import hparams
        text = json.dumps(config, indent=2)
        self.writer.add_text("config", "```\n" + text + "\n```", step)  # markdown: a code block
        for summary in hparams(flatten(config), {"train/loss": 0.0}):  # the HParams dashboard, beside train/loss
            self.writer.file_writer.add_summary(summary, step)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_media(self, items: Sequence[Media], step: int, prefix: str) -> None:
        for item in items:
            tag = f"{prefix}/{item.name}"
            if isinstance(item, Picture):
                self.writer.add_image(tag, item.pixels, step, dataformats="HWC")
            elif isinstance(item, Sound):
                self.writer.add_audio(tag, torch.from_numpy(np.ascontiguousarray(item.wave))[None], step,
                                      sample_rate=item.sample_rate)
                if item.picture is not None:
                    self.writer.add_image(f"{tag}_spectrogram", item.picture, step, dataformats="HWC")
            elif isinstance(item, Clip):
                self._add_gif(tag, item, step)

    def _add_gif(self, tag: str, clip: Clip, step: int) -> None:
        """An image summary whose encoded image is an animated GIF (what add_video writes, without moviepy)."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        _, h, w, c = clip.frames.shape
        image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=clip.gif())
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence], step: int) -> None:
        lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """Weights & Biases, in ``<run>/wandb``. ``mode``: offline (the default: no account and no network; upload
    later with ``wandb sync <run>/wandb/offline-run-*``), online (after ``wandb login``) or disabled. The run
    id goes into the checkpoint (:meth:`state`): a resumed run reopens that run (``resume="allow"``) and logs
    its steps after the checkpoint's. Clips are logged as GIF videos."""

    extra = "wandb"
    MODES = ("offline", "online", "disabled")

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, state: dict | None = None, *,
                 mode: str = "offline", project: str = "mmdiff", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: Sequence[str] = (), notes: str | None = None,
                 job_type: str | None = None):
        if mode not in self.MODES:
            raise UserError(f"logger.wandb.mode={mode} is not a W&B mode: use one of {', '.join(self.MODES)}")
        self.wandb = require("wandb", "wandb")
        run_id = (state or {}).get("id")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if mode != "online":  # the process-wide settings too: else W&B's own telemetry still calls its server
            self.wandb.setup(settings=self.wandb.Settings(mode=mode))
        try:
            self.run = self.wandb.init(dir=str(run_dir), mode=mode, project=project, entity=entity, name=name,
                                       group=group, tags=list(tags) or None, notes=notes, job_type=job_type,
                                       id=run_id, resume="allow" if run_id else None)
        except Exception as e:  # noqa: BLE001 - wandb reports a missing login, a bad entity, ... its own ways
            raise UserError(f"W&B could not start a run ({type(e).__name__}: {e}): for logger.wandb.mode=online run "
                            "`wandb login` first, or log offline (logger.wandb.mode=offline, the default)") from None

    def log_config(self, config: Mapping, step: int) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_media(self, items: Sequence[Media], step: int, prefix: str) -> None:
        wandb, logged = self.wandb, {}
        for item in items:
            tag = f"{prefix}/{item.name}"
            if isinstance(item, Picture):
                logged[tag] = wandb.Image(_plain(item.pixels))
            elif isinstance(item, Sound):
                logged[tag] = wandb.Audio(item.wave, sample_rate=item.sample_rate)
                if item.picture is not None:
                    logged[f"{tag}_spectrogram"] = wandb.Image(_plain(item.picture))
            elif isinstance(item, Clip):
                logged[tag] = wandb.Video(io.BytesIO(item.gif()), format="gif")
        if logged:
            self.run.log(logged, step=step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)

    def state(self) -> dict:
        return {"id": self.run.id}

    def close(self) -> None:
        self.run.finish()


def _plain(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 1] -> [H, W] (grayscale as image libraries take it); [H, W, 3] as it is."""
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


class Loggers:
    """The configured loggers, by their key in the ``logger`` node; each call goes to every one of them.
    With none configured (``logger=none``, or on a process other than 0) every call does nothing."""

    def __init__(self, loggers: Mapping[str, Logger] | None = None):
        self.loggers = dict(loggers or {})

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def log_config(self, config: Mapping, step: int) -> None:
        for logger in self.loggers.values():
            logger.log_config(config, step)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for logger in self.loggers.values():
            logger.log_scalars(values, step)

    def log_media(self, items: Sequence[Media], step: int, prefix: str = "preview") -> None:
        for logger in self.loggers.values():
            logger.log_media(items, step, prefix)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence], step: int) -> None:
        for logger in self.loggers.values():
            logger.log_table(name, columns, rows, step)

    def state(self) -> dict:
        """{key: state} of the loggers that have one (what the checkpoint stores under ``extra["loggers"]``)."""
        return {key: s for key, logger in self.loggers.items() if (s := logger.state())}

    def close(self) -> None:
        for logger in self.loggers.values():
            logger.close()

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_loggers(node: Mapping | None) -> list[tuple[str, type[Logger], dict]]:
    """(key, class, options) of each logger of a ``logger`` config node ({key: {_target_: a Logger class, its
    options}}; empty or None: none), checked before anything is built: the class, its options and its extra."""
    from .build import target_class
    specs = []
    for key, options in (node or {}).items():
        options = dict(options or {})
        cls = target_class(options.pop("_target_", None), f"logger.{key}", Logger,
                           "logger=none, csv, tensorboard, wandb or many")
        takes = set(inspect.signature(cls).parameters) - {"run_dir", "resume_step", "state"}
        unknown = sorted(set(options) - takes)
        if unknown:
            raise UserError(f"logger.{key}.{unknown[0]} is not an option of {cls.__name__}: it takes "
                            f"{', '.join(sorted(takes)) or 'no options'}")
        if cls.extra:
            require(cls.extra, cls.extra)
        specs.append((key, cls, options))
    return specs


def build_loggers(node: Mapping | None, run_dir: str | Path, *, resume_step: int | None = None,
                  state: Mapping | None = None) -> Loggers:
    """The loggers of a ``logger`` config node (:func:`check_loggers`), writing into ``run_dir``. ``state``: the
    checkpoint's ``extra["loggers"]``, handed to each logger under its key."""
    built: dict[str, Logger] = {}
    try:
        for key, cls, options in check_loggers(node):
            built[key] = cls(run_dir, resume_step=resume_step, state=dict((state or {}).get(key) or {}), **options)
    except BaseException:
        Loggers(built).close()
        raise
    return Loggers(built)
