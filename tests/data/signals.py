"""Signal helpers shared by the audio data tests."""

import numpy as np
import soundfile as sf


def tone(freq, seconds, rate, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def write(path, data, rate, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, **kw)
    return path


def spectrum(y, rate, pad=16):
    """(|FFT| of the Hann-windowed clip, zero-padded ``pad`` times; frequencies in Hz)."""
    n = len(y) * pad
    return np.abs(np.fft.rfft(y * np.hanning(len(y)), n)), np.fft.rfftfreq(n, 1 / rate)


def lowest_peak(y, rate):
    """The frequency of the lowest spectral peak above 100 Hz holding at least 30 % of the largest
    magnitude (the fundamental of a harmonic tone, the carrier of the bell), parabolic-interpolated."""
    mag, freqs = spectrum(y, rate)
    mag[freqs < 100] = 0
    k = np.flatnonzero(mag >= 0.3 * mag.max())[0]
    while mag[k + 1] > mag[k]:
        k += 1
    a, b, c = np.log(mag[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * (freqs[1] - freqs[0])


def rms(y, rate, start, stop):
    return np.sqrt(np.mean(y[..., int(start * rate):int(stop * rate)] ** 2, axis=-1))
