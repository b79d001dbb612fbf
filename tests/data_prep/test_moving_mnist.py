"""data_prep/moving_mnist.py on small files in the canonical layout (uint8 [20, N, 64, 64]): checksums, the
layout checks, a download from a local HTTP server that resumes; never the network."""

import hashlib
import io
import re

import numpy as np
import pytest
import torch

from data_prep import moving_mnist
from mmdiff.data.video import load_moving_mnist
from tests.data_prep import Server


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def sequences(tmp_path):
    """A file in the published layout with 12 sequences instead of 10,000, and its sha256."""
    array = np.random.default_rng(0).integers(0, 256, (20, 12, 64, 64), dtype=np.uint8)
    array[:, :, 0, 0] = 0  # the darkest and the brightest value occur
    array[0, 0, 0, 1] = 255
    path = tmp_path / "src" / "mnist_test_seq.npy"
    path.parent.mkdir()
    path.write_bytes(npy_bytes(array))
    return path, array, hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys, *args):
    code = moving_mnist.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_local_file_is_checked_copied_and_loads(tmp_path, capsys, sequences):
    path, array, sha = sequences
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "--source", path, "--out", out, "--sha256", sha)
    assert code == 0, err
    assert (out / "mnist_test_seq.npy").read_bytes() == path.read_bytes()
    assert f"copied from {path}, sha256 checked" in stdout
    assert f"12 sequences (the published file has 10,000) of 20 frames of 64x64 uint8, values 0..255, " \
           f"mean pixel {array.mean():.2f}" in stdout
    assert f"sha256 {sha}" in stdout
    assert f"python -m mmdiff modality=video dataset=moving_mnist dataset.root={out}" in stdout
    ds = load_moving_mnist(str(out), split="test", size=64)
    assert torch.equal(torch.round(ds.data[:, 0] * 255).to(torch.uint8), torch.from_numpy(array.transpose(1, 0, 2, 3)))


def test_without_a_checksum_it_prints_the_one_it_computed(tmp_path, capsys, sequences):
    path, _, sha = sequences
    code, stdout, err = run(capsys, "--source", path.as_uri(), "--out", tmp_path / "out", "--sha256", "none")
    assert code == 0, err
    assert "sha256 not checked" in stdout and f"sha256 {sha}" in stdout


def test_the_published_checksum_rejects_another_file_and_keeps_it(tmp_path, capsys, sequences):
    path, _, sha = sequences
    assert moving_mnist.SHA256 == "c2a3e8d3939c001ab77bf543f130157424efa486bb4d0974d2cebb773b13f8b3"
    code, _, err = run(capsys, "--source", path, "--out", tmp_path / "out")
    assert code == 1
    assert f"has sha256 {sha}, not the expected {moving_mnist.SHA256}" in err
    assert path.exists() and not (tmp_path / "out" / "mnist_test_seq.npy").exists()


@pytest.mark.parametrize("array,message", [
    (np.zeros((20, 3, 32, 32), np.uint8), r"holds uint8 \[20, 3, 32, 32\], not uint8 \[20, sequences, 64, 64\]"),
    (np.zeros((20, 3, 64, 64), np.float32), r"holds float32 \[20, 3, 64, 64\]"),
    (np.zeros((10, 3, 64, 64), np.uint8), r"holds uint8 \[10, 3, 64, 64\]"),
    (np.zeros((20, 3, 64, 64), np.uint8), "is all zeros"),
    (None, "is not a readable .npy file"),
])
def test_the_array_itself_is_checked(tmp_path, capsys, array, message):
    path = tmp_path / "bad.npy"
    path.write_bytes(npy_bytes(array) if array is not None else b"\x93NUMPY garbage")
    code, _, err = run(capsys, "--source", path, "--out", tmp_path / "out", "--sha256", "none")
    assert code == 1 and re.search(message, err), err


def test_download_resumes_and_a_complete_file_is_kept(tmp_path, capsys, sequences):
    path, _, sha = sequences
    payload = path.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "mnist_test_seq.npy.part").write_bytes(payload[:50_000])  # an interrupted download
    with Server({"mm/mnist_test_seq.npy": payload}) as server:
        code, stdout, err = run(capsys, "--source", server.url("mm/mnist_test_seq.npy"), "--out", out, "--sha256", sha)
        assert code == 0, err
        assert server.seen == ["bytes=50000-"] and "downloaded, sha256 checked" in stdout
        assert (out / "mnist_test_seq.npy").read_bytes() == payload
        code, stdout, err = run(capsys, "--source", server.url("mm/mnist_test_seq.npy"), "--out", out, "--sha256", sha)
        assert code == 0 and len(server.seen) == 1 and "already there" in stdout
    code, _, err = run(capsys, "--source", "http://127.0.0.1:9/mnist_test_seq.npy", "--out", tmp_path / "o2")
    assert code == 1 and "could not download" in err
