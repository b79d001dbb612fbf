"""The built-in notes dataset: shapes, order, pitch, timbre and settings."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mmdiff.data import notes as notes_module
from mmdiff.data.notes import load_notes, midi_to_hz, notes_pitches
from mmdiff.errors import UserError
from tests.data.signals import spectrum, lowest_peak, rms


# --- notes ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def notes():
    return load_notes()


def test_notes_shape_labels_and_documented_order(notes):
    assert notes.name == "notes" and notes.class_names == ["sine", "organ", "pluck", "bell"]
    assert notes.data.shape == (4 * 24 * 4, 1, 4000) and notes.data.dtype == torch.float32
    assert notes.labels.tolist() == [c for c in range(4) for _ in range(96)] and notes.class_counts() == [96] * 4
    pitches = notes_pitches()
    i = np.arange(len(notes))
    assert pitches.tolist() == (60 + (i // 4) % 24).tolist() and pitches.dtype == np.int64
    timbres = OmegaConf.create(["bell", "sine"])  # as Hydra passes a list
    small = load_notes(sample_rate=16000, seconds=0.25, per_pitch=1, octaves=1, low_midi=48, timbres=timbres)
    assert small.data.shape == (24, 1, 4000) and small.class_names == ["bell", "sine"]
    assert small.labels.tolist() == [0] * 12 + [1] * 12
    assert notes_pitches(octaves=1, low_midi=48, per_pitch=1, n_timbres=2).tolist() == list(range(48, 60)) * 2


def test_notes_are_deterministic_for_a_seed(notes):
    again = load_notes()
    assert torch.equal(again.data, notes.data) and torch.equal(again.labels, notes.labels)
    other = load_notes(seed=1).data
    assert not torch.allclose(other, notes.data, atol=1e-3)
    assert ((other - notes.data).abs().amax(dim=(1, 2)) > 1e-3).all()  # every clip varies with the seed


def test_every_note_has_the_intended_pitch(notes):
    x, pitches = notes.data[:, 0].numpy(), notes_pitches()
    cents = np.array([1200 * np.log2(lowest_peak(y, 8000) / midi_to_hz(m)) for y, m in zip(x, pitches)])
    # detune (+-5 cents) and vibrato (<= 10 cents) stay well inside a quarter tone
    assert np.abs(cents).max() < 30, [notes.class_names[c] for c in notes.labels[np.abs(cents) >= 30]]


def test_timbres_differ_measurably(notes):
    x, f0 = notes.data[:, 0].numpy(), midi_to_hz(notes_pitches())

    def partial(i, multiple):  # the largest magnitude within a quarter of f0 of multiple * f0
        mag, freqs = spectrum(x[i], 8000, pad=1)
        return mag[np.abs(freqs - multiple * f0[i]) < f0[i] / 4].max()

    by = {name: np.flatnonzero(notes.labels.numpy() == c) for c, name in enumerate(notes.class_names)}
    second = {name: np.array([partial(i, 2) / partial(i, 1) for i in rows]) for name, rows in by.items()}
    assert second["sine"].max() < 0.01 and second["organ"].min() > 0.3   # additive organ: a strong octave
    assert second["bell"].max() < 0.1                                     # FM 1:3.5: no octave, but ...
    assert min(partial(i, 2.5) / partial(i, 1) for i in by["bell"][:48]) > 0.2  # ... a sideband at 2.5 f0
    decay = rms(x, 8000, 0.3, 0.4) / rms(x, 8000, 0.02, 0.1)
    assert decay[by["pluck"]].max() < 0.5 and decay[by["bell"]].max() < 0.5      # plucked and struck: decaying
    assert decay[by["sine"]].min() > 0.7 and decay[by["organ"]].min() > 0.9      # held
    mag, freqs = np.abs(np.fft.rfft(x, axis=1)), np.fft.rfftfreq(x.shape[1], 1 / 8000)
    centroid = (mag * freqs).sum(1) / mag.sum(1) / f0
    assert centroid[by["sine"]].max() < 1.05
    assert min(np.median(centroid[by[name]]) for name in ("organ", "pluck", "bell")) > 1.5


def test_notes_start_at_zero_end_in_silence_and_have_random_gains(notes):
    x = notes.data[:, 0]
    peaks = x.abs().amax(1)
    assert x[:, 0].abs().max() < 1e-6 and x[:, -1].abs().max() < 1e-6
    assert (x[:, -80:].abs().amax(1) < 0.25 * peaks).all()  # the last 10 ms are in the release
    assert 0.5 <= peaks.min() and peaks.max() <= 0.9 and peaks.std() > 0.05


@pytest.mark.parametrize("name", ["organ", "bell"])
def test_notes_do_not_alias(name):
    """At 4 kHz the organ's 8th harmonic and the bell's upper sidebands lie above Nyquist: dropped, they
    leave no energy away from the expected partials (aliases would land between them). The pluck is a
    filter loop running at the sample rate: it has nothing to alias."""
    rate, ds = 4000, load_notes(sample_rate=4000, per_pitch=1, timbres=[name])
    ratios = {"organ": np.arange(1, 9), "bell": np.abs(1 + 3.5 * np.arange(-9, 10))}[name]
    for y, m in zip(ds.data[:, 0].numpy()[::5], notes_pitches(per_pitch=1, n_timbres=1)[::5]):
        mag, freqs = spectrum(y, rate, pad=1)
        near = (np.abs(freqs[:, None] - ratios[None] * midi_to_hz(m)) < 0.03 * midi_to_hz(m) + 8).any(1)
        assert (mag[~near] ** 2).sum() < 1e-3 * (mag ** 2).sum(), m


def test_pluck_is_tuned_exactly():
    """Karplus-Strong with the allpass tuning: the fundamental lands on f0, even where a period is 8.1 samples."""
    for midi in (60, 71, 83):
        f0 = midi_to_hz(midi)
        y = notes_module._pluck(np.full((1, 8000), f0), np.array([[0.5, 1.0]]), np.random.default_rng(1), 8000)[0, 2000:]
        mag, freqs = spectrum(y, 8000, pad=32)
        near = np.abs(freqs - f0) < 0.1 * f0
        assert abs(1200 * np.log2(freqs[near][np.argmax(mag[near])] / f0)) < 0.5, midi


def test_bell_bessel_series_equals_chowning_fm():
    """Where every sideband fits under the band limit, the Bessel series is Chowning's formula itself."""
    rate, f0, length = 8000, 100.0, 4000
    u = np.array([[0.0, 0.5]])  # peak index 2: the series' 9 orders hold it to 1e-6
    y = notes_module._bell(np.full((1, length), f0), u, None, rate)[0]
    t = np.arange(length) / rate
    amp = np.exp(-t * np.log(1000) / 0.9) * np.minimum(t / 0.002, 1)
    fm = np.sin(2 * np.pi * f0 * t + 2.0 * amp * np.sin(2 * np.pi * 3.5 * f0 * t)) * amp
    assert np.abs(y - fm).max() < 1e-5


@pytest.mark.parametrize("kwargs, key", [
    (dict(timbres=["sine", "flute"]), "dataset.timbres="), (dict(timbres=["sine", "sine"]), "dataset.timbres="),
    (dict(timbres="sine"), "dataset.timbres="), (dict(timbres=[]), "dataset.timbres="),
    (dict(sample_rate=0), "dataset.sample_rate="), (dict(sample_rate=8000.5), "dataset.sample_rate="),
    (dict(seconds=-1), "dataset.seconds="), (dict(seconds=1e-6), "dataset.seconds="),
    (dict(per_pitch=0), "dataset.per_pitch="), (dict(octaves=True), "dataset.octaves="),
    (dict(low_midi=200), "dataset.low_midi="), (dict(sample_rate=2000), "too close to the Nyquist"),
    (dict(seconds=0.01), "too short for a note"), (dict(seed=-1), "dataset.seed="),
])
def test_notes_settings_are_checked(kwargs, key):
    with pytest.raises(UserError, match=key):
        load_notes(**kwargs)
