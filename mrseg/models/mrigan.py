"""Mondal et al. 2018's few-shot 3D GAN networks, which paper 2 (MRI-GAN)
builds on.

Channels-last ([B, X, Y, Z, C]; 2D inputs work too):

**SegDiscriminator** -- Mondal's discriminator, which is the segmenter: a 3D
UNet with K logits per voxel; the fake class is implicit (logit 0, see the
K+1 losses in ``mrseg.losses``). At Mondal's sizes (``features=(32, 64, 128,
256)``, two modalities, K=4), following ``model.py`` of
github.com/arnab39/FewShot_GAN-Unet3D (TensorFlow, the code the issue read)::

  x 32^3x2 -> [WNconv3 -> LReLU(0.2)] x2 (32)  ------------------- skip0
    -> avgpool 2 -> [WNconv3 -> LReLU] x2 (64)  ------------------ skip1
    -> avgpool 2 -> [WNconv3 -> LReLU] x2 (128) ------------------ skip2
    -> avgpool 2 -> WNconv3 -> LReLU (256)   <- features (4^3x256, 'h6')
                 -> WNconv3 -> LReLU (256)
    -> WNupconv 2x2x2 s2 (256) ++ skip2 -> [WNconv3 -> LReLU] x2 (128)
    -> WNupconv 2x2x2 s2 (128) ++ skip1 -> [WNconv3 -> LReLU] x2 (64)
    -> WNupconv 2x2x2 s2 (64)  ++ skip0 -> [WNconv3 -> LReLU] x2 (32)
    -> WNconv3 (K logits)

6,530,760 parameters (derived by hand in tests/test_mrigan.py; each weight-
normalised layer has a kernel, a bias and a per-output-channel scale).
Followed from Mondal's code: two 'same' 3x3x3 convolutions per level, average
pooling (not strided convolutions), no batch norm, weight normalisation
(Salimans & Kingma 2016: W = g * V / ||V|| per output channel, V ~ N(0, 0.05),
g = 1, b = 0, no data-dependent initialisation -- the TF code never runs its
``init=True`` pass) on every layer including the up-convolutions and the
output, up-convolutions that keep the channel count (256 -> 256, unlike
Ronneberger's, which halve it), a 3x3x3 (not 1x1x1) output convolution, and
the feature-matching layer ``h6``: the first 256-channel convolution after
its LeakyReLU. Options beyond it: Mondal's PyTorch port applies channel
dropout (``Dropout3d``, p=0.2) to the bottleneck output and the last decoder
features when asked; ``dropout_rate`` does the same (default 0: the TF code
has none). ``upsample`` picks the up-convolution implementation
(``mrseg.models.upsample.UPSAMPLERS``; 'subpixel' is the same function with
fast CPU gradients).

**NoiseGenerator** -- Mondal's generator ("Standard-GAN" in paper 2)::

  z ~ U(-1, 1)^200 -> Dense(2^3 * 512) -> BN -> ReLU -> 2^3x512
    -> upconv 2x2x2 s2 (256) -> BN -> ReLU    4^3
    -> upconv 2x2x2 s2 (128) -> BN -> ReLU    8^3
    -> upconv 2x2x2 s2 (64)  -> BN -> ReLU    16^3
    -> WNupconv 2x2x2 s2 (C) -> tanh          32^3xC

As in Mondal's TF code: N(0, 0.05) initialisation, BN with momentum 0.9 and
epsilon 1e-5, weight normalisation on the last layer only. Deviation: layers
followed by batch norm have no bias (BN's mean subtraction cancels it), so
the count (2,198,404 with z of 200 and two channels) is 4,544 smaller than
TF's, with the same function.

**MRIGANGenerator** -- paper 2's generator (MRI + tissue map -> patch, with
GT-layers and a boundary network): ``mrseg.models.mrigan_generator``, its
blocks in ``mrseg.models.mrigan_blocks``.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrseg.models import convs
from mrseg.models import mrigan_blocks as blocks
from mrseg.models import upsample
from mrseg.models.layers import KERNEL_INITS, count_params, kernel_init  # pylint: disable=unused-import

POOLS = ('avg', 'max')


class SegDiscriminator(nn.Module):
  """Mondal's discriminator-segmenter: a weight-normalised 3D (or 2D) UNet.

  Attributes:
    num_classes: K real classes (4: background, CSF, GM, WM); the fake class
      is implicit, so there are K logits per voxel.
    features: features per level, finest first; the last is the bottleneck.
      Spatial sizes must be divisible by 2**(len(features) - 1).
    convs_per_level: convolutions per encoder and decoder level (Mondal: 2).
    kernel_size: convolution kernel size (Mondal: 3).
    up_kernel: up-convolution kernel size, stride 2 (Mondal: 2).
    out_kernel: kernel size of the output convolution (Mondal: 3).
    pool: 'avg' (Mondal) or 'max' down-sampling, 2 per axis.
    negative_slope: LeakyReLU slope (Mondal: 0.2).
    weight_norm: weight-normalise every layer (Mondal: yes). Without it pick
      a variance-preserving ``weight_init`` such as 'he_normal'.
    dropout_rate: channel dropout on the bottleneck output and the last
      decoder features (Mondal's PyTorch port: 0.2 when enabled; TF: none).
      Needs a 'dropout' rng when train=True and the rate is positive.
    upsample: up-convolution from ``mrseg.models.upsample.UPSAMPLERS``.
    conv: convolution from ``mrseg.models.convs.CONVS``, all with
      ``nn.Conv``'s parameters and function ('depth_to_channels' runs the 3D
      convolutions as 2D ones, ~3x faster on XLA:CPU).
    weight_init: a key of KERNEL_INITS.
    dtype: compute dtype; parameters stay float32, outputs are float32.
  """

  num_classes: int = 4
  features: Sequence[int] = (32, 64, 128, 256)
  convs_per_level: int = 2
  kernel_size: int = 3
  up_kernel: int = 2
  out_kernel: int = 3
  pool: str = 'avg'
  negative_slope: float = 0.2
  weight_norm: bool = True
  dropout_rate: float = 0.0
  upsample: str = 'conv_transpose'
  conv: str = 'xla'
  weight_init: str = 'normal_0.05'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Per-voxel logits of the K real classes.

    Args:
      x: patches [B, X, Y, Z, C] (C modalities, e.g. T1+T2 or T1 only) or
        [B, H, W, C].
      train: enables dropout.
      return_features: also return the feature-matching features: the output
        of the first convolution of the bottleneck level (after its
        LeakyReLU), [B, *spatial / 2**(levels - 1), features[-1]].

    Returns:
      float32 logits [B, *spatial, num_classes], or (logits, features).

    Raises:
      ValueError: for a wrong rank, indivisible sizes or unknown options.
    """
    blocks.check_choice('pool', self.pool, POOLS)
    levels = len(self.features)
    if levels < 1 or self.convs_per_level < 1:
      raise ValueError(
          f'SegDiscriminator needs at least one level and one conv per level; '
          f'got features={self.features}, '
          f'convs_per_level={self.convs_per_level}.')
    dims = blocks.check_input(x, 2**(levels - 1), 'SegDiscriminator')
    init = kernel_init(self.weight_init)
    up_conv = upsample.upsampler(self.upsample)
    conv_cls = convs.conv(self.conv)
    act = lambda h: nn.leaky_relu(h, self.negative_slope)
    pool = nn.avg_pool if self.pool == 'avg' else nn.max_pool
    # Dropout3d drops whole channels: one decision per example and channel.
    dropout = nn.Dropout(self.dropout_rate,
                         broadcast_dims=tuple(range(1, dims + 1)))

    def conv(h, features, k, name):
      layer = conv_cls(features, (k,) * dims, padding='SAME',
                       kernel_init=init, dtype=self.dtype, name=name)
      return blocks.weight_norm(layer, self.weight_norm, self.dtype)(h)

    skips, feats = [], None
    h = x
    for level, f in enumerate(self.features):
      if level:
        h = pool(h, (2,) * dims, strides=(2,) * dims)
      for i in range(self.convs_per_level):
        h = act(conv(h, f, self.kernel_size, f'enc{level}_{i}'))
        if level == levels - 1 and i == 0:
          feats = h
      skips.append(h)
    h = dropout(h, deterministic=not train)
    for level in reversed(range(levels - 1)):
      # Mondal's up-convolutions keep the channel count.
      up = up_conv(h.shape[-1], (self.up_kernel,) * dims, strides=(2,) * dims,
                   padding='SAME', kernel_init=init, dtype=self.dtype,
                   name=f'up{level}')
      h = blocks.weight_norm(up, self.weight_norm, self.dtype)(h)
      h = jnp.concatenate([skips[level], h], axis=-1)
      for i in range(self.convs_per_level):
        h = act(conv(h, self.features[level], self.kernel_size,
                     f'dec{level}_{i}'))
    if levels > 1:
      h = dropout(h, deterministic=not train)
    logits = conv(h, self.num_classes, self.out_kernel, 'logits')
    logits = logits.astype(jnp.float32)
    if return_features:
      return logits, feats.astype(jnp.float32)
    return logits


class NoiseGenerator(nn.Module):
  """Mondal's generator ("Standard-GAN"): noise z -> a synthetic patch.

  Output size per axis: base_size * 2**(len(up_features) + 1).

  Attributes:
    out_channels: modalities of the patch (2: T1+T2; 1 for T1 only).
    base_size: spatial size after the dense layer (Mondal: patch / 16 = 2).
    base_features: channels after the dense layer (Mondal: 512).
    up_features: one stride-2 up-convolution + norm + ReLU each (Mondal:
      256, 128, 64); a last stride-2 up-convolution makes the output.
    up_kernel: up-convolution kernel size (Mondal: 2).
    spatial_dims: 3 for patches, 2 for slices.
    norm: 'batch' (Mondal; uses the 'batch_stats' collection), 'instance' or
      'none'.
    bn_momentum: running-average momentum of batch norm (Mondal: 0.9).
    bn_axis_name: pmap axis name over which batch norm pools statistics.
    weight_norm_output: weight-normalise the output layer (Mondal: yes).
    upsample: up-convolution from ``mrseg.models.upsample.UPSAMPLERS``.
    weight_init: a key of KERNEL_INITS.
    dtype: compute dtype; parameters stay float32, the output is float32.
  """

  out_channels: int = 2
  base_size: int = 2
  base_features: int = 512
  up_features: Sequence[int] = (256, 128, 64)
  up_kernel: int = 2
  spatial_dims: int = 3
  norm: str = 'batch'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  weight_norm_output: bool = True
  upsample: str = 'conv_transpose'
  weight_init: str = 'normal_0.05'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Maps z [B, noise_dim] to patches [B, *spatial, out_channels] in [-1, 1].

    Args:
      z: noise, Mondal draws it from U(-1, 1)^200.
      train: batch norm uses (and updates) batch statistics when True (apply
        with mutable=['batch_stats']).

    Returns:
      float32 patches.
    """
    blocks.check_choice('norm', self.norm, blocks.NORMS)
    if z.ndim != 2:
      raise ValueError(
          f'NoiseGenerator expects z [B, noise_dim]; got {z.shape}.')
    dims = self.spatial_dims
    init = kernel_init(self.weight_init)
    up_conv = upsample.upsampler(self.upsample)
    # A bias before a normalisation is cancelled by its mean subtraction.
    use_bias = self.norm == 'none'
    norm = lambda h, name: blocks.normalize(h, self.norm, train, name,
                                      self.bn_momentum, self.bn_axis_name,
                                      self.dtype)
    h = nn.Dense(self.base_size**dims * self.base_features, use_bias=use_bias,
                 kernel_init=init, dtype=self.dtype, name='project')(z)
    h = h.reshape((z.shape[0],) + (self.base_size,) * dims
                  + (self.base_features,))
    h = nn.relu(norm(h, 'project_norm'))
    for i, f in enumerate(self.up_features):
      h = up_conv(f, (self.up_kernel,) * dims, strides=(2,) * dims,
                  padding='SAME', use_bias=use_bias, kernel_init=init,
                  dtype=self.dtype, name=f'up{i}')(h)
      h = nn.relu(norm(h, f'up{i}_norm'))
    out = up_conv(self.out_channels, (self.up_kernel,) * dims,
                  strides=(2,) * dims, padding='SAME', kernel_init=init,
                  dtype=self.dtype, name='out')
    h = blocks.weight_norm(out, self.weight_norm_output, self.dtype)(h)
    return jnp.tanh(h.astype(jnp.float32))
