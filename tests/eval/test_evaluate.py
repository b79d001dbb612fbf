import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from mmdiff.data.notes import load_notes
from mmdiff.errors import UserError
from mmdiff.eval import inception
from mmdiff.eval.evaluate import evaluate, evaluate_reconstructions, format_table, read_samples_folder, split_halves
from mmdiff.eval.evaluator import train_evaluator
from mmdiff.modalities.audio import AudioModality
from mmdiff.modalities.image import ImageModality
from mmdiff.tasks.eval import evaluate_from_config, train_evaluator_from_config
from mmdiff.tasks.sample import sample_from_checkpoint
from mmdiff.tasks.train import train

from ..conftest import TINY, compose_config
from .conftest import digits_subset

FAST = {"epochs": 10, "channels": [16, 32], "num_threads": 1}
QUICK = {"kid_subsets": 10}
IMAGE = ImageModality()
AUDIO = AudioModality(sample_rate=8000, representation="waveform", spectrogram="mel", pad_to=1, options={})


@pytest.fixture(scope="module")
def digits():
    return digits_subset(30)


@pytest.fixture(scope="module")
def image_evaluator(digits):
    return train_evaluator(digits, IMAGE, **FAST)


def finite(result):
    return all(math.isfinite(v) for m in result["metrics"].values() for v in m.values() if v is not None)


# --- evaluate() ----------------------------------------------------------------------------------

def test_image_metrics_and_floors_are_finite(digits, image_evaluator):
    fake = (digits.data[:40] + 0.05 * torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    result = evaluate(digits, fake, digits.labels[:40], IMAGE, image_evaluator, **QUICK)
    assert set(result["metrics"]) == {"fd", "kid", "precision", "recall", "accuracy"}
    assert finite(result)
    assert result["n_samples"] == 40 and result["n_reference"] + result["n_floor"] == len(digits)
    assert result["metrics"]["accuracy"]["floor"] == image_evaluator.held_out_accuracy
    json.dumps(result)  # JSON-able, as eval.json
    table = format_table(result)
    assert "real-vs-real floor" in table and "FD (evaluator features)" in table and "class accuracy" in table


def test_samples_equal_to_the_floor_half_score_the_floor(digits, image_evaluator):
    # Samples that are the real half A itself are measured exactly as the floor is.
    half_a, _ = split_halves(len(digits))
    result = evaluate(digits, digits.data[half_a], None, IMAGE, image_evaluator, **QUICK)
    for name, m in result["metrics"].items():
        assert m["samples"] == m["floor"], name
    assert "accuracy" not in result["metrics"]  # no labels, no accuracy


def test_noise_scores_far_worse_than_the_floor(digits, image_evaluator):
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    m = evaluate(digits, noise, torch.zeros(100, dtype=torch.int64), IMAGE, image_evaluator, **QUICK)["metrics"]
    assert m["fd"]["samples"] > 5 * m["fd"]["floor"]
    assert m["kid"]["samples"] > 5 * m["kid"]["floor"]
    assert m["precision"]["samples"] < m["precision"]["floor"]


def test_uint8_images_and_bad_shapes(digits, image_evaluator):
    as_uint8 = (digits.data[:10] * 255).round().to(torch.uint8)
    assert torch.allclose(IMAGE.eval_data(as_uint8, digits.shape), digits.data[:10], atol=1 / 510)
    with pytest.raises(UserError, match="shape"):
        evaluate(digits, torch.zeros(10, 1, 16, 16), None, IMAGE, image_evaluator)
    with pytest.raises(UserError, match="labels"):
        evaluate(digits, digits.data[:10], digits.labels[:3], IMAGE, image_evaluator)


def test_audio_metrics_on_tiny_inputs():
    notes = load_notes(per_pitch=2, timbres=["sine", "pluck"], seconds=0.25)
    evaluator = train_evaluator(notes, AUDIO, epochs=5, channels=(8, 16), num_threads=1)
    # decoded audio is longer than the clips (representations pad the time axis): cropped to fit
    fake = torch.nn.functional.pad(notes.data[:20] * 0.8, (0, 300))
    result = evaluate(notes, fake, notes.labels[:20], AUDIO, evaluator, **QUICK)
    assert set(result["metrics"]) == {"fad", "kid", "precision", "recall", "accuracy"}
    assert finite(result) and "FAD" in format_table(result)


def test_reconstruction_metrics():
    g = torch.Generator().manual_seed(0)
    ref = 0.3 * torch.randn(3, 1, 4000, generator=g)
    same = evaluate_reconstructions(ref, ref.clone(), 8000)["metrics"]
    assert same["multires_stft"]["samples"] == 0 and same["lsd_db"]["samples"] == 0
    assert same["multires_stft"]["floor"] > 0.5 and same["lsd_db"]["floor"] > 1
    louder = evaluate_reconstructions(ref, 2 * ref, 8000)
    assert louder["metrics"]["multires_stft"]["samples"] == pytest.approx(1 + math.log(2), abs=1e-5)
    assert louder["metrics"]["lsd_db"]["samples"] == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert "mismatched clips" in format_table(louder)


# --- a folder of samples -------------------------------------------------------------------------

def test_read_image_folder_as_mmdiff_writes_it(tmp_path, digits):
    images = IMAGE.decode(IMAGE.encode(digits.data[:5]))
    IMAGE.write_samples(images, digits.labels[:5], digits.class_names, tmp_path)
    data, labels = read_samples_folder(tmp_path, IMAGE)
    assert labels is None and data.shape == (5, 1, 8, 8)  # grid.png is ignored
    assert torch.equal(data, images)  # PNGs hold the decoded uint8 exactly
    (tmp_path / "labels.json").write_text(json.dumps(["3", 1, "7", 0, "9"]))
    assert read_samples_folder(tmp_path, IMAGE, class_names=digits.class_names)[1].tolist() == [3, 1, 7, 0, 9]
    (tmp_path / "labels.json").write_text(json.dumps([1, 2]))
    with pytest.raises(UserError, match="one label per sample"):
        read_samples_folder(tmp_path, IMAGE)


def test_read_audio_folder(tmp_path):
    for i, T in enumerate([800, 1000, 900]):
        sf.write(tmp_path / f"sample_{i:05d}.wav", np.full(T, 0.25, np.float32), 8000, subtype="PCM_16")
    (tmp_path / "labels.json").write_text(json.dumps({f"sample_{i:05d}.wav": i % 2 for i in range(3)}))
    data, labels = read_samples_folder(tmp_path, AUDIO)
    assert data.shape == (3, 1, 1000) and labels.tolist() == [0, 1, 0]
    assert data[0, 0, :800].eq(0.25).all() and data[0, 0, 800:].eq(0).all()  # zero-padded to the longest
    at_16k = AudioModality(sample_rate=16000, representation="waveform", spectrogram="mel", pad_to=1, options={})
    with pytest.raises(UserError, match="16000 Hz"):
        read_samples_folder(tmp_path, at_16k)


def test_samples_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        read_samples_folder(tmp_path / "nope", IMAGE)
    with pytest.raises(UserError, match="no sample_XXXXX.png"):
        read_samples_folder(tmp_path, IMAGE)


# --- mode=eval end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train(compose_config(TINY + ["trainer.max_steps=3"]), tmp_path_factory.mktemp("run"))


def eval_config(*overrides, **eval_options):
    cfg = compose_config(["mode=eval", "n=40", "steps=3", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.eval = OmegaConf.merge(cfg.eval, {"evaluator": FAST, **QUICK, **eval_options})
    return cfg


def test_mode_eval_end_to_end_on_a_tiny_checkpoint(checkpoint, tmp_path, capsys):
    cfg = eval_config(f"checkpoint={checkpoint}")
    result = evaluate_from_config(cfg, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved["metrics"]) == {"fd", "kid", "precision", "recall", "accuracy"}
    # measured against the held-out digits (every 5th of each class), never the 1,433 it trained on
    assert finite(saved) and saved["n_samples"] == 40 and saved["n_real"] == 364
    assert saved["split"] == "split test (held out; the model trained on train)"
    assert saved["evaluator"]["n_train"] == 1433 and saved["evaluator"]["n_held_out"] == 364
    assert saved["source"]["checkpoint"] == str(checkpoint) and saved["source"]["steps"] == 3
    assert "real-vs-real floor" in capsys.readouterr().out
    # the evaluator was cached on first use and is reused
    again = evaluate_from_config(cfg, tmp_path / "out2")
    assert again["evaluator"]["path"] == result["evaluator"]["path"]
    assert again["metrics"] == result["metrics"]  # same seed, same samples, same numbers


def test_mode_eval_on_a_samples_folder(checkpoint, tmp_path):
    sample_from_checkpoint(compose_config(["mode=sample", f"checkpoint={checkpoint}", f"out={tmp_path / 's'}", "n=12",
                                           "steps=3"]))
    result = evaluate_from_config(eval_config(f"checkpoint={checkpoint}", f"samples={tmp_path / 's'}"), tmp_path)
    # mode=sample wrote labels.json, so the class accuracy is measured too
    assert result["n_samples"] == 12 and "accuracy" in result["metrics"] and finite(result)
    assert result["source"] == {"samples": str(tmp_path / "s")}


def test_mode_train_evaluator(tmp_path, capsys):
    cfg = eval_config()
    evaluator = train_evaluator_from_config(cfg)
    assert evaluator.path.is_file() and not evaluator.from_cache
    assert "held-out samples (split test" in capsys.readouterr().out


# --- Inception FID: only the clear errors (no weights here, nothing downloads) ----------------------

def test_inception_without_weights_file_says_how(tmp_path):
    with pytest.raises(UserError, match="pip install pytorch-fid.*pt_inception-2015-12-05-6726825d.pth.*"
                                        "eval.inception_weights=PATH"):
        inception.inception_fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), tmp_path / "missing.pth")


def test_inception_without_package_says_how(tmp_path, monkeypatch, digits, image_evaluator):
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not really")
    monkeypatch.setattr(inception, "_installed", lambda name: False)
    with pytest.raises(UserError, match="not installed: pip install pytorch-fid"):
        inception.inception_backend(weights)
    with pytest.raises(UserError, match="pip install pytorch-fid"):
        evaluate(digits, digits.data[:10], None, IMAGE, image_evaluator, inception_weights=weights, **QUICK)


def test_mode_eval_end_to_end_on_a_tiny_audio_checkpoint(tmp_path):
    notes = ["modality=audio", "dataset.per_pitch=1", "dataset.timbres=[sine,pluck]", "dataset.seconds=0.25"]
    ckpt = train(compose_config(TINY + notes + ["trainer.max_steps=2", "modality.options.mel.griffin_lim_iters=4"]),
                 tmp_path / "run")
    result = evaluate_from_config(eval_config(f"checkpoint={ckpt}", "n=8", "steps=2", *notes), tmp_path / "out")
    assert result["modality"] == "audio" and result["n_samples"] == 8 and result["n_real"] == 48
    assert set(result["metrics"]) == {"fad", "kid", "precision", "recall", "accuracy"} and finite(result)


def test_inception_fails_before_any_sampling(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("mmdiff.tasks.eval._generate", lambda *a: pytest.fail("sampled before checking"))
    with pytest.raises(UserError, match="eval.inception_weights=.*is not a file"):
        evaluate_from_config(eval_config(f"checkpoint={checkpoint}", inception_weights=str(tmp_path / "no.pth")),
                             tmp_path)
