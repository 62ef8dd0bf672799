"""SSIM, MS-SSIM and MS-SSIM diversity (host-side numpy, float64).

`ms_ssim_diversity` is the mean MS-SSIM between random pairs of samples
(Odena et al. 2017); a collapsed generator scores higher than the real data.
`ms_ssim` uses 4 scales and a 7-px window by default so 64-128 px slices fit
(the standard 5 scales with an 11-px window need >= 161 px).
"""
from collections.abc import Sequence
import math

import numpy as np


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
  data, so compare with the real set's value (`fidelity.fidelity_report`
  gives both). Pairs are drawn uniformly without replacement among the
  N(N-1)/2 unordered pairs; when num_pairs is at least that many, all pairs are used
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


def fitting_scales(shape: tuple[int, ...],
                   num_scales: int = DEFAULT_MS_SSIM_SCALES,
                   filter_size: int = DEFAULT_MS_SSIM_FILTER_SIZE) -> int:
  """The most scales, up to `num_scales`, at which images of `shape` (H, W)
  still hold the window (0 when even one does not)."""
  while num_scales:
    try:
      _check_size(shape, num_scales, filter_size)
      return num_scales
    except ValueError:
      num_scales -= 1
  return 0
