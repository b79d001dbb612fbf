"""data_prep/cifar10.py on a tiny fake cifar-10-binary.tar.gz: records in the real format, exact pixels."""

import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import cifar10
from mmdiff.data.images import load_image_folder
from tests.data_prep import Server

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TOP = "cifar-10-batches-bin"
PER_BATCH = {**{f"data_batch_{k}.bin": 2 for k in range(1, 6)}, "test_batch.bin": 3}


def make_batches(seed=0):
    """{batch name: (labels [n], images [n, 32, 32, 3] uint8)}."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 10, n), rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
            for name, n in PER_BATCH.items()}


def batch_bytes(labels, images):
    """The binary format: per record one label byte, then the R, G and B planes (row-major)."""
    return b"".join(bytes([int(label)]) + image.transpose(2, 0, 1).tobytes() for label, image in zip(labels, images))


def make_archive(path, batches, drop=(), extra=None):
    """A tar.gz laid out like the real one, members in a scrambled order (test batch and meta not last)."""
    members = {f"{TOP}/{name}": batch_bytes(*batches[name]) for name in batches if name not in drop}
    members[f"{TOP}/batches.meta.txt"] = ("\n".join(CLASSES) + "\n\n").encode()
    members[f"{TOP}/readme.html"] = b"<html></html>"
    members.update(extra or {})
    order = sorted(members, key=lambda m: hashlib.md5(m.encode()).hexdigest())
    with tarfile.open(path, "w:gz") as tar:
        for name in order:
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def expected(batches, split):
    """[(label, image)] of a split in the canonical order: data_batch_1..5, then record order."""
    names = cifar10.BATCHES[split]
    return [(int(label), image) for name in names for label, image in zip(*batches[name])]


def run(capsys, *args):
    code = cifar10.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def archive(tmp_path, monkeypatch):
    batches = make_batches()
    path = make_archive(tmp_path / "cifar-10-binary.tar.gz", batches)
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(path.read_bytes()).hexdigest())
    return path, batches


def check_output(out, batches):
    for split in ("train", "test"):
        records = expected(batches, split)
        files = sorted((out / split).glob("*/*.png"))
        assert len(files) == len(records)
        assert sorted(p.name for p in (out / split).iterdir()) == CLASSES  # every class has its folder
        for i, (label, image) in enumerate(records):
            path = out / split / CLASSES[label] / f"{i:05d}.png"
            with Image.open(path) as im:
                assert im.mode == "RGB" and im.size == (32, 32)
                assert np.array_equal(np.asarray(im), image)


def test_archive_is_converted_exactly(tmp_path, capsys, archive):
    path, batches = archive
    out = tmp_path / "cifar10"
    code, stdout, err = run(capsys, "--source", path, "--out", out)
    assert code == 0, err
    check_output(out, batches)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"] and path.exists()  # the user's archive stays
    train_labels = [label for label, _ in expected(batches, "train")]
    assert f"  all     {len(train_labels)}     3" in stdout
    assert "13 images, 32x32 RGB PNG" in stdout
    assert f"python -m mmdiff dataset=image_folder dataset.root={out / 'train'} dataset.size=32" in stdout
    present = sorted(set(train_labels))  # image_folder keeps the classes that hold images
    ds = load_image_folder(str(out / "train"), size=32).load()
    assert ds.data.shape == (10, 3, 32, 32) and ds.class_names == [CLASSES[k] for k in present]
    assert sorted(ds.labels.tolist()) == sorted(present.index(k) for k in train_labels)
    first = expected(batches, "train")[0]
    row = ds.labels.tolist().index(present.index(first[0]))  # 00000.png comes first in its class folder
    assert torch.allclose(ds.data[row], torch.from_numpy(first[1]).permute(2, 0, 1) / 255.0, atol=2 / 255)


def test_rerun_force_and_folder_source(tmp_path, capsys, archive):
    path, batches = archive
    out = tmp_path / "a"
    assert run(capsys, "--source", path.as_uri(), "--out", out)[0] == 0
    code, stdout, _ = run(capsys, "--source", path, "--out", out)
    assert code == 0 and "already holds train/ and test/" in stdout and "  all     10     3" in stdout
    (out / "train" / "cat" / "junk.txt").write_text("x")
    assert run(capsys, "--source", path, "--out", out, "--force")[0] == 0
    assert not (out / "train" / "cat" / "junk.txt").exists()
    extracted = tmp_path / "extracted"
    with tarfile.open(path) as tar:
        tar.extractall(extracted, filter="data")
    code, stdout, err = run(capsys, "--source", extracted, "--out", tmp_path / "b")
    assert code == 0 and "no archive checksum" in stdout, err
    check_output(tmp_path / "b", batches)


def test_wrong_checksum_and_damaged_archives_are_clear_errors(tmp_path, capsys, archive, monkeypatch):
    path, batches = archive
    good = cifar10.MD5
    monkeypatch.setattr(cifar10, "MD5", "c32a1d4ab5d03f1284b67883e8d87530")
    code, _, err = run(capsys, "--source", path, "--out", tmp_path / "x")
    assert code == 1 and f"has md5 {good}, not the expected c32a1d4ab5d03f1284b67883e8d87530" in err
    assert not (tmp_path / "x" / "train").exists()

    def fails(archive_path, message):
        monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive_path.read_bytes()).hexdigest())
        code, _, err = run(capsys, "--source", archive_path, "--out", tmp_path / "y")
        assert code == 1 and message in err, err
        assert not (tmp_path / "y" / "train").exists() and not (tmp_path / "y" / "test").exists()

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    fails(truncated, "is not a valid tar.gz archive")
    fails(make_archive(tmp_path / "missing.tar.gz", batches, drop=["data_batch_5.bin"]), "lacks data_batch_5.bin")
    cut = make_archive(tmp_path / "cut.tar.gz", batches, extra={f"{TOP}/test_batch.bin": b"\x01" * 5000})
    fails(cut, "test_batch.bin ends with 1927 bytes, not a whole 3073-byte record")
    bad_label = make_archive(tmp_path / "label.tar.gz", batches, extra={f"{TOP}/test_batch.bin": b"\x0b" * 3073})
    fails(bad_label, "holds label 11, not 0-9")


def test_download_then_remove_or_keep_the_archive(tmp_path, capsys, archive):
    path, batches = archive
    with Server({"c.tar.gz": path.read_bytes()}) as server:
        code, _, err = run(capsys, "--source", server.url("c.tar.gz"), "--out", tmp_path / "a")
        assert code == 0, err
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["test", "train"]
        code, _, err = run(capsys, "--source", server.url("c.tar.gz"), "--out", tmp_path / "b", "--keep-archive")
        assert code == 0, err
    assert (tmp_path / "b" / cifar10.ARCHIVE).read_bytes() == path.read_bytes()
    check_output(tmp_path / "a", batches)
