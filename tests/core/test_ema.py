import pytest
import torch
from torch import nn

from mmdiff.core.ema import EMA, ema_beta


def test_beta_halves_the_weight_of_old_values_after_one_halflife_of_samples():
    beta = ema_beta(batch_size=100, samples_seen=10**9, halflife_samples=1000, rampup_ratio=None)
    assert beta**10 == pytest.approx(0.5)
    # independent of the batch size: the same number of samples halves the weight
    assert ema_beta(10, 10**9, 1000, None) ** 100 == pytest.approx(0.5)


def test_rampup_caps_the_halflife_early_in_training():
    assert ema_beta(100, 1000, 10**6, 0.1) == pytest.approx(0.5 ** (100 / 100))
    assert ema_beta(100, 10**9, 10**6, 0.1) == pytest.approx(0.5 ** (100 / 10**6))


def test_average_converges_geometrically_to_fixed_weights():
    model = nn.Linear(3, 2)
    ema = EMA(model, halflife_samples=50, rampup_ratio=None)
    start = [p.detach().clone() for p in ema.averaged.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for _ in range(4):
        beta = ema.update(model, batch_size=50, samples_seen=10**6)
    assert beta == pytest.approx(0.5)
    for p0, p_avg, p in zip(start, ema.averaged.parameters(), model.parameters()):
        assert torch.allclose(p_avg, p - 1.0 * 0.5**4)
        assert not p_avg.requires_grad
    del p0
