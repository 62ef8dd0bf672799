"""Building blocks of paper 2's generator (and helpers of the MRI-GAN nets).

GT-layer (an AdaIN, Huang & Belongie 2017), paper 2's Sec. 3:
``GT(x, y) = R_sigma(y) * (x - mu(x)) / sigma(x) + R_mu(y)``, mu and sigma per
example and channel over the spatial axes of x, R_sigma and R_mu each
``gt_mlp_layers`` fully connected layers on the tissue code (`CodeMLP`;
R_sigma's last bias starts at 1, so a fresh GT-layer is close to instance
norm). `SpadeLayer` is the per-voxel variant driven by the tissue map
(tissue_code='spade'). `ConvEncoder` and `UpDecoder` are the generator's
encoders and decoders; `normalize`, `weight_norm` and the input checks are
shared with Mondal's networks (`mrigan`).
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrseg.models import convs
from mrseg.models import upsample
from mrseg.models.layers import kernel_init

NORMS = ('none', 'batch', 'instance')


def check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f'Unsupported {kind} {value!r}; choose one of {choices}.')


def check_input(x: jax.Array, factor: int, what: str) -> int:
  """Checks a batched channels-last input; returns its spatial rank."""
  dims = x.ndim - 2
  if dims not in (2, 3):
    raise ValueError(
        f'{what} expects [B, H, W, C] or [B, X, Y, Z, C] input; got shape '
        f'{x.shape}.')
  if any(s % factor for s in x.shape[1:-1]):
    raise ValueError(
        f'{what} needs spatial sizes divisible by {factor}; got '
        f'{tuple(x.shape[1:-1])} (input shape {x.shape}).')
  return dims


def weight_norm(layer: nn.Module, enabled: bool, dtype: Any) -> nn.Module:
  """Wraps ``layer`` in weight normalisation of its kernel when ``enabled``.

  ``nn.WeightNorm`` normalises the kernel over every axis but the last (the
  output features, for ``Conv``, ``ConvTranspose`` and
  ``SubpixelConvTranspose`` alike) and learns a per-output-channel ``scale``
  (initialised to 1). Its parameters live beside the layer's: ``{name}`` holds
  kernel and bias, ``{name}_wn`` holds ``'{name}/kernel/scale'``.
  """
  if not enabled:
    return layer
  # dtype=None: the normalised kernel in the parameters' float32. With the
  # compute dtype here, initialisation stored the kernels (and so Adam's
  # moments) in bfloat16 under model.dtype=bfloat16; the wrapped layer casts
  # to its own compute dtype anyway (tests/test_bf16.py).
  del dtype
  return nn.WeightNorm(layer, dtype=None, name=f'{layer.name}_wn')


def normalize(x: jax.Array, norm: str, train: bool, name: str,
               bn_momentum: float, bn_axis_name: str | None,
               dtype: Any) -> jax.Array:
  """Applies the named normalisation (a no-op for 'none')."""
  if norm == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=bn_momentum,
                        epsilon=1e-5, axis_name=bn_axis_name, dtype=dtype,
                        name=name)(x)
  if norm == 'instance':
    return nn.InstanceNorm(dtype=dtype, name=name)(x)
  return x


class CodeMLP(nn.Module):
  """``layers`` fully connected layers on a code (a GT-layer's R_sigma, R_mu).

  Dense layers act on the last axis, so a code map [B, *spatial, D] gets the
  same layers at every voxel.

  Attributes:
    features: output features (the channels the GT-layer modulates).
    layers: number of Dense layers (>= 1); hidden ones have ReLU.
    hidden_features: width of the hidden layers.
    bias_init_value: initial bias of the last layer (1 for R_sigma, so that a
      fresh GT-layer starts near plain instance normalisation; 0 for R_mu).
    dtype: compute dtype.
  """

  features: int
  layers: int = 2
  hidden_features: int = 256
  bias_init_value: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, code: jax.Array) -> jax.Array:
    if self.layers < 1:
      raise ValueError(f'CodeMLP needs layers >= 1; got {self.layers}.')
    h = code
    for i in range(self.layers - 1):
      h = nn.relu(nn.Dense(self.hidden_features, dtype=self.dtype,
                           name=f'dense{i}')(h))
    return nn.Dense(self.features, dtype=self.dtype,
                    bias_init=nn.initializers.constant(self.bias_init_value),
                    name=f'dense{self.layers - 1}')(h)


def standardize(x: jax.Array, epsilon: float) -> jax.Array:
  """(x - mu(x)) / sqrt(var(x) + eps) per example and channel, in float32."""
  spatial_axes = tuple(range(1, x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mu = jnp.mean(x32, axis=spatial_axes, keepdims=True)
  var = jnp.var(x32, axis=spatial_axes, keepdims=True)
  return (x32 - mu) * jax.lax.rsqrt(var + epsilon)


class GTLayer(nn.Module):
  """Paper 2's GT-layer: GT(x, y) = R_sigma(y) (x - mu(x)) / sigma(x) + R_mu(y).

  mu(x) and sigma(x) are per example and channel over the spatial axes
  (instance-norm statistics, computed in float32; sigma = sqrt(var + eps)).
  With a global code y [B, D] the output's per-channel spatial mean is
  R_mu(y) and its standard deviation R_sigma(y) (up to eps): an AdaIN. A code
  map y [B, *spatial, D] at the resolution of x modulates every voxel.

  Attributes:
    mlp_layers: fully connected layers in each of R_sigma and R_mu.
    mlp_features: width of their hidden layers.
    epsilon: added to the variance.
    dtype: compute dtype.
  """

  mlp_layers: int = 2
  mlp_features: int = 256
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, code: jax.Array) -> jax.Array:
    """Modulates x [B, *spatial, C] with code [B, D] or [B, *spatial, D]."""
    spatial_axes = tuple(range(1, x.ndim - 1))
    if code.ndim == 2:
      code = code.reshape((code.shape[0],) + (1,) * len(spatial_axes)
                          + (code.shape[-1],))
    elif code.shape[:-1] != x.shape[:-1]:
      raise ValueError(
          f'GTLayer: a code map must match the features spatially; got code '
          f'{code.shape} for features {x.shape}.')
    x_hat = standardize(x, self.epsilon)
    channels = x.shape[-1]
    r_sigma = CodeMLP(channels, self.mlp_layers, self.mlp_features,
                      bias_init_value=1.0, dtype=self.dtype,
                      name='r_sigma')(code)
    r_mu = CodeMLP(channels, self.mlp_layers, self.mlp_features,
                   bias_init_value=0.0, dtype=self.dtype, name='r_mu')(code)
    y = r_sigma.astype(jnp.float32) * x_hat + r_mu.astype(jnp.float32)
    return y.astype(x.dtype)


class SpadeLayer(nn.Module):
  """A spatial GT-layer driven by the tissue map (SPADE, Park et al. 2019).

  GT(x, m) = R_sigma(m) * (x - mu(x)) / sigma(x) + R_mu(m), with mu, sigma
  as in `GTLayer` (per example and channel) but R_sigma and R_mu per voxel:
  convolutions of m, the one-hot tissue map brought to the resolution of x
  by block means (each cell's tissue fractions). As in SPADE, R_sigma and
  R_mu share a conv3 -> ReLU and end in a conv3 each (R_sigma's bias starts
  at 1, as in `GTLayer`). Unlike SPADE's batch-norm statistics, the
  normalisation is per example, like the GT-layer's, so the layer needs no
  batch statistics.

  Attributes:
    hidden_features: channels of the shared convolution.
    kernel_size: convolution kernel size.
    epsilon: added to the variance.
    conv: convolution from ``mrseg.models.convs.CONVS`` (same parameters
      and function; 'depth_to_channels' is XLA:CPU's fast path in 3D).
    dtype: compute dtype.
  """

  hidden_features: int = 32
  kernel_size: int = 3
  epsilon: float = 1e-5
  conv: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, tissues: jax.Array) -> jax.Array:
    """Modulates x [B, *s, C] with a one-hot tissue map [B, *S, K], S = f*s."""
    dims = x.ndim - 2
    size, target = tissues.shape[1:-1], x.shape[1:-1]
    if any(n % m for n, m in zip(size, target)) or len(size) != dims:
      raise ValueError(f'SpadeLayer: tissue map {tissues.shape} cannot be '
                       f'averaged down to the features {x.shape}.')
    window = tuple(n // m for n, m in zip(size, target))
    m = nn.avg_pool(tissues.astype(self.dtype), window, strides=window)
    conv = lambda features, name, bias=0.0: convs.conv(self.conv)(
        features, (self.kernel_size,) * dims, padding='SAME',
        bias_init=nn.initializers.constant(bias), dtype=self.dtype,
        name=name)
    h = nn.relu(conv(self.hidden_features, 'shared')(m))
    channels = x.shape[-1]
    r_sigma = conv(channels, 'r_sigma', 1.0)(h).astype(jnp.float32)
    r_mu = conv(channels, 'r_mu')(h).astype(jnp.float32)
    return (r_sigma * standardize(x, self.epsilon) + r_mu).astype(x.dtype)


def norm_or_spade(x: jax.Array, tissues: jax.Array | None, spade: int,
                   norm: str, train: bool, name: str, bn_momentum: float,
                   bn_axis_name: str | None, dtype: Any,
                   conv: str = 'xla') -> jax.Array:
  """A SpadeLayer of ``spade`` hidden features on tissues, else the norm."""
  if spade:
    return SpadeLayer(spade, conv=conv, dtype=dtype,
                      name=f'{name}_spade')(x, tissues)
  return normalize(x, norm, train, name, bn_momentum, bn_axis_name, dtype)


class ConvEncoder(nn.Module):
  """conv3 (features[0]) then one stride-2 conv3 per further level.

  Each convolution is followed by the normalisation and a LeakyReLU; the
  output is at 1 / 2**(len(features) - 1) of the input resolution. ``conv``
  names the convolution in ``mrseg.models.convs.CONVS``.
  """

  features: Sequence[int]
  norm: str = 'batch'
  negative_slope: float = 0.2
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  weight_init: str = 'he_normal'
  conv: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dims = x.ndim - 2
    init = kernel_init(self.weight_init)
    conv = convs.conv(self.conv)
    for i, f in enumerate(self.features):
      x = conv(f, (3,) * dims, strides=(1 if i == 0 else 2,) * dims,
               padding='SAME', use_bias=self.norm == 'none',
               kernel_init=init, dtype=self.dtype, name=f'conv{i}')(x)
      x = normalize(x, self.norm, train, f'norm{i}', self.bn_momentum,
                     self.bn_axis_name, self.dtype)
      x = nn.leaky_relu(x, self.negative_slope)
    return x


class UpDecoder(nn.Module):
  """One stride-2 up-convolution -> norm -> ReLU per entry of ``features``.

  With ``spade`` > 0 each norm is a `SpadeLayer` (of that many hidden
  features, convolutions ``conv``) on the tissue map passed to the call.
  """

  features: Sequence[int]
  up_kernel: int = 2
  norm: str = 'batch'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  upsample: str = 'conv_transpose'
  weight_init: str = 'he_normal'
  spade: int = 0
  conv: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               tissues: jax.Array | None = None) -> jax.Array:
    dims = x.ndim - 2
    up_conv = upsample.upsampler(self.upsample)
    for i, f in enumerate(self.features):
      x = up_conv(f, (self.up_kernel,) * dims, strides=(2,) * dims,
                  padding='SAME', use_bias=self.norm == 'none' and not
                  self.spade, kernel_init=kernel_init(self.weight_init),
                  dtype=self.dtype, name=f'up{i}')(x)
      x = norm_or_spade(x, tissues, self.spade, self.norm, train,
                         f'norm{i}', self.bn_momentum, self.bn_axis_name,
                         self.dtype, self.conv)
      x = nn.relu(x)
    return x
