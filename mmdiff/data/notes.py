"""The built-in audio dataset: synthesised musical notes, label = timbre (no download).

Four timbres: a sine, an additive organ, a Karplus-Strong plucked string (Karplus & Strong 1983, tuned
and damped after Jaffe & Smith 1983) and an FM bell (Chowning 1973), across two octaves, with ADSR
envelopes and small random detune, vibrato and gain. Deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import numpy as np
import torch
from scipy.signal import lfilter
from scipy.special import jv

from ..errors import UserError
from .audio import _check_rate, _num_samples
from .dataset import Dataset


# --- synthesised notes (built in) ----------------------------------------------------------------
#
# Every timbre turns the instantaneous fundamental frequency f [n, T] (Hz, with detune and vibrato)
# into raw waveforms [n, T] with its own attack/decay/sustain; load_notes adds the release and the gain.
# Partials at or above BAND * sample_rate are left out, so nothing aliases.

BAND = 0.45                 # highest partial, as a fraction of the sample rate (Nyquist is 0.5)
ORGAN_HARMONICS = np.array([1, 2, 3, 4, 6, 8])  # drawbar-like: octaves and fifths above the fundamental
ORGAN_LEVELS = np.array([1.0, 0.7, 0.5, 0.35, 0.25, 0.18])
BELL_RATIO = 3.5            # modulator : carrier frequency; inharmonic, and >= 2 keeps the carrier the lowest partial
BELL_INDEX = (2.0, 5.0)     # range of the peak modulation index
LN_1000 = math.log(1000.0)  # a T60 (the time to fall by 60 dB) is ln(1000) time constants


def _phase(freq: np.ndarray, sample_rate: int) -> np.ndarray:
    """Instantaneous frequency [n, T] Hz -> phase [n, T] radians, 0 at the first sample."""
    cycles = np.cumsum(freq, axis=1) - freq
    return 2 * np.pi * cycles / sample_rate


def _adsr(length: int, sample_rate: int, attack: float, decay: np.ndarray | float,
          sustain: np.ndarray | float) -> np.ndarray:
    """[n or 1, length] gain: a linear attack over ``attack`` s, then an exponential decay with time
    constant ``decay`` s towards ``sustain`` (per-clip values are [n] arrays). The release is load_notes'."""
    t = np.arange(length) / sample_rate
    decay, sustain = np.asarray(decay, float).reshape(-1, 1), np.asarray(sustain, float).reshape(-1, 1)
    rise = np.minimum(t / attack, 1.0)
    fall = sustain + (1 - sustain) * np.exp(-np.maximum(t - attack, 0) / decay)
    return rise * fall


def _sine(freq, u, rng, sample_rate):
    """One partial, sustained (sustain level 0.7-0.9)."""
    env = _adsr(freq.shape[1], sample_rate, 0.01, 0.15, 0.7 + 0.2 * u[:, 0])
    return np.sin(_phase(freq, sample_rate)) * env


def _organ(freq, u, rng, sample_rate):
    """Additive synthesis of a drawbar organ: harmonics 1, 2, 3, 4, 6, 8, each level jittered by
    +-15 % per clip; no decay (an organ pipe sounds as long as the key is held)."""
    phase = _phase(freq, sample_rate)
    levels = ORGAN_LEVELS * rng.uniform(0.85, 1.15, (len(freq), len(ORGAN_HARMONICS)))
    levels[:, 0] = 1.0  # the fundamental stays the strongest partial
    audible = ORGAN_HARMONICS * freq.max(axis=1, keepdims=True) < BAND * sample_rate  # [n, H]
    y = sum(np.sin(h * phase) * (levels[:, k] * audible[:, k])[:, None] for k, h in enumerate(ORGAN_HARMONICS))
    return y * _adsr(freq.shape[1], sample_rate, 0.005, 1.0, 1.0)


def _pluck(freq, u, rng, sample_rate):
    """Karplus-Strong plucked string (Karplus & Strong 1983): a delay line holding one period of the
    excitation, fed back through the loop filter (1 - S) + S z^-1. Tuning and decay follow Jaffe & Smith 1983
    ("Extensions of the Karplus-Strong plucked-string algorithm"): a first-order allpass supplies the
    fractional delay (exactly tuned at the fundamental, and lossless, so it does not change the decay),
    and the decay stretch factor S, or a loss factor rho < 1, gives every note a T60 of 0.4-0.8 s."""
    n, length = freq.shape
    omega0 = 2 * np.pi * freq[:, 0] / sample_rate                          # [n] nominal fundamental, rad/sample
    per_period = 10 ** (-3.0 / ((0.4 + 0.4 * u[:, 1]) * freq[:, 0]))      # loop gain for -60 dB in T60 s
    # S = 1/2 damps most; where even that decays too slowly (low notes), add a loss rho < 1 instead.
    # Otherwise solve |(1 - S) + S e^{-j w0}|^2 = 1 - 2 S (1 - S)(1 - cos w0) = per_period^2 for S.
    slowest = np.cos(omega0 / 2)
    c = np.clip((1 - per_period ** 2) / (2 * (1 - np.cos(omega0))), 0, 0.25)
    s = np.where(slowest >= per_period, 0.5, (1 - np.sqrt(1 - 4 * c)) / 2)
    rho = np.where(slowest >= per_period, per_period / slowest, 1.0)

    # One period at the current fundamental w = whole samples d + the allpass + the loop filter, in
    # phase delay. The loop filter's is atan2(S sin w, 1 - S + S cos w) / w; the allpass
    # (C + z^-1) / (1 + C z^-1) has 1 - 2 atan2(C sin w, 1 + C cos w) / w, which equals p in [0.5, 1.5)
    # for C = sin(q) / sin(w - q), q = (1 - p) w / 2. |C| < 1 (stable) for f0 up to about sample_rate / 3;
    # clipping C above that only detunes.
    omega = 2 * np.pi * freq / sample_rate                                 # [n, T]
    loop_filter = np.arctan2(s[:, None] * np.sin(omega), 1 - s[:, None] + s[:, None] * np.cos(omega)) / omega
    rest = sample_rate / freq - loop_filter
    whole = np.floor(rest - 0.5).astype(np.int64)
    q = (1 - (rest - whole)) * omega / 2
    coef = np.clip(np.sin(q) / np.sin(omega - q), -0.95, 0.95)

    pre = int(whole.max()) + 2
    buf = np.zeros((n, pre + length))
    # The pluck: the delay line starts as one period (d + 1 samples) of the string's shape, a triangle
    # peaked at the plucking point (15-35 % along; its harmonics fall as 1/k^2, so the fundamental leads),
    # plus noise for the original algorithm's bright, random attack; zero mean, so no offset circulates.
    period = whole[:, :1] + 1
    x = (np.arange(pre) - (pre - period)) / period                         # [n, pre] position on the string
    point = rng.uniform(0.15, 0.35, (n, 1))
    shape = np.where(x < point, x / point, (1 - x) / (1 - point)) + rng.uniform(-0.5, 0.5, (n, pre))
    shape = np.where(x >= 0, shape, 0.0)
    buf[:, :pre] = np.where(x >= 0, shape - shape.sum(axis=1, keepdims=True) / period, 0.0)
    rows = np.arange(n)
    read = pre + np.arange(length) - whole                                 # [n, T] index of x[t - d]
    v_prev, a_prev = buf[rows, read[:, 0] - 1], np.zeros(n)
    for t in range(length):
        v, k = buf[rows, read[:, t]], coef[:, t]
        a = k * v + v_prev - k * a_prev                                    # the allpass
        buf[:, pre + t] = rho * ((1 - s) * a + s * a_prev)                 # the loop filter
        v_prev, a_prev = v, a
    # The loop's gain at 0 Hz is rho, 1 for most notes, so it would hold any offset forever, and the
    # loop weights its samples unevenly (and vibrato moves them), so a zero-mean start still leaves a
    # little: a DC blocker y[t] = x[t] - x[t-1] + R y[t-1] (cut-off 5 Hz) removes it.
    r = 1 - 2 * np.pi * 5 / sample_rate
    y = lfilter([1.0, -1.0], [1.0, -r], buf[:, pre:], axis=1)
    return y * _adsr(length, sample_rate, 0.001, 1.0, 1.0)


def _bessel_table(orders: int, top: float, size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """J_k(x) for k = 0..orders on ``size`` points of [0, top]; interpolating linearly in it is
    accurate to about 1e-6 and much faster than scipy's jv on every sample."""
    x = np.linspace(0.0, top, size)
    return x, jv(np.arange(orders + 1)[:, None], x[None])


def _bell(freq, u, rng, sample_rate):
    """FM bell (Chowning 1973): sin(theta_c + I(t) sin(theta_m)), modulator at 3.5 x the carrier, an
    exponential decay (T60 0.6-1.2 s) and an index I(t) that follows the amplitude from 2-5 down, so
    the tone mellows as it dies away. Written as its Bessel series sum_k J_k(I) sin(theta_c + k theta_m),
    an identity for every t, so the sidebands above the band limit can be left out (no aliasing)."""
    n, length = freq.shape
    t = np.arange(length) / sample_rate
    amp = np.exp(-t[None] * LN_1000 / (0.6 + 0.6 * u[:, 1:2])) * _adsr(length, sample_rate, 0.002, 1.0, 1.0)
    low, high = BELL_INDEX
    index = (low + (high - low) * u[:, :1]) * amp                          # [n, T]
    orders = 9                                                             # J_10(5) < 2e-3: the rest is inaudible
    grid, table = _bessel_table(orders, high)
    phase = _phase(freq, sample_rate)
    top = freq.max(axis=1)
    y = np.zeros((n, length))
    for k in range(-orders, orders + 1):
        ratio = 1 + k * BELL_RATIO  # sideband k sits at |ratio| x the carrier; negative ones fold back at 0 Hz
        bessel = np.interp(index, grid, table[abs(k)]) * (-1 if k < 0 and k % 2 else 1)  # J_-k = (-1)^k J_k
        y += bessel * np.sin(ratio * phase) * (abs(ratio) * top < BAND * sample_rate)[:, None]
    return y * amp


TIMBRES = {"sine": _sine, "organ": _organ, "pluck": _pluck, "bell": _bell}


def _positive_int(value: int, key: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise UserError(f"dataset.{key}={value} is not a positive whole number: set e.g. dataset.{key}={example}")
    return int(value)


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray | float:
    """Equal temperament, A4 (MIDI 69) = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, float) - 69) / 12)


def notes_pitches(octaves: int = 2, low_midi: int = 60, per_pitch: int = 4, n_timbres: int = 4) -> np.ndarray:
    """[N] int64: the MIDI pitch of each clip of ``load_notes`` with these settings, in dataset order
    (timbre-major, then pitch ascending, then the per_pitch variations)."""
    return np.tile(np.repeat(low_midi + np.arange(12 * octaves), per_pitch), n_timbres).astype(np.int64)


def load_notes(sample_rate: int = 8000, seconds: float = 0.5, per_pitch: int = 4, octaves: int = 2,
               low_midi: int = 60, timbres: Sequence[str] = ("sine", "organ", "pluck", "bell"),
               seed: int = 0, split: str = "train") -> Dataset:
    """Synthesised musical notes, the built-in audio dataset (no download): every pitch of ``octaves``
    chromatic octaves from ``low_midi`` (60 = middle C, 261.6 Hz), ``per_pitch`` variations each, in
    each timbre; the label is the timbre (class_names = timbres).

    Order: clip i has timbre i // (12 * octaves * per_pitch) and MIDI pitch
    low_midi + (i // per_pitch) % (12 * octaves); ``notes_pitches`` lists them.
    Each note starts at t = 0 with a short attack and ends in silence (a linear release over the
    last 50 ms, or a fifth of the clip if shorter). Per clip, drawn from numpy's Generator(seed):
    detune +-5 cents, vibrato 2-10 cents deep at 4.5-6 Hz (the pitch stays steady), peak gain 0.5-0.9,
    and the timbre's own variations. N = len(timbres) * 12 * octaves * per_pitch; data [N, 1, T].

    ``split``: "train" draws from Generator(seed); "test" is a held-out set of the same size that training
    never sees, the same notes with variations drawn from Generator([seed, 1]); "all" is both."""
    sample_rate = _check_rate(sample_rate)
    length = _num_samples(seconds, sample_rate)
    per_pitch = _positive_int(per_pitch, "per_pitch", "4")
    octaves = _positive_int(octaves, "octaves", "2")
    if isinstance(low_midi, bool) or not isinstance(low_midi, Integral) or not 0 <= low_midi <= 127:
        raise UserError(f"dataset.low_midi={low_midi} is not a MIDI note number (0-127): set e.g. dataset.low_midi=60")
    if isinstance(timbres, str) or not timbres or any(name not in TIMBRES for name in timbres) \
            or len(set(timbres)) != len(timbres):
        raise UserError(f"dataset.timbres={list(timbres) if not isinstance(timbres, str) else timbres} must be a "
                        f"list of distinct names from {', '.join(TIMBRES)}, e.g. dataset.timbres=[sine,pluck]")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise UserError(f"dataset.seed={seed} is not a whole number >= 0: set e.g. dataset.seed=0")
    if length < 0.05 * sample_rate:
        raise UserError(f"dataset.seconds={seconds} is too short for a note (attack and release): "
                        f"use at least dataset.seconds=0.05")
    timbres = list(timbres)
    top = midi_to_hz(low_midi + 12 * octaves - 1) * 2 ** (20 / 1200)  # highest note, detuned and vibrato up
    if top >= BAND * sample_rate:
        raise UserError(f"the highest note ({top:.0f} Hz) is too close to the Nyquist frequency of "
                        f"dataset.sample_rate={sample_rate}: raise dataset.sample_rate, or lower dataset.low_midi "
                        f"or dataset.octaves")

    if split not in ("train", "test", "all"):
        raise UserError(f"dataset.split={split} is not a split of the notes: use train, test or all")
    streams = {"train": [seed], "test": [[seed, 1]], "all": [seed, [seed, 1]]}[split]
    parts = [_render(np.random.default_rng(s), sample_rate, length, per_pitch, octaves, low_midi, timbres)
             for s in streams]
    midi = torch.from_numpy(notes_pitches(octaves, low_midi, per_pitch, len(timbres))).repeat(len(parts))
    return Dataset(torch.cat([p.data for p in parts]), torch.cat([p.labels for p in parts]), timbres, "notes",
                   extras={"midi": midi})


def _render(rng: np.random.Generator, sample_rate: int, length: int, per_pitch: int, octaves: int, low_midi: int,
            timbres: list[str]) -> Dataset:
    """load_notes' clips with the variations drawn from ``rng``."""
    midi = notes_pitches(octaves, low_midi, per_pitch, len(timbres))
    n = len(midi)
    detune = rng.uniform(-5, 5, n)                      # cents
    depth = rng.uniform(2, 10, n)                       # vibrato depth, cents
    rate = rng.uniform(4.5, 6.0, n)                     # vibrato rate, Hz
    vib_phase = rng.uniform(0, 2 * np.pi, n)
    gain = rng.uniform(0.5, 0.9, n)                     # peak of the finished clip
    u = rng.uniform(0, 1, (n, 2))                       # each timbre's own variations
    t = np.arange(length) / sample_rate
    cents = detune[:, None] + depth[:, None] * np.sin(2 * np.pi * rate[:, None] * t + vib_phase[:, None])
    freq = midi_to_hz(midi)[:, None] * 2 ** (cents / 1200)  # [N, T] Hz

    release = min(0.05, 0.2 * length / sample_rate) * sample_rate
    tail = np.clip((length - 1 - np.arange(length)) / release, 0, 1)  # reaches 0 at the last sample
    waves = np.empty((n, length), np.float32)
    block = 12 * octaves * per_pitch
    for c, name in enumerate(timbres):
        rows = slice(c * block, (c + 1) * block)
        y = TIMBRES[name](freq[rows], u[rows], rng, sample_rate) * tail
        waves[rows] = y * (gain[rows] / np.abs(y).max(axis=1))[:, None]
    labels = torch.arange(len(timbres)).repeat_interleave(block)
    return Dataset(torch.from_numpy(waves).unsqueeze(1), labels, timbres, "notes")
