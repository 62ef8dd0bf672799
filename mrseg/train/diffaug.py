"""Differentiable augmentation for GANs trained on few images (JAX, per example).

Zhao et al. 2020 (DiffAugment) and Karras et al. 2020 (ADA): with 155 real
slices a discriminator memorises the training set within a few hundred
steps, its verdicts stop carrying information and the samples degrade. The
cure is to augment *every* image the discriminator sees, real and generated
alike, with transforms that are differentiable in the image, so the
generator's gradient passes through them and it is never rewarded for
producing augmented-looking images.

For pairs (a layout or mask and its image) one geometric transform moves
all channels alike, so alignment is kept and the discriminator still judges
whether the tumour sits on its mask; colour changes touch the image
channels only. Every draw comes from a per-example key, so the result does
not depend on how the batch is split over devices.

Policies are comma-separated names: 'translation' (shift by up to
`translation` of the size, zero fill), 'flip' (left-right, p = 1/2),
'cutout' (a square of `cutout` of the size zeroed in all channels),
'color' (brightness +-0.25 and contrast x [0.5, 1.5] on image channels).
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp

POLICIES = ('translation', 'flip', 'cutout', 'color')


def check_policy(policy: str) -> tuple[str, ...]:
  names = tuple(p for p in policy.split(',') if p)
  unknown = set(names) - set(POLICIES)
  if unknown:
    raise ValueError(f'Unsupported diffaug policy {sorted(unknown)}; choose '
                     f'from {POLICIES}, comma-separated.')
  return names


def _translate(x: jax.Array, key: jax.Array, fraction: float) -> jax.Array:
  h, w = x.shape[:2]
  ph, pw = int(h * fraction + 0.5), int(w * fraction + 0.5)
  if ph == 0 and pw == 0:
    return x
  dy, dx = jax.random.randint(key, (2,), -jnp.array([ph, pw]),
                              jnp.array([ph, pw]) + 1)
  padded = jnp.pad(x, ((ph, ph), (pw, pw), (0, 0)))
  return jax.lax.dynamic_slice(padded, (ph - dy, pw - dx, 0), x.shape)


def _cutout(x: jax.Array, key: jax.Array, fraction: float) -> jax.Array:
  h, w = x.shape[:2]
  ch, cw = max(int(h * fraction + 0.5), 1), max(int(w * fraction + 0.5), 1)
  cy, cx = jax.random.randint(key, (2,), 0, jnp.array([h, w]))
  yy = jnp.arange(h)[:, None]
  xx = jnp.arange(w)[None, :]
  keep = ~((jnp.abs(yy - cy) <= ch // 2) & (jnp.abs(xx - cx) <= cw // 2))
  return x * keep[..., None].astype(x.dtype)


def _color(x: jax.Array, key: jax.Array, image_channels: Sequence[int]
           ) -> jax.Array:
  kb, kc = jax.random.split(key)
  idx = jnp.asarray(image_channels)
  img = x[..., idx]
  # In [-1, 1] model range: brightness as a shift, contrast about the mean.
  img = img + jax.random.uniform(kb, (), minval=-0.5, maxval=0.5)
  mean = jnp.mean(img)
  img = (img - mean) * jax.random.uniform(kc, (), minval=0.5, maxval=1.5) + mean
  return x.at[..., idx].set(img)


def augment(images: jax.Array, keys: jax.Array, policy: str, *,
            image_channels: Sequence[int] = (0,), translation: float = 0.125,
            cutout: float = 0.25) -> jax.Array:
  """Augments a batch [B, H, W, C]; `keys` [B], one per example.

  `image_channels` are the channels colour changes apply to (the others,
  layouts or masks, move with the geometry only).
  """
  names = check_policy(policy)
  if not names:
    return images

  def one(x, key):
    k_t, k_f, k_c, k_col = jax.random.split(key, 4)
    if 'color' in names:
      x = _color(x, k_col, image_channels)
    if 'flip' in names:
      x = jnp.where(jax.random.bernoulli(k_f), x[:, ::-1], x)
    if 'translation' in names:
      x = _translate(x, k_t, translation)
    if 'cutout' in names:
      x = _cutout(x, k_c, cutout)
    return x

  return jax.vmap(one)(images, keys)


def random_shift(x: jax.Array, key: jax.Array, low: float, high: float
                 ) -> jax.Array:
  """x [H, W, C] moved by a random offset of length in [low, high] x size.

  Zero fill. Not an augmentation: a mask moved this way off its image is a
  matching-aware discriminator's "wrong pair" (Reed et al. 2016); one key
  per example keeps it the same under any split of the batch.
  """
  h = x.shape[0]
  k_r, k_a = jax.random.split(key)
  radius = jax.random.uniform(k_r, (), minval=low, maxval=high) * h
  angle = jax.random.uniform(k_a, (), maxval=2 * jnp.pi)
  dy = jnp.round(radius * jnp.sin(angle)).astype(jnp.int32)
  dx = jnp.round(radius * jnp.cos(angle)).astype(jnp.int32)
  padded = jnp.pad(x, ((h, h), (h, h), (0, 0)))
  return jax.lax.dynamic_slice(padded, (h - dy, h - dx, 0), x.shape)
