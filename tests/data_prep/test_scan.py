"""data_prep/scan.py on generated folders with good and broken files."""

import csv
import io
import math
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from data_prep import scan
from mmdiff.data.audio import _load_clip, load_audio_folder
from mmdiff.data.images import IMAGE_EXTENSIONS
from mmdiff.data.manifest import read_manifest
from mmdiff.data.scan import scan_folder
from mmdiff.modalities.spectral import LogMel


def wav(seconds=0.5, rate=16000, channels=1, subtype="PCM_16", fmt="WAV", value=None, seed=0):
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    data = rng.uniform(-0.5, 0.5, (n, channels)) if value is None else np.full((n, channels), value)
    buffer = io.BytesIO()
    sf.write(buffer, data.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def png(size=(5, 4), mode="RGB", fmt="PNG"):
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 200, 30, 255)[:len(mode)]).save(buffer, fmt)
    return buffer.getvalue()


def make(root, files):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def nan_wav():
    data = np.full(800, 0.25, np.float32)
    data[100] = np.nan
    buffer = io.BytesIO()
    sf.write(buffer, data, 8000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


AUDIO = {
    "dog/good16k.wav": wav(0.5, 16000),
    "dog/stereo8k.wav": wav(0.25, 8000, channels=2, seed=1),
    "dog/empty.wav": b"",
    "dog/sub/deep.flac": wav(0.1, 16000, fmt="FLAC", seed=2),
    "cat/ok.wav": wav(0.2, 16000, seed=3),
    "cat/truncated.wav": wav(0.2)[:20],
    "cat/header_only.wav": wav(0.2)[:44],
    "cat/image.wav": png(),
    "cat/nan.wav": nan_wav(),
    "cat/silent.wav": wav(0.1, value=0.0),
    "cat/notes.txt": b"ignored",
    "cat/song.mp3": b"ignored too",
    ".hidden/x.wav": wav(0.1),
}
# path -> (ok, error starts with)
AUDIO_RESULT = {
    "cat/header_only.wav": (False, "ValueError: no samples"),
    "cat/image.wav": (False, "LibsndfileError: Error opening"),
    "cat/nan.wav": (False, "ValueError: non-finite samples (NaN or infinity)"),
    "cat/ok.wav": (True, ""),
    "cat/silent.wav": (False, "ValueError: silent (peak below 0.0001)"),
    "cat/truncated.wav": (False, "LibsndfileError: Error opening"),
    "dog/empty.wav": (False, "LibsndfileError: Error opening"),
    "dog/good16k.wav": (True, ""),
    "dog/stereo8k.wav": (True, ""),
    "dog/sub/deep.flac": (True, ""),
}


def run(capsys, *args):
    code = scan.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_audio_folder_report_and_manifest(tmp_path, capsys):
    root = make(tmp_path / "sounds", AUDIO)
    code, stdout, err = run(capsys, root, "--kind", "audio")
    assert code == 0, err
    rows = read_csv(root / "manifest.csv")
    assert list(rows[0]) == ["path", "class", "ok", "error", "sample_rate", "frames", "channels", "seconds"]
    assert [r["path"] for r in rows] == list(AUDIO_RESULT)  # the loaders' order: classes, then paths
    for r in rows:
        ok, error = AUDIO_RESULT[r["path"]]
        assert r["class"] == r["path"].split("/")[0] and r["ok"] == ("true" if ok else "false")
        assert r["error"].startswith(error) and (r["error"] == "") == ok, r
    by_path = {r["path"]: r for r in rows}
    assert [by_path["dog/stereo8k.wav"][k] for k in ("sample_rate", "frames", "channels", "seconds")] == \
        ["8000", "2000", "2", "0.25"]
    assert [by_path["cat/header_only.wav"][k] for k in ("sample_rate", "frames")] == ["16000", "0"]
    assert by_path["dog/empty.wav"]["sample_rate"] == ""  # nothing is known of a file that does not open
    assert "'image.wav'" in by_path["cat/image.wav"]["error"] and str(root) not in by_path["cat/image.wav"]["error"]

    assert "class  ok  broken" in stdout and "  cat   1       5" in stdout and "  dog   3       1" in stdout
    assert "10 audio files in 2 classes: 4 ok, 6 broken" in stdout
    assert "  broken: cat/nan.wav: ValueError: non-finite samples" in stdout
    assert "ignored 2 files with other extensions (.mp3: 1, .txt: 1)" in stdout
    assert "sample rates: 16000 Hz: 3, 8000 Hz: 1" in stdout and "channels: 1: 3, 2: 1" in stdout
    assert "durations: min 0.100 s, median 0.225 s, max 0.500 s" in stdout and "0-0.5 s      3" in stdout
    assert f"dataset=audio_folder dataset.root={root} dataset.sample_rate=16000" in stdout
    assert f"wrote {root / 'manifest.csv'} (10 rows)" in stdout

    # the manifest gives the loaders' listing minus the broken files; with it the loader opens only
    # the good files (no warning), without it the loader skips exactly the broken ones
    items, class_names = read_manifest(root / "manifest.csv")
    assert scan_folder(root, scan.KINDS["audio"], "audio") == (items, class_names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_audio_folder(str(root)).load()) == 4
    (root / "manifest.csv").rename(tmp_path / "aside.csv")
    all_items, all_names = scan_folder(root, scan.KINDS["audio"], "audio")
    assert class_names == all_names == ["cat", "dog"]
    assert items == [(p, c) for p, c in all_items if AUDIO_RESULT[p.relative_to(root).as_posix()][0]]
    with pytest.warns(UserWarning, match="skipped 6 of 10 audio files"):
        assert len(load_audio_folder(str(root)).load()) == 4


def test_image_folder_report_and_manifest(tmp_path, capsys):
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(noise, "PNG")
    files = {"a/rgb.png": png((5, 4)), "a/gray.jpg": png((6, 6), "L", "JPEG"), "a/empty.png": b"",
             "a/truncated.png": noise.getvalue()[:400], "b/text.png": b"not an image", "b/sound.jpg": wav(0.1),
             "b/rgba.png": png((3, 3), "RGBA"), "b/readme.md": b"#"}
    root = make(tmp_path / "images", files)
    manifest = tmp_path / "elsewhere.csv"
    code, stdout, err = run(capsys, root, "--kind", "image", "--manifest", manifest)
    assert code == 0, err
    assert not (root / "manifest.csv").exists()
    rows = {r["path"]: r for r in read_csv(manifest)}
    assert list(rows) == ["a/empty.png", "a/gray.jpg", "a/rgb.png", "a/truncated.png", "b/rgba.png",
                          "b/sound.jpg", "b/text.png"]
    assert [(r["ok"], r["width"], r["height"], r["mode"]) for r in rows.values()] == [
        ("false", "", "", ""), ("true", "6", "6", "L"), ("true", "5", "4", "RGB"), ("false", "16", "16", "RGB"),
        ("true", "3", "3", "RGBA"), ("false", "", "", ""), ("false", "", "", "")]
    assert rows["a/truncated.png"]["error"].startswith("OSError")  # the header opens, the pixels do not
    assert rows["b/text.png"]["error"].startswith("UnidentifiedImageError")
    assert "7 image files in 2 classes: 3 ok, 4 broken" in stdout
    assert "sizes: 3x3: 1, 5x4: 1, 6x6: 1" in stdout and "modes: L: 1, RGB: 1, RGBA: 1" in stdout
    assert "ignored 1 files with other extensions (.md: 1)" in stdout
    items, names = read_manifest(manifest, root=root)
    assert names == ["a", "b"]
    assert items == [(root / "a/gray.jpg", 0), (root / "a/rgb.png", 0), (root / "b/rgba.png", 1)]
    assert scan_folder(root, IMAGE_EXTENSIONS)[1] == names


def test_spectrogram_shards(tmp_path, capsys):
    root = make(tmp_path / "clips", {"x/a.wav": wav(0.3, 8000, seed=4), "x/bad.wav": b"", "y/b.wav": wav(0.2, 16000),
                                     "y/c.wav": wav(0.1, 8000, channels=2, seed=5)})
    shards = tmp_path / "shards"
    code, stdout, err = run(capsys, root, "--kind", "audio", "--spectrograms", shards, "--sample-rate", 8000,
                            "--seconds", 0.25, "--shard-size", 2)
    assert code == 0, err
    assert sorted(p.name for p in shards.iterdir()) == ["shard_00000.npz", "shard_00001.npz"]
    assert "wrote 2 spectrogram shards" in stdout
    first, second = (np.load(shards / f"shard_0000{k}.npz") for k in (0, 1))  # no pickles: allow_pickle=False
    frames = 2000 // 64 + 1
    assert first["log_mel"].shape == (2, 64, frames) and first["log_mel"].dtype == np.float16
    assert second["log_mel"].shape == (1, 64, frames)
    assert first["paths"].tolist() == ["x/a.wav", "y/b.wav"] and second["paths"].tolist() == ["y/c.wav"]
    assert first["labels"].tolist() == [0, 1] and second["labels"].tolist() == [1]
    assert first["class_names"].tolist() == ["x", "y"]
    assert (int(first["sample_rate"]), float(first["seconds"]), int(first["n_fft"]), int(first["hop_length"]),
            int(first["n_mels"])) == (8000, 0.25, 512, 64, 64)
    mel = LogMel(8000)
    wave = _load_clip(root / "y/c.wav", 8000, 2000, "start", None, "peak")  # exactly as the loader reads it
    expected = torch.log(mel.mel(wave) + mel.eps)[0].numpy()
    assert np.allclose(second["log_mel"][0].astype(np.float32), expected, atol=5e-3, rtol=1e-3)
    assert math.isclose(float(first["eps"]), mel.eps)


def test_bad_arguments_and_folders(tmp_path, capsys):
    root = make(tmp_path / "i", {"a/x.png": png()})
    code, _, err = run(capsys, root, "--kind", "image", "--spectrograms", tmp_path / "s")
    assert code == 1 and "--spectrograms is for --kind audio" in err
    code, _, err = run(capsys, tmp_path / "nope", "--kind", "audio")
    assert code == 1 and "does not exist" in err
    code, stdout, err = run(capsys, root, "--kind", "image", "--no-manifest")
    assert code == 0 and not (root / "manifest.csv").exists() and "wrote" not in stdout
