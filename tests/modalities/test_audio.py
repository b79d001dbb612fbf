import math
from html.parser import HTMLParser

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmdiff.errors import UserError
from mmdiff.modalities.audio import AudioModality
from mmdiff.modalities.grid import grid_image
from mmdiff.modalities.spectral import REPRESENTATIONS, ComplexSTFT, LogMel

PCM16 = 1.5 / 32768  # PCM_16 quantisation, with room for the write's scaling by 32767
PAD = {"waveform": 256, "stft": 16, "mel": 16}


def make(representation="stft", sample_rate=8000, options=None, pad_to=None, spectrogram="mel"):
    """An AudioModality with every argument given, as conf/modality/audio.yaml gives them."""
    return AudioModality(sample_rate=sample_rate, representation=representation, spectrogram=spectrogram,
                         pad_to=PAD.get(representation, 16) if pad_to is None else pad_to, options=options or {})


def notes(n, T=3001, sr=8000):
    """n decaying sines [n, 1, T], 200, 300, ... Hz, peak 0.8."""
    t = torch.arange(T) / sr
    waves = [0.8 * torch.sin(2 * math.pi * 100 * (i + 2) * t) * torch.exp(-t / 0.2) for i in range(n)]
    return torch.stack(waves)[:, None]


class Page(HTMLParser):
    """Collects the src of every <audio> and <img>, and the caption of every sample's cell ("index: label")."""

    def __init__(self):
        super().__init__()
        self.audio, self.img, self.cells, self._in_caption = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "audio":
            assert "controls" in attrs
            self.audio.append(attrs["src"])
        elif tag == "img":
            self.img.append(attrs["src"])
        self._in_caption = tag == "figcaption"

    def handle_endtag(self, tag):
        self._in_caption = False

    def handle_data(self, data):
        if self._in_caption and data.strip():
            self.cells.append(data)


def test_constructor_picks_and_checks_the_representation():
    assert isinstance(make().representation, ComplexSTFT)
    m = make(sample_rate=16000, representation="mel", options={"mel": {"n_mels": 32}, "stft": {"x": 1}})
    assert isinstance(m.representation, LogMel) and m.representation.mel.sample_rate == 16000
    assert m.representation.mel.n_mels == 32  # only the chosen representation's options are used
    assert make(representation="waveform", pad_to=64).representation.padded_length(100) == 128
    assert (m.name, m.unit) == ("audio", "clips")
    with pytest.raises(UserError, match=r"modality.representation=wav is unknown: use one of waveform, stft, mel"):
        make(representation="wav")
    with pytest.raises(UserError, match=r"modality.options.stft.n_mels is not an option of the stft representation"):
        make(representation="stft", options={"stft": {"n_mels": 64}})
    with pytest.raises(UserError, match=r"hop_length"):
        make(representation="stft", options={"stft": {"hop_length": 1000}})
    with pytest.raises(TypeError):  # no hidden defaults: conf/modality/audio.yaml gives every argument
        AudioModality(sample_rate=8000)


@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_decode_gives_clamped_float32_waveforms(name):
    m = make(representation=name)
    x = m.encode(notes(2))
    wave = m.decode(x * 10)  # far too loud: clamped
    assert wave.dtype == torch.float32 and wave.shape == (2, 1, m.representation.padded_length(3001))
    assert wave.abs().max() <= 1
    with pytest.raises(ValueError, match=r"\[N, 1, T\]"):
        m.encode(notes(2)[:, 0])


def test_save_samples_writes_wavs_pngs_grid_and_index(tmp_path):
    m = make(sample_rate=16000, representation="stft")
    x = m.encode(notes(5))
    labels = torch.tensor([1, 0, 1, 2, 0])
    names = ["zero", "<one & \"1\">", "two"]
    out = tmp_path / "new" / "dir"
    paths = m.write_samples(m.decode(x), labels, names, out)

    expected = [f"sample_{i:05d}.{ext}" for i in range(5) for ext in ("wav", "png")]
    assert [p.name for p in paths] == expected + ["grid.png", "grid.wav", "index.html"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)

    waves = m.decode(x)[:, 0]
    for i in range(5):
        audio, rate = sf.read(out / f"sample_{i:05d}.wav", dtype="float32")
        assert rate == 16000 and sf.info(out / f"sample_{i:05d}.wav").subtype == "PCM_16"
        assert audio.shape == (waves.shape[1],) and np.abs(audio - waves[i].numpy()).max() <= PCM16
        assert Image.open(out / f"sample_{i:05d}.png").size == (320, 200)  # 4 x 2.5 in at 80 dpi

    grid = Image.open(out / "grid.png")
    images = torch.stack([m.spectrogram_image(w) for w in waves])
    assert np.array_equal(np.asarray(grid), np.asarray(grid_image(images, labels, names)))

    html = (out / "index.html").read_text()
    page = Page()
    page.feed(html)
    assert page.audio == ["grid.wav"] + [f"sample_{i:05d}.wav" for i in range(5)]
    assert page.img == ["grid.png"] + [f"sample_{i:05d}.png" for i in range(5)]
    assert '0: <one & "1">' in page.cells and "<one" not in html and "&lt;one &amp; &quot;1&quot;&gt;" in html
    assert page.cells == [f"{i}: {names[k]}" for i, k in enumerate(labels.tolist())]  # a cell per sample, labelled
    assert "http" not in html and "/" not in "".join(page.audio + page.img)  # self-contained, relative links


def test_save_samples_without_labels(tmp_path):
    m = make(representation="waveform")
    paths = m.write_samples(m.decode(m.encode(notes(3))), None, None, tmp_path)
    page = Page()
    page.feed(paths[-1].read_text())
    assert page.cells == ["0", "1", "2"] and len(page.audio) == 4  # no labels: the index alone


def test_save_grid_writes_png_and_wav_in_grid_order(tmp_path):
    m = make(representation="waveform")
    x = m.encode(notes(3))
    path = m.write_grid(m.decode(x), torch.tensor([1, 0, 1]), ["a", "b"], tmp_path / "sub" / "step_100.png")
    assert path == tmp_path / "sub" / "step_100.png" and Image.open(path).mode == "RGB"
    audio, rate = sf.read(path.with_suffix(".wav"), dtype="float32")
    T, gap = m.representation.padded_length(3001), 2000  # 0.25 s at 8 kHz
    assert rate == 8000 and audio.shape == (3 * T + 2 * gap,)
    waves = m.decode(x)[:, 0].numpy()
    for k, i in enumerate([1, 0, 2]):  # row "a" holds sample 1, row "b" samples 0 and 2
        start = k * (T + gap)
        assert np.abs(audio[start:start + T] - waves[i]).max() <= PCM16
        if k < 2:
            assert np.all(audio[start + T:start + T + gap] == 0)


def test_spectrogram_image():
    m = make()
    t = torch.arange(4000) / 8000
    image = m.spectrogram_image(0.9 * torch.sin(2 * math.pi * 250 * t))
    assert image.dtype == torch.uint8 and image.shape == (3, 128, 4000 // 64 + 1)
    loudest_row = image.float().sum(0).mean(1).argmax().item()
    assert loudest_row == 127 - round(250 / 4000 * 127)  # 250 Hz is bin 8 of 128: low frequencies at the bottom
    assert torch.equal(m.spectrogram_image(torch.zeros(1, 4000)), m.spectrogram_image(torch.zeros(4000)))
    silence = m.spectrogram_image(torch.zeros(4000))
    assert (silence == silence[:, :1, :1]).all()  # one colour: the bottom of the dB range
    assert m.spectrogram_image(torch.zeros(80000)).shape[-1] <= 257  # long clips stay compact


# --- the learned decoder (a vocoder: mmdiff.models.vocoder) ------------------------------------------

VOCODER_NET = dict(dim=8, intermediate_dim=16, num_layers=1, kernel_size=3)


def save_a_vocoder(path, settings):
    from mmdiff.models.vocoder import Vocoder, save_vocoder
    torch.manual_seed(0)
    net = Vocoder(settings, **VOCODER_NET)
    return save_vocoder(path, net, settings, steps=1, seconds=0.1), net


def test_log_mel_settings_name_everything_a_vocoder_depends_on():
    s = make("mel", options={"mel": {"n_mels": 32, "f_min": 20.0}}).representation.settings
    assert s == {"sample_rate": 8000, "n_fft": 512, "hop_length": 64, "n_mels": 32, "f_min": 20.0, "f_max": 4000.0,
                 "eps": 0.01, "offset": -3.0, "scale": 0.2}


def test_a_vocoder_replaces_griffin_lim_when_loaded(tmp_path):
    m = make("mel", options={"mel": {"griffin_lim_iters": 4}})
    x = m.encode(notes(2, T=1985))
    assert m.decoder_file == "vocoder.safetensors" and "mode=train_vocoder" in m.decoder_hint()
    griffin_lim = m.decode(x)
    path, net = save_a_vocoder(tmp_path / "vocoder.safetensors", m.decoder_settings())
    m.use_decoder(path)
    vocoded = m.decode(x)
    with torch.no_grad():
        assert torch.equal(vocoded, net(x).clamp(-1, 1))
    assert vocoded.shape == griffin_lim.shape and not torch.allclose(vocoded, griffin_lim, atol=1e-2)
    assert m.decoder_hint() is None


@pytest.mark.parametrize("other, named", [({"sample_rate": 16000, "f_max": 8000.0}, ["sample_rate=16000", "f_max=8000.0",
                                                                                   "sample_rate=8000", "f_max=4000.0"]),
                                          ({"n_mels": 32}, ["n_mels=32", "n_mels=64"]),
                                          ({"scale": 0.25}, ["scale=0.25", "scale=0.2"])])
def test_a_vocoder_for_other_mel_settings_is_refused_naming_both(tmp_path, other, named):
    m = make("mel")
    path, _ = save_a_vocoder(tmp_path / "vocoder.safetensors", m.decoder_settings() | other)
    with pytest.raises(UserError, match="mode=train_vocoder") as e:
        m.use_decoder(path)
    assert all(s in str(e.value) for s in named), str(e.value)
    assert m.representation.vocoder is None and m.decoder_hint() is not None  # still Griffin-Lim


@pytest.mark.parametrize("name", ["stft", "waveform"])
def test_exact_representations_take_no_vocoder(tmp_path, name):
    m = make(name)
    with pytest.raises(UserError, match=f"{name} representation, which decodes exactly"):
        m.use_decoder(tmp_path / "vocoder.safetensors")
    assert m.decoder_hint() is None


def test_a_modality_without_a_learned_decoder_says_so():
    from mmdiff.modalities.image import ImageModality
    m = ImageModality()
    assert m.decoder_file is None and m.decoder_hint() is None
    with pytest.raises(UserError, match="image data has no learned decoder.*drop vocoder="):
        m.use_decoder("vocoder.safetensors")
    with pytest.raises(UserError, match="mode=train_vocoder is for audio"):
        m.decoder_settings()
