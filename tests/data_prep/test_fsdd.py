"""data_prep/fsdd.py, offline: fake GitHub-style archives in tmp_path and a local HTTP server."""

import hashlib
import io
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep import fsdd as prep
from mmdiff.data.audio import load_fsdd
from tests.data_prep import Server

KEYS = [(0, "george", 0), (0, "george", 7), (4, "theo", 3), (4, "theo", 40), (9, "lucas", 1), (9, "lucas", 12)]
TOP = f"free-spoken-digit-dataset-{prep.COMMIT}"


def wav_bytes(key, rate=8000, channels=1):
    """A distinct 8 kHz int16 WAV per recording name."""
    rng = np.random.default_rng(key[0] * 100 + key[2])
    buffer = io.BytesIO()
    data = rng.integers(-9000, 9000, (600 + 50 * key[2], channels)).astype(np.int16)
    sf.write(buffer, data, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def name(key):
    return "{}_{}_{}.wav".format(*key)


def make_zip(path, keys=KEYS, extra=None):
    """A zip laid out like GitHub's archive, with files around recordings/ that must be left out."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{TOP}/README.md", "# FSDD")
        zf.writestr(f"{TOP}/utils/spectogramer.py", "print('hi')")
        zf.writestr(f"{TOP}/recordings/", "")
        for key in keys:
            zf.writestr(f"{TOP}/recordings/{name(key)}", wav_bytes(key))
        for member, data in (extra or {}).items():
            zf.writestr(member, data)
    return path


def run(capsys, *args):
    code = prep.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_zip_is_extracted_checked_summarised_and_loads(tmp_path, capsys):
    archive = make_zip(tmp_path / "fsdd.zip")
    out = tmp_path / "data" / "fsdd"
    code, stdout, err = run(capsys, "--source", archive, "--out", out, "--expect", 6)
    assert code == 0, err
    assert sorted(p.name for p in (out / "recordings").iterdir()) == sorted(name(k) for k in KEYS)
    assert (out / "recordings" / name(KEYS[3])).read_bytes() == wav_bytes(KEYS[3])
    assert not (out / "recordings.partial").exists() and archive.exists()  # a local archive is the user's: kept
    assert "    0      1     1" in stdout and "  all      3     3" in stdout and "3 speakers" in stdout
    assert f"python -m mmdiff modality=audio dataset=fsdd dataset.root={out}" in stdout
    ds = load_fsdd(str(out), split="all", normalize="none")
    assert ds.labels.tolist() == [0, 0, 4, 4, 9, 9]
    first = sf.read(out / "recordings" / name(KEYS[0]), dtype="float32")[0]
    assert torch.equal(ds.data[0, 0, :len(first)], torch.from_numpy(first))
    assert load_fsdd(str(out), split="test").labels.tolist() == [0, 4, 9]


def test_file_url_and_folder_sources_and_rerun(tmp_path, capsys):
    archive = make_zip(tmp_path / "fsdd.zip")
    code, _, err = run(capsys, "--source", archive.as_uri(), "--out", tmp_path / "a", "--expect", 6)
    assert code == 0, err
    code, stdout, _ = run(capsys, "--source", archive, "--out", tmp_path / "a", "--expect", 6)
    assert code == 0 and "already holds the 6 recordings" in stdout
    code, _, err = run(capsys, "--source", tmp_path / "a", "--out", tmp_path / "b", "--expect", 6)
    assert code == 0, err  # a folder holding recordings/ ...
    code, _, err = run(capsys, "--source", tmp_path / "b" / "recordings", "--out", tmp_path / "c", "--expect", 6)
    assert code == 0, err  # ... or the WAVs themselves
    copied, extracted = (load_fsdd(str(tmp_path / d), split="all") for d in ("c", "a"))
    assert len(copied) == 6 and torch.equal(copied.data, extracted.data)


def test_sha256_is_checked(tmp_path, capsys):
    archive = make_zip(tmp_path / "fsdd.zip")
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    code, _, err = run(capsys, "--source", archive, "--out", tmp_path / "x", "--expect", 6, "--sha256", "0" * 64)
    assert code == 1 and f"has sha256 {good}, not the expected {'0' * 64}" in err
    assert not (tmp_path / "x" / "recordings").exists()
    assert run(capsys, "--source", archive, "--out", tmp_path / "x", "--expect", 6, "--sha256", good.upper())[0] == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_zip_is_a_clear_error(tmp_path, capsys, damage):
    archive = make_zip(tmp_path / "fsdd.zip")
    raw = archive.read_bytes()
    archive.write_bytes(b"<html>rate limited</html>" if damage == "garbage" else raw[:len(raw) // 2])
    code, _, err = run(capsys, "--source", archive, "--out", tmp_path / "x", "--expect", 6)
    assert code == 1 and "is not a valid zip archive" in err and "delete it and run again" in err
    assert not (tmp_path / "x" / "recordings").exists()


def test_wrong_count_bad_files_and_missing_source(tmp_path, capsys):
    archive = make_zip(tmp_path / "fsdd.zip")
    code, _, err = run(capsys, "--source", archive, "--out", tmp_path / "x")
    assert code == 1 and "holds 6 recordings, expected 3000" in err
    assert not (tmp_path / "x" / "recordings").exists()
    bad = make_zip(tmp_path / "bad.zip", extra={f"{TOP}/recordings/1_bob_2.wav": b"RIFF....garbage",
                                                f"{TOP}/recordings/2_bob_3.wav": wav_bytes((2, "bob", 3), 16000)})
    code, _, err = run(capsys, "--source", bad, "--out", tmp_path / "y", "--expect", 8)
    assert code == 1 and "2 of 8 files" in err and "1_bob_2.wav: unreadable" in err and "16000 Hz" in err
    empty = make_zip(tmp_path / "empty.zip", keys=[])
    code, _, err = run(capsys, "--source", empty, "--out", tmp_path / "z")
    assert code == 1 and "holds no recordings/*.wav" in err
    code, _, err = run(capsys, "--source", tmp_path / "nope.zip", "--out", tmp_path / "z")
    assert code == 1 and "does not exist" in err


def test_members_cannot_escape_the_output_folder(tmp_path, capsys):
    archive = make_zip(tmp_path / "fsdd.zip", keys=KEYS[:1],
                       extra={"../../recordings/3_eve_1.wav": wav_bytes((3, "eve", 1)),
                              f"{TOP}/recordings/../../5_eve_1.wav": wav_bytes((5, "eve", 1))})
    code, _, err = run(capsys, "--source", archive, "--out", tmp_path / "out", "--expect", 2)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "recordings").iterdir()) == ["0_george_0.wav", "3_eve_1.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdd.zip", "out"]


def test_main_downloads_from_a_url(tmp_path, capsys):
    payload = make_zip(tmp_path / "served.zip").read_bytes()
    with Server({"fsdd.zip": payload}) as server:
        code, stdout, err = run(capsys, "--source", server.url("fsdd.zip"), "--out", tmp_path / "out", "--expect", 6)
    assert code == 0, err
    assert len(list((tmp_path / "out" / "recordings").iterdir())) == 6
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["recordings"]  # the download is removed


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_tree_hash_equals_gits(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    for key in KEYS:
        (folder / name(key)).write_bytes(wav_bytes(key))
    git = ["git", "-C", str(folder), "-c", "core.autocrlf=false"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    tree = subprocess.run(git + ["write-tree"], check=True, capture_output=True, text=True).stdout.strip()
    assert prep.git_tree(folder) == tree
