import pytest
import torch

from mmdiff import api
from mmdiff.core.samplers import SAMPLERS
from mmdiff.errors import UserError

from .conftest import TINY


def test_train_sample_decode_save_and_read_through_the_api(tmp_path):
    assert api.config(["sampler=heun"]).sampler.name == "heun"
    ckpt = api.train(TINY + ["trainer.max_steps=2"], run_dir=tmp_path / "run")
    model = api.Model.from_checkpoint(ckpt)
    assert model.shape == [1, 8, 8] and model.class_names == [str(d) for d in range(10)] and model.step == 2
    x = model.sample(n=3, labels="7", steps=3, seed=1)
    assert x.shape == (3, 1, 8, 8) and torch.equal(x, model.sample(n=3, labels="7", steps=3, seed=1))
    # your own starting noise: the seeded draws given explicitly reproduce the seeded samples
    seeded = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1 + i)) for i in range(3)])
    assert torch.equal(model.sample(n=3, labels="7", steps=3, seed=99, noise=seeded), x)
    assert not torch.equal(model.sample(n=3, labels="7", steps=3, noise=seeded.flip(0)), x)
    with pytest.raises(UserError, match=r"noise has shape \[2, 1, 8, 8\]"):
        model.sample(n=3, labels="7", steps=3, noise=seeded[:2])
    images = model.decode(x)
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 8, 8)
    paths = model.save(x, tmp_path / "out", labels=model.labels("7", 3))
    assert len(paths) == 4 and paths[-1].name == "grid.png"
    back = model.read(paths[0])
    assert torch.allclose(model.decode(back).float(), images[:1].float(), atol=1)
    # the core's samplers take the bound denoiser directly
    d = model.guided(model.labels(3, 2), guidance=2.0)
    out = SAMPLERS["euler"](d, torch.randn(2, 1, 8, 8) * 80, model.sigmas(4))
    assert out.shape == (2, 1, 8, 8)
