"""The DCGAN of paper 1 (Bendre), exactly as its Fig. 1-2 tabulate it.

Generator (27,265,281 parameters at the paper's sizes)::

  z (100) -> Dense(32*32*256) -> LeakyReLU -> reshape 32x32x256
    -> ConvTranspose(128, 4x4, stride 2) -> LeakyReLU   64x64x128
    -> ConvTranspose(128, 4x4, stride 2) -> LeakyReLU   128x128x128
    -> Conv(1, 4x4, same) -> tanh                       128x128x1

Discriminator (582,785 parameters)::

  x 128x128x1 -> Conv(64, 3x3, s1) -> Conv(128, 3x3, s2) -> Conv(128, 3x3, s2)
    -> Conv(256, 3x3, s2)   (each followed by LeakyReLU)   16x16x256
    -> Flatten (65,536) -> Dropout -> Dense(1)  (a logit; the sigmoid lives
       in the loss, which is numerically safer than a sigmoid layer)

The table is the Keras DCGAN of Brownlee's tutorial that the paper adapted,
so the defaults follow Keras: Glorot-uniform kernels, zero biases, 'same'
padding with TensorFlow's convention (extra padding after), LeakyReLU 0.2,
dropout 0.4. Every size is an attribute, so the joint image+mask GAN (2
channels) and smaller test models are the same code.

Beyond the paper, with the same parameters: a sigmoid mask channel for the
joint GAN (`mask_output`) and a spectrally normalised discriminator.
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrseg.models import convs
from mrseg.models import layers
from mrseg.models import upsample
from mrseg.models.layers import KERNEL_INITS, count_params, kernel_init  # pylint: disable=unused-import

MASK_OUTPUTS = ('tanh', 'sigmoid')

class Generator(nn.Module):
  """Maps noise z of shape [B, noise_dim] to images [B, H, W, out_channels]."""

  base_size: int = 32  # spatial size after the dense layer
  base_features: int = 256  # channels after the dense layer
  up_features: Sequence[int] = (128, 128)  # one stride-2 up-convolution each
  up_kernel: int = 4
  out_kernel: int = 4
  out_channels: int = 1
  negative_slope: float = 0.2
  upsample: str = 'subpixel'  # see upsample.UPSAMPLERS
  weight_init: str = 'glorot_uniform'
  # The last `mask_channels` of the outputs are masks (the joint GAN); with
  # mask_output='sigmoid' they are probabilities in [0, 1], with 'tanh' (the
  # paper's output layer) values in [-1, 1] like the image.
  mask_channels: int = 0
  mask_output: str = 'tanh'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    if self.mask_output not in MASK_OUTPUTS:
      raise ValueError(f'Unsupported mask_output {self.mask_output!r}; choose '
                       f'one of {MASK_OUTPUTS}.')
    init = kernel_init(self.weight_init)
    up_conv = upsample.upsampler(self.upsample)
    act = lambda x: nn.leaky_relu(x, self.negative_slope)
    x = nn.Dense(self.base_size * self.base_size * self.base_features,
                 kernel_init=init, dtype=self.dtype, name='project')(z)
    x = act(x)
    x = x.reshape(x.shape[0], self.base_size, self.base_size, self.base_features)
    for i, features in enumerate(self.up_features):
      x = up_conv(features, (self.up_kernel, self.up_kernel), strides=(2, 2),
                  padding='SAME', kernel_init=init, dtype=self.dtype,
                  name=f'up{i}')(x)
      x = act(x)
    x = nn.Conv(self.out_channels, (self.out_kernel, self.out_kernel),
                padding='SAME', kernel_init=init, dtype=self.dtype,
                name='out')(x)
    # In float32: the images are compared with real data in [-1, 1].
    x = x.astype(jnp.float32)
    if self.mask_output == 'sigmoid' and self.mask_channels:
      c = self.out_channels - self.mask_channels
      return jnp.concatenate([jnp.tanh(x[..., :c]), nn.sigmoid(x[..., c:])],
                             axis=-1)
    return jnp.tanh(x)


class Discriminator(nn.Module):
  """Maps images [B, H, W, C] to one real/fake logit per image, shape [B]."""

  features: Sequence[int] = (64, 128, 128, 256)
  strides: Sequence[int] = (1, 2, 2, 2)
  kernel: int = 3
  negative_slope: float = 0.2
  dropout_rate: float = 0.4
  weight_init: str = 'glorot_uniform'
  # 'xla' (nn.Conv) or 'fast_grad' (same parameters and outputs, weight
  # gradient as one matrix product: much faster on XLA:CPU); see convs.CONVS.
  conv: str = 'xla'
  # Every convolution and the dense layer divide their kernel by its largest
  # singular value (Miyato et al. 2018): D stays 1-Lipschitz per layer, which
  # slows its memorising of a small training set. Same parameters.
  spectral_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if len(self.features) != len(self.strides):
      raise ValueError(
          f'Discriminator features {tuple(self.features)} and strides '
          f'{tuple(self.strides)} must have the same length.')
    init = kernel_init(self.weight_init)
    conv, dense = convs.conv(self.conv), nn.Dense
    if self.spectral_norm:
      conv = layers.spectral_norm(conv, self.is_initializing())
      dense = layers.spectral_norm(dense, self.is_initializing())
    for i, (features, stride) in enumerate(zip(self.features, self.strides)):
      x = conv(features, (self.kernel, self.kernel), strides=(stride, stride),
                  padding='SAME', kernel_init=init, dtype=self.dtype,
                  name=f'conv{i}')(x)
      x = nn.leaky_relu(x, self.negative_slope)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logit = dense(1, kernel_init=init, dtype=self.dtype, name='logit')(x)
    return logit[:, 0].astype(jnp.float32)
