"""Paper 2 (MRI-GAN) on top of Mondal et al. 2018's few-shot 3D GAN.

Three networks, all channels-last ([B, X, Y, Z, C]; 2D inputs work too):

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
(``mrseg.models.layers.UPSAMPLERS``; 'subpixel' is the same function with
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

**MRIGANGenerator** -- paper 2, Sec. 3 (our reading; every part an
attribute)::

  MRI patch  --MRI encoder----------------> x: latent map (4^3x256)
  tissues    --ground-truth encoder--------> t: tissue map (4^3xF_t)
                                   global code: y = Dense(mean(t))  [B, D]
  x, y --[conv3 -> GT(., y) -> ReLU] x num_gt_blocks--> h
  (h, t) --boundary network (up-convs)--> boundary logits (32^3x1)
  h --decoder (up-convs)--> 32^3 features ++ sigmoid(boundary logits)
    --> conv3 -> norm -> ReLU -> conv3 (C) -> tanh   synthetic patch 32^3xC

GT-layer (an AdaIN, Huang & Belongie 2017):
``GT(x, y) = R_sigma(y) * (x - mu(x)) / sigma(x) + R_mu(y)``, mu and sigma per
example and channel over the spatial axes of x, R_sigma and R_mu each
``gt_mlp_layers`` fully connected layers on the tissue code (R_sigma's last
bias starts at 1, so a fresh GT-layer is close to instance norm).

Decisions where the paper is silent, and why:

- The tissue code is global by default ('global': pooled, as the paper's
  "fully connected layers on the code" and AdaIN imply), so the GT-layers set
  per-channel statistics (tissue contrast and proportions) but cannot place
  tissues. The layout of the given tissue map reaches the decoder through
  the boundary network, which reads the tissue encoder's spatial map ``t``
  together with the fused latent ``h``; its sigmoid output (a full-resolution
  1-channel map) is concatenated to the decoder's last features, so the
  decoder sees where tissue borders are, and its supervision with the
  label-derived boundaries (``boundaries_from_labels``) makes that map mean
  what it should. ``tissue_code='spatial'`` is the alternative reading: the
  code stays a map at the latent resolution and R_sigma, R_mu are the same
  fully connected layers applied at every voxel (SPADE-like, at the latent
  resolution only), which places tissues even without the boundary network.
  ``tissue_code='spade'`` goes further, as SPADE does (Park et al. 2019):
  every GT-layer is a ``SpadeLayer`` whose per-voxel R_sigma, R_mu are
  convolutions of the tissue map itself, averaged down to the layer's
  resolution -- in the latent blocks, after every decoder up-convolution
  (in place of its batch norm) and before the output convolution -- so the
  layout is imposed at each decoder resolution, not only at 1/8 of the
  patch size.
- No skip connections from the MRI encoder to the decoder: they would let the
  decoder copy the input MRI's layout around the GT-layers.
- Ablations are overrides: ``fusion='concat'`` ("without GT-layers": the code
  is broadcast and concatenated to the features, then conv -> norm -> ReLU),
  ``fusion='none'`` (features pass through conv -> norm -> ReLU, no code),
  ``use_boundary=False``, ``noise_dim`` > 0 (z is concatenated to the code;
  without an MRI encoder it also seeds the latent map through a Dense layer),
  and the noise-only generator: ``use_mri_encoder=False,
  use_tissue_encoder=False, use_boundary=False, fusion='none', noise_dim=200``.

Generator loss (the trainer's business, recorded here because it shapes the
outputs): paper 2's eq. (7)-(8) are garbled as printed; by default we read
them as feature matching between the discriminator features
(``return_features``) of real and generated patches -- squared L2 between
batch means, as the paper; L1 as Mondal -- plus the boundary loss on
``boundary_logits`` (``mrseg.losses.feature_matching_loss`` and
``boundary_loss``). The literal reading is an option
(``mrseg.losses.paper_eq7_8_loss``).
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrseg.models import layers
from mrseg.models.layers import KERNEL_INITS, count_params, kernel_init  # pylint: disable=unused-import

NORMS = ('none', 'batch', 'instance')
POOLS = ('avg', 'max')
FUSIONS = ('gt', 'concat', 'none')
TISSUE_CODES = ('global', 'spatial', 'spade')


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f'Unsupported {kind} {value!r}; choose one of {choices}.')


def _check_input(x: jax.Array, factor: int, what: str) -> int:
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


def _weight_norm(layer: nn.Module, enabled: bool, dtype: Any) -> nn.Module:
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


def _normalize(x: jax.Array, norm: str, train: bool, name: str,
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
    upsample: up-convolution from ``mrseg.models.layers.UPSAMPLERS``.
    conv: convolution from ``mrseg.models.layers.CONVS``, all with
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
    _check_choice('pool', self.pool, POOLS)
    levels = len(self.features)
    if levels < 1 or self.convs_per_level < 1:
      raise ValueError(
          f'SegDiscriminator needs at least one level and one conv per level; '
          f'got features={self.features}, '
          f'convs_per_level={self.convs_per_level}.')
    dims = _check_input(x, 2**(levels - 1), 'SegDiscriminator')
    init = kernel_init(self.weight_init)
    up_conv = layers.upsampler(self.upsample)
    conv_cls = layers.conv(self.conv)
    act = lambda h: nn.leaky_relu(h, self.negative_slope)
    pool = nn.avg_pool if self.pool == 'avg' else nn.max_pool
    # Dropout3d drops whole channels: one decision per example and channel.
    dropout = nn.Dropout(self.dropout_rate,
                         broadcast_dims=tuple(range(1, dims + 1)))

    def conv(h, features, k, name):
      layer = conv_cls(features, (k,) * dims, padding='SAME',
                       kernel_init=init, dtype=self.dtype, name=name)
      return _weight_norm(layer, self.weight_norm, self.dtype)(h)

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
      h = _weight_norm(up, self.weight_norm, self.dtype)(h)
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
    upsample: up-convolution from ``mrseg.models.layers.UPSAMPLERS``.
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
    _check_choice('norm', self.norm, NORMS)
    if z.ndim != 2:
      raise ValueError(
          f'NoiseGenerator expects z [B, noise_dim]; got {z.shape}.')
    dims = self.spatial_dims
    init = kernel_init(self.weight_init)
    up_conv = layers.upsampler(self.upsample)
    # A bias before a normalisation is cancelled by its mean subtraction.
    use_bias = self.norm == 'none'
    norm = lambda h, name: _normalize(h, self.norm, train, name,
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
    h = _weight_norm(out, self.weight_norm_output, self.dtype)(h)
    return jnp.tanh(h.astype(jnp.float32))


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


def _standardize(x: jax.Array, epsilon: float) -> jax.Array:
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
    x_hat = _standardize(x, self.epsilon)
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
    dtype: compute dtype.
  """

  hidden_features: int = 32
  kernel_size: int = 3
  epsilon: float = 1e-5
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
    conv = lambda features, name, bias=0.0: nn.Conv(
        features, (self.kernel_size,) * dims, padding='SAME',
        bias_init=nn.initializers.constant(bias), dtype=self.dtype,
        name=name)
    h = nn.relu(conv(self.hidden_features, 'shared')(m))
    channels = x.shape[-1]
    r_sigma = conv(channels, 'r_sigma', 1.0)(h).astype(jnp.float32)
    r_mu = conv(channels, 'r_mu')(h).astype(jnp.float32)
    return (r_sigma * _standardize(x, self.epsilon) + r_mu).astype(x.dtype)


def _norm_or_spade(x: jax.Array, tissues: jax.Array | None, spade: int,
                   norm: str, train: bool, name: str, bn_momentum: float,
                   bn_axis_name: str | None, dtype: Any) -> jax.Array:
  """A SpadeLayer of ``spade`` hidden features on tissues, else the norm."""
  if spade:
    return SpadeLayer(spade, dtype=dtype, name=f'{name}_spade')(x, tissues)
  return _normalize(x, norm, train, name, bn_momentum, bn_axis_name, dtype)


class ConvEncoder(nn.Module):
  """conv3 (features[0]) then one stride-2 conv3 per further level.

  Each convolution is followed by the normalisation and a LeakyReLU; the
  output is at 1 / 2**(len(features) - 1) of the input resolution. ``conv``
  names the convolution in ``mrseg.models.layers.CONVS``.
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
    conv = layers.conv(self.conv)
    for i, f in enumerate(self.features):
      x = conv(f, (3,) * dims, strides=(1 if i == 0 else 2,) * dims,
               padding='SAME', use_bias=self.norm == 'none',
               kernel_init=init, dtype=self.dtype, name=f'conv{i}')(x)
      x = _normalize(x, self.norm, train, f'norm{i}', self.bn_momentum,
                     self.bn_axis_name, self.dtype)
      x = nn.leaky_relu(x, self.negative_slope)
    return x


class UpDecoder(nn.Module):
  """One stride-2 up-convolution -> norm -> ReLU per entry of ``features``.

  With ``spade`` > 0 each norm is a `SpadeLayer` (of that many hidden
  features) on the tissue map passed to the call.
  """

  features: Sequence[int]
  up_kernel: int = 2
  norm: str = 'batch'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  upsample: str = 'conv_transpose'
  weight_init: str = 'he_normal'
  spade: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               tissues: jax.Array | None = None) -> jax.Array:
    dims = x.ndim - 2
    up_conv = layers.upsampler(self.upsample)
    for i, f in enumerate(self.features):
      x = up_conv(f, (self.up_kernel,) * dims, strides=(2,) * dims,
                  padding='SAME', use_bias=self.norm == 'none' and not
                  self.spade, kernel_init=kernel_init(self.weight_init),
                  dtype=self.dtype, name=f'up{i}')(x)
      x = _norm_or_spade(x, tissues, self.spade, self.norm, train,
                         f'norm{i}', self.bn_momentum, self.bn_axis_name,
                         self.dtype)
      x = nn.relu(x)
    return x


class MRIGANGenerator(nn.Module):
  """Paper 2's generator: an MRI and a tissue map -> a synthetic MRI patch.

  See the module docstring for the data flow and the reading of the paper.

  Attributes:
    out_channels: modalities of the synthetic patch (2: T1+T2; 1: T1 only).
    num_classes: tissue classes K of the label map (one-hot input channels).
    features: MRI-encoder features per level, finest first; the decoder
      mirrors them. The latent map is at 1 / 2**(len(features) - 1) of the
      patch size, with features[-1] channels.
    tissue_features: ground-truth-encoder features per level (same number of
      levels as ``features``).
    code_dim: width of the tissue code (before any noise is appended).
    tissue_code: 'global' (pooled vector; the GT-layers are AdaINs),
      'spatial' (a code map at the latent resolution, FC layers per voxel)
      or 'spade' (`SpadeLayer`s on the tissue map itself: the GT-layers of
      the latent blocks and one after every decoder up-convolution and
      before the output convolution; needs fusion='gt' and noise_dim=0).
    use_mri_encoder: encode an MRI patch into the latent map; without it the
      latent map comes from z through a Dense layer (needs noise_dim > 0).
    use_tissue_encoder: encode a tissue-label patch into the code.
    fusion: how the code enters the latent map: 'gt' (GT-layers, the paper),
      'concat' (broadcast code concatenated to the features; "without
      GT-layers"), 'none' (code unused).
    num_gt_blocks: fusion blocks at the latent resolution (conv3 -> fuse ->
      ReLU each); 0 passes the latent map through.
    gt_mlp_layers: fully connected layers in each R_sigma and R_mu.
    gt_mlp_features: width of their hidden layers.
    gt_epsilon: variance epsilon of the GT-layers.
    use_boundary: run the boundary detection network and feed its output to
      the decoder.
    boundary_width: boundary-network features per level, as a fraction of the
      decoder's.
    noise_dim: length of an optional noise input z (0: no z).
    latent_size: latent spatial size when there is no MRI encoder.
    norm: normalisation in encoders and decoders ('batch', 'instance',
      'none'); the GT blocks normalise through their GT-layers.
    bn_momentum: running-average momentum of batch norm.
    bn_axis_name: pmap axis name over which batch norm pools statistics.
    negative_slope: LeakyReLU slope of the encoders.
    up_kernel: up-convolution kernel size, stride 2.
    upsample: up-convolution from ``mrseg.models.layers.UPSAMPLERS``.
    conv: convolution from ``mrseg.models.layers.CONVS`` (same parameters
      and function; 'depth_to_channels' is much faster on XLA:CPU).
    weight_init: a key of KERNEL_INITS (paper silent; He for ReLU networks).
    dtype: compute dtype; parameters stay float32, outputs are float32.
  """

  out_channels: int = 2
  num_classes: int = 4
  features: Sequence[int] = (32, 64, 128, 256)
  tissue_features: Sequence[int] = (16, 32, 64, 128)
  code_dim: int = 128
  tissue_code: str = 'global'
  use_mri_encoder: bool = True
  use_tissue_encoder: bool = True
  fusion: str = 'gt'
  num_gt_blocks: int = 2
  gt_mlp_layers: int = 2
  gt_mlp_features: int = 256
  gt_epsilon: float = 1e-5
  use_boundary: bool = True
  boundary_width: float = 0.5
  noise_dim: int = 0
  latent_size: int = 4
  norm: str = 'batch'
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  negative_slope: float = 0.2
  up_kernel: int = 2
  upsample: str = 'conv_transpose'
  conv: str = 'xla'
  weight_init: str = 'he_normal'
  dtype: Any = jnp.float32

  def _check_config(self) -> None:
    _check_choice('norm', self.norm, NORMS)
    _check_choice('fusion', self.fusion, FUSIONS)
    _check_choice('tissue_code', self.tissue_code, TISSUE_CODES)
    if len(self.features) < 1:
      raise ValueError('MRIGANGenerator needs at least one feature level.')
    if self.use_tissue_encoder and (
        len(self.tissue_features) != len(self.features)):
      raise ValueError(
          f'tissue_features {self.tissue_features} must have as many levels '
          f'as features {self.features}, so that both latent maps have the '
          'same size.')
    has_code = self.use_tissue_encoder or self.noise_dim > 0
    if self.fusion != 'none' and self.num_gt_blocks and not has_code:
      raise ValueError(
          f"fusion={self.fusion!r} needs a code: enable use_tissue_encoder or "
          "set noise_dim > 0 (or use fusion='none').")
    if self.tissue_code == 'spade' and not (
        self.use_tissue_encoder and self.fusion == 'gt'
        and self.noise_dim == 0):
      raise ValueError(
          "tissue_code='spade' modulates with the tissue map: it needs "
          "use_tissue_encoder=True, fusion='gt' and noise_dim=0.")
    if not self.use_mri_encoder and self.noise_dim <= 0:
      raise ValueError(
          'Without the MRI encoder the latent map comes from z: set '
          'noise_dim > 0.')

  @nn.compact
  def __call__(self, mri: jax.Array | None = None,
               tissues: jax.Array | None = None,
               z: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """Generates a synthetic multimodal patch.

    Args:
      mri: real patches [B, *spatial, C] (used with the MRI encoder).
      tissues: tissue labels, integer [B, *spatial] (values outside
        [0, num_classes), e.g. an ignore label, encode as all-zero) or one-hot
        [B, *spatial, num_classes] (used with the tissue encoder).
      z: noise [B, noise_dim] (used when noise_dim > 0).
      train: batch norm uses (and updates) batch statistics when True (apply
        with mutable=['batch_stats'] when norm='batch').

    Returns:
      (patches, boundary_logits): float32 patches [B, *spatial,
      out_channels] in [-1, 1], and float32 boundary logits [B, *spatial, 1]
      (None without the boundary network).

    Raises:
      ValueError: for missing inputs, mismatched shapes or a bad config.
    """
    self._check_config()
    levels = len(self.features)
    factor = 2**(levels - 1)
    dims = None
    batch = None
    if self.use_tissue_encoder:
      if tissues is None:
        raise ValueError('MRIGANGenerator: use_tissue_encoder needs tissues.')
      if jnp.issubdtype(tissues.dtype, jnp.integer):
        tissues = jax.nn.one_hot(tissues, self.num_classes, dtype=self.dtype)
      elif tissues.shape[-1] != self.num_classes:
        raise ValueError(
            f'One-hot tissues need {self.num_classes} channels; got '
            f'{tissues.shape}.')
      dims = _check_input(tissues, factor, 'MRIGANGenerator (tissues)')
      batch = tissues.shape[0]
    if self.use_mri_encoder:
      if mri is None:
        raise ValueError('MRIGANGenerator: use_mri_encoder needs mri.')
      dims = _check_input(mri, factor, 'MRIGANGenerator (mri)')
      batch = mri.shape[0]
      if tissues is not None and self.use_tissue_encoder and (
          tissues.shape[:-1] != mri.shape[:-1]):
        raise ValueError(
            f'MRIGANGenerator: mri {mri.shape} and tissues {tissues.shape} '
            'must have the same batch and spatial shape.')
    if self.noise_dim > 0:
      if z is None or z.ndim != 2 or z.shape[-1] != self.noise_dim:
        raise ValueError(
            f'MRIGANGenerator: noise_dim={self.noise_dim} needs z of shape '
            f'[B, {self.noise_dim}]; got '
            f'{None if z is None else z.shape}.')
      batch = z.shape[0] if batch is None else batch
      if z.shape[0] != batch:
        raise ValueError(f'z has batch {z.shape[0]}, the patches {batch}.')
    if dims is None:
      dims = 3
    init = kernel_init(self.weight_init)
    conv = layers.conv(self.conv)
    enc = lambda features, name: ConvEncoder(
        features, norm=self.norm, negative_slope=self.negative_slope,
        bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
        weight_init=self.weight_init, conv=self.conv, dtype=self.dtype,
        name=name)

    # Latent map: from the MRI, or (noise-only) from z.
    if self.use_mri_encoder:
      x = enc(self.features, 'mri_encoder')(mri, train)
    else:
      x = nn.Dense(self.latent_size**dims * self.features[-1],
                   use_bias=self.norm == 'none', kernel_init=init,
                   dtype=self.dtype, name='project')(z)
      x = x.reshape((batch,) + (self.latent_size,) * dims
                    + (self.features[-1],))
      x = nn.relu(_normalize(x, self.norm, train, 'project_norm',
                             self.bn_momentum, self.bn_axis_name, self.dtype))
    latent_shape = x.shape[1:-1]

    # Code: tissue code (global vector or map), with z appended.
    t, code = None, None
    spade = self.gt_mlp_features if self.tissue_code == 'spade' else 0
    # With 'spade' the tissue encoder only feeds the boundary network.
    if self.use_tissue_encoder and (self.use_boundary or not spade):
      t = enc(self.tissue_features, 'tissue_encoder')(tissues, train)
      if t.shape[1:-1] != latent_shape:
        raise ValueError(
            f'Tissue latent map {t.shape} does not match the MRI latent map '
            f'{x.shape}; with no MRI encoder set latent_size to the patch '
            f'size / {factor}.')
    if t is not None and not spade:
      pooled = (jnp.mean(t, axis=tuple(range(1, dims + 1)))
                if self.tissue_code == 'global' else t)
      code = nn.Dense(self.code_dim, dtype=self.dtype, name='tissue_code')(
          pooled)
    if self.noise_dim > 0:
      zc = z.astype(self.dtype)
      if code is not None and code.ndim > 2:
        zc = jnp.broadcast_to(zc.reshape((batch,) + (1,) * dims + (-1,)),
                              code.shape[:-1] + (zc.shape[-1],))
      code = zc if code is None else jnp.concatenate([code, zc], axis=-1)

    # Fusion blocks at the latent resolution.
    f_latent = self.features[-1]
    for i in range(self.num_gt_blocks):
      if self.fusion == 'gt':
        # No bias: the GT-layer's mean subtraction would cancel it.
        h = conv(f_latent, (3,) * dims, padding='SAME', use_bias=False,
                 kernel_init=init, dtype=self.dtype,
                 name=f'block{i}_conv')(x)
        if spade:
          h = SpadeLayer(spade, epsilon=self.gt_epsilon, dtype=self.dtype,
                         name=f'block{i}_gt')(h, tissues)
        else:
          h = GTLayer(self.gt_mlp_layers, self.gt_mlp_features,
                      self.gt_epsilon, dtype=self.dtype,
                      name=f'block{i}_gt')(h, code)
      else:
        h = x
        if self.fusion == 'concat':
          c = code
          if c.ndim == 2:
            c = c.reshape((batch,) + (1,) * dims + (c.shape[-1],))
          c = jnp.broadcast_to(c, x.shape[:-1] + (c.shape[-1],))
          h = jnp.concatenate([x, c.astype(x.dtype)], axis=-1)
        h = conv(f_latent, (3,) * dims, padding='SAME',
                 use_bias=self.norm == 'none', kernel_init=init,
                 dtype=self.dtype, name=f'block{i}_conv')(h)
        h = _normalize(h, self.norm, train, f'block{i}_norm',
                       self.bn_momentum, self.bn_axis_name, self.dtype)
      x = nn.relu(h)

    dec_features = tuple(reversed(self.features[:-1]))
    dec = lambda features, name: UpDecoder(
        features, up_kernel=self.up_kernel, norm=self.norm,
        bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
        upsample=self.upsample, weight_init=self.weight_init,
        spade=spade if name == 'decoder' else 0, dtype=self.dtype, name=name)

    boundary_logits = None
    if self.use_boundary:
      # Reads the tissue map too, so the given layout's borders are
      # predictable (and reach the decoder) even with a global code.
      b = x if t is None else jnp.concatenate([x, t.astype(x.dtype)], axis=-1)
      b_features = tuple(max(1, int(f * self.boundary_width))
                         for f in dec_features)
      b = dec(b_features, 'boundary_decoder')(b, train)
      boundary_logits = conv(1, (3,) * dims, padding='SAME',
                             kernel_init=init, dtype=self.dtype,
                             name='boundary_logits')(b)
      boundary_logits = boundary_logits.astype(jnp.float32)

    h = dec(dec_features, 'decoder')(x, train, tissues)
    if boundary_logits is not None:
      h = jnp.concatenate(
          [h, jax.nn.sigmoid(boundary_logits).astype(h.dtype)], axis=-1)
    h = conv(self.features[0], (3,) * dims, padding='SAME',
             use_bias=self.norm == 'none' and not spade, kernel_init=init,
             dtype=self.dtype, name='out_conv')(h)
    h = nn.relu(_norm_or_spade(h, tissues, spade, self.norm, train,
                               'out_norm', self.bn_momentum,
                               self.bn_axis_name, self.dtype))
    h = conv(self.out_channels, (3,) * dims, padding='SAME',
             kernel_init=init, dtype=self.dtype, name='out')(h)
    return jnp.tanh(h.astype(jnp.float32)), boundary_logits


def boundaries_from_labels(labels: jax.Array, num_classes: int) -> jax.Array:
  """Binary tissue-boundary map of integer labels (jittable).

  A voxel is a boundary voxel when one of its face neighbours (6 in 3D, 4 in
  2D) inside the patch has a different label. Both voxels of a differing pair
  are marked, so borders are two voxels thick. Labels outside
  [0, num_classes) (an ignore label such as 255) are unlabelled: such voxels
  are never boundaries and do not make their neighbours boundaries. The
  patch border does not count as a label change.

  Args:
    labels: integer labels [B, *spatial] (any number of spatial axes).
    num_classes: number of real labels K.

  Returns:
    float32 [B, *spatial] with 1 on boundaries and 0 elsewhere (targets for
    ``mrseg.losses.boundary_loss``).
  """
  labels = jnp.asarray(labels)
  valid = (labels >= 0) & (labels < num_classes)
  out = jnp.zeros(labels.shape, dtype=bool)
  for axis in range(1, labels.ndim):
    n = labels.shape[axis]
    if n < 2:
      continue
    lo = jax.lax.slice_in_dim(labels, 0, n - 1, axis=axis)
    hi = jax.lax.slice_in_dim(labels, 1, n, axis=axis)
    v_lo = jax.lax.slice_in_dim(valid, 0, n - 1, axis=axis)
    v_hi = jax.lax.slice_in_dim(valid, 1, n, axis=axis)
    edge = (lo != hi) & v_lo & v_hi  # between i and i + 1 along the axis
    pad_lo = [(0, 0)] * labels.ndim
    pad_hi = [(0, 0)] * labels.ndim
    pad_lo[axis] = (0, 1)  # edge marks voxel i ...
    pad_hi[axis] = (1, 0)  # ... and voxel i + 1
    out = out | jnp.pad(edge, pad_lo) | jnp.pad(edge, pad_hi)
  return out.astype(jnp.float32)
