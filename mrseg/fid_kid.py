"""FID and KID on given feature vectors (Heusel et al. 2017, Binkowski et
al. 2018), host-side numpy in float64.

The maths is the literature's, the features are the caller's: with features
of a network trained inside this project (`fidelity.make_feature_fn`) the
scores compare runs scored with the same feature-network checkpoint and are
not comparable with Inception-based FID/KID in papers.
"""
from typing import NamedTuple

from absl import logging
import numpy as np
import scipy.linalg


def _as_features(features, name: str) -> np.ndarray:
  """`features` as a finite float64 [N, D] array with N >= 2, or an error."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(
        f'{name} must be a [N, D] array of feature vectors; got shape '
        f'{features.shape}.')
  if features.shape[0] < 2:
    raise ValueError(
        f'{name} needs at least 2 feature vectors; got {features.shape[0]}.')
  if not np.all(np.isfinite(features)):
    raise ValueError(f'{name} contains NaN or infinite values.')
  return features


def _feature_pair(features_real, features_fake, what: str
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Both feature sets (`_as_features`), checked to share a dimension."""
  real = _as_features(features_real, 'features_real')
  fake = _as_features(features_fake, 'features_fake')
  if real.shape[1] != fake.shape[1]:
    raise ValueError(
        f'{what}: features of different dimension: real {real.shape}, fake '
        f'{fake.shape}.')
  return real, fake


# A root whose square is further than this (relative, Frobenius) from the
# product is retried with the eps offset.
_SQRTM_RTOL = 1e-5
# Largest tolerated imaginary part of the root's diagonal, relative to its
# real diagonal (pytorch-fid uses an absolute 1e-3; relative keeps the test
# meaningful for features of any scale).
_IMAG_RTOL = 1e-3


def _checked_sqrtm(matrix: np.ndarray) -> np.ndarray | None:
  """scipy's Schur square root, or None when it is non-finite or inaccurate.

  Schur's method divides by sums of pairs of eigenvalue square roots, so a
  (near-)singular product of covariances, the usual case with fewer samples
  than feature dimensions, can give inf/NaN or a root that does not square
  back to the matrix. The residual check replaces scipy's deprecated `disp`
  error estimate.
  """
  root = scipy.linalg.sqrtm(matrix)
  if not np.all(np.isfinite(root)):
    return None
  scale = max(np.linalg.norm(matrix), np.finfo(np.float64).tiny)
  if np.linalg.norm(root @ root - matrix) / scale > _SQRTM_RTOL:
    return None
  return root


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Frechet distance between two Gaussians N(mu1, sigma1), N(mu2, sigma2).

  d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)),
  Heusel et al. 2017, computed in float64. The square root of the product is
  scipy's Schur method; when it fails (non-finite, or not squaring back to
  the product: a singular product of rank-deficient covariances), it is
  retried on (sigma1 + eps I)(sigma2 + eps I), as pytorch-fid and TTUR do,
  which adds O(eps * D) to the result. A root of the product of two PSD
  matrices has real eigenvalues, so the imaginary part that numerical error
  leaves is dropped; a large one means an input is not a covariance matrix
  and raises instead.

  Args:
    mu1: mean, [D].
    sigma1: covariance, [D, D] (symmetric positive semi-definite).
    mu2: mean, [D].
    sigma2: covariance, [D, D].
    eps: diagonal offset of the fallback.

  Returns:
    The squared Frechet distance (>= 0 up to rounding, ~1e-10 for identical
    inputs; not clipped, so a rounding error stays visible).

  Raises:
    ValueError: for mismatched shapes, non-finite inputs, a square root that
      fails even with the offset, or a significantly complex root (an input
      that is not positive semi-definite).
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if (mu1.ndim != 1 or mu2.shape != mu1.shape
      or sigma1.shape != (d, d) or sigma2.shape != (d, d)):
    raise ValueError(
        'frechet_distance needs means [D] and covariances [D, D] of one D; '
        f'got mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, '
        f'sigma2 {sigma2.shape}.')
  for name, value in (('mu1', mu1), ('sigma1', sigma1), ('mu2', mu2),
                      ('sigma2', sigma2)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f'frechet_distance: {name} contains NaN or inf.')

  covmean = _checked_sqrtm(sigma1 @ sigma2)
  if covmean is None:
    logging.warning(
        'frechet_distance: sqrtm of the covariance product failed (singular '
        'product?); retrying with %g added to the diagonals.', eps)
    offset = eps * np.eye(d)
    covmean = _checked_sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if covmean is None:
      raise ValueError(
          'frechet_distance: the matrix square root of the covariance product '
          f'failed even with a diagonal offset of {eps}.')
  if np.iscomplexobj(covmean):
    imag = np.max(np.abs(np.diagonal(covmean).imag))
    scale = max(1.0, np.max(np.abs(np.diagonal(covmean).real)))
    if imag > _IMAG_RTOL * scale:
      raise ValueError(
          'frechet_distance: the square root of sigma1 @ sigma2 has an '
          f'imaginary diagonal component of {imag:.3g} (real scale '
          f'{scale:.3g}); are both covariances positive semi-definite?')
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * np.trace(covmean))


def fid(features_real, features_fake, eps: float = 1e-6) -> float:
  """Frechet distance between Gaussians fitted to two sets of features.

  The FID formula of Heusel et al. 2017 on whatever features it is given.
  With features from `fidelity.make_feature_fn` (a network trained inside
  this project) the score is NOT the Inception FID of the literature and is not
  comparable with published numbers; it compares runs that use the same
  feature-network checkpoint and the same sample sizes.

  Small samples: the estimate is biased upwards, the bias shrinking roughly
  like 1/N (Chong & Forsyth 2020, "Effectively Unbiased FID"), so two FIDs
  are comparable only at equal sample sizes. With N <= D the sample
  covariance is singular (rank <= N - 1) and the eps fallback of
  `frechet_distance` is used; use several times D samples, or prefer `kid`,
  whose estimator is unbiased, for a few hundred images.

  Args:
    features_real: [N, D] feature vectors of real images, N >= 2.
    features_fake: [M, D] feature vectors of generated images, M >= 2.
    eps: see `frechet_distance`.

  Returns:
    The FID (squared distance, float64 maths).

  Raises:
    ValueError: for wrong shapes, fewer than 2 samples, non-finite features,
      or the failures of `frechet_distance`.
  """
  real, fake = _feature_pair(features_real, features_fake, 'fid')
  # np.cov normalises by N - 1, the unbiased covariance, as in TTUR.
  return frechet_distance(real.mean(0), np.cov(real, rowvar=False),
                          fake.mean(0), np.cov(fake, rowvar=False), eps=eps)


class KID(NamedTuple):
  """Kernel Inception Distance-style score: mean and std over subsets."""

  mean: float
  std: float


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x . y / D + 1)^3, the KID kernel of Binkowski et al."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 (Gretton et al. 2012, MMD_u^2) with the cubic kernel."""
  m, n = len(x), len(y)
  k_xx = _polynomial_kernel(x, x)
  k_yy = _polynomial_kernel(y, y)
  k_xy = _polynomial_kernel(x, y)
  # Leaving out k(x_i, x_i) is what makes the estimator unbiased.
  return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
               + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
               - 2.0 * k_xy.sum() / (m * n))


def kid(features_real, features_fake, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> KID:
  """Kernel distance (KID, Binkowski et al. 2018) between two feature sets.

  The unbiased estimate of the squared maximum mean discrepancy with the
  polynomial kernel k(x, y) = (x . y / D + 1)^3, averaged over
  `num_subsets` random subsets (drawn without replacement within a subset)
  of `subset_size` samples from each side, as in Binkowski et al.'s code and
  clean-fid. Unlike FID the estimator is unbiased at any sample size, so it
  suits a few hundred images; it can be slightly negative when the two
  distributions are the same. When a side has fewer than `subset_size`
  samples, its subsets are the whole set (the other side still varies), so
  the std then understates the estimator's spread.

  As with `fid`: on features from `fidelity.make_feature_fn` the score is
  comparable only across runs using the same feature-network checkpoint,
  never with Inception-based KIDs in the literature.

  Args:
    features_real: [N, D] feature vectors, N >= 2.
    features_fake: [M, D] feature vectors, M >= 2.
    num_subsets: number of random subsets to average over.
    subset_size: samples per side per subset (clean-fid's default is 1000);
      capped at N and M separately.
    seed: numpy seed of the subset draws.

  Returns:
    KID(mean, std): mean and standard deviation of MMD^2 over the subsets.

  Raises:
    ValueError: for wrong shapes, fewer than 2 samples, non-finite features
      or non-positive subset settings.
  """
  real, fake = _feature_pair(features_real, features_fake, 'kid')
  if num_subsets < 1 or subset_size < 2:
    raise ValueError(
        f'kid needs num_subsets >= 1 and subset_size >= 2; got {num_subsets} '
        f'and {subset_size}.')
  m = min(len(real), subset_size)
  n = min(len(fake), subset_size)
  rng = np.random.default_rng(seed)
  values = np.array([
      _mmd2_unbiased(real[rng.choice(len(real), m, replace=False)],
                     fake[rng.choice(len(fake), n, replace=False)])
      for _ in range(num_subsets)])
  return KID(float(values.mean()), float(values.std()))
