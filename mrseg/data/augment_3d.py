"""3D patch augmentation inside the jitted train step (paper 2's segmenters).

Neither paper augments its 3D patches (Mondal et al.'s code takes grid
patches as they are). With two labelled subjects, or two slabs of one
brain (`tissue_base.py:tissue_t1`), the segmenter overfits early; nnU-Net's
answer is mirroring and intensity changes, which this module applies per
patch, on the device, from per-example keys (`parallel.example_keys`), so a
run draws the same changes under jit and pmap on any number of devices:

* `flip_axes`: each listed spatial axis (0, 1, 2 of [X, Y, Z]) is mirrored
  with probability 1/2, image and label alike.
* `intensity_scale` s, `intensity_shift` t, `gamma` g, per patch and
  channel, on the [-1, 1] range of 'minmax' normalisation read as u = (x +
  1) / 2 in [0, 1]: u -> clip(u^exp(U(-g, g)) * (1 + U(-s, s)) + U(-t, t)
  on brain voxels, 0, 1). u = 0 (the background, -1) stays 0, so the
  brain's outline and the range a tanh generator can reach are kept.

Labels are never changed by intensity; everything is off by default (the
papers), and then no key is drawn, so runs without it are unchanged.
"""
from collections.abc import Sequence
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mrseg import saved_configs


@dataclasses.dataclass(frozen=True)
class Augment3D:
  flip_axes: tuple[int, ...] = ()
  intensity_scale: float = 0.0
  intensity_shift: float = 0.0
  gamma: float = 0.0

  @property
  def enabled(self) -> bool:
    return bool(self.flip_axes or self.intensity_scale or
                self.intensity_shift or self.gamma)


def from_config(config: ml_collections.ConfigDict) -> Augment3D:
  """The config's `augment` block (absent: off), checked."""
  get = lambda name: saved_configs.get(config, f'augment.{name}')
  aug = Augment3D(flip_axes=tuple(int(x) for x in get('flip_axes')),
                  intensity_scale=float(get('intensity_scale')),
                  intensity_shift=float(get('intensity_shift')),
                  gamma=float(get('gamma')))
  bad = [x for x in aug.flip_axes if x not in (0, 1, 2)]
  if bad or len(set(aug.flip_axes)) != len(aug.flip_axes):
    raise ValueError(f'config.augment.flip_axes={aug.flip_axes}: give distinct '
                     f'spatial axes among 0, 1, 2 (X, Y, Z of a patch).')
  for name in ('intensity_scale', 'intensity_shift', 'gamma'):
    value = getattr(aug, name)
    if not 0.0 <= value < 1.0:
      raise ValueError(f'config.augment.{name}={value} must be in [0, 1).')
  intensity = aug.gamma or aug.intensity_scale or aug.intensity_shift
  if intensity and config.data.normalization != 'minmax':
    raise ValueError(
        'config.augment gamma / intensity_scale / intensity_shift act on the '
        "[-1, 1] range of data.normalization='minmax'; got "
        f'{config.data.normalization!r}.')
  return aug


def _flip(x: jax.Array, flags: jax.Array, axes: Sequence[int]) -> jax.Array:
  """Mirrors example i of x [B, X, Y, Z, ...] along axes[j] where flags[i, j]."""
  for j, axis in enumerate(axes):
    shape = (-1,) + (1,) * (x.ndim - 1)
    x = jnp.where(flags[:, j].reshape(shape), jnp.flip(x, axis + 1), x)
  return x


def _intensity(aug: Augment3D, image: jax.Array, key: jax.Array
               ) -> jax.Array:
  """One example [X, Y, Z, C]: gamma, scale and shift per channel."""
  c = image.shape[-1]
  k_gamma, k_scale, k_shift = jax.random.split(key, 3)
  uniform = lambda k, r: jax.random.uniform(k, (c,), minval=-r, maxval=r)
  u = jnp.clip((image.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
  brain = u > 0
  out = u
  if aug.gamma:
    out = jnp.where(brain, jnp.power(jnp.maximum(out, 1e-12),
                                     jnp.exp(uniform(k_gamma, aug.gamma))), 0.)
  if aug.intensity_scale:
    out = out * (1.0 + uniform(k_scale, aug.intensity_scale))
  if aug.intensity_shift:
    out = jnp.where(brain, out + uniform(k_shift, aug.intensity_shift), 0.)
  out = jnp.clip(out, 0.0, 1.0)
  return (out * 2.0 - 1.0).astype(image.dtype)


def apply(aug: Augment3D, keys: jax.Array, image: jax.Array,
          label: jax.Array | None = None
          ) -> tuple[jax.Array, jax.Array | None]:
  """Augments a batch: image [B, X, Y, Z, C], label [B, X, Y, Z] or None.

  `keys` [B]: one key per example (its draws do not depend on the others).
  """
  if not aug.enabled:
    return image, label
  split = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
  flip_keys, intensity_keys = split[:, 0], split[:, 1]
  if aug.flip_axes:
    flags = jax.vmap(lambda k: jax.random.bernoulli(
        k, 0.5, (len(aug.flip_axes),)))(flip_keys)
    image = _flip(image, flags, aug.flip_axes)
    if label is not None:
      label = _flip(label, flags, aug.flip_axes)
  if aug.gamma or aug.intensity_scale or aug.intensity_shift:
    image = jax.vmap(lambda x, k: _intensity(aug, x, k))(image, intensity_keys)
  return image, label
