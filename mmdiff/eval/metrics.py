"""Sample-quality metrics as pure functions of feature arrays [N, D] (numpy or torch) and waveforms.

- ``frechet_distance`` / ``fd``: the Fréchet distance between Gaussians fitted to two feature sets
  (FID when the features are Inception's; Heusel et al. 2017).
- ``kid``: the kernel inception distance, an unbiased estimate of the squared MMD with a cubic
  polynomial kernel, averaged over random subsets (Binkowski et al. 2018).
- ``precision_recall``: improved precision and recall from k-NN balls (Kynkäänniemi et al. 2019).
- ``multires_stft_distance``: spectral convergence plus log-magnitude L1 over several STFT
  resolutions (Yamamoto et al. 2020, Parallel WaveGAN).
- ``multires_stft_loss``: the same terms as a training loss (pooled over a batch; mode=train_vocoder's).
- ``log_spectral_distance`` is mmdiff.modalities.spectral's, re-exported here so that every metric
  has one home to import from.

Feature metrics compute in float64 on the CPU; they never download anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..modalities.spectral import log_spectral_distance

__all__ = ["frechet_distance", "fd", "gaussian_stats", "kid", "polynomial_mmd2", "precision_recall",
           "knn_radii2", "multires_stft_distance", "multires_stft_loss", "log_spectral_distance"]


def _as_float64(x) -> np.ndarray:
    """Tensor or array-like -> float64 numpy array (a copy only when needed)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_matrix(feats, name: str) -> np.ndarray:
    a = _as_float64(feats)
    if a.ndim != 2:
        raise ValueError(f"{name} must be features [N, D], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


# --- Fréchet distance -----------------------------------------------------------------------------

def _drop_roundoff(w: np.ndarray, scale: float) -> np.ndarray:
    """Eigenvalues ``w`` of a D x D symmetric PSD matrix whose round-off is of order eps * ``scale``, with
    those that round-off cannot tell from 0 set to 0 (negative ones included).

    eigh is backward stable: its eigenvalues are exact for a matrix within p(D) eps ||A|| of the input,
    p(D) ~ D (LAPACK Users' Guide, Sec. 4.7), so by Weyl's inequality each one is uncertain by about
    D eps scale. A rank-deficient covariance thus shows +-1e-15-sized eigenvalues instead of zeros, and
    their square roots, ~1e-8 each, would bias Tr sqrt(.) by far more than eps. The factor 10 covers
    LAPACK's constant and, for S1 cov2 S1, the round-off of the two products and of S1."""
    tol = 10 * len(w) * np.finfo(np.float64).eps * scale
    return np.where(w > tol, w, 0.0)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """The Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), squared
    (Dowson & Landau 1982; used as FID by Heusel et al. 2017, Eq. 6):

        d^2 = ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    mu: [D], cov: [D, D], in float64. The trace of the matrix square root is computed as
    Tr((cov1 cov2)^(1/2)) = Tr((S1 cov2 S1)^(1/2)), S1 = cov1^(1/2): the same eigenvalues (cov1 cov2 is
    similar to S1 cov2 S1), but S1 cov2 S1 is symmetric positive semi-definite, so eigh gives real,
    non-negative eigenvalues even for singular or near-singular covariances (fewer samples than
    dimensions, dead features). No eps * I is added, hence no bias: eigenvalues at round-off level
    (below 10 D eps of the matrix's norm) count as 0, so singular inputs are exact to round-off, and the
    result is clipped at 0.
    """
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    cov1, cov2 = np.atleast_2d(_as_float64(cov1)), np.atleast_2d(_as_float64(cov2))
    if not (mu1.shape == mu2.shape and cov1.shape == cov2.shape == (len(mu1), len(mu1))):
        raise ValueError(f"shapes do not fit: mu {mu1.shape}, {mu2.shape}; cov {cov1.shape}, {cov2.shape}")
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2  # exact symmetry for eigh
    w1, V1 = np.linalg.eigh(cov1)
    norm1, norm2 = np.abs(w1).max(), np.abs(np.linalg.eigvalsh(cov2)).max()
    S1 = (V1 * np.sqrt(_drop_roundoff(w1, norm1))) @ V1.T
    # The round-off of S1 cov2 S1 scales with ||S1||^2 ||cov2|| = ||cov1|| ||cov2||, which can far exceed its
    # own largest eigenvalue (covariances of nearly orthogonal supports).
    tr_sqrt = np.sqrt(_drop_roundoff(np.linalg.eigvalsh(S1 @ cov2 @ S1), norm1 * norm2)).sum()
    d2 = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt
    return float(max(d2, 0.0))


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, D] -> (mean [D], unbiased covariance [D, D]) in float64. N >= 2."""
    a = _as_matrix(feats, "feats")
    if len(a) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(a)}")
    return a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])


def fd(feats_a, feats_b) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets [N_a, D], [N_b, D]."""
    return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# --- kernel inception distance --------------------------------------------------------------------

def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (x @ y.T) + coef0) ** degree


def polynomial_mmd2(x, y, degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                    unbiased: bool = True) -> float:
    """Squared MMD between samples x [m, D] and y [n, D] with k(a, b) = (gamma a.b + coef0)^degree,
    gamma = 1 / D by default (Binkowski et al. 2018, Eq. 4 and Sec. 2.4).

    Unbiased (the U-statistic): the means of k(x_i, x_j) and k(y_i, y_j) over i != j, minus twice the
    mean of k(x_i, y_j); its expectation is the population MMD^2, 0 when x and y come from one
    distribution. ``unbiased=False`` gives the V-statistic (diagonals included), biased upwards by
    about (E k(x, x) - E k(x, x')) (1/m + 1/n)."""
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    m, n = len(x), len(y)
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx, k_yy = _poly_kernel(x, x, degree, gamma, coef0), _poly_kernel(y, y, degree, gamma, coef0)
    k_xy = _poly_kernel(x, y, degree, gamma, coef0)
    if not unbiased:
        return float(k_xx.mean() + k_yy.mean() - 2 * k_xy.mean())
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.mean())


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (Binkowski et al. 2018): the unbiased squared MMD with the cubic
    polynomial kernel (x.y / D + 1)^3, averaged over ``subsets`` pairs of random subsets of
    min(subset_size, N_a, N_b) samples, drawn without replacement from each set (a random subset of
    i.i.d. samples is i.i.d., so each estimate stays unbiased). Returns (mean, std over subsets).

    Unlike the FD it has an unbiased estimator: two samples of one distribution give a mean near 0
    (it can be slightly negative), whatever their size."""
    a, b = _as_matrix(feats_a, "feats_a"), _as_matrix(feats_b, "feats_b")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = np.array([
        polynomial_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)],
                        degree, gamma, coef0)
        for _ in range(subsets)])
    return float(values.mean()), float(values.std())


# --- improved precision and recall ----------------------------------------------------------------

def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances [len(a), len(b)] in float64, clipped at 0 against round-off."""
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_(min=0)


def knn_radii2(feats: Tensor, k: int, batch_size: int = 1024) -> Tensor:
    """Squared distance from each point of feats [N, D] to its k-th nearest other point: [N].
    Computed in row blocks of ``batch_size`` (memory batch_size x N, not N x N)."""
    if not 1 <= k < len(feats):
        raise ValueError(f"k={k} needs 1 <= k < N = {len(feats)}")
    out = []
    for start in range(0, len(feats), batch_size):
        d2 = _sq_dists(feats[start:start + batch_size], feats)
        out.append(d2.kthvalue(k + 1, dim=1).values)  # the smallest is the point itself, at distance 0
    return torch.cat(out)


def _coverage(queries: Tensor, centres: Tensor, radii2: Tensor, batch_size: int) -> float:
    """The fraction of ``queries`` inside the union of the balls (centres, radii), boundaries included."""
    inside = 0
    for start in range(0, len(queries), batch_size):
        d2 = _sq_dists(queries[start:start + batch_size], centres)
        inside += int((d2 <= radii2[None, :]).any(1).sum())
    return inside / len(queries)


def precision_recall(real, fake, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-3) of features real [N, D] and
    fake [M, D].

    The real manifold is the union of balls around each real point with the distance to its k-th
    nearest real neighbour as radius (likewise the fake manifold). Precision: the fraction of fake
    points inside the real manifold (fidelity); recall: the fraction of real points inside the fake
    manifold (coverage). k = 3 is the paper's choice. Distances are computed in float64 in blocks of
    ``batch_size`` rows, so 10k x 10k features need about batch_size x 10k x 8 bytes at a time."""
    real_t = torch.from_numpy(_as_matrix(real, "real"))
    fake_t = torch.from_numpy(_as_matrix(fake, "fake"))
    if real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real_t.shape[1]} and {fake_t.shape[1]}")
    precision = _coverage(fake_t, real_t, knn_radii2(real_t, k, batch_size), batch_size)
    recall = _coverage(real_t, fake_t, knn_radii2(fake_t, k, batch_size), batch_size)
    return precision, recall


# --- multi-resolution STFT distance ---------------------------------------------------------------

# Parallel WaveGAN's three resolutions (Yamamoto et al. 2020, Table 1): FFT size, hop and window length.
PWG_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
MAG_FLOOR = 1e-7 ** 0.5  # PWG's reference implementation clamps the power |X|^2 at 1e-7 before the square root and
                         # the log: a magnitude floor of 3.2e-4 (-70 dB below a full-scale sine's 1024-point peak bin)


def _stft_mag(wave: Tensor, n_fft: int, hop: int, win: int) -> Tensor:
    """[B, T] -> |STFT| [B, n_fft // 2 + 1, frames] (Hann window of ``win`` samples, zero-padded to n_fft)."""
    window = torch.hann_window(win, dtype=wave.dtype, device=wave.device)
    X = torch.stft(wave, n_fft, hop, win, window=window, center=True, return_complex=True)
    return X.abs().clamp(min=MAG_FLOOR)


def multires_stft_distance(ref: Tensor, est: Tensor,
                           resolutions: Sequence[tuple[int, int, int]] = PWG_RESOLUTIONS) -> Tensor:
    """Multi-resolution STFT distance per clip (Yamamoto et al. 2020, Eq. 4-6):

        (1 / M) sum over resolutions of  || |S| - |S^| ||_F / || |S| ||_F          (spectral convergence)
                                       + (1 / N) || log |S| - log |S^| ||_1        (log-magnitude L1)

    for waveforms [N, 1, T], [N, T] or one clip [T] (then a scalar); ``resolutions`` holds
    (n_fft, hop, window) triples, Parallel WaveGAN's by default. Identical clips give 0; est = c ref gives
    |1 - c| + |ln c| at every resolution (up to bins below the 1e-7 magnitude floor). Clips shorter than
    n_fft / 2 + 1 samples are reflect-padded by torch.stft and raise; use smaller resolutions for them."""
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {tuple(ref.shape)} and {tuple(est.shape)}")
    one = ref.ndim == 1
    rows = 1 if one else ref.shape[0]
    ref2, est2 = ref.reshape(rows, -1).double(), est.reshape(rows, -1).double()
    total = torch.zeros(len(ref2), dtype=torch.float64)
    for n_fft, hop, win in resolutions:
        S, S_hat = _stft_mag(ref2, n_fft, hop, win), _stft_mag(est2, n_fft, hop, win)
        sc = torch.linalg.vector_norm(S - S_hat, dim=(1, 2)) / torch.linalg.vector_norm(S, dim=(1, 2))
        mag = (S.log() - S_hat.log()).abs().mean((1, 2))
        total += sc + mag
    total /= len(resolutions)
    return total[0] if one else total


def multires_stft_loss(ref: Tensor, est: Tensor, resolutions: Sequence[tuple[int, int, int]]) -> Tensor:
    """The terms of :func:`multires_stft_distance` as a training loss (a scalar, differentiable, in the inputs'
    dtype) for waveform batches [B, 1, T] or [B, T]: spectral convergence with the norms taken over the whole
    batch, as Parallel WaveGAN's reference implementation does, so that a near-silent item (whose own
    ||S|| is tiny) cannot dominate; the log-magnitude L1 averaged over all bins of all items."""
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {tuple(ref.shape)} and {tuple(est.shape)}")
    ref2, est2 = ref.reshape(-1, ref.shape[-1]), est.reshape(-1, est.shape[-1])
    total = ref.new_zeros(())
    for n_fft, hop, win in resolutions:
        S, S_hat = _stft_mag(ref2, n_fft, hop, win), _stft_mag(est2, n_fft, hop, win)
        total = total + torch.linalg.vector_norm(S - S_hat) / torch.linalg.vector_norm(S)
        total = total + (S.log() - S_hat.log()).abs().mean()
    return total / len(resolutions)


# --- distributions of one number per item --------------------------------------------------------------

def wasserstein_1d(a, b) -> float:
    """Wasserstein-1 (earth mover's) distance between the empirical distributions of the 1-D samples a and b:
    the integral of |F_a(x) - F_b(x)| over x, F the empirical CDFs (exact, as scipy.stats.wasserstein_distance)."""
    a, b = np.sort(_as_float64(a).ravel()), np.sort(_as_float64(b).ravel())
    if not len(a) or not len(b):
        raise ValueError("both samples must be non-empty")
    grid = np.concatenate([a, b])
    grid.sort(kind="mergesort")
    widths = np.diff(grid)
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


# --- prediction against the truth -------------------------------------------------------------------

def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per item in dB, 10 log10(peak^2 / MSE), for data [N, ...] in [0, peak]
    (+inf where a == b)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak ** 2 / mse)


def ssim(a: Tensor, b: Tensor, peak: float = 1.0, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004, Eq. 13) per item of images [N, C, H, W] in [0, peak], the mean
    of the SSIM map over valid window positions and channels. The window is Gaussian (``sigma`` 1.5, as in the
    paper) but ``window`` = 7 pixels wide by default instead of 11, for small frames (16x16 here); C1 =
    (0.01 peak)^2, C2 = (0.03 peak)^2."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim takes two image batches [N, C, H, W] of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    window = min(window, a.shape[-1], a.shape[-2])
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)
    a, b = a.double(), b.double()

    def blur(x):
        return torch.nn.functional.conv2d(x, kernel, groups=a.shape[1])
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
