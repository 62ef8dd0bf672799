"""How close generated images are to real ones, as numbers.

Three kinds of numbers, none of which needs downloaded weights:

* **Intensity distributions** (`intensity_wasserstein`,
  `histogram_intersection`): paper 1's Fig. 11 as numbers.
* **Diversity** (`ms_ssim_diversity`): mean MS-SSIM between random pairs of
  samples (Odena et al. 2017); a collapsed generator scores higher than the
  real data. `ms_ssim` uses 4 scales and a 7-px window so 64-128 px slices
  fit (the standard 5 scales with an 11-px window need >= 161 px).
* **FID and KID** (`fid`, `kid`) on features of a network trained inside
  this project (`make_feature_fn`, e.g. the real-data UNet encoder). The
  maths is the literature's, the features are not: these scores compare runs
  scored with the same feature-network checkpoint and are not comparable
  with Inception-based FID/KID in papers.

`fidelity_report` bundles them. Everything is host-side numpy in float64
except the feature network, which runs jitted.
"""
from collections.abc import Callable, Sequence
import math
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg


def intensity_wasserstein(real: np.ndarray, generated: np.ndarray,
                          num_quantiles: int = 1000) -> float:
  """Wasserstein-1 distance between the pixel-intensity distributions.

  Paper 1's Fig. 11 compares the two histograms by eye; this is the same
  comparison as one number (in intensity units: 0 for identical
  distributions, at most 1 for intensities in [0, 1]). W1 between two 1D
  distributions is the mean absolute difference of their quantile functions,
  computed here on a fixed quantile grid, so it does not depend on how many
  images each side has.
  """
  real, generated = np.ravel(real), np.ravel(generated)
  if not real.size or not generated.size:
    raise ValueError('intensity_wasserstein needs non-empty inputs.')
  q = (np.arange(num_quantiles) + 0.5) / num_quantiles
  return float(np.mean(np.abs(np.quantile(real, q) - np.quantile(generated, q))))


def histogram_intersection(real: np.ndarray, generated: np.ndarray,
                           bins: int = 64) -> float:
  """Overlap of the normalised intensity histograms on [0, 1]: 1 = identical."""
  edges = np.linspace(0.0, 1.0, bins + 1)
  h_real, _ = np.histogram(np.clip(real, 0, 1), bins=edges)
  h_gen, _ = np.histogram(np.clip(generated, 0, 1), bins=edges)
  h_real = h_real / max(h_real.sum(), 1)
  h_gen = h_gen / max(h_gen.sum(), 1)
  return float(np.minimum(h_real, h_gen).sum())


# ----------------------------------------------------------------------------
# FID and KID on given features.


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
  With features from `make_feature_fn` (a network trained inside this
  project) the score is NOT the Inception FID of the literature and is not
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
  real = _as_features(features_real, 'features_real')
  fake = _as_features(features_fake, 'features_fake')
  if real.shape[1] != fake.shape[1]:
    raise ValueError(
        f'fid: features of different dimension: real {real.shape}, fake '
        f'{fake.shape}.')
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

  As with `fid`: on features from `make_feature_fn` the score is comparable
  only across runs using the same feature-network checkpoint, never with
  Inception-based KIDs in the literature.

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
  real = _as_features(features_real, 'features_real')
  fake = _as_features(features_fake, 'features_fake')
  if real.shape[1] != fake.shape[1]:
    raise ValueError(
        f'kid: features of different dimension: real {real.shape}, fake '
        f'{fake.shape}.')
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


# ----------------------------------------------------------------------------
# Features from a network trained inside the project.

POOLINGS = ('avg', 'avg_max')


def make_feature_fn(apply_fn: Callable[[Any, jax.Array], jax.Array],
                    variables: Any, batch_size: int = 64,
                    pooling: str = 'avg') -> Callable[[Any], np.ndarray]:
  """Turns a network's feature maps into [N, D] vectors for `fid` and `kid`.

  No pretrained weights are downloaded, ever: the intended network is the
  real-data UNet of this project, whose encoder's bottleneck serves as the
  feature map::

    feature_fn = fidelity.make_feature_fn(
        functools.partial(model.apply, method=unet.UNet.encode), variables)
    score = fidelity.fid(feature_fn(real_images), feature_fn(fake_images))

  FID/KID computed on these features are NOT comparable with the
  Inception-v3 FID/KID reported in the literature (different network,
  training data and feature dimension), nor across different feature
  networks or checkpoints: compare only runs scored with the same
  checkpoint, the same preprocessing and the same sample sizes. A UNet
  trained to segment tumours also sees only what helps segmentation, so the
  score measures fidelity in those terms.

  Args:
    apply_fn: `apply_fn(variables, images) -> [B, *spatial, C]` feature maps,
      in inference mode (examples must not interact, e.g. no batch
      statistics: the last batch is padded).
    variables: the network's variables, passed to apply_fn.
    batch_size: images per jitted call; the last batch is padded to it so
      that only one shape is compiled.
    pooling: 'avg' (global average over space: D = C) or 'avg_max' (average
      and max concatenated: D = 2C).

  Returns:
    `feature_fn(images) -> np.ndarray` float64 [N, D], where images is [N,
    ...] in the layout and value range the network was trained on (for the
    UNet: [N, H, W, 1] with H, W divisible by 2**depth).

  Raises:
    ValueError: for an unknown pooling or non-positive batch_size; the
      returned function raises for an empty input, feature maps without
      spatial axes, or non-finite features.
  """
  if pooling not in POOLINGS:
    raise ValueError(f'Unsupported pooling {pooling!r}; choose one of '
                     f'{POOLINGS}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1; got {batch_size}.')

  @jax.jit
  def pooled(variables, images):
    maps = apply_fn(variables, images)
    if maps.ndim < 3:
      raise ValueError(
          'make_feature_fn: apply_fn must return [B, *spatial, C] feature '
          f'maps; got shape {maps.shape}.')
    axes = tuple(range(1, maps.ndim - 1))
    maps = maps.astype(jnp.float32)
    parts = [jnp.mean(maps, axes)]
    if pooling == 'avg_max':
      parts.append(jnp.max(maps, axes))
    return jnp.concatenate(parts, axis=-1)

  def feature_fn(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim < 1 or not len(images):
      raise ValueError('feature_fn needs a non-empty batch of images; got '
                       f'shape {images.shape}.')
    size = min(batch_size, len(images))
    outputs = []
    for start in range(0, len(images), size):
      batch = images[start:start + size]
      count = len(batch)
      if count < size:
        pad = np.zeros((size - count,) + batch.shape[1:], batch.dtype)
        batch = np.concatenate([batch, pad])
      outputs.append(np.asarray(pooled(variables, batch))[:count])
    features = np.concatenate(outputs).astype(np.float64)
    if not np.all(np.isfinite(features)):
      raise ValueError('feature_fn: the network produced NaN or inf '
                       'features.')
    return features

  return feature_fn


# ----------------------------------------------------------------------------
# SSIM, MS-SSIM and MS-SSIM diversity.

# Wang, Simoncelli & Bovik 2003, for 5 scales, finest first.
MS_SSIM_WEIGHTS_5 = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_weights(num_scales: int) -> tuple[float, ...]:
  """The first `num_scales` of Wang et al.'s weights, renormalised to sum 1.

  Renormalising keeps MS-SSIM's scale: an image pair with the same SSIM
  terms at every scale gets that value whatever the number of scales.
  """
  if not 1 <= num_scales <= len(MS_SSIM_WEIGHTS_5):
    raise ValueError(f'num_scales must be in [1, 5]; got {num_scales}.')
  weights = MS_SSIM_WEIGHTS_5[:num_scales]
  return tuple(w / sum(weights) for w in weights)


# 4 scales with a 7-px window fit images of 49 px and more, so both 64 and
# 128 px work; 128 px goes down to 16 px at the coarsest scale.
DEFAULT_MS_SSIM_SCALES = 4
DEFAULT_MS_SSIM_FILTER_SIZE = 7


def _as_greyscale_batch(image, name: str) -> tuple[np.ndarray, bool]:
  """[H, W], [B, H, W] or [B, H, W, 1] as float64 [B, H, W]; True if batched."""
  image = np.asarray(image, np.float64)
  if image.ndim == 4 and image.shape[-1] == 1:
    return image[..., 0], True
  if image.ndim == 3:
    return image, True
  if image.ndim == 2:
    return image[None], False
  raise ValueError(
      f'{name} must be a greyscale [H, W], [B, H, W] or [B, H, W, 1] image; '
      f'got shape {image.shape}.')


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  """Normalised 1D Gaussian of `size` taps centred on the middle one."""
  coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
  kernel = np.exp(-coords ** 2 / (2.0 * sigma ** 2))
  return kernel / kernel.sum()


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Separable 'valid' filtering of [B, H, W] over H and W.

  'Valid' (no padding) as in Wang et al.'s and TensorFlow's SSIM: padded
  borders would bias the local statistics near the edges.
  """
  k = len(kernel)
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  x = sum(kernel[u] * x[:, u:u + h, :] for u in range(k))
  return sum(kernel[u] * x[:, :, u:u + w] for u in range(k))


def _ssim_and_cs(x: np.ndarray, y: np.ndarray, max_val: float,
                 kernel: np.ndarray, k1: float,
                 k2: float) -> tuple[np.ndarray, np.ndarray]:
  """Mean SSIM and mean contrast-structure term per image of [B, H, W]."""
  c1 = (k1 * max_val) ** 2
  c2 = (k2 * max_val) ** 2
  mu_x = _filter_valid(x, kernel)
  mu_y = _filter_valid(y, kernel)
  # Gaussian-weighted (population) variances and covariance, as in Wang et
  # al. 2004 and TensorFlow; written as E[xy] - E[x]E[y].
  num0 = 2.0 * mu_x * mu_y
  den0 = mu_x ** 2 + mu_y ** 2
  luminance = (num0 + c1) / (den0 + c1)
  num1 = 2.0 * _filter_valid(x * y, kernel)
  den1 = _filter_valid(x * x + y * y, kernel)
  cs = (num1 - num0 + c2) / (den1 - den0 + c2)
  return np.mean(luminance * cs, axis=(1, 2)), np.mean(cs, axis=(1, 2))


def _downsample(x: np.ndarray) -> np.ndarray:
  """2x2 average pooling; odd sizes are first padded by mirroring the edge."""
  pad = [(0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2)]
  if any(p[1] for p in pad):
    x = np.pad(x, pad, mode='symmetric')
  b, h, w = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _prepare_pair(img1, img2) -> tuple[np.ndarray, np.ndarray, bool]:
  """Both images as checked float64 [B, H, W]; True if the input was batched."""
  x, batched = _as_greyscale_batch(img1, 'img1')
  y, _ = _as_greyscale_batch(img2, 'img2')
  if x.shape != y.shape:
    raise ValueError(f'SSIM needs images of one shape; got {np.shape(img1)} '
                     f'and {np.shape(img2)}.')
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError('SSIM inputs contain NaN or infinite values.')
  return x, y, batched


def _check_size(shape: tuple[int, ...], num_scales: int,
                filter_size: int) -> None:
  """Raises unless every scale is at least as large as the window."""
  h, w = shape
  for _ in range(num_scales - 1):
    h, w = -(-h // 2), -(-w // 2)
  if min(h, w) < filter_size:
    need = (filter_size - 1) * 2 ** (num_scales - 1) + 1
    raise ValueError(
        f'Images of {shape[0]}x{shape[1]} px are too small for '
        f'{"MS-" if num_scales > 1 else ""}SSIM with {num_scales} scale(s) '
        f'and a {filter_size}-px window: each side needs at least {need} px. '
        'Use fewer scales (power_factors) or a smaller filter_size.')


def ssim(img1, img2, max_val: float = 1.0, filter_size: int = 11,
         filter_sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> float | np.ndarray:
  """Single-scale SSIM (Wang et al. 2004) with a Gaussian window.

  The mean of the SSIM map over 'valid' window positions, with
  Gaussian-weighted local statistics: TensorFlow's `tf.image.ssim` and
  skimage's `structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)`, up to border handling. The default window is
  the paper's 11 px, sigma 1.5.

  Args:
    img1: greyscale [H, W], [B, H, W] or [B, H, W, 1], numpy or jax.
    img2: same shape as img1.
    max_val: dynamic range of the pixel values (1.0 for [0, 1], 2.0 for
      [-1, 1], 255 for uint8).
    filter_size: Gaussian window size in pixels.
    filter_sigma: Gaussian window standard deviation in pixels.
    k1: luminance stabiliser, C1 = (k1 * max_val)^2.
    k2: contrast stabiliser, C2 = (k2 * max_val)^2.

  Returns:
    A float for [H, W] inputs, else a float64 array [B].

  Raises:
    ValueError: for unsupported or mismatched shapes, non-finite values or
      images smaller than the window.
  """
  x, y, batched = _prepare_pair(img1, img2)
  _check_size(x.shape[1:], 1, filter_size)
  value, _ = _ssim_and_cs(x, y, max_val,
                          _gaussian_kernel(filter_size, filter_sigma), k1, k2)
  return value if batched else float(value[0])


def ms_ssim(img1, img2, max_val: float = 1.0,
            power_factors: Sequence[float] | None = None,
            filter_size: int = DEFAULT_MS_SSIM_FILTER_SIZE,
            filter_sigma: float = 1.5, k1: float = 0.01,
            k2: float = 0.03) -> float | np.ndarray:
  """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of greyscale images.

  prod_s cs_s^w_s over the finer scales times SSIM^w at the coarsest, each
  term clipped at 0 (negative terms under fractional powers are undefined),
  with 2x2 average pooling between scales: TensorFlow's
  `tf.image.ssim_multiscale` in float64.

  Scales and window, chosen for 64-128 px MRI slices: the standard 5 scales
  with an 11-px window need images of at least 161 px (176 px is usually
  quoted). The default here is 4 scales with a 7-px Gaussian window of the
  standard sigma 1.5 (truncated at 2 sigma and renormalised), which needs 49
  px, so 64 and 128 px images work; the weights are the first 4 of Wang et
  al.'s (0.0448, 0.2856, 0.3001, 0.2363) renormalised to sum to 1
  (`ms_ssim_weights(4)`). Numbers are therefore comparable only with
  MS-SSIMs computed with the same settings.

  Args:
    img1: greyscale [H, W], [B, H, W] or [B, H, W, 1], numpy or jax.
    img2: same shape as img1.
    max_val: dynamic range of the pixel values (1.0 for [0, 1]).
    power_factors: one weight per scale, finest first; the number of scales
      is its length. None: `ms_ssim_weights(4)`.
    filter_size: Gaussian window size in pixels, at every scale.
    filter_sigma: Gaussian window standard deviation in pixels.
    k1: luminance stabiliser, C1 = (k1 * max_val)^2.
    k2: contrast stabiliser, C2 = (k2 * max_val)^2.

  Returns:
    A float in [0, 1] for [H, W] inputs, else a float64 array [B]; 1 for
    identical images.

  Raises:
    ValueError: for unsupported or mismatched shapes, non-finite values,
      no power factors, or images too small for the scales and window (the
      message gives the minimum size).
  """
  if power_factors is None:
    power_factors = ms_ssim_weights(DEFAULT_MS_SSIM_SCALES)
  weights = np.asarray(power_factors, np.float64)
  if weights.ndim != 1 or not weights.size:
    raise ValueError('ms_ssim needs a non-empty sequence of power_factors; '
                     f'got {power_factors!r}.')
  x, y, batched = _prepare_pair(img1, img2)
  _check_size(x.shape[1:], len(weights), filter_size)
  kernel = _gaussian_kernel(filter_size, filter_sigma)
  terms = []
  for scale in range(len(weights)):
    if scale:
      x, y = _downsample(x), _downsample(y)
    value, cs = _ssim_and_cs(x, y, max_val, kernel, k1, k2)
    terms.append(cs if scale < len(weights) - 1 else value)
  terms = np.maximum(np.stack(terms, axis=-1), 0.0)
  result = np.prod(terms ** weights, axis=-1)
  return result if batched else float(result[0])


def _pair_indices(k: int) -> tuple[int, int]:
  """The k-th unordered pair (i < j) in the order (0,1), (0,2), (1,2), ..."""
  j = (1 + math.isqrt(1 + 8 * k)) // 2
  return k - j * (j - 1) // 2, j


def ms_ssim_diversity(images, num_pairs: int = 1000, seed: int = 0,
                      chunk_size: int = 64, **ms_ssim_kwargs) -> float:
  """Mean MS-SSIM over random pairs of distinct images (Odena et al. 2017).

  A diversity score for a set of samples: lower means more diverse. A
  generator that collapses onto a few images scores higher than the real
  data, so compare with the real set's value (`fidelity_report` gives both).
  Pairs are drawn uniformly without replacement among the N(N-1)/2
  unordered pairs; when num_pairs is at least that many, all pairs are used
  and the result does not depend on the seed.

  Args:
    images: [N, H, W] or [N, H, W, 1] greyscale images, N >= 2.
    num_pairs: number of pairs to average over (Odena et al.: 100 per class).
    seed: numpy seed of the pair draw.
    chunk_size: pairs per vectorised `ms_ssim` call (bounds the memory).
    **ms_ssim_kwargs: passed to `ms_ssim` (max_val, power_factors, ...).

  Returns:
    The mean MS-SSIM of the pairs.

  Raises:
    ValueError: for fewer than 2 images, num_pairs < 1, a wrong shape, or the
      errors of `ms_ssim`.
  """
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3:
    raise ValueError('ms_ssim_diversity needs greyscale images [N, H, W] or '
                     f'[N, H, W, 1]; got shape {images.shape}.')
  n = len(images)
  if n < 2:
    raise ValueError(f'ms_ssim_diversity needs at least 2 images; got {n}.')
  if num_pairs < 1:
    raise ValueError(f'num_pairs must be >= 1; got {num_pairs}.')
  total = n * (n - 1) // 2
  if num_pairs >= total:
    first, second = np.triu_indices(n, 1)
  else:
    ks = np.random.default_rng(seed).choice(total, num_pairs, replace=False)
    first, second = np.array([_pair_indices(int(k)) for k in ks]).T
  values = [
      ms_ssim(images[first[s:s + chunk_size]], images[second[s:s + chunk_size]],
              **ms_ssim_kwargs)
      for s in range(0, len(first), chunk_size)]
  return float(np.mean(np.concatenate(values)))


# ----------------------------------------------------------------------------
# Everything at once.


def fidelity_report(real_images, fake_images,
                    feature_fn: Callable[[Any], np.ndarray] | None = None,
                    num_pairs: int = 1000, kid_subsets: int = 100,
                    kid_subset_size: int = 1000,
                    seed: int = 0,
                    standardize_features: bool = True) -> dict[str, float]:
  """Fidelity and diversity of generated images against real ones.

  Intensity W1 and histogram intersection (paper 1's Fig. 11 as numbers),
  MS-SSIM diversity of the fake and, for reference, the real images, and,
  when `feature_fn` is given, FID and KID on its features. Images are in
  [0, 1] (max_val 1 for MS-SSIM). MS-SSIM uses the default 4 scales and
  7-px window; smaller images use as many of those scales as fit
  (`ms_ssim_num_scales` records how many; NaN diversity if none fits).

  Args:
    real_images: [N, H, W] or [N, H, W, 1] real images in [0, 1].
    fake_images: [M, H, W] or [M, H, W, 1] generated images in [0, 1].
    feature_fn: e.g. from `make_feature_fn`; receives the image arrays
      unchanged. The FID/KID are comparable only across runs with the same
      feature network checkpoint (see `make_feature_fn`).
    num_pairs: pairs for `ms_ssim_diversity`.
    kid_subsets: `kid`'s num_subsets.
    kid_subset_size: `kid`'s subset_size.
    seed: seed of the pair and subset draws.
    standardize_features: centre the features on the real mean and divide
      them by the real features' root mean variance (one scale for all
      dimensions) before FID/KID. A network trained inside the project has
      no fixed feature scale (a segmenter trained on poor data can have
      bottleneck activations in the thousands, where KID's cubic kernel
      overflows any meaning), so this makes the scores independent of that
      scale; FID is then in units of the mean real-feature variance.

  Returns:
    {'intensity_wasserstein', 'histogram_intersection',
    'ms_ssim_diversity_fake', 'ms_ssim_diversity_real', 'ms_ssim_num_scales',
    'num_real', 'num_fake'} plus {'fid', 'kid_mean', 'kid_std'} with a
    feature_fn.

  Raises:
    ValueError: for multi-channel images (pass the image channel of a joint
      image+mask sample), fewer than 2 images per side, or mismatched image
      sizes.
  """
  real, fake = np.asarray(real_images), np.asarray(fake_images)
  for name, images in (('real_images', real), ('fake_images', fake)):
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1)):
      raise ValueError(
          f'fidelity_report: {name} must be greyscale [N, H, W] or '
          f'[N, H, W, 1] (for joint image+mask samples pass the image '
          f'channel); got shape {images.shape}.')
    if len(images) < 2:
      raise ValueError(f'fidelity_report needs at least 2 {name}; got '
                       f'{len(images)}.')
  if real.shape[1:3] != fake.shape[1:3]:
    raise ValueError(f'fidelity_report: image sizes differ: real '
                     f'{real.shape}, fake {fake.shape}.')
  report = {
      'intensity_wasserstein': intensity_wasserstein(real, fake),
      'histogram_intersection': histogram_intersection(real, fake),
      'num_real': len(real),
      'num_fake': len(fake),
  }
  num_scales = DEFAULT_MS_SSIM_SCALES
  while num_scales:
    try:
      _check_size(real.shape[1:3], num_scales, DEFAULT_MS_SSIM_FILTER_SIZE)
      break
    except ValueError:
      num_scales -= 1
  if num_scales:
    weights = ms_ssim_weights(num_scales)
    for name, images in (('fake', fake), ('real', real)):
      report[f'ms_ssim_diversity_{name}'] = ms_ssim_diversity(
          images, num_pairs, seed, power_factors=weights)
  else:
    logging.warning('fidelity_report: images of %s px are too small for '
                    'MS-SSIM; reporting NaN.', real.shape[1:3])
    report['ms_ssim_diversity_fake'] = report['ms_ssim_diversity_real'] = (
        float('nan'))
  report['ms_ssim_num_scales'] = num_scales
  if feature_fn is not None:
    features_real, features_fake = feature_fn(real), feature_fn(fake)
    if standardize_features:
      features_real, features_fake = _standardize(features_real,
                                                  features_fake)
    report['fid'] = fid(features_real, features_fake)
    score = kid(features_real, features_fake, kid_subsets, kid_subset_size,
                seed)
    report['kid_mean'], report['kid_std'] = score.mean, score.std
  return report


def _standardize(real: np.ndarray, fake: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Both feature sets centred on the real mean, in units of real spread.

  One scale for all dimensions (the root mean real variance), not one per
  dimension: a dimension nearly constant over the real images would
  otherwise blow the generated images' values in it up without bound.
  """
  real = np.asarray(real, np.float64)
  fake = np.asarray(fake, np.float64)
  mean = real.mean(0)
  scale = math.sqrt(float(real.var(0).mean()))
  if not scale > 1e-12 * max(float(np.abs(mean).max(initial=0.0)), 1.0):
    raise ValueError('fidelity_report: every feature is constant over the '
                     'real images; the feature network carries no '
                     'information (is the checkpoint trained?).')
  return (real - mean) / scale, (fake - mean) / scale
