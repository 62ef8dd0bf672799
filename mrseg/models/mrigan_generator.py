"""Paper 2's generator (MRI-GAN): an MRI patch and a tissue map -> a
synthetic MRI patch, channels-last ([B, X, Y, Z, C]; 2D inputs work too).

Paper 2, Sec. 3 (our reading; every part an attribute of
`MRIGANGenerator`, one method of it a stage)::

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
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrseg.models import convs
from mrseg.models import mrigan_blocks as blocks
from mrseg.models.layers import kernel_init

FUSIONS = ('gt', 'concat', 'none')
TISSUE_CODES = ('global', 'spatial', 'spade')


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
    upsample: up-convolution from ``mrseg.models.upsample.UPSAMPLERS``.
    conv: convolution from ``mrseg.models.convs.CONVS`` (same parameters
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
    blocks.check_choice('norm', self.norm, blocks.NORMS)
    blocks.check_choice('fusion', self.fusion, FUSIONS)
    blocks.check_choice('tissue_code', self.tissue_code, TISSUE_CODES)
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
    tissues, dims, batch = self._check_inputs(mri, tissues, z)
    spade = self.gt_mlp_features if self.tissue_code == 'spade' else 0
    x = self._latent(mri, z, dims, batch, train)
    t, code = self._code(x, tissues, z, dims, batch, train, spade)
    x = self._fuse(x, code, tissues, dims, batch, train, spade)
    boundary_logits = (self._boundary(x, t, dims, train, spade)
                       if self.use_boundary else None)
    return self._decode(x, tissues, boundary_logits, dims, train, spade), (
        boundary_logits)

  def _check_inputs(self, mri, tissues, z):
    """(one-hot tissues, spatial rank, batch size), or a ValueError."""
    factor = 2**(len(self.features) - 1)
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
      dims = blocks.check_input(tissues, factor, 'MRIGANGenerator (tissues)')
      batch = tissues.shape[0]
    if self.use_mri_encoder:
      if mri is None:
        raise ValueError('MRIGANGenerator: use_mri_encoder needs mri.')
      dims = blocks.check_input(mri, factor, 'MRIGANGenerator (mri)')
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
    return tissues, 3 if dims is None else dims, batch

  def _encoder(self, features: Sequence[int], name: str
               ) -> blocks.ConvEncoder:
    return blocks.ConvEncoder(
        features, norm=self.norm, negative_slope=self.negative_slope,
        bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
        weight_init=self.weight_init, conv=self.conv, dtype=self.dtype,
        name=name)

  def _conv(self, features: int, dims: int, name: str, use_bias: bool = True
            ) -> nn.Module:
    """A 'same' conv3 from `convs.CONVS`."""
    return convs.conv(self.conv)(
        features, (3,) * dims, padding='SAME', use_bias=use_bias,
        kernel_init=kernel_init(self.weight_init), dtype=self.dtype,
        name=name)

  def _latent(self, mri, z, dims, batch, train):
    """The latent map x: the MRI encoder's, or (noise-only) from z."""
    if self.use_mri_encoder:
      return self._encoder(self.features, 'mri_encoder')(mri, train)
    x = nn.Dense(self.latent_size**dims * self.features[-1],
                 use_bias=self.norm == 'none',
                 kernel_init=kernel_init(self.weight_init), dtype=self.dtype,
                 name='project')(z)
    x = x.reshape((batch,) + (self.latent_size,) * dims
                  + (self.features[-1],))
    return nn.relu(blocks.normalize(x, self.norm, train, 'project_norm',
                                    self.bn_momentum, self.bn_axis_name,
                                    self.dtype))

  def _code(self, x, tissues, z, dims, batch, train, spade):
    """(t, y): the tissue encoder's map t and the code y (`tissue_code`:
    y = Dense(mean(t)) or Dense(t) per voxel), with z appended."""
    t, code = None, None
    # With 'spade' the tissue encoder only feeds the boundary network.
    if self.use_tissue_encoder and (self.use_boundary or not spade):
      t = self._encoder(self.tissue_features, 'tissue_encoder')(tissues,
                                                                 train)
      if t.shape[1:-1] != x.shape[1:-1]:
        raise ValueError(
            f'Tissue latent map {t.shape} does not match the MRI latent map '
            f'{x.shape}; with no MRI encoder set latent_size to the patch '
            f'size / {2**(len(self.features) - 1)}.')
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
    return t, code

  def _fuse(self, x, code, tissues, dims, batch, train, spade):
    """`num_gt_blocks` x [conv3 -> GT(., y) -> ReLU] at the latent
    resolution (`fusion`='gt'; 'concat' and 'none' are the ablations)."""
    f_latent = self.features[-1]
    for i in range(self.num_gt_blocks):
      if self.fusion == 'gt':
        # No bias: the GT-layer's mean subtraction would cancel it.
        h = self._conv(f_latent, dims, f'block{i}_conv', use_bias=False)(x)
        if spade:
          h = blocks.SpadeLayer(spade, epsilon=self.gt_epsilon,
                                conv=self.conv, dtype=self.dtype,
                                name=f'block{i}_gt')(
                                    h, tissues)
        else:
          h = blocks.GTLayer(self.gt_mlp_layers, self.gt_mlp_features,
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
        h = self._conv(f_latent, dims, f'block{i}_conv',
                       use_bias=self.norm == 'none')(h)
        h = blocks.normalize(h, self.norm, train, f'block{i}_norm',
                             self.bn_momentum, self.bn_axis_name, self.dtype)
      x = nn.relu(h)
    return x

  def _decoder(self, features: Sequence[int], name: str, spade: int
               ) -> blocks.UpDecoder:
    return blocks.UpDecoder(
        features, up_kernel=self.up_kernel, norm=self.norm,
        bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
        upsample=self.upsample, weight_init=self.weight_init,
        spade=spade if name == 'decoder' else 0, conv=self.conv,
        dtype=self.dtype, name=name)

  def _boundary(self, h, t, dims, train, spade):
    """The boundary network's logits [B, *spatial, 1] from (h, t)."""
    # Reads the tissue map too, so the given layout's borders are
    # predictable (and reach the decoder) even with a global code.
    b = h if t is None else jnp.concatenate([h, t.astype(h.dtype)], axis=-1)
    b_features = tuple(max(1, int(f * self.boundary_width))
                       for f in reversed(self.features[:-1]))
    b = self._decoder(b_features, 'boundary_decoder', spade)(b, train)
    return self._conv(1, dims, 'boundary_logits')(b).astype(jnp.float32)

  def _decode(self, h, tissues, boundary_logits, dims, train, spade):
    """h -> up-convs ++ sigmoid(boundary logits) -> conv3 -> norm -> ReLU ->
    conv3 (out_channels) -> tanh."""
    dec_features = tuple(reversed(self.features[:-1]))
    h = self._decoder(dec_features, 'decoder', spade)(h, train, tissues)
    if boundary_logits is not None:
      h = jnp.concatenate(
          [h, jax.nn.sigmoid(boundary_logits).astype(h.dtype)], axis=-1)
    h = self._conv(self.features[0], dims, 'out_conv',
                   use_bias=self.norm == 'none' and not spade)(h)
    h = nn.relu(blocks.norm_or_spade(h, tissues, spade, self.norm, train,
                                     'out_norm', self.bn_momentum,
                                     self.bn_axis_name, self.dtype,
                                     self.conv))
    h = self._conv(self.out_channels, dims, 'out')(h)
    return jnp.tanh(h.astype(jnp.float32))


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
