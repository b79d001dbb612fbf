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
    assert len(paths) == 5 and [p.name for p in paths[-2:]] == ["grid.png", "index.html"]
    back = model.read(paths[0])
    assert torch.allclose(model.decode(back).float(), images[:1].float(), atol=1)
    # the core's samplers take the bound denoiser directly
    d = model.guided(model.labels(3, 2), guidance=2.0)
    out = SAMPLERS["euler"](d, torch.randn(2, 1, 8, 8) * 80, model.sigmas(4))
    assert out.shape == (2, 1, 8, 8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return api.Model.from_checkpoint(api.train(TINY + ["trainer.max_steps=2"], run_dir=tmp_path_factory.mktemp("run")))


def test_sample_defaults_are_the_command_line_s(model, tmp_path):
    """Left out, every option takes conf/'s value: the API draws what mode=sample writes."""
    from mmdiff.cli import run
    run(api.config(["mode=sample", f"checkpoint={model.path}", f"out={tmp_path}", "n=6", "class=4"]), tmp_path)
    written = model.modality.read_samples(sorted(tmp_path.glob("sample_*.png")))
    assert torch.equal(model.decode(model.sample(n=6, labels=4)), written)


def test_sample_takes_every_guidance_option_of_the_command_line(model):
    from mmdiff.generate import Guidance, from_noise, generate
    options = {"guidance": 3.0, "guidance_rescale": 0.7, "guidance_interval": (0.5, 10.0), "dynamic_threshold": 0.9}
    x = model.sample(n=4, labels=2, steps=4, **options)
    by_hand = generate(model.denoiser, from_noise(model.shape, "dpmpp_2m", model.sigmas(4)), n=4,
                       labels=model.labels(2, 4), null_label=model.null_label, guidance=Guidance(3.0, 0.7, (0.5, 10.0), 0.9),
                       seed=0, batch_size=250, device="cpu")
    assert torch.equal(x, by_hand)
    for dropped in options:  # each option changes the samples: none is ignored
        assert not torch.equal(model.sample(n=4, labels=2, steps=4, **{k: v for k, v in options.items() if k != dropped}), x)


def test_a_sampler_s_options_come_from_its_config(model):
    # dpmpp_2m_sde.yaml says eta 1.0: the default differs from eta 0, which is dpmpp_2m
    default = model.sample(n=2, labels=1, steps=4, sampler="dpmpp_2m_sde")
    assert torch.equal(model.sample(n=2, labels=1, steps=4, sampler="dpmpp_2m_sde", eta=1.0), default)
    assert torch.equal(model.sample(n=2, labels=1, steps=4, sampler="dpmpp_2m_sde", eta=0.0),
                       model.sample(n=2, labels=1, steps=4, sampler="dpmpp_2m"))


def test_an_unknown_sampler_lists_the_samplers(model):
    with pytest.raises(UserError, match="sampler 'nope' is unknown: use one of adaptive, consistency, ddim, ddpm"):
        model.sample(n=2, sampler="nope")
