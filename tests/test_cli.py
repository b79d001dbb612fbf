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
        ["grid.png"] + [f"sample_{i:05d}.png" for i in range(6)]


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
