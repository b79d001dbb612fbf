"""The logger group (mmdiff/loggers.py, conf/logger/): what TensorBoard and W&B receive, read back with their own
formats; resume continues the same step axis and the same W&B run; a missing extra is one error naming it.

TensorBoard's event files are read with TensorBoard's EventAccumulator. W&B runs offline (never a call to its
server: the ``offline_wandb`` fixture fails the test on any name lookup or connection beyond this machine), and its
run file (``run-<id>.wandb``: W&B's records in a LevelDB-style log) is read with W&B's own protobuf messages.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmdiff.build import build_modality, resolve_modality_config
from mmdiff.checkpoint import load_checkpoint
from mmdiff.errors import UserError
from mmdiff.loggers import TensorBoardLogger, build_loggers
from mmdiff.modalities.grid import grid_image
from mmdiff.modalities.video import VideoModality
from mmdiff.tasks.eval import evaluate_from_config
from mmdiff.tasks.train import train

from .conftest import TINY, compose_config

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason='the tensorboard extra is not installed: pip install "mmdiff[tensorboard]"')
COLUMNS = ["samples_seen", "seconds", "loss", "lr", "grad_norm", "images_per_s", "skipped"]


def events(folder: Path):
    """TensorBoard's own reader over a run's event files, keeping every event."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "audio": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def steps(accumulator, tag: str) -> list[int]:
    return [e.step for e in accumulator.Scalars(tag)]


# --- W&B, offline -------------------------------------------------------------------------------------------

@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B's folders in tmp_path, and any lookup or connection beyond this machine recorded; the test fails
    if one happened."""
    pytest.importorskip("wandb", reason='the wandb extra is not installed: pip install "mmdiff[wandb]"')
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    calls = []
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def local(host) -> bool:
        return host in (None, "localhost", "") or str(host).startswith("127.") or str(host) == "::1"

    def guarded_lookup(host, *args, **kwargs):
        if not local(host):
            calls.append(host)
            raise OSError(f"no network in tests: {host}")
        return lookup(host, *args, **kwargs)

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
            calls.append(address)
            raise OSError(f"no network in tests: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield
    # W&B's usage telemetry (wandb >= 0.2x) exports from a thread and at exit: flush it while the guard is on
    telemetry = sys.modules.get("wandb.analytics.opentelemetry.opentelemetry_proxy")
    proxy = getattr(telemetry, "_singleton_telemetry_proxy", None)
    if proxy is not None:
        proxy.shutdown()
    assert calls == [], f"W&B offline tried the network: {calls}"


def wandb_records(path: Path):
    """The records of a run-<id>.wandb file: a 7-byte header (":W&B", a magic number, a version), then LevelDB's
    log format (32 KiB blocks of records with a 7-byte header: checksum, length, type; type 1 a whole record,
    2/3/4 its first/middle/last part), each record a wandb_internal Record message."""
    from wandb.proto import wandb_internal_pb2
    raw, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0:
            break
        parts += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_runs(run_dir: Path) -> list[Path]:
    """The offline run folders of a run folder, oldest first (one per training session)."""
    return sorted(p for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())


def wandb_run(folder: Path) -> tuple[str, dict, list[tuple[int, dict]]]:
    """(run id, config, [(step, {key: value})]) of an offline run folder."""
    (path,) = folder.glob("run-*.wandb")
    # W&B's service process may still be writing the file when run.finish() has returned (on a busy machine the
    # file was seen holding its 7-byte header only): wait for the run's exit record, which it writes last
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (path.stat().st_size >= 7 and any(
            r.WhichOneof("record_type") == "exit" for r in wandb_records(path))):
        time.sleep(0.2)
    run_id, config, history = None, {}, []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            config |= {u.key: json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "config":
            config |= {u.key: json.loads(u.value_json) for u in record.config.update}
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            history.append((record.history.step.num, row))
    return run_id, config, history


# --- TensorBoard -------------------------------------------------------------------------------------------

@needs_tensorboard
def test_tensorboard_holds_every_metrics_column_the_config_and_the_previews(tiny_cfg, tmp_path):
    train(tiny_cfg("logger=tensorboard", "trainer.sample_every=3"), tmp_path)
    run = events(tmp_path / "tensorboard")
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    for column in COLUMNS:  # every column of metrics.csv, at its steps, with its values
        scalars = run.Scalars(f"train/{column}")
        assert [e.step for e in scalars] == [2, 4, 6], column
        assert [e.value for e in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-6), column
    # the previews: the grid written to samples/, pixel for pixel, at the preview steps
    images = run.Images("preview/grid")
    assert [e.step for e in images] == [3, 6]
    logged = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("L"))
    assert np.array_equal(logged, np.asarray(Image.open(tmp_path / "samples" / "step_0000006.png")))
    # the resolved config: as text, and as hyper-parameters beside train/loss
    text = run.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n"))["model"]["num_classes"] == 10  # "auto" resolved
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    content = run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["trainer/lr"].number_value == pytest.approx(0.002) and hparams["dataset/_target_"].string_value


def audio_modality():
    cfg = compose_config(TINY + ["modality=audio", "model.channel_mult=[1,2,2]", "model.attn_levels=[2]"])
    return build_modality(resolve_modality_config(cfg))


@needs_tensorboard
def test_tensorboard_plays_audio_with_spectrograms_and_clips_as_gifs(tmp_path):
    m = audio_modality()
    t = torch.arange(4000) / 8000
    waves = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in (220.0, 880.0)])[:, None]
    video = VideoModality(fps=10, mp4=False)
    clips = torch.randint(0, 256, (3, 1, 5, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    logger = TensorBoardLogger(tmp_path)
    logger.log_media(m.media(waves, torch.tensor([0, 1]), ["low", "high"]), 7, "preview")
    logger.log_media(video.media(clips, torch.tensor([1, 0, 1]), ["cat", "dog"]), 7, "clips")
    logger.close()
    run = events(tmp_path / "tensorboard")
    assert sorted(run.Tags()["audio"]) == ["preview/00_low", "preview/01_high"]
    for i, name in enumerate(["00_low", "01_high"]):
        (clip,) = run.Audio(f"preview/{name}")
        heard, rate = sf.read(io.BytesIO(clip.encoded_audio_string), dtype="float32")
        assert clip.step == 7 and rate == clip.sample_rate == 8000
        # the clip as 16-bit PCM: q = int(x * 32767) (truncated) read back as q / 32768, so |q / 32768 - x| is under
        # (|x| + 1) / 32768
        wave = waves[i, 0].numpy()
        assert np.abs(heard - wave).max() <= (np.abs(wave).max() + 1) / 32768 + 1e-7
        (picture,) = run.Images(f"preview/{name}_spectrogram")  # ... with its spectrogram
        shown = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("RGB"))
        assert np.array_equal(shown, m.spectrogram_image(waves[i]).permute(1, 2, 0).numpy())
    assert "preview/spectrograms" in run.Tags()["images"]
    (gif,) = run.Images("clips/grid")  # the grid of clips, playing: an animated GIF with a frame per clip frame
    assert gif.encoded_image_string[:6] == b"GIF89a"
    with Image.open(io.BytesIO(gif.encoded_image_string)) as im:
        assert im.n_frames == 5
        im.seek(2)
        frame = np.asarray(im.convert("L"))
    assert np.array_equal(frame, np.asarray(grid_image(clips[:, :, 2], torch.tensor([1, 0, 1]), ["cat", "dog"])))


# --- W&B ---------------------------------------------------------------------------------------------------

def test_wandb_offline_writes_its_run_folder_with_config_scalars_and_previews(tiny_cfg, tmp_path, offline_wandb):
    path = train(tiny_cfg("logger=wandb", "trainer.sample_every=3"), tmp_path)
    (folder,) = wandb_runs(tmp_path)
    run_id, config, history = wandb_run(folder)
    assert config["trainer"]["lr"] == 0.002 and config["model"]["num_classes"] == 10
    assert config["logger"]["wandb"]["mode"] == "offline"
    assert [s for s, row in history if "train/loss" in row] == [2, 4, 6]
    assert set(next(row for _, row in history if "train/loss" in row)) >= {f"train/{c}" for c in COLUMNS}
    # an image's entry is a dict of fields (path, format, ...), flattened to preview/grid/<field>
    assert [s for s, row in history if "preview/grid/path" in row] == [3, 6]
    media = list((folder / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 2 and Image.open(media[0]).size == Image.open(tmp_path / "samples" / "grid.png").size
    assert load_checkpoint(path).extra["loggers"] == {"wandb": {"id": run_id}}  # what a resume reopens


# --- resume -------------------------------------------------------------------------------------------------

@needs_tensorboard
def test_resume_continues_the_step_axis_without_duplicates_and_the_same_wandb_run(tiny_cfg, tmp_path,
                                                                                  offline_wandb):
    both = ["logger=[tensorboard,wandb]", "trainer.checkpoint_every=0"]
    train(tiny_cfg(*both, "trainer.max_steps=4"), tmp_path)
    at_4 = tmp_path.parent / f"{tmp_path.name}_step4.safetensors"
    shutil.copy(tmp_path / "last.safetensors", at_4)
    first_id = load_checkpoint(at_4).extra["loggers"]["wandb"]["id"]
    # a run that goes on to step 6, then "crashes": what it logged after step 4 must not survive ...
    train(tiny_cfg(*both, "trainer.max_steps=6", f"trainer.resume={at_4}"), tmp_path)
    # ... when the run is resumed from the step-4 checkpoint again, into the same folder, to step 8
    path = train(tiny_cfg(*both, "trainer.max_steps=8", f"trainer.resume={at_4}"), tmp_path)
    run = events(tmp_path / "tensorboard")
    for column in COLUMNS:
        assert steps(run, f"train/{column}") == [2, 4, 6, 8], column  # every step once, in order
    assert [e.step for e in run.Images("preview/grid")] == [4, 8]  # the crashed run's final preview (6) is gone
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert [e.value for e in run.Scalars("train/loss")] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
    # W&B: one run id throughout, in the checkpoint and in every offline folder; the last one continues at 6
    assert load_checkpoint(path).extra["loggers"]["wandb"]["id"] == first_id
    sessions = [wandb_run(folder) for folder in wandb_runs(tmp_path)]  # an offline folder per session
    assert len(sessions) == 3 and {run_id for run_id, _, _ in sessions} == {first_id}
    logged = sorted([s for s, row in history if "train/loss" in row] for _, _, history in sessions)
    assert logged == [[2, 4], [6], [6, 8]]  # the last session continues after the checkpoint's step


# --- eval, errors, the default ------------------------------------------------------------------------------

@needs_tensorboard
def test_eval_logs_its_table_and_metrics_at_the_checkpoints_step(tiny_cfg, tmp_path):
    checkpoint = train(tiny_cfg(), tmp_path / "run")
    cfg = compose_config(["mode=eval", f"checkpoint={checkpoint}", "n=30", "steps=3", "eval.evaluator.epochs=2",
                          "eval.kid_subsets=5", "logger=[csv,tensorboard]"])
    result = evaluate_from_config(cfg, tmp_path / "eval")
    table = list(csv.reader(open(tmp_path / "eval" / "eval.csv")))
    assert table[0] == ["metric", "samples", "floor"]
    logged = {r[0]: float(r[1]) for r in table[1:]}
    assert logged == pytest.approx({k: m["samples"] for k, m in result["metrics"].items()})
    run = events(tmp_path / "eval" / "tensorboard")
    for name, m in result["metrics"].items():
        (value,) = run.Scalars(f"eval/{name}")
        (floor,) = run.Scalars(f"eval/{name}_floor")
        assert value.step == floor.step == 6  # the checkpoint's step
        assert (value.value, floor.value) == pytest.approx((m["samples"], m["floor"]), rel=1e-6)
    assert "fd" in run.Tensors("eval/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("extra,node", [
    ("tensorboard", {"tensorboard": {"_target_": "mmdiff.loggers.TensorBoardLogger"}}),
    ("wandb", {"wandb": {"_target_": "mmdiff.loggers.WandbLogger"}}),
])
def test_a_missing_extra_is_one_error_naming_it(monkeypatch, tmp_path, extra, node):
    monkeypatch.setitem(sys.modules, extra, None)  # what `import tensorboard` meets where it is not installed
    with pytest.raises(UserError, match=re.escape(f'pip install "mmdiff[{extra}]"')):
        build_loggers(node, tmp_path)


def test_logger_options_are_checked(tmp_path):
    with pytest.raises(UserError, match="logger.tensorboard.flush_sec is not an option of TensorBoardLogger"):
        build_loggers({"tensorboard": {"_target_": "mmdiff.loggers.TensorBoardLogger", "flush_sec": 1}}, tmp_path)
    with pytest.raises(UserError, match="logger.wandb.mode=onlin is not a W&B mode"):
        build_loggers({"wandb": {"_target_": "mmdiff.loggers.WandbLogger", "mode": "onlin"}}, tmp_path)
    with pytest.raises(UserError, match="not a subclass of mmdiff.loggers.Logger"):
        build_loggers({"x": {"_target_": "pathlib.Path"}}, tmp_path)


def test_none_is_the_default_and_several_are_a_list():
    assert dict(compose_config([]).logger) == {}
    assert not build_loggers(compose_config([]).logger, "unused")  # no logger: nothing built, nothing written
    assert list(compose_config(["logger=[tensorboard,wandb]"]).logger) == ["tensorboard", "wandb"]
    assert list(compose_config(["logger=many"]).logger) == ["csv", "tensorboard", "wandb"]
    assert compose_config(["logger=many", "logger.wandb.mode=online"]).logger.wandb.mode == "online"


@pytest.mark.slow
@needs_tensorboard
def test_only_process_0_logs_under_ddp(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mmdiff",
         *TINY, "trainer.max_steps=4", "logger=tensorboard", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1  # one writer
    assert steps(events(tmp_path / "tensorboard"), "train/loss") == [2, 4]
