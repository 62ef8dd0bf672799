"""Label-conditioned generation: layout (+ noise) -> MRI slice, and its critic.

Beyond both papers, after pix2pix (Isola et al. 2017) as Shin et al. 2018
used it for brain tumours, and SPADE (Park et al. 2019; brainSPADE, Fernandez
et al. 2022):

* `Generator`: a U-Net from a one-hot layout (outside / intensity classes /
  tumour, see mrseg.data.layouts) to an image in [-1, 1]. A noise vector is
  projected onto the bottleneck so one layout can give several images.
  Up-sampling is nearest-neighbour resize + convolution (no checkerboard).
  `norm='spade'` makes every decoder normalisation spatially adaptive:
  instance-normalised features are scaled and shifted by maps computed from
  the layout at that resolution, so the layout reaches every decoder level,
  not only through the skips; `norm='instance'` is pix2pix's.
* `Discriminator`: a PatchGAN on the (layout, image) pair: one logit per
  receptive field of ~1/4 of the image, so a tumour that does not sit on its
  mask is judged where it is. Optional spectral normalisation.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrseg.models import layers
from mrseg.models import upsample
from mrseg.models.layers import kernel_init

NORMS = ('instance', 'spade', 'none')


def _instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per example and channel over space, in float32; no scale or shift."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
  var = jnp.var(x32, axis=(1, 2), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class SPADE(nn.Module):
  """x -> IN(x) * (1 + gamma(layout)) + beta(layout), per pixel (Park et al.)."""

  hidden: int = 64
  weight_init: str = 'glorot_uniform'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, layout: jax.Array) -> jax.Array:
    init = kernel_init(self.weight_init)
    seg = jax.image.resize(layout, layout.shape[:1] + x.shape[1:3] +
                           layout.shape[3:], method='nearest')
    h = nn.relu(nn.Conv(self.hidden, (3, 3), kernel_init=init,
                        dtype=self.dtype, name='shared')(seg))
    gamma = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros,
                    dtype=self.dtype, name='gamma')(h)
    beta = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros,
                   dtype=self.dtype, name='beta')(h)
    return _instance_norm(x) * (1 + gamma) + beta


class Generator(nn.Module):
  """Maps (layout [B, H, W, L], z [B, noise_dim]) to images [B, H, W, C]."""

  features: Sequence[int] = (32, 64, 128, 256)  # one stride-2 level each
  out_channels: int = 1
  norm: str = 'instance'  # see NORMS; the decoder's normalisation
  spade_hidden: int = 64
  noise_features: int = 32  # channels the noise vector adds at the bottleneck
  negative_slope: float = 0.2
  weight_init: str = 'glorot_uniform'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, layout: jax.Array, z: jax.Array) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(f'Unsupported generator norm {self.norm!r}; choose '
                       f'one of {NORMS}.')
    init = kernel_init(self.weight_init)
    layout = layout.astype(self.dtype)
    x, skips = layout, []
    normed = self.norm != 'none'
    # A bias right before a normalisation is cancelled by it; its gradient
    # is then rounding noise, which Adam would blow up to full-size steps.
    for i, f in enumerate(self.features):
      x = nn.Conv(f, (4, 4), strides=(2, 2), kernel_init=init,
                  use_bias=not (i > 0 and normed), dtype=self.dtype,
                  name=f'down{i}')(x)
      if i > 0 and normed:
        x = _instance_norm(x)
      x = nn.leaky_relu(x, self.negative_slope)
      skips.append(x)
    if self.noise_features:
      # Noise projected to a spatial map (as DCGAN projects z): a map that
      # is constant over space would be erased by the next instance norm.
      b, h, w = x.shape[:3]
      n = nn.Dense(h * w * self.noise_features, kernel_init=init,
                   dtype=self.dtype, name='noise')(z.astype(self.dtype))
      x = jnp.concatenate([x, n.reshape(b, h, w, self.noise_features)], -1)
    ups = list(self.features[:-1])[::-1] + [self.features[0]]
    for i, f in enumerate(ups):
      x = upsample.ResizeConv(f, (3, 3), strides=2, kernel_init=init,
                            use_bias=not normed, dtype=self.dtype,
                            name=f'up{i}')(x)
      if self.norm == 'spade':
        x = SPADE(self.spade_hidden, self.weight_init, self.dtype,
                  name=f'spade{i}')(x, layout)
      elif self.norm == 'instance':
        x = _instance_norm(x)
      x = nn.relu(x)
      if i < len(ups) - 1:
        x = jnp.concatenate([x, skips[-2 - i]], axis=-1)
    x = nn.Conv(self.out_channels, (3, 3), kernel_init=init, dtype=self.dtype,
                name='out')(x)
    return jnp.tanh(x.astype(jnp.float32))


class SNConv(nn.Module):
  """A convolution whose kernel is divided by its spectral norm (Miyato 2018).

  Stateless; see layers.spectral_normalize.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  power_iterations: int = 3
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features))
    kernel = layers.spectral_normalize(
        kernel, self.power_iterations).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel, tuple(self.strides), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if not self.use_bias:
      return y
    return y + self.param('bias', nn.initializers.zeros,
                          (self.features,)).astype(self.dtype)


class Discriminator(nn.Module):
  """PatchGAN: (layout, image) pairs [B, H, W, L + C] -> logits [B, h, w]."""

  features: Sequence[int] = (64, 128, 256)  # stride-2 levels, then stride 1
  spectral_norm: bool = False
  norm: str = 'none'  # 'instance' (pix2pix) or 'none' (with spectral norm)
  negative_slope: float = 0.2
  weight_init: str = 'glorot_uniform'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = kernel_init(self.weight_init)

    def conv(features, strides, name, use_bias=True):
      if self.spectral_norm:
        return SNConv(features, (4, 4), strides=strides, kernel_init=init,
                      use_bias=use_bias, dtype=self.dtype, name=name)
      return nn.Conv(features, (4, 4), strides=strides, kernel_init=init,
                     use_bias=use_bias, dtype=self.dtype, name=name)

    x = x.astype(self.dtype)
    strides = [(2, 2)] * len(self.features) + [(1, 1)]
    feats = list(self.features) + [self.features[-1]]
    for i, (f, s) in enumerate(zip(feats, strides)):
      normed = i > 0 and self.norm == 'instance'
      x = conv(f, s, f'conv{i}', use_bias=not normed)(x)
      if normed:
        x = _instance_norm(x)
      x = nn.leaky_relu(x, self.negative_slope)
    x = conv(1, (1, 1), 'logit')(x)
    return x[..., 0].astype(jnp.float32)
