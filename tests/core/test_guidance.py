import torch

from mmdiff.core.guidance import CFGDenoiser, drop_labels


class Fake:
    """D(x, sigma, labels) = x * sigma + label (a different answer per label); counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, labels):
        self.calls += 1
        lab = torch.zeros(x.shape[0]) if labels is None else labels.float()
        return x * sigma.view(-1, 1) + lab.view(-1, 1)


def test_scale_one_is_the_conditional_model_in_one_call():
    d, x, s, y = Fake(), torch.randn(4, 3), torch.rand(4), torch.tensor([1, 2, 3, 4])
    out = CFGDenoiser(d, y, 1.0, null_label=10)(x, s)
    assert torch.equal(out, d(x, s, y)) and d.calls == 2


def test_scale_zero_is_the_unconditional_model():
    d, x, s, y = Fake(), torch.randn(4, 3), torch.rand(4), torch.tensor([1, 2, 3, 4])
    assert torch.equal(CFGDenoiser(d, y, 0.0, null_label=10)(x, s), d(x, s, torch.full((4,), 10)))


def test_guided_estimate_extrapolates_from_unconditional_to_conditional():
    d, x, s, y = Fake(), torch.randn(4, 3), torch.rand(4), torch.tensor([1, 2, 3, 4])
    w = 3.0
    out = CFGDenoiser(d, y, w, null_label=10)(x, s)
    cond, uncond = d(x, s, y), d(x, s, torch.full((4,), 10))
    assert torch.allclose(out, uncond + w * (cond - uncond))
    assert d.calls == 3  # one batched call for the guided estimate, two for the reference


def test_unconditional_sampling_passes_no_labels():
    d, x, s = Fake(), torch.randn(2, 3), torch.rand(2)
    assert torch.equal(CFGDenoiser(d, None, 4.0, null_label=10)(x, s), x * s.view(-1, 1))


def test_label_dropout_rate_and_null_label():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(100_000, dtype=torch.long)
    out = drop_labels(y, 0.1, null_label=10, generator=g)
    assert set(out.unique().tolist()) == {0, 10}
    assert abs((out == 10).float().mean().item() - 0.1) < 0.005
    assert drop_labels(y, 0.0, 10) is y
