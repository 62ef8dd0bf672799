"""The UNet of Ronneberger et al. (2015), 2D and 3D from one definition.

At the paper's sizes (``base_features=64``, ``depth=4``) the 2D network is::

  x HxWx1 -> [conv3x3 -> ReLU] x2  (64)  ------------------------ skip0
    -> maxpool 2 -> [conv3x3 -> ReLU] x2 (128) ------------------ skip1
    -> maxpool 2 -> [conv3x3 -> ReLU] x2 (256) ------------------ skip2
    -> maxpool 2 -> [conv3x3 -> ReLU] x2 (512) ------------------ skip3
    -> maxpool 2 -> [conv3x3 -> ReLU] x2 (1024) -> dropout    (bottleneck)
    -> upconv 2x2 s2 (512)  ++ skip3 -> [conv3x3 -> ReLU] x2 (512)
    -> upconv 2x2 s2 (256)  ++ skip2 -> [conv3x3 -> ReLU] x2 (256)
    -> upconv 2x2 s2 (128)  ++ skip1 -> [conv3x3 -> ReLU] x2 (128)
    -> upconv 2x2 s2 (64)   ++ skip0 -> [conv3x3 -> ReLU] x2 (64)
    -> conv1x1 (num_classes logits)

31,030,658 parameters with one input channel and two classes (derived by hand
in tests/test_unet.py). Two deliberate departures from the paper: 'same'
padding instead of 'valid' (so the output has the input's size and no
cropping of skips or overlap-tile bookkeeping is needed; sliding-window
inference in mrseg.eval handles large inputs), and optional batch norm, which
the paper predates. Everything else (max pooling, up-convolutions that halve
the features, skip concatenation, dropout at the end of the contracting path,
He-normal initialisation) follows the paper.

The number of spatial dimensions is taken from the input rank, so
``UNet()(x)`` is 2D for x of shape [B, H, W, C] and 3D (3x3x3 convolutions,
2x2x2 pooling) for [B, X, Y, Z, C]. Parameters are float32; ``dtype`` sets
the compute precision (e.g. bfloat16); logits and features are returned as
float32 because losses and softmax want full precision.

The encoder is its own submodule so that it can serve as a feature extractor
(for an FID-like score) without running the decoder::

  features = model.apply(variables, x, method=UNet.encode)
"""
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrseg.models import convs
from mrseg.models import upsample
from mrseg.models.layers import KERNEL_INITS, count_params, kernel_init  # pylint: disable=unused-import

NORMS = ('none', 'batch', 'instance')


def _spatial_dims(x: jax.Array, expected: int | None) -> int:
  """Spatial rank of a batched channels-last input, checked if `expected`."""
  dims = x.ndim - 2
  if dims not in (2, 3):
    raise ValueError(
        f'UNet expects [B, H, W, C] or [B, X, Y, Z, C] input; got shape '
        f'{x.shape}.')
  if expected is not None and dims != expected:
    raise ValueError(
        f'UNet has spatial_dims={expected} but the input {x.shape} has '
        f'{dims} spatial dimensions.')
  return dims


class ConvBlock(nn.Module):
  """Two 'same' convolutions, each followed by optional norm and a ReLU."""

  features: int
  spatial_dims: int
  norm: str = 'none'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  weight_init: str = 'he_normal'
  # 3x3 convolutions: 'xla' (nn.Conv) or 'fast_grad' (same parameters and
  # outputs, faster weight gradients on XLA:CPU); see convs.CONVS.
  conv: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(
          f'Unsupported norm {self.norm!r}; choose one of {NORMS}.')
    for i in range(2):
      # A bias before a normalisation is cancelled by its mean subtraction.
      x = convs.conv(self.conv)(
                  self.features, (3,) * self.spatial_dims, padding='SAME',
                  use_bias=self.norm == 'none',
                  kernel_init=kernel_init(self.weight_init), dtype=self.dtype,
                  name=f'conv{i}')(x)
      if self.norm == 'batch':
        x = nn.BatchNorm(use_running_average=not train,
                         momentum=self.bn_momentum,
                         axis_name=self.bn_axis_name, dtype=self.dtype,
                         name=f'norm{i}')(x)
      elif self.norm == 'instance':
        x = nn.InstanceNorm(dtype=self.dtype, name=f'norm{i}')(x)
      x = nn.relu(x)
    return x


class UNetEncoder(nn.Module):
  """Contracting path; returns the bottleneck and the skips (finest first)."""

  depth: int = 4
  base_features: int = 64
  spatial_dims: int | None = None
  norm: str = 'none'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  weight_init: str = 'he_normal'
  # 3x3 convolutions: 'xla' (nn.Conv) or 'fast_grad' (same parameters and
  # outputs, faster weight gradients on XLA:CPU); see convs.CONVS.
  conv: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array,
               train: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    dims = _spatial_dims(x, self.spatial_dims)
    factor = 2 ** self.depth
    spatial = x.shape[1:-1]
    if any(s % factor for s in spatial):
      raise ValueError(
          f'UNet with depth {self.depth} needs spatial sizes divisible by '
          f'2**{self.depth} = {factor}; got {tuple(spatial)} (input shape '
          f'{x.shape}). Pad or crop the input, or use sliding-window inference '
          'with a divisible window.')
    block = lambda features, name: ConvBlock(
        features, dims, norm=self.norm, bn_momentum=self.bn_momentum,
        bn_axis_name=self.bn_axis_name, weight_init=self.weight_init,
        conv=self.conv, dtype=self.dtype, name=name)
    skips = []
    for level in range(self.depth):
      x = block(self.base_features * 2 ** level, f'down{level}')(x, train)
      skips.append(x)
      x = nn.max_pool(x, (2,) * dims, strides=(2,) * dims)
    x = block(self.base_features * 2 ** self.depth, 'bottleneck')(x, train)
    return x, skips


class UNetDecoder(nn.Module):
  """Expanding path from the bottleneck and skips to per-voxel logits."""

  num_classes: int = 2
  norm: str = 'none'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  upsample: str = 'conv_transpose'
  weight_init: str = 'he_normal'
  # 3x3 convolutions: 'xla' (nn.Conv) or 'fast_grad' (same parameters and
  # outputs, faster weight gradients on XLA:CPU); see convs.CONVS.
  conv: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skips: list[jax.Array],
               train: bool = False) -> jax.Array:
    dims = x.ndim - 2
    up_conv = upsample.upsampler(self.upsample)
    init = kernel_init(self.weight_init)
    for level in reversed(range(len(skips))):
      skip = skips[level]
      features = skip.shape[-1]
      # The up-convolution halves the features, as in the paper.
      x = up_conv(features, (2,) * dims, strides=(2,) * dims, padding='SAME',
                  kernel_init=init, dtype=self.dtype, name=f'upconv{level}')(x)
      x = jnp.concatenate([skip, x], axis=-1)
      x = ConvBlock(features, dims, norm=self.norm,
                    bn_momentum=self.bn_momentum,
                    bn_axis_name=self.bn_axis_name,
                    weight_init=self.weight_init, conv=self.conv,
                    dtype=self.dtype, name=f'up{level}')(x, train)
    x = nn.Conv(self.num_classes, (1,) * dims, kernel_init=init,
                dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.float32)


INPUT_NORMS = ('none', 'zscore')


def normalize_input(x: jax.Array, kind: str) -> jax.Array:
  """Per-image intensity normalisation of [B, *spatial, C] (see UNet)."""
  if kind == 'none':
    return x
  axes = tuple(range(1, x.ndim))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=axes, keepdims=True)
  std = jnp.std(x32, axis=axes, keepdims=True)
  return ((x32 - mean) / jnp.maximum(std, 1e-3)).astype(x.dtype)


class UNet(nn.Module):
  """Ronneberger UNet for [B, H, W, C] (2D) or [B, X, Y, Z, C] (3D) inputs.

  Attributes:
    num_classes: number of output logits per voxel (background included).
    depth: number of poolings (paper: 4). Spatial sizes must be divisible by
      2**depth.
    base_features: features of the first level, doubled after each pooling
      (paper: 64, giving 64-128-256-512-1024).
    spatial_dims: 2 or 3 to check the input rank; None infers it.
    norm: 'none' (paper), 'batch' (uses the 'batch_stats' collection and the
      `train` flag) or 'instance' (nnU-Net's choice for small 3D batches).
    bn_momentum: running-average momentum of batch norm.
    bn_axis_name: pmap axis over which batch norm pools its statistics; None
      under jit, where the global (sharded) batch is already pooled.
    dropout_rate: dropout at the end of the contracting path (paper: used,
      rate unstated; 0 disables). Needs a 'dropout' rng when training.
    upsample: up-convolution from mrseg.models.upsample.UPSAMPLERS.
    weight_init: a key of KERNEL_INITS.
    dtype: compute dtype; parameters stay float32.
    input_norm: 'none' (the paper: intensities as loaded) or 'zscore' (each
      input image minus its mean, over its standard deviation, as nnU-Net
      normalises MRI): inside the model, so training, validation, sliding
      windows and prediction all see the same inputs.
  """

  num_classes: int = 2
  depth: int = 4
  base_features: int = 64
  spatial_dims: int | None = None
  norm: str = 'none'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  dropout_rate: float = 0.0
  upsample: str = 'conv_transpose'
  weight_init: str = 'he_normal'
  # 3x3 convolutions: 'xla' (nn.Conv) or 'fast_grad' (same parameters and
  # outputs, faster weight gradients on XLA:CPU); see convs.CONVS.
  conv: str = 'xla'
  dtype: Any = jnp.float32
  input_norm: str = 'none'

  def setup(self):
    if self.input_norm not in INPUT_NORMS:
      raise ValueError(f'Unsupported input_norm {self.input_norm!r}; choose '
                       f'one of {INPUT_NORMS}.')
    if self.norm not in NORMS:
      raise ValueError(
          f'Unsupported norm {self.norm!r}; choose one of {NORMS}.')
    if self.depth < 1:
      raise ValueError(f'UNet depth must be >= 1; got {self.depth}.')
    self.encoder = UNetEncoder(
        depth=self.depth, base_features=self.base_features,
        spatial_dims=self.spatial_dims, norm=self.norm,
        bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
        weight_init=self.weight_init, conv=self.conv, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.decoder = UNetDecoder(
        num_classes=self.num_classes, norm=self.norm,
        bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
        upsample=self.upsample, weight_init=self.weight_init,
        conv=self.conv, dtype=self.dtype)

  def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Bottleneck features, [B, *spatial / 2**depth, base_features * 2**depth].

    Taken before dropout, so they are deterministic even with train=True.

    Args:
      x: images [B, H, W, C] or [B, X, Y, Z, C].
      train: batch norm uses (and updates) batch statistics when True.

    Returns:
      float32 bottleneck feature map.

    Raises:
      ValueError: for a wrong rank or sizes not divisible by 2**depth.
    """
    features, _ = self.encoder(normalize_input(x, self.input_norm), train)
    return features.astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Per-voxel class logits.

    Args:
      x: images [B, H, W, C] or [B, X, Y, Z, C].
      train: enables dropout and batch statistics (pass
        mutable=['batch_stats'] to apply when norm='batch').
      return_features: also return the bottleneck features (see `encode`).

    Returns:
      float32 logits [B, *spatial, num_classes], or (logits, features) when
      return_features is True.

    Raises:
      ValueError: for a wrong rank or sizes not divisible by 2**depth.
    """
    features, skips = self.encoder(normalize_input(x, self.input_norm), train)
    y = self.dropout(features, deterministic=not train)
    logits = self.decoder(y, skips, train)
    if return_features:
      return logits, features.astype(jnp.float32)
    return logits
