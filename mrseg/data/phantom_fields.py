"""Small numerical helpers of the phantom datasets (numpy, float32).

Interpolation, smooth random fields and texture, soft level sets, random
rotations and affine maps, block-mean downsampling and Rician noise.
"""
import itertools

import numpy as np
from scipy import ndimage


def linear_sample(table: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """Multilinear interpolation of a channels-first grid.

  Corner indices and weights are computed once for all channels, which makes
  this several times faster than `ndimage.map_coordinates` per channel.

  Args:
    table: [C, *spatial] values on a grid.
    coords: [D, *out] fractional voxel coordinates, D = len(spatial). Points
      outside the grid read its border, which is background for every table
      used here.

  Returns:
    [C, *out] float32 interpolated values.
  """
  spatial = table.shape[1:]
  flat = table.reshape(table.shape[0], -1)
  strides = [int(np.prod(spatial[a + 1:])) for a in range(len(spatial))]
  base = 0
  fracs = []
  for axis, n in enumerate(spatial):
    x = np.clip(coords[axis], 0, n - 1)
    i0 = np.minimum(x.astype(np.intp), n - 2)  # x >= 0, so trunc == floor.
    fracs.append((x - i0).astype(np.float32))
    base = base + i0 * strides[axis]
  out = np.zeros((table.shape[0],) + coords.shape[1:], np.float32)
  for corner in itertools.product((0, 1), repeat=len(spatial)):
    weight = 1
    for f, c in zip(fracs, corner):
      weight = weight * (f if c else 1 - f)
    index = base + sum(s * c for s, c in zip(strides, corner))
    for channel in range(table.shape[0]):
      out[channel] += flat[channel][index] * weight
  return out


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...],
                  terms: int = 5) -> np.ndarray:
  """A smooth random field with zero mean and unit standard deviation.

  A random cosine series (a DCT with `terms` low frequencies per axis,
  amplitudes decaying with frequency): a few small matrix products instead of
  a Gaussian filter of white noise, and the random draws do not depend on
  `shape`, so a seed gives the same field at any resolution.

  Args:
    rng: the example's generator.
    shape: grid shape (2D or 3D).
    terms: cosine frequencies per axis (k / 2 periods across it, k < terms).

  Returns:
    float32 array of `shape`.
  """
  k = np.arange(terms)
  grid = np.meshgrid(*([k] * len(shape)), indexing='ij')
  decay = np.exp(-sum(g**2 for g in grid) / (0.5 * terms**2))
  coef = rng.standard_normal((terms,) * len(shape)) * decay
  coef.flat[0] = 0.0  # No constant term: the mean is set by the caller.
  field = coef
  for n in reversed(shape):
    basis = np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, k))
    # Contract the last coefficient axis; the new axis goes to the front.
    field = np.moveaxis(np.tensordot(field, basis, axes=([-1], [1])), -1, 0)
  field = field - field.mean()
  return (field / max(field.std(), 1e-6)).astype(np.float32)


def fine_texture(rng: np.random.Generator, shape: tuple[int, ...],
                  amplitude: float) -> np.ndarray:
  """Multiplicative tissue texture on a ~1 pixel scale: 1 + N(0, amplitude)."""
  texture = ndimage.gaussian_filter(
      rng.standard_normal(shape, np.float32), 0.8)
  return 1 + texture * (amplitude / max(float(texture.std()), 1e-6))


def soft_inside(rho: np.ndarray, width: float) -> np.ndarray:
  """1 inside the level set rho < 1, 0 outside, linear over `width`."""
  return np.clip((1 - rho) * np.float32(1 / width) + np.float32(0.5), 0, 1)


def rotation(rng: np.random.Generator, ndim: int,
              max_degrees: float) -> np.ndarray:
  """A random rotation; each plane's angle is uniform in +-max_degrees."""
  rot = np.eye(ndim)
  for i, j in itertools.combinations(range(ndim), 2):
    a = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    plane = np.eye(ndim)
    plane[[i, i, j, j], [i, j, i, j]] = [np.cos(a), -np.sin(a), np.sin(a),
                                         np.cos(a)]
    rot = rot @ plane
  return rot


def apply_affine(matrix: np.ndarray, coords: np.ndarray,
                  offset: np.ndarray) -> np.ndarray:
  """matrix @ coords + offset for channels-first coordinates [D, *grid]."""
  return np.stack([
      sum(np.float32(matrix[i, j]) * coords[j] for j in range(len(coords)))
      + np.float32(offset[i]) for i in range(len(matrix))])


def block_mean(image: np.ndarray, k: int) -> np.ndarray:
  """Area-averaging downsample of a 2D array by an integer factor."""
  if k == 1:
    return image
  # Sums of strided views: several times faster than reshape(...).mean(),
  # whose reduction over short inner axes is slow in numpy.
  total = sum(image[i::k, j::k] for i in range(k) for j in range(k))
  return total * np.float32(1 / k**2)


def rician(rng: np.random.Generator, signal: np.ndarray,
            sigma: float) -> np.ndarray:
  """Magnitude of signal + complex Gaussian noise, as an MR scanner measures."""
  sigma = np.float32(sigma)
  real = signal + sigma * rng.standard_normal(signal.shape, np.float32)
  imag = sigma * rng.standard_normal(signal.shape, np.float32)
  return np.sqrt(real * real + imag * imag)
