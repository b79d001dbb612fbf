"""Scale features of the trainer on the CPU: DDP over gloo, gradient accumulation, bf16, channels-last,
torch.compile; each against a plain single-process run."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from mmdiff.checkpoint import load_checkpoint
from mmdiff.errors import UserError
from mmdiff.tasks import train as train_module
from mmdiff.tasks.train import train

from .conftest import TINY, compose_config

STEPS = ["trainer.max_steps=4", "trainer.log_every=1", "trainer.batch_size=16"]


def losses(run):
    return [float(r["loss"]) for r in csv.DictReader(open(run / "metrics.csv"))]


def max_weight_difference(a, b):
    return max((a.model[k] - b.model[k]).abs().max().item() for k in a.model)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("single")
    train(compose_config(TINY + STEPS), run)
    return run


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(single, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mmdiff",
         *TINY, *STEPS, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # each process trained its own half of every global batch of 16
    assert "process 0 of 2: micro-batches of 8 x 1 accumulation step(s), samples 0-7" in result.stdout
    assert "process 1 of 2: micro-batches of 8 x 1 accumulation step(s), samples 8-15" in result.stdout
    assert losses(tmp_path) == pytest.approx(losses(single), rel=1e-4)
    assert max_weight_difference(load_checkpoint(tmp_path / "last.safetensors"),
                                 load_checkpoint(single / "last.safetensors")) < 1e-4


def test_gradient_accumulation_matches_one_big_batch(single, tmp_path):
    train(compose_config(TINY + STEPS + ["trainer.grad_accum=4"]), tmp_path)
    assert losses(tmp_path) == pytest.approx(losses(single), rel=1e-4)
    assert max_weight_difference(load_checkpoint(tmp_path / "last.safetensors"),
                                 load_checkpoint(single / "last.safetensors")) < 1e-4


@pytest.fixture
def inside_forward(monkeypatch):
    """What the first convolution of every training forward saw: its output's dtype and layout."""
    seen = []
    real = train_module.build_denoiser

    def build(*args):
        denoiser = real(*args)
        denoiser.net.conv_in.register_forward_hook(lambda m, i, out: seen.append(
            (out.dtype, out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous())))
        return denoiser
    monkeypatch.setattr(train_module, "build_denoiser", build)
    return seen


def test_channels_last_matches_the_default_layout(single, tmp_path, inside_forward):
    train(compose_config(TINY + STEPS + ["trainer.channels_last=true", "trainer.sample_every=0"]), tmp_path)
    assert losses(tmp_path) == pytest.approx(losses(single), rel=1e-4)
    assert inside_forward[:4] == [(torch.float32, True)] * 4  # the 4 training steps ran channels-last


def test_the_default_layout_is_not_channels_last(tmp_path, inside_forward):
    train(compose_config(TINY + STEPS), tmp_path)
    assert inside_forward[:4] == [(torch.float32, False)] * 4


def test_bf16_autocast_trains_close_to_fp32_and_saves_fp32_weights(single, tmp_path, inside_forward):
    train(compose_config(TINY + STEPS + ["trainer.precision=bf16"]), tmp_path)
    assert losses(tmp_path) == pytest.approx(losses(single), rel=0.05)
    assert [dtype for dtype, _ in inside_forward[:4]] == [torch.bfloat16] * 4  # autocast ran the convolutions
    assert inside_forward[-1][0] == torch.float32  # the final preview samples in fp32
    ckpt = load_checkpoint(tmp_path / "last.safetensors")
    assert all(v.dtype == torch.float32 for v in ckpt.model.values())


def test_compiled_model_matches_eager(single, tmp_path):
    # aot_eager traces forward and backward with dynamo and AOTAutograd like inductor does, without
    # generating C++ kernels (which takes a minute on 2 cores; benchmarks/gpu_check.py runs inductor).
    # A backend of our own counts the graphs dynamo hands it: compile=true really compiled.
    from torch._dynamo import lookup_backend, register_backend
    graphs = []

    @register_backend(name="mmdiff_counting")
    def counting(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    train(compose_config(TINY + STEPS + ["trainer.compile=true", "trainer.compile_backend=mmdiff_counting"]), tmp_path)
    assert losses(tmp_path) == pytest.approx(losses(single), rel=1e-3)
    assert len(graphs) >= 1


@pytest.mark.parametrize("override,message", [
    ("trainer.precision=fp16", "fp16 needs a GPU"),
    ("trainer.precision=fp8", "trainer.precision=fp8 is unknown"),
    ("trainer.grad_accum=3", "does not split into 1 process(es) x 3"),
])
def test_bad_scale_options_are_refused(tmp_path, override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(compose_config(TINY + STEPS + [override]), tmp_path)


# --- only where CUDA is present (tests/conftest.py skips them elsewhere, with a reason) ---------------

@pytest.mark.gpu
def test_fp16_trains_with_the_gradient_scaler_on_the_gpu(tmp_path, inside_forward):
    train(compose_config(TINY + STEPS + ["device=cuda", "trainer.precision=fp16"]), tmp_path)
    assert [dtype for dtype, _ in inside_forward[:4]] == [torch.float16] * 4
    ckpt = load_checkpoint(tmp_path / "last.safetensors")
    assert "scaler" in ckpt.extra and ckpt.extra["scaler"]["scale"] > 0  # the scaler's state is saved
    assert all(torch.isfinite(torch.tensor(losses(tmp_path))))


@pytest.mark.gpu
def test_resume_on_the_gpu_restores_the_cuda_rng(tmp_path):
    # dropout draws from the CUDA generator: a resume that forgot its state would draw other masks
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    common = TINY + ["device=cuda", "model.dropout=0.2", "trainer.log_every=1"]
    full = load_checkpoint(train(compose_config(common + ["trainer.max_steps=4"]), tmp_path / "full"))
    train(compose_config(common + ["trainer.max_steps=2"]), tmp_path / "part")
    resumed = load_checkpoint(train(compose_config(common + [
        "trainer.max_steps=4", f"trainer.resume={tmp_path / 'part' / 'last.safetensors'}"]), tmp_path / "part"))
    assert "cuda" in resumed.rng
    for k, v in full.model.items():
        assert torch.allclose(resumed.model[k], v, rtol=0, atol=1e-6), k
