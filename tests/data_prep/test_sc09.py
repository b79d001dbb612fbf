"""data_prep/sc09.py on a tiny fake speech_commands_v0.02.tar.gz: digit words kept, official split lists."""

import hashlib
import io
import tarfile

import numpy as np
import pytest
import soundfile as sf

from data_prep import sc09
from mmdiff.data.audio import load_audio_folder
from tests.data_prep import Server

# (word, speaker, k, split): digits in every split, other words that must be left out
CLIPS = [("zero", "0a1b2c3d", 0, "train"), ("zero", "0a1b2c3d", 1, "valid"), ("zero", "ffee0011", 0, "test"),
         ("one", "12345678", 0, "train"), ("one", "abcdef01", 2, "train"), ("five", "12345678", 0, "test"),
         ("nine", "abcdef01", 0, "valid"), ("nine", "99990000", 3, "train")]
OTHER = [("yes", "12345678", 0, "train"), ("yes", "abcdef01", 0, "test"), ("forward", "0a1b2c3d", 0, "valid")]


def name(clip):
    return f"{clip[0]}/{clip[1]}_nohash_{clip[2]}.wav"


def wav_bytes(clip, rate=16000, frames=None):
    """A distinct int16 WAV per clip, 0.4-1 s long."""
    seed = int(hashlib.md5(name(clip).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    data = rng.integers(-9000, 9000, frames or int(rng.integers(6400, 16001))).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def make_archive(path, clips=CLIPS + OTHER, lists=True, extra=None):
    """A tar.gz laid out like the real one ("./word/file.wav"), the split lists after the clips."""
    members = {f"./{name(c)}": wav_bytes(c) for c in clips}
    members["./_background_noise_/white_noise.wav"] = wav_bytes(("noise", "0", 0, ""), frames=20000)
    members["./LICENSE"] = b"CC BY 4.0"
    members.update(extra or {})
    if lists:
        for split, list_name in sc09.LISTS.items():
            members[f"./{list_name}"] = "".join(f"{name(c)}\n" for c in CLIPS + OTHER if c[3] == split).encode()
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run(capsys, *args):
    code = sc09.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def archive(tmp_path):
    path = make_archive(tmp_path / "sc.tar.gz")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def check_output(out):
    for split in sc09.SPLITS:
        found = sorted(p.relative_to(out / split).as_posix() for p in (out / split).glob("*/*"))
        assert found == sorted(name(c) for c in CLIPS if c[3] == split)
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(sc09.WORDS)  # every word has its folder
    for c in CLIPS:
        assert (out / c[3] / name(c)).read_bytes() == wav_bytes(c)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "valid"]


def test_digits_are_extracted_into_the_official_splits(tmp_path, capsys, archive):
    path, sha = archive
    out = tmp_path / "sc09"
    code, stdout, err = run(capsys, "--source", path, "--out", out, "--sha256", sha)
    assert code == 0, err
    check_output(out)
    assert path.exists()  # the user's archive stays
    assert "  one      2      0     0" in stdout and "  all      4      2     2" in stdout
    short = sum(sf.info(io.BytesIO(wav_bytes(c))).frames < 16000 for c in CLIPS)
    assert f"8 clips at 16000 Hz mono, {short} of them shorter than 1 s (the loader pads them)" in stdout
    assert f"dataset=audio_folder dataset.root={out / 'train'} dataset.sample_rate=16000 dataset.seconds=1.0" in stdout
    ds = load_audio_folder(str(out / "train"), sample_rate=16000, seconds=1.0, normalize="none", crop="start").load()
    assert ds.class_names == ["nine", "one", "zero"] and ds.labels.tolist() == [0, 1, 1, 2]
    clip = sf.read(out / "train" / name(CLIPS[0]), dtype="float32")[0]
    assert np.array_equal(ds.data[3, 0, :len(clip)].numpy(), clip) and not ds.data[3, 0, len(clip):].any()


def test_checksum_default_none_and_mismatch(tmp_path, capsys, archive):
    path, sha = archive
    code, _, err = run(capsys, "--source", path, "--out", tmp_path / "a")  # the published value of the real file
    assert code == 1 and f"has sha256 {sha}, not the expected {sc09.SHA256}" in err
    assert not (tmp_path / "a" / "train").exists()
    code, stdout, err = run(capsys, "--source", path.as_uri(), "--out", tmp_path / "a", "--sha256", "none")
    assert code == 0 and "sha256 not checked" in stdout, err
    check_output(tmp_path / "a")
    code, stdout, _ = run(capsys, "--source", path, "--out", tmp_path / "a")
    assert code == 0 and "already holds train/, valid/ and test/" in stdout and "  all      4      2     2" in stdout


def test_folder_source_gives_the_same_result(tmp_path, capsys, archive):
    path, _ = archive
    extracted = tmp_path / "extracted"
    with tarfile.open(path) as tar:
        tar.extractall(extracted, filter="data")
    code, stdout, err = run(capsys, "--source", extracted, "--out", tmp_path / "b")
    assert code == 0 and "no archive checksum" in stdout, err
    check_output(tmp_path / "b")


def fails(capsys, tmp_path, archive_path, message):
    code, _, err = run(capsys, "--source", archive_path, "--out", tmp_path / "y", "--sha256", "none")
    assert code == 1 and message in err, err
    assert not any((tmp_path / "y" / s).exists() for s in sc09.SPLITS)


def test_damaged_or_incomplete_sources_are_clear_errors(tmp_path, capsys, archive):
    path, _ = archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    fails(capsys, tmp_path, truncated, "is not a valid tar.gz archive")
    fails(capsys, tmp_path, make_archive(tmp_path / "nolists.tar.gz", lists=False),
          "lacks validation_list.txt and testing_list.txt")
    fails(capsys, tmp_path, make_archive(tmp_path / "short.tar.gz", clips=CLIPS[:1] + CLIPS[2:] + OTHER),
          "1 clips named in the split lists are not in the source: zero/0a1b2c3d_nohash_1.wav")
    at_8k = make_archive(tmp_path / "8k.tar.gz", extra={"./two/00000000_nohash_0.wav": wav_bytes(CLIPS[0], 8000)})
    fails(capsys, tmp_path, at_8k, "1 of 9 clips are not SC09 clips: train/two/00000000_nohash_0.wav: 8000 Hz")


def test_members_cannot_escape_and_only_digit_clips_are_written(tmp_path, capsys):
    evil = {"../zero/00000001_nohash_0.wav": wav_bytes(CLIPS[0]), "./zero/../../escape.wav": wav_bytes(CLIPS[0]),
            "/abs/zero/00000002_nohash_0.wav": wav_bytes(CLIPS[0]), "./zero/notes.txt": b"x"}
    archive = make_archive(tmp_path / "evil.tar.gz", extra=evil)
    code, _, err = run(capsys, "--source", archive, "--out", tmp_path / "out", "--sha256", "none")
    assert code == 0, err
    check_output(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "out"]


def test_download_removes_the_archive_unless_kept(tmp_path, capsys, archive):
    path, sha = archive
    with Server({"sc.tar.gz": path.read_bytes()}) as server:
        assert run(capsys, "--source", server.url("sc.tar.gz"), "--out", tmp_path / "a", "--sha256", sha)[0] == 0
        assert run(capsys, "--source", server.url("sc.tar.gz"), "--out", tmp_path / "b", "--sha256", sha,
                   "--keep-archive")[0] == 0
    check_output(tmp_path / "a")
    assert (tmp_path / "b" / sc09.ARCHIVE).read_bytes() == path.read_bytes()
