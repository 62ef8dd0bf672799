"""2D augmentation on the accelerator: `mrseg.data.augment` as jitted JAX.

`make_augment_2d(...)` takes the keyword arguments of
`mrseg.data.augment.make_augment_2d` and returns
`augment(batch, indices) -> batch`, a pure function of a batch of examples
and their global example indices that runs inside a jitted train step. It
draws exactly the random numbers the tf.data version draws: TensorFlow's
stateless ops (Philox-4x32-10, with TensorFlow's seed scrambling, fold-in,
uniform and Box-Muller normal) are reimplemented here in uint32 arithmetic,
so an example gets the same flips, angle and elastic noise on either side,
and switching `config.augment.on_device` leaves a run's draws alone (tested
against the tf.data version, tests/test_augment_jax.py: the same random
bits, flips exact, intensity changes within 1e-6, bilinear resampling
within 1e-3, nearest-neighbour masks equal but for at most 0.1 % of pixels
whose source coordinate rounds the other way).

Why: on the host, tf.data augments about 770 128x128 examples per
CPU-second (benchmarks/README.md); a UNet step on a GPU consumes thousands
per second. On the device the same work is a few gathers per pixel.

Example::

  augment = augment_jax.make_augment_2d(flip=True, rotation_degrees=15,
                                        seed=config.seed)
  batch = augment({'image': images, 'mask': masks}, global_indices)

Global indices must be below 2**31 (int32 on the device; a run of 2**31
examples is far beyond any config here).
"""
from collections.abc import Mapping, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The tf.data version's sub-seeds, one per random op (the same numbers).
_FLIP_LR, _FLIP_UD, _ROTATION, _ELASTIC, _GAMMA, _SCALE, _SHIFT = range(7)

# Philox-4x32-10 constants (Salmon et al. 2011; TensorFlow's philox_random.h).
_W32A, _W32B = 0x9E3779B9, 0xBB67AE85
_M4x32A, _M4x32B = 0xD2511F53, 0xCD9E8D57
# The key TensorFlow scrambles a stateless op's seed with.
_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)

U32 = jnp.uint32


def _mulhilo(a: int, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(high, low) 32-bit halves of the 64-bit product a * b, in uint32."""
  a_lo, a_hi = U32(a & 0xFFFF), U32(a >> 16)
  b_lo, b_hi = b & U32(0xFFFF), b >> U32(16)
  lo_lo = a_lo * b_lo
  hi_lo = a_hi * b_lo
  lo_hi = a_lo * b_hi
  cross = (lo_lo >> U32(16)) + (hi_lo & U32(0xFFFF)) + lo_hi  # < 2**32
  high = a_hi * b_hi + (hi_lo >> U32(16)) + (cross >> U32(16))
  low = (cross << U32(16)) | (lo_lo & U32(0xFFFF))
  return high, low


def philox(counter: Sequence[jax.Array], key: Sequence[jax.Array]
           ) -> tuple[jax.Array, ...]:
  """Philox-4x32-10 of uint32 arrays (4 counter words, 2 key words)."""
  words = [jnp.asarray(w, U32) for w in (*counter, *key)]
  shape = jnp.broadcast_shapes(*(w.shape for w in words))
  words = tuple(jnp.broadcast_to(w, shape) for w in words)

  def round_(_, state):
    c0, c1, c2, c3, k0, k1 = state
    hi0, lo0 = _mulhilo(_M4x32A, c0)
    hi1, lo1 = _mulhilo(_M4x32B, c2)
    # The key bumped after the last round too: unused, and it keeps the
    # loop body one shape (a rolled loop compiles ~10x faster than 10
    # unrolled rounds).
    return (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0, k0 + U32(_W32A),
            k1 + U32(_W32B))

  return jax.lax.fori_loop(0, 10, round_, words)[:4]


class Seed:
  """A TensorFlow stateless seed (shape [2]) as uint32 words.

  `words` holds (low, high) of each of the two seed values as TensorFlow
  reads them: int64 values split in two, int32 values sign-extended first.
  """

  def __init__(self, s0_lo, s0_hi, s1_lo, s1_hi):
    self.words = tuple(jnp.asarray(w, U32) for w in (s0_lo, s0_hi, s1_lo,
                                                     s1_hi))

  @classmethod
  def from_int64(cls, seed: int, index: jax.Array) -> 'Seed':
    """tf.stack([int64 seed, int64 index]) for 0 <= index < 2**31."""
    seed &= (1 << 64) - 1
    index = jnp.asarray(index).astype(U32)
    return cls(seed & 0xFFFFFFFF, seed >> 32, index, jnp.zeros_like(index))

  def key_counter(self) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """TensorFlow's GenerateKey: the Philox key and first counter."""
    mix = philox(self.words, _SCRAMBLE_KEY)
    zero = jnp.zeros_like(mix[0])
    return (mix[0], mix[1]), (zero, zero, mix[2], mix[3])

  def bits(self, n: int) -> jax.Array:
    """The first n uint32 words of a stateless op seeded with this seed.

    Element i comes from Philox call i // 4 (TensorFlow skips the counter
    by the group index), word i % 4. Shape [..., n] over the seed's shape.
    """
    key, counter = self.key_counter()
    groups = -(-n // 4)
    g = jnp.arange(groups, dtype=U32)
    c0 = counter[0][..., None] + g  # counter[0] is 0: no carry below 2**32
    rest = [c[..., None] * jnp.ones_like(g) for c in counter[1:]]
    words = philox([c0] + rest, [k[..., None] for k in key])
    out = jnp.stack(words, axis=-1)  # [..., groups, 4]
    return out.reshape(out.shape[:-2] + (groups * 4,))[..., :n]

  def fold_in(self, data: int) -> 'Seed':
    """tf.random.experimental.stateless_fold_in(seed, data) for a Python int.

    TensorFlow draws one int32 (the first Philox word, bit-cast) and stacks
    it with `data`; the new int32 seed is read sign-extended.
    """
    first = self.bits(1)[..., 0]
    high = jnp.where(first >= U32(1 << 31), U32(0xFFFFFFFF), U32(0))
    data_hi = 0xFFFFFFFF if data < 0 else 0
    return Seed(first, high, jnp.full_like(first, data & 0xFFFFFFFF),
                jnp.full_like(first, data_hi))

  def uniform(self, shape: tuple[int, ...] = (), minval: float = 0.0,
              maxval: float = 1.0) -> jax.Array:
    """tf.random.stateless_uniform(shape, seed, minval, maxval) (float32)."""
    n = math.prod(shape)
    u = _to_unit_float(self.bits(n))
    lo, hi = np.float32(minval), np.float32(maxval)
    u = u * (hi - lo) + lo
    return u.reshape(u.shape[:-1] + tuple(shape))

  def normal(self, shape: tuple[int, ...]) -> jax.Array:
    """tf.random.stateless_normal(shape, seed) (float32, Box-Muller)."""
    n = math.prod(shape)
    words = self.bits(n + (n % 2))
    x0, x1 = words[..., 0::2], words[..., 1::2]
    u1 = jnp.maximum(_to_unit_float(x0), np.float32(1e-7))
    v1 = np.float32(2 * math.pi) * _to_unit_float(x1)
    radius = jnp.sqrt(np.float32(-2.0) * jnp.log(u1))
    pairs = jnp.stack([jnp.sin(v1) * radius, jnp.cos(v1) * radius], -1)
    out = pairs.reshape(pairs.shape[:-2] + (-1,))[..., :n]
    return out.reshape(out.shape[:-1] + tuple(shape))


def _to_unit_float(x: jax.Array) -> jax.Array:
  """TensorFlow's Uint32ToFloat: 23 random mantissa bits, in [0, 1)."""
  bits = (x & U32(0x7FFFFF)) | U32(127 << 23)
  return jax.lax.bitcast_convert_type(bits, jnp.float32) - np.float32(1.0)


def _smoothing_matrix(size: int, sigma: float) -> np.ndarray:
  """The tf.data version's [size, m] Gaussian interpolation (static size)."""
  step = max(1, int(sigma // 2))
  reach = int(np.ceil(2 * sigma))
  nodes = np.arange(-reach, size + reach + step, step, np.float64)
  pixels = np.arange(size, dtype=np.float64)
  kernel = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) / sigma)**2)
  kernel /= np.sqrt((kernel**2).sum(axis=1, keepdims=True))
  return kernel.astype(np.float32)


def _sampling_map(height: int, width: int, degrees: float, alpha: float,
                  sigma: float, rotation_seed: Seed, elastic_seed: Seed
                  ) -> tuple[jax.Array, jax.Array]:
  """Source (row, col) of each output pixel of one example."""
  h, w = np.float32(height), np.float32(width)
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32),
                            indexing='ij')
  if degrees > 0:
    angle = rotation_seed.uniform((), -math.radians(degrees),
                                  math.radians(degrees))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    y = rows - (h - 1) / 2
    x = cols - (w - 1) / 2
    rows = cos * y - sin * x + (h - 1) / 2
    cols = sin * y + cos * x + (w - 1) / 2
  if alpha > 0:
    k_rows = _smoothing_matrix(height, sigma)  # [H, m]
    k_cols = _smoothing_matrix(width, sigma)  # [W, n]
    m, n = k_rows.shape[1], k_cols.shape[1]
    noise = elastic_seed.normal((m, 2 * n))
    hp = jax.lax.Precision.HIGHEST
    field = jnp.matmul(k_rows, noise, precision=hp)  # [H, 2n]
    field = field.reshape(height, 2, n).transpose(1, 0, 2)
    field = jnp.matmul(field.reshape(2 * height, n), k_cols.T, precision=hp)
    field = field.reshape(2, height, width) * np.float32(alpha)
    rows = rows + field[0]
    cols = cols + field[1]
  return rows, cols


def _resample(image: jax.Array, rows: jax.Array, cols: jax.Array,
              fill_value: float, bilinear: bool) -> jax.Array:
  """Reads `image` [H, W, C] at fractional (rows, cols), as tf.data does."""
  dtype = image.dtype
  h, w, c = image.shape
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)),
                   constant_values=np.asarray(fill_value).astype(dtype))
  flat = padded.reshape(-1, c)
  ys = jnp.clip(rows + 1, 0, np.float32(h + 1))
  xs = jnp.clip(cols + 1, 0, np.float32(w + 1))
  if not bilinear:
    index = (jnp.round(ys).astype(jnp.int32) * (w + 2)
             + jnp.round(xs).astype(jnp.int32))
    return flat[index]
  flat = flat.astype(jnp.float32)
  y0f = jnp.minimum(jnp.floor(ys), np.float32(h))
  x0f = jnp.minimum(jnp.floor(xs), np.float32(w))
  wy = (ys - y0f)[..., None]
  wx = (xs - x0f)[..., None]
  y0 = y0f.astype(jnp.int32)
  x0 = x0f.astype(jnp.int32)

  def at(dy, dx):
    return flat[(y0 + dy) * (w + 2) + x0 + dx]

  out = ((1 - wy) * ((1 - wx) * at(0, 0) + wx * at(0, 1))
         + wy * ((1 - wx) * at(1, 0) + wx * at(1, 1)))
  if jnp.issubdtype(dtype, jnp.integer):
    info = jnp.iinfo(dtype)
    return jnp.clip(jnp.round(out), info.min, info.max).astype(dtype)
  return out.astype(dtype)


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
):
  """Returns `augment(batch, indices) -> batch`, jittable.

  Args: those of `mrseg.data.augment.make_augment_2d` (same meaning, same
  checks); `batch[image_key]` is [B, H, W, C] and each of `mask_keys` the
  batch has [B, H, W, c]; `indices` [B] are the examples' global indices
  (what tf.data's '_global_index' holds).

  Raises:
    ValueError: as the tf.data version does, for bad magnitudes.
  """
  check_args(rotation_degrees, elastic_alpha, elastic_sigma, intensity_scale,
         intensity_shift, gamma)
  geometric = rotation_degrees > 0 or elastic_alpha > 0
  intensity = intensity_scale > 0 or intensity_shift > 0 or gamma > 0
  mask_keys = tuple(mask_keys)

  def one(example: dict[str, jax.Array], index: jax.Array):
    base = Seed.from_int64(seed, index)
    keys = [image_key] + [k for k in mask_keys if k in example]
    if geometric:
      height, width = example[image_key].shape[:2]
      rows, cols = _sampling_map(height, width, rotation_degrees,
                                 elastic_alpha, elastic_sigma,
                                 base.fold_in(_ROTATION),
                                 base.fold_in(_ELASTIC))
      example[image_key] = _resample(example[image_key], rows, cols,
                                     fill_value, bilinear=True)
      for key in keys[1:]:
        example[key] = _resample(example[key], rows, cols, 0, bilinear=False)
    for enabled, op, axis in ((flip, _FLIP_LR, 1), (flip_up_down, _FLIP_UD, 0)):
      if enabled:
        do = base.fold_in(op).uniform() < 0.5
        for key in keys:
          example[key] = jnp.where(do, jnp.flip(example[key], axis),
                                   example[key])
    if intensity:
      example[image_key] = _intensity(example[image_key], intensity_scale,
                                      intensity_shift, gamma, clip, base)
    return example

  def augment(batch: Mapping[str, jax.Array], indices: jax.Array
              ) -> dict[str, Any]:
    batch = dict(batch)
    if not (flip or flip_up_down or geometric or intensity):
      return batch
    moved = [image_key] + [k for k in mask_keys if k in batch]
    out = jax.vmap(one)({k: batch[k] for k in moved},
                        jnp.asarray(indices).astype(jnp.int32))
    batch.update(out)
    return batch

  return augment


def _intensity(image: jax.Array, scale: float, shift: float, gamma: float,
               clip: tuple[float, float] | None, base: Seed) -> jax.Array:
  """Gamma, then a random gain and offset, then the clip."""
  dtype = image.dtype
  image = image.astype(jnp.float32)
  if gamma > 0:
    g = jnp.exp(base.fold_in(_GAMMA).uniform((), -gamma, gamma))
    image = jnp.power(jnp.maximum(image, 0.0), g)
  if scale > 0:
    image = image * base.fold_in(_SCALE).uniform((), 1 - scale, 1 + scale)
  if shift > 0:
    image = image + base.fold_in(_SHIFT).uniform((), -shift, shift)
  if clip is not None:
    image = jnp.clip(image, clip[0], clip[1])
  return image.astype(dtype)


def check_args(rotation_degrees, elastic_alpha, elastic_sigma, intensity_scale,
               intensity_shift, gamma) -> None:
  """Raises ValueError for magnitudes that `make_augment_2d` (this one and
  the tf.data one in `augment`) cannot use."""
  for name, value in (('rotation_degrees', rotation_degrees),
                      ('elastic_alpha', elastic_alpha),
                      ('intensity_scale', intensity_scale),
                      ('intensity_shift', intensity_shift), ('gamma', gamma)):
    if not value >= 0:  # Also catches NaN.
      raise ValueError(f'{name} must be >= 0, got {value!r}.')
  if rotation_degrees > 180:
    raise ValueError(
        f'rotation_degrees must be <= 180, got {rotation_degrees!r}.')
  if elastic_alpha > 0 and not elastic_sigma > 0:
    raise ValueError(f'elastic_sigma must be > 0, got {elastic_sigma!r}.')
  if intensity_scale >= 1:
    # A factor <= 0 would invert or erase the image.
    raise ValueError(
        f'intensity_scale must be < 1, got {intensity_scale!r}.')
