"""2D data augmentation as a tf.data `preprocess` function.

`make_augment_2d(...)` returns a per-example function for
`pipeline.train_dataset(..., preprocess=...)`. Every random draw is a
stateless op seeded from `(seed, example['_global_index'])`, so an example's
augmentation depends only on which global example it is: a run resumed at
step s draws exactly what the uninterrupted run drew, and the result does not
depend on tf.data's thread scheduling.

Geometry (rotation about the image centre and an elastic deformation) is
composed into ONE sampling map per example and applied once, with bilinear
interpolation to the image and nearest neighbour to each mask, so masks stay
binary and image and mask move together; resampling twice would blur the
image twice and let nearest-neighbour rounding drift the mask away from it.
Flips are exact index reversals. Intensity changes (gamma, scale, shift)
touch the image only and run after the geometry.

Example::

  augment = augment_lib.make_augment_2d(flip=True, rotation_degrees=15,
                                        elastic_alpha=3, elastic_sigma=10,
                                        gamma=0.2, seed=config.seed)
  ds = pipeline.train_dataset(arrays, batch, seed, preprocess=lambda ex:
                              pipeline.scale_images(augment(ex)))
"""
from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any

import numpy as np
import tensorflow as tf

from mrseg.data import augment_jax

Example = dict[str, tf.Tensor]

# Sub-seeds of one example, one per random op: fixed numbers (not the order of
# the ops) so that switching one op on or off leaves the others' draws alone.
_FLIP_LR, _FLIP_UD, _ROTATION, _ELASTIC, _GAMMA, _SCALE, _SHIFT = range(7)


def default_config() -> dict[str, Any]:
  """The keyword arguments of `make_augment_2d` (all off), for configs."""
  return dict(flip=False, flip_up_down=False, rotation_degrees=0.0,
              elastic_alpha=0.0, elastic_sigma=10.0, intensity_scale=0.0,
              intensity_shift=0.0, gamma=0.0)


def make_augment_2d(
    *,
    flip: bool = False,
    flip_up_down: bool = False,
    rotation_degrees: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 10.0,
    intensity_scale: float = 0.0,
    intensity_shift: float = 0.0,
    gamma: float = 0.0,
    seed: int = 0,
    clip: tuple[float, float] | None = (0.0, 1.0),
    fill_value: float = 0.0,
    image_key: str = 'image',
    mask_keys: Sequence[str] = ('mask',),
) -> Callable[[Example], Example]:
  """Returns a per-example augmentation for `pipeline.train_dataset`.

  Args:
    flip: left-right flip (the image's width axis) with probability 1/2;
      brains are nearly symmetric, so this is anatomically plausible.
    flip_up_down: up-down flip with probability 1/2 (not anatomical; off by
      default).
    rotation_degrees: rotation about the image centre by an angle uniform in
      +-rotation_degrees (0 to 180).
    elastic_alpha: elastic deformation (Simard et al. 2003): a random
      displacement field, Gaussian-smoothed white noise, scaled so that each
      component has a standard deviation of `elastic_alpha` PIXELS (unlike
      Simard's alpha, whose effect depends on sigma). 0 turns it off.
    elastic_sigma: smoothness of the field: the Gaussian's sigma in pixels.
    intensity_scale: the image is multiplied by a factor uniform in
      [1 - s, 1 + s].
    intensity_shift: a value uniform in [-s, s] is added to the image.
    gamma: the image becomes image ** g with log(g) uniform in
      [-gamma, gamma] (applied first, on intensities clipped at 0).
    seed: the run's seed; each example's draws are seeded from
      (seed, example['_global_index']).
    clip: (low, high) the image is clipped to after an intensity change
      (the [0, 1] range that `pipeline.scale_images` expects); None keeps
      the values.
    fill_value: image value read from outside the image by a rotation or
      deformation (0, the background of skull-stripped slices in [0, 1]).
      Masks read 0 there.
    image_key: the example's image, [H, W, C].
    mask_keys: keys of label images [H, W, c] moved like the image with
      nearest-neighbour sampling; keys an example lacks are skipped.

  Returns:
    A function example -> example that changes only `image_key` and
    `mask_keys` and needs example['_global_index'] (int64 scalar). With
    every option off it returns its input unchanged.

  Raises:
    ValueError: for negative magnitudes, a rotation over 180 degrees or a
      non-positive sigma.
  """
  augment_jax.check_args(rotation_degrees, elastic_alpha, elastic_sigma,
                         intensity_scale, intensity_shift, gamma)
  geometric = rotation_degrees > 0 or elastic_alpha > 0
  intensity = intensity_scale > 0 or intensity_shift > 0 or gamma > 0
  mask_keys = tuple(mask_keys)

  def augment(example: Mapping[str, tf.Tensor]) -> Example:
    example = dict(example)
    if not (flip or flip_up_down or geometric or intensity):
      return example
    if '_global_index' not in example:
      raise ValueError(
          "make_augment_2d needs example['_global_index'] to seed its random "
          'ops (pipeline.train_dataset adds it); got keys '
          f'{sorted(example)}.')
    op_seed = _op_seeds(seed, example['_global_index'])
    keys = [image_key] + [k for k in mask_keys if k in example]
    if geometric:
      _move(example, keys, rotation_degrees, elastic_alpha, elastic_sigma,
            fill_value, op_seed)
    _flip(example, keys, flip, flip_up_down, op_seed)
    if intensity:
      example[image_key] = _intensity(
          example[image_key], intensity_scale, intensity_shift, gamma, clip,
          op_seed)
    return example

  return augment


def _op_seeds(seed: int, index: tf.Tensor) -> Callable[[int], tf.Tensor]:
  """`op_seed(op)`: the stateless seed of one random op of one example."""
  base = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
  return lambda op: tf.random.experimental.stateless_fold_in(base, op)


def _move(example: Example, keys: Sequence[str], rotation_degrees: float,
          elastic_alpha: float, elastic_sigma: float, fill_value: float,
          op_seed: Callable[[int], tf.Tensor]) -> None:
  """Rotates and deforms example[keys] in place: the image (keys[0])
  bilinearly, the masks by nearest neighbour."""
  image = example[keys[0]]
  height, width = _dims(image)
  rows, cols = _sampling_map(
      height, width, rotation_degrees,
      elastic_alpha, elastic_sigma, op_seed(_ROTATION),
      op_seed(_ELASTIC))
  example[keys[0]] = _resample(image, rows, cols, fill_value, bilinear=True)
  for key in keys[1:]:
    example[key] = _resample(example[key], rows, cols, 0, bilinear=False)


def _flip(example: Example, keys: Sequence[str], flip: bool,
          flip_up_down: bool, op_seed: Callable[[int], tf.Tensor]) -> None:
  """Flips example[keys] in place, left-right and/or up-down, each with
  probability 1/2."""
  for enabled, op, axis in ((flip, _FLIP_LR, 1), (flip_up_down, _FLIP_UD, 0)):
    if enabled:
      do = tf.random.stateless_uniform([], op_seed(op)) < 0.5
      for key in keys:
        value = example[key]
        example[key] = tf.cond(do, lambda v=value: tf.reverse(v, [axis]),
                               lambda v=value: v)


def _dims(image: tf.Tensor) -> tuple[Any, Any]:
  """Height and width: Python ints where known statically, else tensors."""
  dynamic = tf.shape(image)
  return tuple(dynamic[i] if image.shape[i] is None else int(image.shape[i])
               for i in (0, 1))


def _sampling_map(height: Any, width: Any, degrees: float,
                  alpha: float, sigma: float, rotation_seed: tf.Tensor,
                  elastic_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Source (row, col) of each output pixel: rotation plus elastic field."""
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  rows, cols = tf.meshgrid(tf.range(h), tf.range(w), indexing='ij')
  if degrees > 0:
    angle = tf.random.stateless_uniform(
        [], rotation_seed, -math.radians(degrees), math.radians(degrees))
    cos, sin = tf.cos(angle), tf.sin(angle)
    y = rows - (h - 1) / 2
    x = cols - (w - 1) / 2
    rows = cos * y - sin * x + (h - 1) / 2
    cols = sin * y + cos * x + (w - 1) / 2
  if alpha > 0:
    field = _smooth_noise(height, width, sigma, elastic_seed) * alpha
    rows = rows + field[0]
    cols = cols + field[1]
  return rows, cols


def _smoothing_matrix(size: Any, sigma: float) -> tf.Tensor:
  """[size, m] Gaussian interpolation from m noise samples to `size` pixels.

  Rows have unit L2 norm, which makes every smoothed pixel of white noise
  exactly unit variance, at the borders too (where a truncated kernel
  would damp the field), with no padding. Where `size` is known
  statically (the usual case in tf.data), the noise lives on a grid
  sigma / 2 pixels apart that reaches 2 sigma past each border: the
  smoothed field is the same random process, from about (2 / sigma)^2 as
  many normal draws (for sigma = 10, 25x fewer), which are what an elastic
  deformation spends most of its time on.
  """
  static = tf.get_static_value(size)
  if static is None:
    i = tf.cast(tf.range(size), tf.float32)
    kernel = tf.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma)**2)
    return kernel * tf.math.rsqrt(
        tf.reduce_sum(kernel**2, axis=1, keepdims=True))
  step = max(1, int(sigma // 2))
  reach = int(np.ceil(2 * sigma))
  nodes = np.arange(-reach, int(static) + reach + step, step, np.float64)
  pixels = np.arange(int(static), dtype=np.float64)
  kernel = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) / sigma)**2)
  kernel /= np.sqrt((kernel**2).sum(axis=1, keepdims=True))
  return tf.constant(kernel, tf.float32)


def _smooth_noise(height: Any, width: Any, sigma: float,
                  seed: tf.Tensor) -> tf.Tensor:
  """Two Gaussian-smoothed white-noise fields [2, H, W], unit std per pixel.

  The separable smoothing is two matrix products (K_rows @ noise @
  K_cols^T): on a CPU, several times faster than 1-channel convolutions
  with a wide kernel, which tf.nn.conv2d runs very inefficiently.
  """
  rows = _smoothing_matrix(height, sigma)  # [H, h]
  cols = _smoothing_matrix(width, sigma)  # [W, w]
  h, w = tf.shape(rows)[1], tf.shape(cols)[1]
  noise = tf.random.stateless_normal(tf.stack([h, 2 * w]), seed)
  # [H, h] @ [h, 2w] smooths the columns of both fields in one product...
  field = tf.matmul(rows, noise)
  field = tf.transpose(tf.reshape(field, tf.stack([height, 2, w])), [1, 0, 2])
  # ... and [2H, w] @ [w, W] their rows.
  field = tf.matmul(tf.reshape(field, tf.stack([2 * height, w])), cols,
                    transpose_b=True)
  return tf.reshape(field, tf.stack([2, height, width]))


def _resample(image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor,
              fill_value: float, bilinear: bool) -> tf.Tensor:
  """Reads `image` [H, W, C] at fractional (rows, cols) [H', W'].

  The image is padded by one pixel of `fill_value` and coordinates are
  clamped into the padded frame, so a point outside the image reads the
  fill and a point near the edge blends image and fill, with no special
  cases.
  """
  dtype = image.dtype
  shape = tf.shape(image)
  h, w, c = shape[0], shape[1], shape[2]
  padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]],
                  constant_values=tf.cast(fill_value, dtype))
  flat = tf.reshape(padded, [-1, c])
  ys = tf.clip_by_value(rows + 1, 0, tf.cast(h + 1, tf.float32))
  xs = tf.clip_by_value(cols + 1, 0, tf.cast(w + 1, tf.float32))
  if not bilinear:
    index = (tf.cast(tf.round(ys), tf.int32) * (w + 2)
             + tf.cast(tf.round(xs), tf.int32))
    return tf.gather(flat, index)
  flat = tf.cast(flat, tf.float32)
  y0f = tf.minimum(tf.floor(ys), tf.cast(h, tf.float32))
  x0f = tf.minimum(tf.floor(xs), tf.cast(w, tf.float32))
  wy = (ys - y0f)[..., None]
  wx = (xs - x0f)[..., None]
  y0 = tf.cast(y0f, tf.int32)
  x0 = tf.cast(x0f, tf.int32)

  def at(dy, dx):
    return tf.gather(flat, (y0 + dy) * (w + 2) + x0 + dx)

  out = ((1 - wy) * ((1 - wx) * at(0, 0) + wx * at(0, 1))
         + wy * ((1 - wx) * at(1, 0) + wx * at(1, 1)))
  if dtype.is_integer:
    return tf.saturate_cast(tf.round(out), dtype)
  return tf.cast(out, dtype)


def _intensity(image: tf.Tensor, scale: float, shift: float, gamma: float,
               clip: tuple[float, float] | None,
               op_seed: Callable[[int], tf.Tensor]) -> tf.Tensor:
  """Gamma, then a random gain and offset, then the clip."""
  dtype = image.dtype
  image = tf.cast(image, tf.float32)
  if gamma > 0:
    g = tf.exp(tf.random.stateless_uniform([], op_seed(_GAMMA), -gamma, gamma))
    image = tf.pow(tf.maximum(image, 0.0), g)
  if scale > 0:
    image *= tf.random.stateless_uniform([], op_seed(_SCALE), 1 - scale,
                                         1 + scale)
  if shift > 0:
    image += tf.random.stateless_uniform([], op_seed(_SHIFT), -shift, shift)
  if clip is not None:
    image = tf.clip_by_value(image, clip[0], clip[1])
  return tf.cast(image, dtype)
