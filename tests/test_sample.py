import pytest
import torch
from PIL import Image

from mmdiff.build import resolve_labels
from mmdiff.errors import UserError
from mmdiff.sample import generate, sample_from_checkpoint
from mmdiff.train import train

from .conftest import compose_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from .conftest import TINY
    run = tmp_path_factory.mktemp("run")
    return train(compose_config(TINY + ["trainer.max_steps=3"]), run)


def sample(checkpoint, out, *extra):
    cfg = compose_config(["mode=sample", f"checkpoint={checkpoint}", f"out={out}", "n=12", "steps=3", *extra])
    return sample_from_checkpoint(cfg)


def test_writes_one_png_per_sample_and_a_grid(checkpoint, tmp_path):
    paths = sample(checkpoint, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"sample_{i:05d}.png" for i in range(12)] + ["grid.png"])
    assert len(paths) == 13
    assert Image.open(tmp_path / "sample_00000.png").size == (8, 8)


@pytest.mark.parametrize("sampler", ["ddpm", "heun", "euler_ancestral"])
def test_same_seed_same_files_whatever_the_batch_size(checkpoint, tmp_path, sampler):
    a, b, c = (sample(checkpoint, tmp_path / d, f"sampler={sampler}", f"batch_size={bs}", "seed=4")
               for d, bs in [("a", 5), ("b", 5), ("c", 12)])
    for pa, pb, pc in zip(a, b, c):
        assert pa.read_bytes() == pb.read_bytes()
        if pa.name != "grid.png":
            assert pa.read_bytes() == pc.read_bytes()


def test_different_seeds_differ(checkpoint, tmp_path):
    a = sample(checkpoint, tmp_path / "a", "seed=0")
    b = sample(checkpoint, tmp_path / "b", "seed=1")
    assert a[0].read_bytes() != b[0].read_bytes()


def test_generate_gives_each_sample_its_own_noise():
    seen = []

    def denoiser(x, sigma, labels):
        seen.append(x.clone())
        return torch.zeros_like(x)

    sigmas = torch.tensor([1.0, 0.0])
    generate(denoiser, shape=[1, 2], labels=None, n=3, sampler="euler", sigmas=sigmas, seed=10, batch_size=2)
    first = torch.cat(seen)
    expected = torch.stack([torch.randn([1, 2], generator=torch.Generator().manual_seed(10 + i)) for i in range(3)])
    assert torch.equal(first, expected)


def test_labels_by_index_name_list_or_in_turn():
    names = ["cat", "dog", "fox"]
    assert resolve_labels(None, 6, names).tolist() == [0, 0, 1, 1, 2, 2]
    assert resolve_labels("dog", 3, names).tolist() == [1, 1, 1]
    assert resolve_labels(2, 2, names).tolist() == [2, 2]
    assert resolve_labels([0, "fox"], 4, names).tolist() == [0, 0, 2, 2]
    assert resolve_labels(None, 4, []) is None
    with pytest.raises(UserError, match="not a class of this model"):
        resolve_labels(7, 3, names)
    with pytest.raises(UserError, match="unconditional"):
        resolve_labels(1, 3, [])


def test_class_option_conditions_every_sample(checkpoint, tmp_path):
    sample(checkpoint, tmp_path, "class=7", "guidance=3.0")
    assert len(list(tmp_path.glob("sample_*.png"))) == 12
