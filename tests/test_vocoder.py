"""mode=train_vocoder and decoding with its vocoder: the training objective learns, the CLI trains a vocoder,
mode=sample decodes with it (vocoder=PATH, or the file beside the checkpoint) instead of Griffin-Lim, and the
wrong vocoder or file is refused with a message that names the fix."""

import csv
import logging
import math
import shutil

import pytest
import soundfile as sf
import torch

from mmdiff.checkpoint import read_tensors, write_tensors
from mmdiff.cli import run
from mmdiff.errors import UserError
from mmdiff.model import Model
from mmdiff.modalities.audio import AudioModality
from mmdiff.models.vocoder import Vocoder, load_vocoder, save_vocoder
from mmdiff.tasks.train import train
from mmdiff.tasks.train_vocoder import Objective, random_segments

from .conftest import TINY, compose_config

AUDIO = TINY + ["modality=audio", "model.channel_mult=[1,2]", "model.attn_levels=[1]", "dataset.per_pitch=1",
                "dataset.timbres=[sine,pluck]", "dataset.seconds=0.25", "trainer.max_steps=2", "n=2"]
VOCODER = ["mode=train_vocoder", "train_vocoder.max_steps=3", "train_vocoder.batch_size=4", "train_vocoder.segment=16",
           "train_vocoder.net.dim=16", "train_vocoder.net.intermediate_dim=32", "train_vocoder.net.num_layers=1",
           "train_vocoder.log_every=1", "train_vocoder.held_out=4", "train_vocoder.examples=2",
           "modality.options.mel.griffin_lim_iters=4"]


def test_the_objective_overfits_one_clip():
    m = AudioModality(sample_rate=8000, representation="mel", spectrogram="mel", pad_to=1,
                      options={"mel": {"n_fft": 256, "hop_length": 32, "n_mels": 32}})
    t = torch.arange(32 * 63) / 8000
    clip = (0.5 * torch.sin(2 * math.pi * 330 * t) + 0.2 * torch.sin(2 * math.pi * 660 * t)) * torch.exp(-t / 0.15)
    objective = Objective(m, [(128, 32, 128), (256, 64, 256)], mel_weight=1.0)
    torch.manual_seed(0)
    net = Vocoder(m.decoder_settings(), dim=32, intermediate_dim=64, num_layers=2, kernel_size=7)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, betas=(0.8, 0.9))
    first = objective(net, clip[None, None])
    for _ in range(40):
        losses = objective(net, clip[None, None])
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    last = objective(net, clip[None, None])
    assert last["stft"] < first["stft"] / 3 and last["mel"] < first["mel"] / 3, (first, last)


def test_random_segments_cut_whole_windows_of_the_clips():
    data = torch.arange(3 * 50, dtype=torch.float32).view(3, 1, 50)
    seg = random_segments(data, 8, 20, torch.Generator().manual_seed(0))
    assert seg.shape == (8, 1, 20)
    assert (seg[..., 1:] - seg[..., :-1] == 1).all()  # contiguous samples of one clip
    assert len({int(s[0, 0]) for s in seg}) > 1       # from different places
    short = random_segments(data, 2, 60, torch.Generator().manual_seed(0))
    assert short.shape == (2, 1, 60) and (short[..., 50:] == 0).all()  # shorter clips are zero-padded


def peak_frequency(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """The frequency (Hz) of the largest bin of each [n, 1, T] wave's spectrum, zero-padded 16x for resolution."""
    spectrum = torch.fft.rfft(wave[:, 0] * torch.hann_window(wave.shape[-1]), n=16 * wave.shape[-1]).abs()
    return spectrum.argmax(-1) * sample_rate / (16 * wave.shape[-1])


def test_pitch_shift_moves_each_segment_within_its_range():
    # a 440 Hz sine: without the option every segment stays at 440 Hz; with pitch_shift=1 each moves by a
    # random amount within one semitone either way, both ways occurring
    sr, T = 8000, 4000
    data = torch.sin(2 * math.pi * 440 * torch.arange(T) / sr).view(1, 1, T)
    plain = peak_frequency(random_segments(data, 32, 2048, torch.Generator().manual_seed(0)), sr)
    assert (plain - 440).abs().max() < 1
    f = peak_frequency(random_segments(data, 32, 2048, torch.Generator().manual_seed(0), pitch_shift=1.0), sr)
    semitones = 12 * torch.log2(f / 440)
    assert semitones.abs().max() <= 1.02 and semitones.min() < -0.3 and semitones.max() > 0.3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny generator on two timbres of notes, and a vocoder trained for its data by mode=train_vocoder."""
    root = tmp_path_factory.mktemp("vocoder")
    ckpt = train(compose_config(AUDIO), root / "run")
    path = run(compose_config(AUDIO + VOCODER), root / "vocoder")
    return ckpt, path, root


def test_train_vocoder_writes_the_vocoder_metrics_and_examples(trained):
    ckpt, path, root = trained
    assert path == root / "vocoder" / "vocoder.safetensors"
    vocoder = load_vocoder(path)
    assert vocoder.mel == Model.from_checkpoint(ckpt).modality.decoder_settings()  # the generator's mel settings
    assert vocoder.steps == 3 and vocoder.seconds > 0 and vocoder.net.architecture["dim"] == 16
    assert vocoder.kind == "vocos" and "fit" not in vocoder.extra
    scores = vocoder.extra["held_out"]
    assert scores["n"] == 4 and "held out" in scores["clips"]
    assert set(scores["vocoder"]) == set(scores["griffin_lim"]) == {"multires_stft", "lsd_db"}
    with open(root / "vocoder" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    examples = root / "vocoder" / "held_out"
    wavs = sorted(examples.glob("sample_*.wav"))
    assert len(wavs) == 6 and (examples / "index.html").is_file()  # 2 clips: original, vocoded, Griffin-Lim
    original, vocoded, griffin_lim = (sf.read(wavs[i])[0] for i in (0, 2, 4))
    assert len(original) == len(vocoded) == len(griffin_lim) == 2000
    assert not (vocoded == griffin_lim).all() and not (vocoded == original).all()
    assert (root / "vocoder" / "config.yaml").is_file()


def sample(ckpt, out, *extra):
    return run(compose_config(["mode=sample", f"checkpoint={ckpt}", "n=2", "steps=2", f"out={out}", *extra]), out)


def test_sampling_decodes_with_the_vocoder_instead_of_griffin_lim(trained, tmp_path, caplog):
    ckpt, path, _ = trained
    with caplog.at_level(logging.INFO):
        sample(ckpt, tmp_path / "gl")
    assert "mode=train_vocoder" in caplog.text  # the Griffin-Lim hint
    caplog.clear()
    with caplog.at_level(logging.INFO):
        sample(ckpt, tmp_path / "voc", f"vocoder={path}")
    assert "mode=train_vocoder" not in caplog.text
    frames = Model.from_checkpoint(ckpt).shape[-1]
    for i in range(2):
        gl, rate = sf.read(tmp_path / "gl" / f"sample_{i:05d}.wav")
        voc, _ = sf.read(tmp_path / "voc" / f"sample_{i:05d}.wav")
        assert rate == 8000 and len(gl) == len(voc) == 64 * (frames - 1)  # LogMel.decode's length
        assert not (gl == voc).all()


def test_the_api_switches_between_the_vocoder_and_griffin_lim(trained):
    ckpt, path, _ = trained
    model = Model.from_checkpoint(ckpt)
    x = model.sample(n=2, steps=2, seed=0)
    griffin_lim = model.decode(x)
    assert model.use_decoder(path) == path and not torch.equal(model.decode(x), griffin_lim)
    assert model.use_decoder(False) is None and model.decoder is None
    assert torch.equal(model.decode(x), griffin_lim)  # dropped: Griffin-Lim again, not the vocoder still loaded


def test_a_vocoder_beside_the_checkpoint_is_picked_up(trained, tmp_path, caplog):
    ckpt, path, _ = trained
    folder = tmp_path / "run"
    shutil.copytree(ckpt.parent, folder)
    shutil.copy(path, folder / "vocoder.safetensors")
    sample(ckpt, tmp_path / "given", f"vocoder={path}")
    with caplog.at_level(logging.INFO):
        sample(folder / ckpt.name, tmp_path / "beside")
    assert "found beside the checkpoint" in caplog.text and "mode=train_vocoder" not in caplog.text
    for i in range(2):
        assert (sf.read(tmp_path / "given" / f"sample_{i:05d}.wav")[0] ==
                sf.read(tmp_path / "beside" / f"sample_{i:05d}.wav")[0]).all()
    sample(folder / ckpt.name, tmp_path / "off", "vocoder=false")  # Griffin-Lim all the same
    sample(ckpt, tmp_path / "gl")
    assert (sf.read(tmp_path / "off" / "sample_00000.wav")[0] == sf.read(tmp_path / "gl" / "sample_00000.wav")[0]).all()
    assert Model.from_checkpoint(folder / ckpt.name).decoder == folder / "vocoder.safetensors"
    assert Model.from_checkpoint(folder / ckpt.name, decoder=False).decoder is None


def test_mode_eval_decodes_with_the_vocoder_and_records_it(trained, tmp_path):
    ckpt, path, _ = trained
    cfg = compose_config(["mode=eval", f"checkpoint={ckpt}", "n=4", "steps=2", f"vocoder={path}", "eval.kid_subsets=2",
                          "eval.evaluator.epochs=2", "+eval.evaluator.channels=[16,32]"])
    result = run(cfg, tmp_path)
    assert result["source"]["decoder"] == str(path) and result["n_samples"] == 4


def test_a_vocoder_for_another_sample_rate_is_refused(trained, tmp_path):
    ckpt, path, _ = trained
    found = load_vocoder(path)
    elsewhere = found.mel | {"sample_rate": 16000, "f_max": 8000.0}
    other = save_vocoder(tmp_path / "vocoder.safetensors", found.net, elsewhere, found.steps, found.seconds)
    with pytest.raises(UserError, match="trained for log-mels with sample_rate=16000, f_max=8000.0, but this model's "
                                        "have sample_rate=8000, f_max=4000.0: train a vocoder .*mode=train_vocoder"):
        sample(ckpt, tmp_path / "s", f"vocoder={other}")


def test_a_file_that_is_no_vocoder_is_refused(trained, tmp_path):
    ckpt, _, _ = trained
    with pytest.raises(UserError, match="not an mmdiff vocoder"):
        sample(ckpt, tmp_path / "s", f"vocoder={ckpt}")  # the generator's checkpoint
    broken = tmp_path / "vocoder.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt or truncated"):
        sample(ckpt, tmp_path / "s", f"vocoder={broken}")


def test_a_vocoder_of_an_unknown_kind_or_version_is_refused_and_old_files_load(trained, tmp_path):
    _, path, _ = trained
    tensors, meta = read_tensors(path, "mmdiff-vocoder", "an mmdiff vocoder", "")
    assert meta["kind"] == "vocos" and "decoding" not in meta        # the format of the first vocoders, unchanged
    for changed in ({"kind": "wavenet"}, {"version": "2"}):
        other = write_tensors(tmp_path / "other.safetensors", tensors, meta | changed)
        with pytest.raises(UserError, match="this mmdiff reads kinds vocos, diffusion version 1: train it again"):
            load_vocoder(other)
    old = write_tensors(tmp_path / "old.safetensors", tensors, {k: v for k, v in meta.items() if k != "extra"})
    assert load_vocoder(old).extra == {} and load_vocoder(old).kind == "vocos"


def test_train_vocoder_needs_a_log_mel_audio_model_space(tmp_path):
    with pytest.raises(UserError, match="no learned decoder: mode=train_vocoder is for audio"):
        run(compose_config(["mode=train_vocoder"]), tmp_path)
    with pytest.raises(UserError, match="stft representation, which decodes exactly"):
        run(compose_config(AUDIO + VOCODER + ["modality.spectrogram=stft"]), tmp_path)
    with pytest.raises(UserError, match="train_vocoder.segment=0 is invalid"):
        run(compose_config(AUDIO + VOCODER + ["train_vocoder.segment=0"]), tmp_path)
