"""The command line end to end, as a user runs it: subprocesses in tmp_path."""

import subprocess
import sys

import pytest

from .conftest import TINY


def mmdiff(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mmdiff", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_train_then_sample(tmp_path):
    train = mmdiff(*TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    for name in ("config.yaml", "metrics.csv", "last.safetensors", "samples/step_0000006.png"):
        assert (tmp_path / "run" / name).is_file(), name
    sample = mmdiff("mode=sample", "checkpoint=run/last.safetensors", "n=6", "sampler=dpmpp_2m", "steps=4",
                    "guidance=2.0", "seed=0", "out=samples/", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == \
        ["grid.png", "index.html", "labels.json"] + [f"sample_{i:05d}.png" for i in range(6)]


def test_eval_and_train_evaluator_modes(tmp_path):
    assert mmdiff(*TINY, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    fast = ["eval.evaluator.epochs=2", "eval.kid_subsets=5"]
    trained = mmdiff("mode=train_evaluator", "checkpoint=run", *fast, "hydra.run.dir=ev0", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "held-out accuracy" in trained.stdout
    result = mmdiff("mode=eval", "checkpoint=run", "n=30", "steps=3", *fast, "hydra.run.dir=ev", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "real-vs-real floor" in result.stdout and (tmp_path / "ev" / "eval.json").is_file()


@pytest.mark.parametrize("args,message", [
    (["dataset=image_folder", "dataset.root=no/such/folder"], "does not exist"),
    (["dataset=image_folder"], "dataset.root is required"),
    (["mode=sample", "checkpoint=missing.safetensors"], "does not exist: pass checkpoint=PATH"),
    (["dataset.size=12", "model.channel_mult=[1,2,2,2]"], "divisible"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is invalid"),
])
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    result = mmdiff(*TINY, "hydra.run.dir=run", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:")


def test_unknown_group_option_lists_the_choices(tmp_path):
    result = mmdiff("sampler=nope", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Available options in 'sampler'" in result.stderr and "dpmpp_2m" in result.stderr


TINY_AUDIO = TINY + ["modality=audio", "model.channel_mult=[1,2,2]", "model.attn_levels=[2]", "dataset.per_pitch=1",
                     "n=4", "trainer.batch_size=8"]


@pytest.mark.parametrize("model", ["unet1d", "spec_unet"])
def test_audio_train_then_sample_writes_wavs_spectrograms_and_a_page(tmp_path, model):
    extra = ["model.down_factors=[4,4]"] if model == "unet1d" else []
    train = mmdiff(*TINY_AUDIO, f"model={model}", *extra, "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "run" / "samples" / "step_0000006.wav").is_file()
    sample = mmdiff("mode=sample", "checkpoint=run", "n=3", "class=pluck", "steps=3", "out=gen", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    names = sorted(p.name for p in (tmp_path / "gen").iterdir())
    assert names == ["grid.png", "grid.wav", "index.html", "labels.json"] + \
        [f"sample_{i:05d}.{e}" for i in range(3) for e in ("png", "wav")]
    import soundfile as sf
    wave, rate = sf.read(tmp_path / "gen" / "sample_00000.wav")
    assert rate == 8000 and len(wave) >= 4000
    page = (tmp_path / "gen" / "index.html").read_text()
    assert page.count("<audio") == 4 and "pluck" in page  # a player per sample, and one for grid.wav


def test_multirun_sweeps_training_and_sampling(tmp_path):
    train = mmdiff("-m", *TINY, "trainer.max_steps=2", "trainer.lr=0.001,0.002", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    from omegaconf import OmegaConf
    lrs = [OmegaConf.load(tmp_path / "sweep" / job / "config.yaml").trainer.lr for job in ("0", "1")]
    assert lrs == [0.001, 0.002] and (tmp_path / "sweep" / "1" / "last.safetensors").is_file()
    sample = mmdiff("-m", "mode=sample", "checkpoint=sweep/0", "n=2", "sampler=euler,heun", "steps=2,3",
                    "out=gen/${sampler.name}_${steps}", "hydra.sweep.dir=sweep_sampling", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["euler_2", "euler_3", "heun_2", "heun_3"]
    assert (tmp_path / "gen" / "heun_3" / "grid.png").is_file()


def test_an_unknown_key_is_named_without_a_traceback(tmp_path):
    result = mmdiff("trainer.lrr=0.1", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "lrr" in result.stderr and "not in struct" in result.stderr


def test_distill_then_sample_in_one_step(tmp_path):
    # mode=distill composes the student's defaults while the CLI's own Hydra is running: this failed
    # ("GlobalHydra is already initialized") from the command line while the in-process tests passed
    assert mmdiff(*TINY, "trainer.max_steps=2", "hydra.run.dir=teacher", cwd=tmp_path).returncode == 0
    student = mmdiff(*TINY, "mode=distill", "checkpoint=teacher/last.safetensors", "trainer.max_steps=2",
                     "hydra.run.dir=student", cwd=tmp_path)
    assert student.returncode == 0, student.stderr
    sample = mmdiff("mode=sample", "checkpoint=student/last.safetensors", "n=4", "out=one/", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert "consistency" in (tmp_path / "one" / "index.html").read_text()
    assert len(list((tmp_path / "one").glob("sample_*.png"))) == 4
