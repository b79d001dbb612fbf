import math

import pytest
import torch
from torch import nn

from mmdiff.core.precond import PRECONDS, EDMPrecond, EpsPrecond, FlowPrecond, VPrecond, X0Precond


class Recorder(nn.Module):
    """A stand-in network: records its inputs and returns a fixed tensor."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, x, c_noise, labels):
        self.calls.append((x, c_noise, labels))
        return self.out


def sample_pair(shape=(4, 2, 3, 5), sigma_data=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64) * sigma_data
    n = torch.randn(shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 2.0, 60.0], dtype=torch.float64)
    return x0, n, sigma, x0 + sigma.view(-1, 1, 1, 1) * n


def test_edm_scalings_match_eq7():
    p = EDMPrecond(nn.Identity(), sigma_data=0.5)
    for s in [0.002, 0.5, 80.0]:
        c_skip, c_out, c_in = p.scalings(torch.tensor(s, dtype=torch.float64))
        assert c_skip.item() == pytest.approx(0.25 / (s * s + 0.25))
        assert c_out.item() == pytest.approx(s * 0.5 / math.sqrt(s * s + 0.25))
        assert c_in.item() == pytest.approx(1 / math.sqrt(s * s + 0.25))
        assert p.c_noise(torch.tensor(s)).item() == pytest.approx(math.log(s) / 4, rel=1e-6)


@pytest.mark.parametrize("name", sorted(PRECONDS))
def test_forward_assembles_c_skip_x_plus_c_out_F_of_c_in_x(name):
    x0, n, sigma, x = sample_pair()
    labels = torch.tensor([0, 1, 2, 3])
    out = torch.randn(x.shape, dtype=torch.float64)
    net = Recorder(out)
    p = PRECONDS[name](net, sigma_data=0.5)
    D = p(x, sigma, labels)
    c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in p.scalings(sigma))
    assert torch.allclose(D, c_skip * x + c_out * out)
    x_in, c_noise, lab = net.calls[0]
    assert torch.allclose(x_in, c_in * x) and torch.allclose(c_noise, sigma.log() / 4) and lab is labels


def test_targets_are_the_papers_targets():
    x0, n, sigma, x = sample_pair(sigma_data=1.0)
    s4 = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(EpsPrecond(None, 1.0).target(x0, x, sigma), n)  # eps: the noise (Ho et al.)
    assert torch.allclose(X0Precond(None, 1.0).target(x0, x, sigma), x0)  # x0: the data
    alpha, s = 1 / (1 + s4**2).sqrt(), s4 / (1 + s4**2).sqrt()  # VP process x_t = alpha x0 + s n
    assert torch.allclose(VPrecond(None, 1.0).target(x0, x, sigma), alpha * n - s * x0)  # v (Salimans & Ho)


@pytest.mark.parametrize("name", sorted(PRECONDS))
def test_the_exact_target_denoises_exactly(name):
    x0, n, sigma, x = sample_pair()
    p = PRECONDS[name](None, sigma_data=0.5)
    p.net = Recorder(p.target(x0, x, sigma))
    assert torch.allclose(p(x, sigma), x0)


@pytest.mark.parametrize("name", sorted(set(PRECONDS) - {"flow"}))  # flow: the straight path sets the scale
def test_network_inputs_have_unit_variance(name):
    # c_in is chosen so that Var(c_in x) = 1 for data of std sigma_data (EDM Sec. 5 / App. B.6)
    g = torch.Generator().manual_seed(1)
    p = PRECONDS[name](None, sigma_data=0.5)
    for s in [0.05, 1.0, 20.0]:
        sigma = torch.full((200_000,), s, dtype=torch.float64)
        x = 0.5 * torch.randn(200_000, generator=g, dtype=torch.float64) + sigma * torch.randn(200_000, generator=g, dtype=torch.float64)
        assert (p.scalings(sigma)[2] * x).var().item() == pytest.approx(1.0, rel=0.02)


def test_edm_target_has_unit_variance():
    g = torch.Generator().manual_seed(2)
    p = EDMPrecond(None, sigma_data=0.5)
    for s in [0.05, 1.0, 20.0]:
        x0 = 0.5 * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
        sigma = torch.full((200_000,), s, dtype=torch.float64)
        x = x0 + s * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
        assert p.target(x0, x, sigma).var().item() == pytest.approx(1.0, rel=0.02)


def test_scalar_sigma_is_broadcast_to_the_batch():
    x = torch.randn(3, 1, 4)
    p = EDMPrecond(Recorder(torch.zeros(3, 1, 4)))
    p(x, torch.tensor(2.0))
    assert p.net.calls[0][1].shape == (3,)


def test_v_prediction_is_edm_with_c_out_negated():
    """One formula (STYLE habit 14): VPrecond is EDMPrecond with the sign of c_out flipped, and with
    sigma_data = 1 its target is still v = alpha n - s x0 of the VP process (Salimans & Ho 2022)."""
    sigma = torch.tensor([0.002, 0.01, 0.3, 1.0, 2.0, 60.0, 80.0], dtype=torch.float64)
    for sigma_data in (0.5, 1.0):
        edm, v = EDMPrecond(None, sigma_data).scalings(sigma), VPrecond(None, sigma_data).scalings(sigma)
        assert torch.equal(v[0], edm[0]) and torch.equal(v[1], -edm[1]) and torch.equal(v[2], edm[2])
    x0, n, sigma, x = sample_pair(sigma_data=1.0)
    s4 = sigma.view(-1, 1, 1, 1)
    alpha, s = 1 / (1 + s4**2).sqrt(), s4 / (1 + s4**2).sqrt()
    # (x0 - c_skip x) / c_out rounds to ~eps / sigma_min = 2e-14 at sigma = 0.01
    assert torch.allclose(VPrecond(None, 1.0).target(x0, x, sigma), alpha * n - s * x0, rtol=1e-12, atol=1e-12)
    assert torch.allclose(VPrecond(None, 1.0).target(x0, x, sigma), -EDMPrecond(None, 1.0).target(x0, x, sigma),
                          rtol=1e-12, atol=1e-12)


# --- flow matching ----------------------------------------------------------------------------------

def test_flow_sees_the_straight_path_and_regresses_the_velocity():
    """x_t = (1 - t) x0 + t n with t = sigma / (1 + sigma): the network's input is x_t, its target n - x0
    (Lipman et al. 2023, Eq. 23; Liu et al. 2023), and the uniform weighting turns the data-space loss into
    the flow-matching loss exactly."""
    from mmdiff.core.losses import UniformTarget, denoising_loss
    x0, n, sigma, x = sample_pair()
    t = (sigma / (1 + sigma)).view(-1, 1, 1, 1)
    p = FlowPrecond(None)
    c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in p.scalings(sigma))
    assert torch.allclose(c_in * x, (1 - t) * x0 + t * n, rtol=1e-12, atol=1e-12)
    assert torch.allclose(p.target(x0, x, sigma), n - x0, rtol=1e-12, atol=1e-12)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p.net = Recorder(v)
    lhs = denoising_loss(p(x, sigma), x0, UniformTarget()(sigma, p))
    rhs = (v - (n - x0)).pow(2).flatten(1).mean(1)
    # the loss squares in float32 (so bf16 training accumulates in float32): its round-off, ~1e-7 relative,
    # is scaled by 1 / c_out^2 up to (1.01 / 0.01)^2 at sigma = 0.01 against terms of that size: 1e-5 bounds it
    assert torch.allclose(lhs, rhs, rtol=1e-5)


def test_flow_with_the_exact_velocity_field_is_the_exact_denoiser():
    """On a Gaussian mixture with a closed-form denoiser D*, the exact velocity field is
    v*(x_t, t) = E[n - x0 | x_t] = (x_t - D*) / t; a network that returns it, under FlowPrecond, denoises exactly."""
    from mmdiff.core.analytic import GaussianMixture
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64),
                         torch.tensor([0.3, 0.2], dtype=torch.float64), torch.tensor([0.6, 0.4], dtype=torch.float64))

    class ExactVelocity(nn.Module):
        def forward(self, x_t, c_noise, labels=None):
            sigma = (4 * c_noise).exp()
            t = (sigma / (1 + sigma)).view(-1, 1)
            return (x_t - gm.denoise(x_t * (1 + sigma).view(-1, 1), sigma)) / t

    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 3
    sigma = torch.exp(torch.randn(64, generator=g, dtype=torch.float64) * 2)
    assert torch.allclose(FlowPrecond(ExactVelocity())(x, sigma), gm.denoise(x, sigma), rtol=1e-10, atol=1e-10)


def test_flow_training_times():
    from mmdiff.core.schedules import LogNormalSigma, UniformTimeSigma
    g = torch.Generator().manual_seed(5)
    sigma = UniformTimeSigma()(200_000, g)
    t = sigma / (1 + sigma)
    assert 0 < t.min() and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.005 and abs(t.var().item() - 1 / 12) < 0.002
    # SD3's logit-normal: logit(t) = ln sigma ~ N(0, 1), so t's median is 1/2
    t = 1 / (1 + 1 / LogNormalSigma(0.0, 1.0)(200_000, g))
    assert abs(t.median().item() - 0.5) < 0.005
