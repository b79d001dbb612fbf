"""Audio datasets: normalisation, length fixing, FSDD (both layouts) and folders of audio files."""

import numpy as np
import pytest
import torch

from mmdiff.data.audio import FSDD_SPEAKERS, fix_length, load_audio_folder, load_fsdd, normalize_audio
from mmdiff.errors import UserError
from tests.conftest import SHARED_DATA

FSDD = SHARED_DATA / "fsdd"
from tests.data.signals import tone, write, lowest_peak


# --- normalize_audio and fix_length --------------------------------------------------------------

def test_normalize_peak_rms_none_and_silence():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (3, 1, 500)).astype(np.float32)
    x[2] = 0  # silent: left alone
    peak = normalize_audio(x, "peak")
    assert peak.dtype == np.float32 and np.allclose(np.abs(peak[:2]).max(-1), 0.95, atol=1e-6)
    assert (peak[2] == 0).all() and np.allclose(peak[0] / x[0], peak[0, 0, 0] / x[0, 0, 0])
    loud = normalize_audio(x, "rms")
    assert np.allclose(np.sqrt((loud[:2] ** 2).mean(-1)), 0.1, atol=1e-6)
    spike = np.zeros(1000, np.float32)
    spike[10] = 0.01  # RMS 3e-4: a gain of 316 would put the peak at 3.2, so the peak limits it to 1
    assert np.isclose(np.abs(normalize_audio(spike, "rms")).max(), 1.0)
    assert normalize_audio(x, "none") is x
    t = torch.from_numpy(x)
    assert isinstance(normalize_audio(t, "peak"), torch.Tensor) and torch.equal(normalize_audio(t, "peak"),
                                                                              torch.from_numpy(peak))
    with pytest.raises(UserError, match="dataset.normalize=loud is not supported: use one of peak, rms, none"):
        normalize_audio(x, "loud")


def test_fix_length_crops_and_pads():
    x = np.arange(10, dtype=np.float32)[None]
    assert fix_length(x, 4, "start").tolist() == [[0, 1, 2, 3]]
    assert fix_length(x, 4, "center").tolist() == [[3, 4, 5, 6]]
    assert fix_length(x, 13, "random", np.random.default_rng(0)).tolist() == [list(range(10)) + [0, 0, 0]]
    assert fix_length(x, 10, "center") is x
    starts = {int(fix_length(x, 4, "random", np.random.default_rng(s))[0, 0]) for s in range(30)}
    assert starts == set(range(7))  # every window can be drawn, and only those
    assert np.array_equal(fix_length(x, 4, "random", np.random.default_rng(5)),
                          fix_length(x, 4, "random", np.random.default_rng(5)))
    t = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(fix_length(t, 5), torch.tensor([[0.0, 1, 2, 0, 0], [3, 4, 5, 0, 0]]))
    with pytest.raises(UserError, match="dataset.crop=middle is not supported"):
        fix_length(x, 4, "middle")


# --- FSDD ----------------------------------------------------------------------------------------

FAKE = [(digit, speaker, index) for digit in (0, 3, 9) for speaker in ("bob", "ann") for index in (0, 4, 5, 12)]


def fake_clip(digit, speaker, index):
    """A distinct int16 clip per recording; (3, ann, 12) is longer than one second at 8 kHz."""
    rng = np.random.default_rng(100 * digit + 10 * len(speaker) + index)
    length = 9000 if (digit, speaker, index) == (3, "ann", 12) else 800 + 37 * index + 11 * digit
    return rng.integers(-20000, 20000, length).astype(np.int16)


def write_recordings(folder):
    for key in FAKE:
        write(folder / "{}_{}_{}.wav".format(*key), fake_clip(*key), 8000, subtype="PCM_16")
    return folder


def write_packed(path, keys=FAKE):
    keys = sorted(keys)  # the packed copy's order: (digit, speaker, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    clips = [fake_clip(*k) for k in keys]
    lengths = np.array([len(c) for c in clips])
    np.savez(path, audio=np.concatenate(clips), offsets=np.cumsum(lengths) - lengths, lengths=lengths,
             digits=np.array([k[0] for k in keys]), speakers=np.array([k[1] for k in keys]),
             indices=np.array([k[2] for k in keys]), splits=np.array(["test" if k[2] < 5 else "train" for k in keys]),
             files=np.array(["{}_{}_{}.wav".format(*k) for k in keys]), sample_rate=np.array(8000))
    return path


def expected(split, seconds=1.0):
    keys = sorted(k for k in FAKE if split == "all" or (k[2] < 5) == (split == "test"))
    t = round(seconds * 8000)
    data = np.stack([np.pad(fake_clip(*k)[:t], (0, max(0, t - len(fake_clip(*k))))) for k in keys]) / 32768.0
    return torch.from_numpy(data.astype(np.float32)).unsqueeze(1), [k[0] for k in keys]


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_fsdd_original_layout_split_labels_padding_and_crop(tmp_path, split):
    write_recordings(tmp_path / "fsdd" / "recordings")
    data, labels = expected(split)
    for root in (tmp_path / "fsdd", tmp_path / "fsdd" / "recordings"):
        ds = load_fsdd(str(root), split=split, normalize="none")
        assert ds.name == "fsdd" and ds.class_names == [str(d) for d in range(10)]
        assert ds.labels.tolist() == labels and ds.data.shape == (len(labels), 1, 8000)
        assert torch.equal(ds.data, data)  # exact samples, zero-padded at the end, the long one cropped


def test_fsdd_packed_npz_equals_the_original_layout(tmp_path):
    write_recordings(tmp_path / "orig" / "recordings")
    npz = write_packed(tmp_path / "packed" / "fsdd_8k_int16.npz")
    for split in ("train", "test"):
        original = load_fsdd(str(tmp_path / "orig"), split=split, seconds=0.5)
        for root in (npz, npz.parent):
            packed = load_fsdd(str(root), split=split, seconds=0.5)
            assert torch.equal(packed.data, original.data) and torch.equal(packed.labels, original.labels)
    assert np.allclose(original.data.abs().amax(-1), 0.95)


def test_fsdd_both_layouts_carry_the_speaker(tmp_path):
    keys = [(d, s, i) for d in (1, 4) for s in ("theo", "bob", "jackson") for i in (3, 7)]
    for key in keys:
        write(tmp_path / "orig" / "recordings" / "{}_{}_{}.wav".format(*key), fake_clip(*key), 8000, subtype="PCM_16")
    npz = write_packed(tmp_path / "packed" / "fsdd_8k_int16.npz", keys)
    names = list(FSDD_SPEAKERS)
    expected_speakers = [names.index(s) if s in names else -1 for _, s, i in sorted(keys) if i >= 5]
    assert expected_speakers == [-1, 1, 4] * 2                    # bob is no FSDD speaker
    for root in (tmp_path / "orig", npz):
        ds = load_fsdd(str(root))
        assert ds.extras["speaker"].dtype == torch.int64 and ds.extras["speaker"].tolist() == expected_speakers
        assert ds.subset([2, 0]).extras["speaker"].tolist() == [4, -1]


@pytest.mark.skipif(not (FSDD / "fsdd_8k_int16.npz").is_file(), reason=f"the shared FSDD copy is not at {FSDD}")
def test_real_fsdd_speakers_match_the_packed_names(tmp_path):
    test = load_fsdd(str(FSDD), split="test")
    with np.load(FSDD / "fsdd_8k_int16.npz") as npz:
        rows = npz["splits"] == "test"
        speakers, files = npz["speakers"][rows], npz["files"][rows]
        audio, offsets, lengths = npz["audio"], npz["offsets"][rows], npz["lengths"][rows]
    assert [list(FSDD_SPEAKERS)[s] for s in test.extras["speaker"].tolist()] == speakers.tolist()
    picked = [35 * s for s in range(6)]   # rows of (digit s, speaker s): recordings by all six, as WAV files
    for k in picked:
        write(tmp_path / files[k], audio[offsets[k]:offsets[k] + lengths[k]], 8000, subtype="PCM_16")
    folder = load_fsdd(str(tmp_path), split="test")
    assert folder.extras["speaker"].tolist() == test.extras["speaker"][picked].tolist() == list(range(6))


def test_fsdd_resampled_to_16k(tmp_path):
    clip = (0.5 * 32767 * np.sin(2 * np.pi * 500 * np.arange(4000) / 8000)).astype(np.int16)
    write(tmp_path / "recordings" / "1_bob_7.wav", clip, 8000, subtype="PCM_16")
    ds = load_fsdd(str(tmp_path), sample_rate=16000, seconds=0.75)
    assert ds.data.shape == (1, 1, 12000) and np.isclose(ds.data.abs().max(), 0.95)
    y = ds.data[0, 0, :8000].numpy()
    assert abs(lowest_peak(y, 16000) - 500) < 1 and ds.data[0, 0, 8100:].abs().max() < 1e-3


def test_fsdd_problems_name_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"dataset.root=.*nope does not exist: run python data_prep/fsdd.py"):
        load_fsdd(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"holds neither recordings/ nor fsdd_8k_int16.npz: run python data_prep"):
        load_fsdd(str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"dataset.split=dev is not supported: use one of train, test, all"):
        load_fsdd(str(tmp_path), split="dev")
    write(tmp_path / "r" / "recordings" / "2_bob_1.wav", np.ones(100, np.int16), 8000)
    with pytest.raises(UserError, match="no FSDD recordings of split=train"):
        load_fsdd(str(tmp_path / "r"))
    (tmp_path / "r" / "recordings" / "2_bob_9.wav").write_bytes(b"RIFF garbage")
    (tmp_path / "r" / "recordings" / "notes.wav").write_bytes(b"")
    with pytest.warns(UserWarning) as record:
        with pytest.raises(UserError, match=r"none of the 1 FSDD recording files could be read: .*2_bob_9.wav"):
            load_fsdd(str(tmp_path / "r"))
    assert "ignored 1 WAV file(s)" in str(record[0].message) and "notes.wav" in str(record[0].message)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing_key", "inconsistent"])
def test_fsdd_corrupt_npz(tmp_path, damage):
    npz = write_packed(tmp_path / "fsdd_8k_int16.npz")
    raw = npz.read_bytes()
    if damage == "garbage":
        npz.write_bytes(b"<html>404</html>")
    elif damage == "truncated":
        npz.write_bytes(raw[:len(raw) // 2])
    else:
        arrays = dict(np.load(npz))
        if damage == "missing_key":
            del arrays["offsets"]
        else:
            arrays["lengths"][-1] += 10
        np.savez(npz, **arrays)
    with pytest.raises(UserError, match=r"dataset.root=.*fsdd_8k_int16.npz is not a valid packed FSDD file"):
        load_fsdd(str(tmp_path))


@pytest.mark.skipif(not (FSDD / "fsdd_8k_int16.npz").is_file(), reason=f"the shared FSDD copy is not at {FSDD}")
def test_real_fsdd_shared_copy():
    train = load_fsdd(str(FSDD))
    test = load_fsdd(str(FSDD), split="test", normalize="none")
    assert len(train) == 1800 and len(test) == 300 and train.shape == test.shape == (1, 8000)
    assert train.class_counts() == [180] * 10 and test.class_counts() == [30] * 10
    with np.load(FSDD / "fsdd_8k_int16.npz") as npz:
        first = np.flatnonzero(npz["splits"] == "test")[0]
        start, n = npz["offsets"][first], npz["lengths"][first]
        clip = npz["audio"][start:start + n].astype(np.float32) / 32768
    assert torch.equal(test.data[0, 0, :n], torch.from_numpy(clip)) and (test.data[0, 0, n:] == 0).all()
    assert np.allclose(train.data.abs().amax(-1), 0.95)
    wide = load_fsdd(str(FSDD / "fsdd_8k_int16.npz"), split="test", sample_rate=16000, seconds=0.5)
    assert wide.data.shape == (300, 1, 8000) and torch.equal(wide.labels, test.labels)


# --- a folder of audio files ---------------------------------------------------------------------

FILES = {  # path: (rate, channels, frequency of the tone, soundfile options)
    "low/a8k.wav": (8000, 1, 300, dict(subtype="PCM_16")),
    "low/b22k_stereo_24bit.wav": (22050, 2, 500, dict(subtype="PCM_24")),
    "low/c.ogg": (44100, 1, 700, dict(format="OGG", subtype="VORBIS")),
    "high/d44k_6ch_float.wav": (44100, 6, 900, dict(subtype="FLOAT")),
    "high/e48k.flac": (48000, 2, 1100, dict(subtype="PCM_16")),
}


def write_folder(root):
    for name, (rate, channels, freq, kw) in FILES.items():
        wave = tone(freq, 1.2, rate)
        write(root / name, np.repeat(wave[:, None], channels, axis=1), rate, **kw)
    return root


def test_folder_reads_every_format_rate_and_layout(tmp_path):
    ds = load_audio_folder(str(write_folder(tmp_path)), sample_rate=16000, seconds=0.5, crop="center").load()
    assert ds.name == "audio_folder" and ds.class_names == ["high", "low"]
    assert ds.data.shape == (5, 1, 8000) and ds.data.dtype == torch.float32 and ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert torch.allclose(ds.data.abs().amax(-1), torch.tensor(0.95))
    order = ["high/d44k_6ch_float.wav", "high/e48k.flac", "low/a8k.wav", "low/b22k_stereo_24bit.wav", "low/c.ogg"]
    for clip, name in zip(ds.data[:, 0].numpy(), order):
        assert abs(lowest_peak(clip, 16000) - FILES[name][2]) < 2, name  # resampling keeps the pitch


def test_folder_mixes_channels_down_exactly(tmp_path):
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.5, 0.5, (1000, 6)).astype(np.float32)
    write(tmp_path / "x" / "six.wav", wave, 8000, subtype="FLOAT")
    ds = load_audio_folder(str(tmp_path), sample_rate=8000, seconds=0.125, normalize="none", crop="start").load()
    assert ds.class_names == ["x"] and np.allclose(ds.data[0, 0].numpy(), wave.mean(1), atol=1e-7)


def test_folder_skips_broken_files_with_one_counted_warning(tmp_path):
    good = write(tmp_path / "ok" / "good.wav", tone(440, 0.2, 8000), 8000)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "zero_bytes.wav").write_bytes(b"")
    (broken / "truncated.wav").write_bytes(good.read_bytes()[:30])  # cut inside the header
    (broken / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(500))
    (broken / "text.flac").write_text("this is not audio")
    write(broken / "silent.wav", np.zeros(1600, np.float32), 8000)
    write(broken / "nan.wav", np.full(1600, np.nan, np.float32), 8000, subtype="FLOAT")
    write(broken / "empty.wav", np.zeros(0, np.float32), 8000)
    with pytest.warns(UserWarning, match=r"skipped 7 of 8 audio files that could not be read") as record:
        ds = load_audio_folder(str(tmp_path), sample_rate=8000, seconds=0.25).load()
    message = str(record[0].message)  # names the first five (sorted) with their reasons
    assert all(reason in message for reason in ("empty.wav (ValueError: no samples)", "garbage.wav (LibsndfileError",
                                                "non-finite", "silent", "text.flac", "and 2 more"))
    assert len(ds) == 1 and ds.class_names == ["broken", "ok"] and ds.labels.tolist() == [1]
    good.unlink()
    with pytest.raises(UserError, match=r"none of the 7 audio files could be read"):
        load_audio_folder(str(tmp_path)).load()


def test_folder_missing_or_without_audio(tmp_path):
    with pytest.raises(UserError, match=r"dataset.root=.*nope does not exist"):
        load_audio_folder(str(tmp_path / "nope")).load()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"")
    with pytest.raises(UserError, match=r"holds no audio files \(looked for \.flac, \.ogg, \.wav"):
        load_audio_folder(str(tmp_path)).load()


def test_folder_crop_modes_and_padding(tmp_path):
    ramp = (np.arange(1600) / 1600).astype(np.float32)
    write(tmp_path / "c" / "long.wav", ramp, 8000, subtype="FLOAT")
    write(tmp_path / "d" / "short.wav", ramp[:300] + 0.1, 8000, subtype="FLOAT")

    def load(crop, seed=0):
        return load_audio_folder(str(tmp_path), sample_rate=8000, seconds=0.1, normalize="none", crop=crop,
                                 seed=seed).load().data[:, 0].numpy()

    assert np.array_equal(load("start")[0], ramp[:800]) and np.array_equal(load("center")[0], ramp[400:1200])
    assert np.array_equal(load("start")[1], np.concatenate([ramp[:300] + 0.1, np.zeros(500, np.float32)]))
    windows = [load("random", seed)[0] for seed in range(4)]
    assert np.array_equal(windows[0], load("random", 0)[0])  # deterministic for a seed
    starts = [int(round(w[0] * 1600)) for w in windows]
    assert len(set(starts)) > 1  # other seeds, other windows ...
    assert all(np.array_equal(w, ramp[s:s + 800]) for w, s in zip(windows, starts))  # ... each one contiguous


def test_folder_rms_normalisation(tmp_path):
    write(tmp_path / "a" / "x.wav", tone(440, 0.5, 16000, amp=0.02), 16000)
    ds = load_audio_folder(str(tmp_path), seconds=0.25, normalize="rms").load()
    assert np.isclose(ds.data[0, 0].pow(2).mean().sqrt().item(), 0.1, atol=1e-5)


@pytest.mark.parametrize("kwargs, key", [
    (dict(crop="middle"), "dataset.crop="), (dict(normalize="loud"), "dataset.normalize="),
    (dict(sample_rate=0), "dataset.sample_rate="), (dict(seconds=0), "dataset.seconds="),
])
def test_folder_settings_are_checked(tmp_path, kwargs, key):
    with pytest.raises(UserError, match=key):
        load_audio_folder(str(tmp_path), **kwargs).load()
