"""A corpus of awkward and broken files (generated here): each is loaded correctly or skipped with a
counted warning, never a crash. Run with -s to print the outcome table."""

import io
import warnings

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmdiff.data.audio import load_audio_folder
from mmdiff.data.images import load_image_folder


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def image_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expected outcome: 'loaded' or 'skipped')."""
    grad = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    rgb = Image.fromarray(np.stack([grad, grad.T, 255 - grad], -1))
    good_png = png_bytes(rgb)
    return {
        "rgb.png": (good_png, "loaded"),
        "zero_byte.png": (b"", "skipped"),
        "truncated.png": (good_png[: len(good_png) // 2], "skipped"),
        "zero_byte.jpg": (b"", "skipped"),
        "truncated.jpg": (png_bytes(rgb, "JPEG")[:200], "skipped"),
        "text_named.png": (b"this is not an image\n", "skipped"),
        "png_named.jpg": (good_png, "loaded"),  # wrong extension: Pillow reads the content
        "paletted.png": (png_bytes(rgb.convert("P", palette=Image.Palette.ADAPTIVE)), "loaded"),
        "gray16.png": (png_bytes(Image.fromarray(grad.astype(np.uint16) * 257)), "loaded"),
        "cmyk.jpg": (png_bytes(rgb.convert("CMYK"), "JPEG"), "loaded"),
        "rgba.png": (png_bytes(rgb.convert("RGBA")), "loaded"),
        "one_bit.png": (png_bytes(rgb.convert("1")), "loaded"),
        "gray_alpha.png": (png_bytes(rgb.convert("LA")), "loaded"),
    }


def wav_bytes(data: np.ndarray, rate: int, subtype: str | None = None, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def audio_corpus() -> dict[str, tuple[bytes, str]]:
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    corpus = {
        "mono16.wav": (wav_bytes(tone, 8000, "PCM_16"), "loaded"),
        "zero_byte.wav": (b"", "skipped"),
        "truncated.wav": (wav_bytes(tone, 8000, "PCM_16")[:30], "skipped"),
        "zero_byte.flac": (b"", "skipped"),
        "truncated.flac": (wav_bytes(tone, 8000, "PCM_16", "FLAC")[:40], "skipped"),
        "text_named.wav": (b"RIFF? no, just text\n" * 4, "skipped"),
        "flac_named.wav": (wav_bytes(tone, 8000, "PCM_16", "FLAC"), "loaded"),  # libsndfile reads the content
        "stereo.wav": (wav_bytes(np.stack([tone, -tone * 0.5], 1), 8000, "PCM_16"), "loaded"),
        "six_channels.wav": (wav_bytes(np.repeat(tone[:, None], 6, 1), 8000, "PCM_16"), "loaded"),
        "pcm24.wav": (wav_bytes(tone, 8000, "PCM_24"), "loaded"),
        "float32.wav": (wav_bytes(tone, 8000, "FLOAT"), "loaded"),
        "pcm_u8.wav": (wav_bytes(tone, 8000, "PCM_U8"), "loaded"),
        "nan_filled.wav": (wav_bytes(np.full(8000, np.nan, np.float32), 8000, "FLOAT"), "skipped"),
        "silent.wav": (wav_bytes(np.zeros(8000, np.float32), 8000, "PCM_16"), "skipped"),
        "shorter_than_a_frame.wav": (wav_bytes(tone[:10], 8000, "PCM_16"), "loaded"),  # zero-padded
        "empty_audio.wav": (wav_bytes(np.zeros(0, np.float32), 8000, "PCM_16"), "skipped"),
    }
    for rate in (8000, 11025, 16000, 22050, 44100, 48000, 96000):
        r_t = np.arange(rate) / rate
        corpus[f"rate_{rate}.wav"] = (wav_bytes((0.5 * np.sin(2 * np.pi * 440 * r_t)).astype(np.float32), rate,
                                                "PCM_16"), "loaded")
    return corpus


def write(folder, files):
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder.parent


def outcomes(tmp_path, corpus, load, good):
    """Each file beside one good file in a folder of its own: 'loaded' if the dataset has 2 items."""
    result = {}
    for i, (name, (content, _)) in enumerate(corpus.items()):
        root = write(tmp_path / f"single{i}" / "c", {name: content, "good_" + good[0]: good[1]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result[name] = "loaded" if len(load(root)) == 2 else "skipped"
    print("\n| input | outcome |\n| --- | --- |\n" + "\n".join(f"| {n} | {o} |" for n, o in result.items()))
    return result


def load_all(tmp_path, corpus, load):
    """The whole corpus in one folder: (dataset, the warnings' text)."""
    root = write(tmp_path / "all" / "c", {name: content for name, (content, _) in corpus.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load(root)
    return dataset, " ".join(str(w.message) for w in caught)


def load_images(root):
    return load_image_folder(root, size=16, channels=3).load()


def load_audio(root):
    return load_audio_folder(root, sample_rate=16000, seconds=0.5, crop="start").load()


def test_image_corpus(tmp_path):
    corpus = image_corpus()
    good = ("ok.png", corpus["rgb.png"][0])
    assert outcomes(tmp_path, corpus, load_images, good) == {name: exp for name, (_, exp) in corpus.items()}
    dataset, messages = load_all(tmp_path, corpus, load_images)
    skipped = sum(expected == "skipped" for _, expected in corpus.values())
    assert f"skipped {skipped} of {len(corpus)}" in messages
    assert len(dataset) == len(corpus) - skipped and dataset.data.isfinite().all()
    assert dataset.data.min() >= 0 and dataset.data.max() <= 1


def test_audio_corpus(tmp_path):
    corpus = audio_corpus()
    good = ("ok.wav", corpus["mono16.wav"][0])
    assert outcomes(tmp_path, corpus, load_audio, good) == {name: exp for name, (_, exp) in corpus.items()}
    dataset, messages = load_all(tmp_path, corpus, load_audio)
    skipped = sum(expected == "skipped" for _, expected in corpus.values())
    assert f"skipped {skipped} of {len(corpus)}" in messages
    assert len(dataset) == len(corpus) - skipped and dataset.data.isfinite().all()
    assert dataset.data.shape[1:] == (1, 8000) and dataset.data.abs().max() <= 1


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_a_folder_of_only_broken_files_is_one_clear_error(tmp_path, kind):
    from mmdiff.errors import UserError
    corpus = {n: c for n, c in (image_corpus() if kind == "image" else audio_corpus()).items() if c[1] == "skipped"}
    with pytest.raises(UserError, match="could be read"):
        load_all(tmp_path, corpus, load_images if kind == "image" else load_audio)


def test_every_sample_rate_is_resampled_to_the_same_tone(tmp_path):
    corpus = {n: c for n, c in audio_corpus().items() if n.startswith("rate_")}
    dataset, _ = load_all(tmp_path, corpus, load_audio)
    spectrum = np.abs(np.fft.rfft(dataset.data[:, 0].numpy(), axis=-1))
    peaks = np.fft.rfftfreq(8000, 1 / 16000)[spectrum.argmax(-1)]
    assert len(peaks) == 7 and np.allclose(peaks, 440, atol=2)
