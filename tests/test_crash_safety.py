"""SIGKILL a training run at random moments: the last checkpoint always loads and training resumes."""

import random
import signal
import subprocess
import sys
import time

import pytest

from mmdiff.checkpoint import load_checkpoint

from .conftest import TINY

# A model whose checkpoint (weights, EMA and two Adam moments: ~70 MB) takes a while to write, and a
# checkpoint after every step: half the kills wait for a write to begin, the others are random.
BIG = ["model.channels=64", "model.groups=8", "trainer.checkpoint_every=1", "trainer.max_steps=100000",
       "trainer.max_seconds=600", "trainer.log_every=1"]


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_an_unloadable_checkpoint(tmp_path):
    rng = random.Random(2026)
    run, ckpt = tmp_path / "run", tmp_path / "run" / "last.safetensors"
    def writing() -> int:  # temporary files (mmdiff.atomic): one appears while a checkpoint is being written
        return len(list(run.glob(".last.safetensors.*.tmp")))
    kills, mid_write, steps = 0, 0, []
    deadline = time.monotonic() + 300
    while kills < 10 and time.monotonic() < deadline:
        resume = [f"trainer.resume={ckpt}"] if ckpt.exists() else []
        started = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "mmdiff", *TINY, *BIG, *resume, f"hydra.run.dir={run}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until this process has written a checkpoint of its own; then kill it either a random
        # moment later (odd kills) or as soon as its next checkpoint write has begun (even kills)
        while not (ckpt.exists() and ckpt.stat().st_mtime > started) and time.monotonic() < deadline:
            assert proc.poll() is None, "training stopped by itself"
            time.sleep(0.02)
        if kills % 2:
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            while writing() <= mid_write and time.monotonic() < deadline:
                time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        mid_write = writing()  # a write the kill interrupted leaves its temporary file behind
        steps.append(load_checkpoint(ckpt).step)  # never unloadable
    assert kills == 10, f"only {kills} kills in the time allowed"
    assert steps == sorted(steps) and steps[-1] > steps[0] > 0  # every restart resumed and made progress
    assert mid_write >= 3, f"only {mid_write} of {kills} kills interrupted a checkpoint write"
