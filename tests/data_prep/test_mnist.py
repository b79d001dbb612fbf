"""data_prep/mnist.py and fashion_mnist.py: the real MNIST test files (../shared/data), tiny fake
Fashion-MNIST IDX files, checksums, mirrors and downloads from a local HTTP server."""

import dataclasses
import gzip
import hashlib
import re

import numpy as np
import pytest
import torch

from data_prep import fashion_mnist, mnist
from mmdiff.data.images import load_mnist
from tests.conftest import SHARED_DATA
from tests.data_prep import Server

MNIST_DIR = SHARED_DATA / "mnist"
TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the known MNIST test histogram


def run(capsys, main, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def column(stdout, name):
    """The counts of one column of the printed class table, by class row."""
    lines = stdout.splitlines()
    header = lines.index(next(line for line in lines if line.lstrip().startswith("class")))
    names = lines[header].split()
    rows = {}
    for line in lines[header + 1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(names):
            break
        rows[cells[0]] = int(cells[names.index(name)])
    return rows


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"the shared MNIST copy is not at {MNIST_DIR}")
def test_real_mnist_test_split_from_a_local_folder(tmp_path, capsys):
    out = tmp_path / "mnist"
    code, stdout, err = run(capsys, mnist.main, "--source", MNIST_DIR, "--splits", "test", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (out / name).read_bytes() == (MNIST_DIR / name).read_bytes()
    counts = column(stdout, "test")
    assert [counts[str(d)] for d in range(10)] == TEST_HISTOGRAM and counts["all"] == 10_000
    assert "test: 10000 images of 28x28 uint8, mean pixel 33.79" in stdout
    assert f"python -m mmdiff dataset=mnist dataset.root={out} dataset.split=test" in stdout
    ds = load_mnist(str(out), split="test")
    assert ds.data.shape == (10_000, 1, 28, 28) and ds.class_counts() == TEST_HISTOGRAM
    code, stdout, _ = run(capsys, mnist.main, "--source", MNIST_DIR.as_uri(), "--splits", "test", "--out", out)
    assert code == 0 and stdout.count("already there, md5 checked") == 2


# --- a tiny fake Fashion-MNIST -------------------------------------------------------------------

def idx_gz(array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def fake_split(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """A folder of the four files (5 train and 3 test images), with their md5s patched in as the expected ones."""
    folder = tmp_path / "source"
    folder.mkdir()
    arrays = {"train": fake_split(5, 0), "test": fake_split(3, 1)}
    for split, (images, labels) in arrays.items():
        for name, data in zip(mnist.split_files(split), (idx_gz(images, 2051), idx_gz(labels, 2049))):
            (folder / name).write_bytes(data)
            monkeypatch.setitem(mnist.FASHION_MNIST.md5, name, hashlib.md5(data).hexdigest())
    return folder, arrays


def test_fashion_mnist_from_a_folder_loads_exactly(tmp_path, capsys, fake_fashion):
    folder, arrays = fake_fashion
    out = tmp_path / "fashion"
    code, stdout, err = run(capsys, fashion_mnist.main, "--source", folder, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())
    for split, (images, labels) in arrays.items():
        counts = column(stdout, split)
        expected = np.bincount(labels, minlength=10)
        assert [counts[name] for name in mnist.FASHION_MNIST.class_names] == expected.tolist()
        ds = load_mnist(str(out), split=split)
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
        assert torch.equal(torch.round(ds.data[:, 0] * 255).to(torch.uint8), torch.from_numpy(images))
    assert "T-shirt/top" in stdout and "Ankle boot" in stdout
    assert f"python -m mmdiff dataset=fashion_mnist dataset.root={out} dataset.split=train" in stdout


def test_wrong_checksum_is_a_clear_error_and_leaves_nothing(tmp_path, capsys, fake_fashion, monkeypatch):
    folder, _ = fake_fashion
    monkeypatch.setitem(mnist.FASHION_MNIST.md5, "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")
    out = tmp_path / "out"
    code, _, err = run(capsys, fashion_mnist.main, "--source", folder, "--out", out, "--splits", "test")
    assert code == 1
    assert re.search(r"t10k-labels-idx1-ubyte.gz has md5 [0-9a-f]{32}, not the expected "
                     r"bb300cfdad3c16e7a12a480ee83cd310", err)
    assert not (out / "t10k-labels-idx1-ubyte.gz").exists()
    assert (folder / "t10k-labels-idx1-ubyte.gz").exists()  # the user's file is kept
    code, _, err = run(capsys, fashion_mnist.main, "--source", tmp_path / "nowhere", "--out", out)
    assert code == 1 and "does not exist" in err


def test_a_damaged_idx_file_with_the_right_md5_is_still_caught(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "src"
    folder.mkdir()
    images, labels = fake_split(2, 0)
    files = dict(zip(mnist.split_files("test"), (idx_gz(images, 2051), idx_gz(labels[:1], 2049))))
    for name, data in files.items():
        (folder / name).write_bytes(data)
        monkeypatch.setitem(mnist.MNIST.md5, name, hashlib.md5(data).hexdigest())
    code, _, err = run(capsys, mnist.main, "--source", folder, "--out", tmp_path / "out", "--splits", "test")
    assert code == 1 and "holds images of shape [2, 28, 28] but" in err and "1 labels" in err


def test_download_from_mirrors_skips_an_unreachable_one(tmp_path, capsys, fake_fashion):
    folder, arrays = fake_fashion
    files = {f"fashion/{p.name}": p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "out"
    with Server(files) as server:
        spec = dataclasses.replace(mnist.FASHION_MNIST, mirrors=("http://127.0.0.1:9/", server.url("fashion/")))
        code = mnist.main(["--out", str(out), "--splits", "train"], spec)
        stdout, err = capsys.readouterr()
        assert code == 0, err
        assert stdout.count("downloaded, md5 checked") == 2 and len(server.seen) == 2
        code = mnist.main(["--out", str(out), "--source", server.base + "/fashion"], spec)  # one base URL
        assert code == 0 and len(server.seen) == 4  # only the test files were missing
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert load_mnist(str(out), split="train").labels.tolist() == arrays["train"][1].tolist()
