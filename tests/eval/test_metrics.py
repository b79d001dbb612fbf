import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mmdiff.eval.metrics import (fd, frechet_distance, kid, knn_radii2, log_spectral_distance,
                                 MAG_FLOOR, multires_stft_distance, multires_stft_loss, polynomial_mmd2, precision_recall)
from mmdiff.modalities import spectral


def rng(seed=0):
    return np.random.default_rng(seed)


# --- Fréchet distance ------------------------------------------------------------------------------

def test_fd_of_diagonal_gaussians_has_the_closed_form():
    # For diagonal covariances the matrices commute: d^2 = ||mu1 - mu2||^2 + sum (s1 - s2)^2, s the stds.
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.5, -1.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 0.1, 0.5, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-12)


def test_fd_matches_scipy_sqrtm_on_full_covariances():
    r = rng(1)
    A, B = r.normal(size=(6, 6)), r.normal(size=(6, 6))
    C1, C2 = A @ A.T + 0.1 * np.eye(6), B @ B.T + 0.1 * np.eye(6)
    mu1, mu2 = r.normal(size=6), r.normal(size=6)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(C1 + C2 - 2 * scipy.linalg.sqrtm(C1 @ C2).real)
    # sqrtm of the non-symmetric C1 C2 (condition ~1e4) is good to ~cond * eps ~ 1e-12: rel=1e-9 is no luck
    assert frechet_distance(mu1, C1, mu2, C2) == pytest.approx(ref, rel=1e-9)


def fd_roundoff(dmu2, a, b):
    """Worst-case round-off of frechet_distance for commuting covariances of eigenvalues a, b (D each):
    ||mu1 - mu2||^2 and the traces to 10 D eps (sums of D terms, rounded inputs), and each eigenvalue
    a_i b_i of S1 cov2 S1 to 10 D eps max(a) max(b) (eigh's backward error, as frechet_distance assumes),
    which its square root divides by 2 sqrt(a_i b_i); zero eigenvalues stay below the cut-off."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ab = a * b
    sqrt_terms = a.max() * b.max() * np.sum(ab[ab > 0] ** -0.5)
    return 10 * len(a) * np.finfo(float).eps * (dmu2 + a.sum() + b.sum() + sqrt_terms)


def test_fd_is_exact_for_singular_covariances():
    # Rank-1 covariances in 3-D (what fewer samples than dimensions gives): no eps needed. Their round-off
    # eigenvalues (~1e-16) are no zeros; their square roots used to cost 1.2e-7 here.
    u, v = np.array([1.0, 2.0, 2.0]) / 3, np.array([2.0, 1.0, -2.0]) / 3  # orthonormal
    zero = np.zeros(3)
    # stds 2 and 3 along the same line: (3 - 2)^2
    assert frechet_distance(zero, 4 * np.outer(u, u), zero, 9 * np.outer(u, u)) == pytest.approx(
        1.0, rel=0, abs=fd_roundoff(0.0, [4, 0, 0], [9, 0, 0]))
    # along orthogonal lines: (C1 C2)^(1/2) = 0, so Tr C1 + Tr C2 (S1 C2 S1 is round-off only)
    assert frechet_distance(zero, 4 * np.outer(u, u), zero, 9 * np.outer(v, v)) == pytest.approx(
        13.0, rel=0, abs=fd_roundoff(0.0, [4, 0, 0], [0, 9, 0]))
    assert frechet_distance(zero, np.zeros((3, 3)), np.ones(3), np.zeros((3, 3))) == 3.0  # exact: sums of 1s


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("a, b", [
    ([4.0, 1.0, 0.25, 2.0, 0.5, 1.5], [1.0, 2.25, 0.25, 9.0, 4.0, 0.5]),  # full rank
    ([4.0, 1.0, 0.25, 0.0, 0.0, 0.0], [1.0, 0.0, 2.25, 9.0, 0.0, 0.0]),  # rank 3 each, one common null direction
])
def test_fd_of_commuting_covariances_has_the_closed_form(seed, a, b):
    # Q diag(a) Q^T and Q diag(b) Q^T commute: d^2 = ||mu1 - mu2||^2 + sum (sqrt a_i - sqrt b_i)^2. Rotated,
    # the zeros of a rank-deficient one come out as +-1e-16-sized eigenvalues (regression: 1e4-1e5 x the bound).
    r = rng(seed)
    Q = np.linalg.qr(r.normal(size=(6, 6)))[0]
    C1, C2 = (Q * a) @ Q.T, (Q * b) @ Q.T
    mu1, mu2 = r.normal(size=6), r.normal(size=6)
    dmu2 = np.sum((mu1 - mu2) ** 2)
    exact = dmu2 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, C1, mu2, C2) == pytest.approx(exact, rel=0, abs=fd_roundoff(dmu2, a, b))


def test_fd_of_a_set_with_itself_is_zero_and_sample_fd_converges():
    r = rng(2)
    x = r.normal(size=(500, 8))
    assert fd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert fd(torch.from_numpy(x).float(), torch.from_numpy(x).float()) == pytest.approx(0.0, abs=1e-6)
    mu1, mu2, s1, s2 = np.zeros(4), np.array([1.0, 0, 0, 2]), np.ones(4), np.array([0.5, 1, 2, 1])
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # 5 + 0.25 + 1 = 6.25
    errors = []
    for n in (1_000, 100_000):
        a, b = mu1 + s1 * r.normal(size=(n, 4)), mu2 + s2 * r.normal(size=(n, 4))
        errors.append(abs(fd(a, b) - exact))
    assert errors[1] < 0.02 and errors[1] < errors[0] + 1e-3


# --- KID -----------------------------------------------------------------------------------------

def test_unbiased_mmd_matches_the_double_sum():
    r = rng(3)
    x, y = r.normal(size=(5, 3)), r.normal(size=(4, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    # sums of <= 20 kernel values ~4 cancel to 1.24: round-off ~20 eps * 4 / 1.24 ~ 1e-14 relative
    assert polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_where_the_v_statistic_is_not():
    # Many independent pairs of small samples of one distribution: the population MMD^2 is 0. The
    # unbiased estimate averages to 0 within its standard error; the biased one sits far above it.
    r = rng(4)
    unbiased, biased = [], []
    for _ in range(400):
        x, y = r.normal(size=(10, 4)), r.normal(size=(10, 4))
        unbiased.append(polynomial_mmd2(x, y))
        biased.append(polynomial_mmd2(x, y, unbiased=False))
    se = lambda v: np.std(v) / np.sqrt(len(v))
    assert abs(np.mean(unbiased)) < 3 * se(unbiased)
    assert np.mean(biased) > 20 * se(biased)
    # The same through kid() on identical sets: subsets of one pool, drawn independently, average ~0.
    pool = r.normal(size=(2_000, 4))
    mean, std = kid(pool, pool, subsets=200, subset_size=50, seed=0)
    assert abs(mean) < 3 * std / np.sqrt(200) + 1e-3
    shifted_mean, _ = kid(pool, pool + 1.0, subsets=20, subset_size=50)
    assert shifted_mean > 50 * abs(mean)


def test_linear_kernel_kid_converges_to_the_mean_shift():
    # degree 1: k(a, b) = a.b / D + 1, whose population MMD^2 is ||mu_x - mu_y||^2 / D exactly.
    r = rng(5)
    delta = np.array([1.0, -2.0, 0.0, 2.0])  # ||delta||^2 / D = 9 / 4
    mean, std = kid(r.normal(size=(20_000, 4)), r.normal(size=(20_000, 4)) + delta, subsets=50, subset_size=2_000,
                    degree=1)
    assert mean == pytest.approx(9 / 4, abs=0.05)


def test_kid_is_deterministic_for_a_seed():
    r = rng(6)
    a, b = r.normal(size=(100, 3)), r.normal(size=(80, 3))
    assert kid(a, b, subsets=5, subset_size=30, seed=1) == kid(a, b, subsets=5, subset_size=30, seed=1)


# --- precision and recall ------------------------------------------------------------------------

def grid(n):
    """The integer points of an n x n grid [n^2, 2]."""
    return np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2).astype(float)


def test_knn_radii_on_a_grid():
    # k = 3 on a grid with spacing 1: corners reach their 3rd neighbour at sqrt 2, every other point at 1.
    r2 = knn_radii2(torch.from_numpy(grid(4)), k=3, batch_size=5).reshape(4, 4)
    expected = torch.ones(4, 4, dtype=torch.float64)
    expected[0, 0] = expected[0, -1] = expected[-1, 0] = expected[-1, -1] = 2.0
    assert torch.equal(r2, expected)  # exact: integer coordinates give integer float64 distances in any order


def test_precision_recall_identical_and_disjoint_sets():
    real = rng(7).normal(size=(200, 5))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_precision_recall_of_a_sub_cluster_is_exact():
    # Real: a 10 x 10 grid; fake: its 5 x 5 corner block. Every fake point is a real point: precision 1.
    # Recall: the real points inside the fake balls (k = 3: radius 1, sqrt 2 at the block's corners):
    # the 25 block points, the 5 + 5 next to its two open sides, and (5, 5), sqrt 2 from the corner (4, 4).
    real = grid(10)
    fake = grid(5)
    precision, recall = precision_recall(real, fake, k=3, batch_size=7)
    assert precision == 1.0
    assert recall == (25 + 5 + 5 + 1) / 100
    # ... and the roles swap: the block's points lie in the big grid's balls, 36 of 100 the other way.
    assert precision_recall(fake, real, k=3) == (0.36, 1.0)


def test_precision_recall_does_not_depend_on_the_batch_size():
    r = rng(8)
    real, fake = r.normal(size=(300, 6)), r.normal(size=(250, 6)) * 1.3 + 0.2
    # Exact although the batch size changes the gemm and so the last bits of each d2 (~1e-16 relative):
    # the result counts d2 <= r2, and no point here lies within 2e-5 (relative) of a ball's boundary.
    results = {precision_recall(real, fake, k=3, batch_size=b) for b in (1, 64, 10_000)}
    assert len(results) == 1


# --- spectral distances --------------------------------------------------------------------------

def noise(n=2, T=4000, seed=0):
    return 0.3 * torch.randn(n, 1, T, generator=torch.Generator().manual_seed(seed))


def test_multires_stft_distance_zero_for_identical_positive_otherwise():
    x = noise()
    assert torch.equal(multires_stft_distance(x, x), torch.zeros(2, dtype=torch.float64))  # one input, one path
    d = multires_stft_distance(x, noise(seed=1))
    assert d.shape == (2,) and (d > 0.5).all()
    assert multires_stft_distance(x[0, 0], x[0, 0]).ndim == 0


@pytest.mark.parametrize("c", [0.5, 2.0, 3.0])
def test_multires_stft_distance_of_a_scaled_clip(c):
    # |S^| = c |S| at every bin: spectral convergence |1 - c|, log-magnitude L1 |ln c| (to 1e-4: a handful of the
    # ~10^5 bins lie near the magnitude floor, which does not scale)
    x = noise()
    d = multires_stft_distance(x, c * x)
    assert torch.allclose(d, torch.full((2,), abs(1 - c) + abs(math.log(c)), dtype=torch.float64), atol=1e-4)


def test_multires_stft_distance_floors_the_power_as_parallel_wavegan():
    # PWG clamps |X|^2 at 1e-7: digital silence against noise whose STFT magnitudes stay under sqrt(1e-7) costs
    # nothing, while noise above it does (a floor on |X| at 1e-7 instead would charge ~ln(1e-4 / 1e-7) per bin)
    silent = torch.cat([noise(1), torch.zeros(1, 1, 4000)], dim=-1)
    quiet = silent + torch.cat([torch.zeros(1, 1, 4000), 1e-6 * noise(1, seed=4)], dim=-1)  # |X| ~ 1e-5 there
    loud = silent + torch.cat([torch.zeros(1, 1, 4000), 1e-3 * noise(1, seed=4)], dim=-1)  # |X| ~ 1e-2 there
    assert MAG_FLOOR ** 2 == pytest.approx(1e-7)
    assert multires_stft_distance(silent, quiet).item() < 1e-3
    assert multires_stft_distance(silent, loud).item() > 1.0


RESOLUTIONS = [(128, 32, 128), (512, 128, 400)]


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_multires_stft_loss_of_a_scaled_batch(c):
    # as the distance: |S^| = c |S| gives |1 - c| + |ln c| (pooled norms keep the ratio), a scalar with a gradient
    x, est = noise(), (c * noise()).requires_grad_()
    loss = multires_stft_loss(x, est, RESOLUTIONS)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(abs(1 - c) + abs(math.log(c)), abs=1e-4)
    loss.backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0


def test_multires_stft_loss_pools_spectral_convergence_over_the_batch():
    # a silent item's own ||S|| is the floor: per item its spectral convergence is ~1e2; pooled it is
    # the batch's, bounded by the loud item's scale
    x = torch.cat([noise(1), torch.zeros(1, 1, 4000)])
    est = x + 0.01 * noise(2, seed=3)
    assert multires_stft_distance(x, est, RESOLUTIONS)[1] > 50
    assert multires_stft_loss(x, est, RESOLUTIONS).item() < 10
    assert multires_stft_loss(x, x, RESOLUTIONS).item() == 0.0


def test_log_spectral_distance_is_the_modality_one():
    assert log_spectral_distance is spectral.log_spectral_distance
    x = noise()
    assert torch.allclose(log_spectral_distance(x, 2 * x), torch.full((2,), 20 * math.log10(2)), atol=1e-3)


# --- distributions and predictions (mmdiff.eval.metrics) ------------------------------------------------

def test_wasserstein_1d_is_exact_on_known_cases():
    from mmdiff.eval.metrics import wasserstein_1d
    assert wasserstein_1d([0.0, 1.0, 3.0], [0.0, 1.0, 3.0]) == 0.0
    assert wasserstein_1d([0.0, 1.0], [2.0, 3.0]) == pytest.approx(2.0, abs=1e-15)  # a shift moves all mass by 2
    # unequal sizes: scipy's definition, the area between the empirical CDFs: here 1/2 * 1 + 1/2 * 2 = 1.5
    assert wasserstein_1d([0.0], [1.0, 2.0]) == pytest.approx(1.5, abs=1e-15)
    with pytest.raises(ValueError):
        wasserstein_1d([], [1.0])


def test_psnr_and_ssim_on_exact_cases():
    from mmdiff.eval.metrics import psnr, ssim
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g, dtype=torch.float64)  # float64: x + 0.1 - x is 0.1 to 1e-16
    assert torch.isinf(psnr(x, x)).all()
    # MSE of a constant error e is e^2: PSNR = -20 log10(e) exactly
    assert psnr(x, x + 0.1).tolist() == pytest.approx([20.0] * 3, abs=1e-9)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    # constant images a, b (variances 0): SSIM = (2ab + C1) / (a^2 + b^2 + C1) everywhere
    a, b, c1 = 0.2, 0.6, 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    flat = lambda v: torch.full((1, 1, 9, 9), v, dtype=torch.float64)  # noqa: E731
    assert ssim(flat(a), flat(b)).item() == pytest.approx(expected, rel=1e-12)
    # structure lost: an image against its negative scores far lower than against itself slightly noised
    assert ssim(x, 1 - x).mean() < 0 < ssim(x, (x + 0.02 * torch.randn(x.shape, generator=g))).mean()
