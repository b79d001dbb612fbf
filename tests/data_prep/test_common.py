"""data_prep/common.py: sources, resumable downloads (a local HTTP server), checksums, moves, tables."""

import hashlib
from collections import Counter

import numpy as np
import pytest

from data_prep import common
from tests.data_prep import Server


def test_local_path_and_join_source(tmp_path):
    assert common.local_path(str(tmp_path / "a b.zip")) == tmp_path / "a b.zip"
    assert common.local_path((tmp_path / "a b.zip").as_uri()) == tmp_path / "a b.zip"  # %20 decoded
    assert common.local_path("https://example.org/x.zip") is None
    assert common.join_source("https://h/mnist/", "f.gz") == common.join_source("https://h/mnist", "f.gz") \
        == "https://h/mnist/f.gz"
    assert common.join_source(str(tmp_path), "f.gz") == str(tmp_path / "f.gz")
    assert common.join_source(tmp_path.as_uri(), "f.gz") == str(tmp_path / "f.gz")


@pytest.mark.parametrize("ranges", [True, False])
def test_download_resumes_a_part_file(tmp_path, ranges):
    payload = np.random.default_rng(0).bytes(300_000)
    dest = tmp_path / "a.zip"
    dest.with_name("a.zip.part").write_bytes(payload[:100_000])
    with Server({"a.zip": payload}, ranges) as server:
        assert common.download(server.url("a.zip"), dest, chunk=4096) == dest
    assert dest.read_bytes() == payload and not dest.with_name("a.zip.part").exists()
    assert server.seen == ["bytes=100000-"]  # asked for the rest; a server ignoring that sends it all


def test_download_of_a_complete_part_and_http_errors(tmp_path):
    payload = b"x" * 1000
    dest = tmp_path / "a.zip"
    dest.with_name("a.zip.part").write_bytes(payload)
    with Server({"a.zip": payload}) as server:
        common.download(server.url("a.zip"), dest)
        assert dest.read_bytes() == payload
        with pytest.raises(common.FetchError, match=r"could not download .*/missing.zip: HTTP 404"):
            common.download(server.url("missing.zip"), tmp_path / "b.zip")
    with pytest.raises(common.FetchError, match="could not download .*run again"):
        common.download("http://127.0.0.1:9/none.zip", tmp_path / "c.zip")  # port 9 (discard): refused


def test_check_digest_md5_and_sha256(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    md5, sha = hashlib.md5(b"hello").hexdigest(), hashlib.sha256(b"hello").hexdigest()
    assert common.md5(f) == md5 and common.sha256(f) == sha
    common.check_digest(f, md5.upper(), "md5")
    common.check_digest(f, None, "md5")  # no expected value: no check
    with pytest.raises(common.FetchError, match=f"has sha256 {sha}, not the expected {'0' * 64}: .*delete it"):
        common.check_digest(f, "0" * 64)
    assert f.exists()  # a file the user passed is never deleted
    with pytest.raises(common.FetchError, match="it was deleted: run again"):
        common.check_digest(f, "0" * 64, remove=True)
    assert not f.exists()


def test_obtain_a_local_file(tmp_path):
    src = tmp_path / "src" / "data.bin"
    src.parent.mkdir()
    src.write_bytes(b"abc")
    digest = hashlib.md5(b"abc").hexdigest()
    assert common.obtain(str(src), tmp_path / "out" / "d.bin", algorithm="md5", digest=digest) == (src, False)
    assert not (tmp_path / "out").exists()  # checked where it is, not copied
    path, downloaded = common.obtain(src.as_uri(), tmp_path / "out" / "d.bin", algorithm="md5", digest=digest,
                                     copy_local=True)
    assert path == tmp_path / "out" / "d.bin" and path.read_bytes() == b"abc" and not downloaded
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["d.bin"]
    with pytest.raises(common.FetchError, match="has md5 .* not the expected"):
        common.obtain(str(src), tmp_path / "x.bin", algorithm="md5", digest="1" * 32)
    assert src.exists()
    with pytest.raises(common.FetchError, match="does not exist"):
        common.obtain(str(tmp_path / "nope.bin"), tmp_path / "x.bin")


def test_obtain_downloads_checks_reuses_and_deletes_a_bad_download(tmp_path):
    payload = b"payload" * 100
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "out" / "p.bin"
    with Server({"p.bin": payload}) as server:
        assert common.obtain(server.url("p.bin"), dest, digest=digest) == (dest, True)
        assert dest.read_bytes() == payload and server.seen == [None]
        assert common.obtain(server.url("p.bin"), dest, digest=digest) == (dest, False)  # reused, not fetched
        dest.write_bytes(b"stale")
        assert common.obtain(server.url("p.bin"), dest, digest=digest) == (dest, True)  # mismatch: fetched again
        assert dest.read_bytes() == payload and len(server.seen) == 2
        with pytest.raises(common.FetchError, match="it was deleted: run again"):
            common.obtain(server.url("p.bin"), tmp_path / "q.bin", digest="2" * 64)
    assert not (tmp_path / "q.bin").exists() and not (tmp_path / "q.bin.part").exists()


def test_copy_atomic_and_replace_dir(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    assert common.copy_atomic(tmp_path / "a", tmp_path / "b").read_bytes() == b"1"
    final, staging = tmp_path / "final", tmp_path / "staging"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    common.replace_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"] and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "final"]


def test_progress_reader_reads_every_byte(tmp_path):
    data = np.random.default_rng(1).bytes(10_000)
    (tmp_path / "f").write_bytes(data)
    with common.ProgressReader(tmp_path / "f") as f:
        assert f.read(3) + f.read(5000) + f.read() == data and f.read() == b""
    assert f.file.closed


def test_tables_right_align_and_total():
    assert common.table(["a", "long"], [[1, 2], ["xyz", 30]]).splitlines() == ["  a  long", "  1     2", "xyz    30"]
    counts = Counter({("0", "train"): 3, ("0", "test"): 1, ("1", "train"): 10})
    assert common.count_table(counts, ["0", "1"], ["train", "test"], "digit").splitlines() == [
        "digit  train  test", "    0      3     1", "    1     10     0", "  all     13     1"]
    assert common.listed([str(i) for i in range(7)]) == "0; 1; 2; 3; 4; and 2 more"
