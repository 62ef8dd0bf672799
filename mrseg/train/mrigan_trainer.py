"""Trains paper 2's tissue segmenters: supervised, Standard-GAN and MRI-GAN.

One trainer, three models (`config.model.kind`), all with Mondal et al.'s 3D
UNet (`mrigan.SegDiscriminator`) as the segmenter, so their Dice compare the
training signal and nothing else:

* 'supervised': the segmenter, trained on labelled patches with the
  class-weighted cross-entropy (``lambda_l * l_labelled``). In every kind
  l_labelled may add a soft Dice term (`loss.labelled_loss='dice_ce'`) and
  its class weights are by default the median-frequency weights of the
  labelled subjects (`resolve_class_weights`).
* 'fewshot_gan': Mondal's few-shot GAN ("Standard-GAN" in paper 2). The
  segmenter is the discriminator of a K+1-class GAN (the fake class is
  implicit, logit 0): ``lambda_l l_labelled + lambda_u l_unlabelled +
  lambda_f l_fake`` (Mondal's code: 1 / 0.5 / 0.5); a `NoiseGenerator`
  (z ~ U(-1, 1)) learns by feature matching (L1) at the discriminator's
  first 256-channel bottleneck layer.
* 'mrigan': paper 2. The generator (`MRIGANGenerator`) takes an MRI patch
  and a tissue-label patch and synthesises a patch with that tissue layout;
  D weights 1 / 1 / 2 (paper); G loss = feature matching (squared L2, the
  paper's; L1 optional) + ``boundary_weight`` * BCE of its boundary network
  against boundaries derived from the given labels.

Options of the GANs' losses, all off by default (`configs/tissue_base.py`):
`loss.generator_objective='paper_eq7_8'` (paper 2's eq. (7)-(8) read
literally, `losses.paper_eq7_8_loss`, instead of feature matching);
`loss.unsupervised_warmup_steps` (lambda_u and lambda_f ramped up by
`losses.sigmoid_rampup`); and, for 'mrigan', `loss.transfer_weight`: the
generated patches with the tissue maps that conditioned them, (G(x_u, y),
y), join D's labelled term from `loss.transfer_start_step` on.

**Pairing of the MRI-GAN generator's inputs.** Each step reads B_l labelled
and B_u = r * B_l unlabelled patches (r a positive integer). Generated patch
j gets the MRI of unlabelled patch j (the appearance to transfer: a real,
unlabelled scan at some other place) and the tissue map of labelled patch
j // r (a real layout with exact labels, so the boundary loss has a
target). Labelled patches come from the few labelled subjects, unlabelled
ones from the others, drawn independently; the two never come from the
same place, so the generator cannot copy the MRI and must use the tissue
code. j // r is the same pair whether a step sees the global batch (jit) or
one device's contiguous slice (pmap): device d holds unlabelled rows
d*b_u..(d+1)*b_u - 1 and labelled rows d*b_l.., and (d*b_u + i) // r =
d*b_l + i // r.

**One step** updates D on [labelled, unlabelled, generated] patches (one
forward of their concatenation; the fakes without gradient to G), then G
against the updated D, on the same generator inputs. Real features for
feature matching come from the updated D on the unlabelled patches.

**Same numbers under jit and pmap, on any number of devices.** Noise and
dropout are drawn per example from `parallel.example_keys`. Batch norm in
the generators pools over the whole batch: under pmap its `axis_name` is
the device axis, so a device's statistics are those of the global batch.
Losses with a batch-level normaliser are computed from globally gathered
statistics: the labelled CE (and the transfer term, the same loss on the
generated patches) from all-gathered per-device sums of weighted CE and of
the normaliser (ignored voxels make per-device counts differ), its optional
soft Dice from all-gathered per-class sums, feature matching from
all-gathered per-device feature means. Every device
then holds the global loss and the all-gather's transpose (a psum) gives
its parameters D times their share of the gradient, which the pmean of the
gradients turns into the exact global gradient. Plain voxel means
(unlabelled, fake, boundary, eq. (7)-(8) against the global E f(x)) need no
gathering: equal per-device batches make the pmean of local gradients
exact.

**Validation and evaluation.** Every `eval_every_steps` the segmenter
predicts each validation subject by sliding windows of the patch size
(probabilities averaged with Gaussian weights; Mondal averaged integer
labels), pooled Dice per tissue is logged and the best checkpoint (mean
tissue Dice) is kept in `workdir/best`. `evaluate` restores it and writes,
for the test subjects: metrics.json (pooled Dice/IoU/precision/recall per
tissue; per-subject Dice and HD95 in mm, summarised), per_subject.csv,
predictions/<id>.nii.gz with the subject's affine, figures/segmentation.png
(T1 / truth / prediction slices) and, for the GANs,
figures/generated_patches.png (real patches next to generated ones).
"""
import csv
import functools
import os
from typing import Any

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mrseg import losses
from mrseg import metrics as metrics_lib
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import volumes
from mrseg.eval import io as eval_io
from mrseg.eval import sliding_window
from mrseg.models import mrigan
from mrseg.models.layers import compute_dtype
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import parallel as parallel_lib
from mrseg.train import runner as runner_lib
from mrseg.train import state as state_lib
from mrseg.train.state import GANState
from mrseg.train.state import NetState
# mrseg.data.patches, mrseg.data.pipeline (TensorFlow) and mrseg.train.logs
# (clu) are imported where they are used: the step, the models and inference
# (make_train_step, create_state, make_predict_fn, predict_subject) then run
# where TensorFlow is not installed, e.g. benchmarks/mrigan_step.py on a GPU.

KINDS = ('supervised', 'fewshot_gan', 'mrigan')
CLASS_NAMES = ('background', 'csf', 'gm', 'wm')
BRAIN_MASKS = ('source', 'nonzero')
# Named values of config.loss.class_weights (else K numbers; () = none).
CLASS_WEIGHTS = ('frequency', 'mondal')
LABELLED_LOSSES = ('ce', 'dice_ce')
GENERATOR_OBJECTIVES = ('feature_matching', 'paper_eq7_8')
# Loss keys added after runs were saved, with the values that reproduce them.
_LOSS_DEFAULTS = {'labelled_loss': 'ce',
                  'generator_objective': 'feature_matching',
                  'unsupervised_warmup_steps': 0, 'transfer_weight': 0.0,
                  'transfer_start_step': 0}

# Folded into the run's key for draws that are not training steps.
_INIT, _FIGURE = 10**9 + 3, 10**9 + 4
# Stream tags inside a step's key.
_D_LABELLED, _D_UNLABELLED, _D_FAKE, _G_NOISE, _G_FAKE = range(5)

# ----------------------------------------------------------------------------
# Config, models, state.


def modalities(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.data.modalities ('t1,t2') as a tuple."""
  out = tuple(m.strip() for m in str(config.data.modalities).split(',')
              if m.strip())
  if not out:
    raise ValueError('config.data.modalities is empty; e.g. t1 or t1,t2.')
  return out


def is_gan(config: ml_collections.ConfigDict) -> bool:
  return config.model.kind != 'supervised'


def check_config(config: ml_collections.ConfigDict,
                 num_devices: int = 1) -> None:
  """Fails early, with the key to change, on an inconsistent config."""
  kind = config.model.kind
  if kind not in KINDS:
    raise ValueError(f'Unsupported model.kind {kind!r}; choose one of '
                     f'{KINDS}.')
  class_weight_spec(config)
  _check_loss_options(config)
  if labelled_loss(config) not in LABELLED_LOSSES:
    raise ValueError(f'Unsupported loss.labelled_loss '
                     f'{labelled_loss(config)!r}; choose one of '
                     f'{LABELLED_LOSSES}.')
  patch = config.data.patch_size
  factor = 2**(len(config.model.discriminator.features) - 1)
  if patch % factor:
    raise ValueError(f'data.patch_size={patch} must be divisible by {factor} '
                     '(2**(levels - 1) of model.discriminator.features).')
  window = config.eval.window_size
  if window and window % factor:
    raise ValueError(f'eval.window_size={window} must be divisible by '
                     f'{factor}, like data.patch_size.')
  sizes = {'batch_size': config.batch_size,
           'eval.window_batch_size': config.eval.window_batch_size}
  if is_gan(config):
    sizes['unlabelled_batch_size'] = config.unlabelled_batch_size
  for name, size in sizes.items():
    if size <= 0 or size % num_devices:
      raise ValueError(f'config.{name}={size} must be positive and divisible '
                       f'by the number of devices ({num_devices}).')
  if kind == 'mrigan' and (config.unlabelled_batch_size %
                           config.batch_size):
    raise ValueError(
        f'config.unlabelled_batch_size={config.unlabelled_batch_size} must be '
        f'a multiple of config.batch_size={config.batch_size}: each labelled '
        "patch's tissue map conditions the same number of generated patches.")
  if kind == 'fewshot_gan':
    noise_base_size(config)
  if config.data.brain_mask not in BRAIN_MASKS:
    raise ValueError(f'Unsupported data.brain_mask '
                     f'{config.data.brain_mask!r}; choose one of '
                     f'{BRAIN_MASKS}.')


def loss_option(config: ml_collections.ConfigDict, name: str) -> Any:
  """config.loss.<name>; for runs saved before it existed, _LOSS_DEFAULTS."""
  return config.loss.get(name, _LOSS_DEFAULTS[name])


def labelled_loss(config: ml_collections.ConfigDict) -> str:
  """config.loss.labelled_loss; 'ce' in runs saved before the key existed."""
  return loss_option(config, 'labelled_loss')


def _check_loss_options(config: ml_collections.ConfigDict) -> None:
  """Fails on an unknown generator objective or a bad warm-up / transfer."""
  objective = loss_option(config, 'generator_objective')
  if objective not in GENERATOR_OBJECTIVES:
    raise ValueError(f'Unsupported loss.generator_objective {objective!r}; '
                     f'choose one of {GENERATOR_OBJECTIVES}.')
  for name in ('unsupervised_warmup_steps', 'transfer_weight',
               'transfer_start_step'):
    if loss_option(config, name) < 0:
      raise ValueError(f'config.loss.{name} must be >= 0.')
  g = config.model.generator
  if loss_option(config, 'transfer_weight') > 0 and not (
      config.model.kind == 'mrigan' and g.use_tissue_encoder):
    raise ValueError(
        'loss.transfer_weight > 0 labels generated patches with the tissue '
        "maps that made them: it needs model.kind='mrigan' with "
        'model.generator.use_tissue_encoder=True.')


def class_weight_spec(config: ml_collections.ConfigDict
                      ) -> str | tuple[float, ...]:
  """config.loss.class_weights: a name of CLASS_WEIGHTS or K floats.

  K numbers may also come as a string, '1,10,1,1' (a sweep override, whose
  copied config holds the default's type, str).

  Raises:
    ValueError: for an unknown name or not one weight per class.
  """
  value = config.loss.class_weights
  if value in CLASS_WEIGHTS:
    return value
  if isinstance(value, str):
    value = [v for v in value.strip('() ').split(',') if v.strip()]
  k = config.model.num_classes
  try:
    weights = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    weights = None
  if weights is None or (weights and len(weights) != k):
    raise ValueError(
        f'loss.class_weights={config.loss.class_weights!r}: choose one of '
        f'{CLASS_WEIGHTS} or give one weight per class '
        f'(model.num_classes={k}); () for none.')
  return weights


def explicit_class_weights(config: ml_collections.ConfigDict
                           ) -> tuple[float, ...] | None:
  """The weights config.loss.class_weights gives without data (None: none).

  Raises:
    ValueError: for 'frequency', which needs the labelled subjects
      (`resolve_class_weights`).
  """
  spec = class_weight_spec(config)
  if spec == 'frequency':
    raise ValueError(
        "loss.class_weights='frequency' is computed from the labelled "
        'subjects: pass make_train_step(config, resolve_class_weights('
        "config, labelled)['weights']), as train_and_evaluate does, or "
        "set loss.class_weights to 'mondal' or K numbers.")
  if spec == 'mondal':
    return tuple(losses.MONDAL_CLASS_WEIGHTS)
  return spec or None


def resolve_class_weights(config: ml_collections.ConfigDict,
                          labelled: list[dict[str, Any]]) -> dict[str, Any]:
  """The labelled loss's class weights, with the label counts behind them.

  Args:
    config: the run's config.
    labelled: the labelled training subjects (anything with a 'label').

  Returns:
    {'scheme': 'frequency', 'mondal' or 'given', 'classes', 'counts' and
    'frequencies' (voxels per class; ignore_label not counted, background
    counted, as in the loss), 'weights' (K floats, or None: unweighted)}.
    'frequency' weights are `losses.median_frequency_weights(counts)`.
  """
  k = config.model.num_classes
  spec = class_weight_spec(config)
  counts = volumes.label_counts(labelled, k, config.loss.ignore_label)
  if spec == 'frequency':
    weights = tuple(losses.median_frequency_weights(counts).tolist())
  else:
    weights = explicit_class_weights(config)
  frequencies = counts / max(int(counts.sum()), 1)
  names = class_names(k)
  scheme = spec if isinstance(spec, str) else 'given'
  logging.info('Labelled voxels per class: %s.', ', '.join(
      f'{n} {c} ({f:.2%})' for n, c, f in zip(names, counts, frequencies)))
  logging.info('Class weights (%s): %s.', scheme, weights and ', '.join(
      f'{n} {w:.3f}' for n, w in zip(names, weights)))
  return {'scheme': scheme, 'classes': names, 'counts': counts.tolist(),
          'frequencies': frequencies.tolist(),
          'weights': list(weights) if weights else None}


def noise_base_size(config: ml_collections.ConfigDict) -> int:
  """The NoiseGenerator's starting size, so that it makes whole patches."""
  ups = len(config.model.noise_generator.up_features) + 1
  patch = config.data.patch_size
  if patch % 2**ups:
    raise ValueError(
        f'The noise generator doubles its size {ups} times '
        f'(model.noise_generator.up_features + the output layer), so '
        f'data.patch_size={patch} must be divisible by {2**ups}.')
  return patch // 2**ups


def build_discriminator(config: ml_collections.ConfigDict
                        ) -> mrigan.SegDiscriminator:
  d = config.model.discriminator
  return mrigan.SegDiscriminator(
      num_classes=config.model.num_classes, features=tuple(d.features),
      convs_per_level=d.convs_per_level, kernel_size=d.kernel_size,
      up_kernel=d.up_kernel, out_kernel=d.out_kernel, pool=d.pool,
      negative_slope=d.negative_slope, weight_norm=d.weight_norm,
      dropout_rate=d.dropout_rate, upsample=d.upsample,
      # Configs written before the option have no key: the same function
      # either way, so the fast one.
      conv=d.get('conv', 'depth_to_channels'), weight_init=d.weight_init,
      dtype=compute_dtype(config.model.dtype))


def build_generator(config: ml_collections.ConfigDict,
                    bn_axis_name: str | None = None):
  """The kind's generator (None for 'supervised').

  Args:
    config: the run's config.
    bn_axis_name: the pmap axis over which batch norm pools its statistics
      (None where the step sees the whole batch).
  """
  kind = config.model.kind
  dtype = compute_dtype(config.model.dtype)
  channels = len(modalities(config))
  if kind == 'fewshot_gan':
    g = config.model.noise_generator
    return mrigan.NoiseGenerator(
        out_channels=channels, base_size=noise_base_size(config),
        base_features=g.base_features, up_features=tuple(g.up_features),
        up_kernel=g.up_kernel, spatial_dims=3, norm=g.norm,
        bn_momentum=g.bn_momentum, bn_axis_name=bn_axis_name,
        weight_norm_output=g.weight_norm_output, upsample=g.upsample,
        weight_init=g.weight_init, dtype=dtype)
  if kind == 'mrigan':
    g = config.model.generator
    return mrigan.MRIGANGenerator(
        out_channels=channels, num_classes=config.model.num_classes,
        features=tuple(g.features), tissue_features=tuple(g.tissue_features),
        code_dim=g.code_dim, tissue_code=g.tissue_code,
        use_mri_encoder=g.use_mri_encoder,
        use_tissue_encoder=g.use_tissue_encoder, fusion=g.fusion,
        num_gt_blocks=g.num_gt_blocks, gt_mlp_layers=g.gt_mlp_layers,
        gt_mlp_features=g.gt_mlp_features, use_boundary=g.use_boundary,
        boundary_width=g.boundary_width, noise_dim=g.noise_dim,
        latent_size=config.data.patch_size // 2**(len(g.features) - 1),
        norm=g.norm, bn_momentum=g.bn_momentum, bn_axis_name=bn_axis_name,
        negative_slope=g.negative_slope, up_kernel=g.up_kernel,
        upsample=g.upsample, conv=g.get('conv', 'depth_to_channels'),
        weight_init=g.weight_init, dtype=dtype)
  return None


def _noise_dim(config: ml_collections.ConfigDict) -> int:
  if config.model.kind == 'fewshot_gan':
    return config.model.noise_generator.noise_dim
  if config.model.kind == 'mrigan':
    return config.model.generator.noise_dim
  return 0


def generator_inputs(config: ml_collections.ConfigDict,
                     labels: jax.Array | None, mri: jax.Array | None,
                     noise_keys: jax.Array) -> dict[str, Any]:
  """Keyword inputs of the generator for one (local) batch of fakes.

  Args:
    config: the run's config.
    labels: labelled patches' labels [B_l, X, Y, Z] ('mrigan').
    mri: unlabelled patches [B_u, X, Y, Z, C] ('mrigan').
    noise_keys: one key per generated patch [B_u].

  Returns:
    kwargs for `generator.apply`; 'tissues' repeats each labelled map
    B_u / B_l times (see the module docstring for the pairing).
  """
  n = noise_keys.shape[0]
  dim = _noise_dim(config)
  z = None
  if dim > 0:
    # Mondal et al. draw z from U(-1, 1).
    z = jax.vmap(lambda k: jax.random.uniform(k, (dim,), minval=-1.0,
                                              maxval=1.0))(noise_keys)
  if config.model.kind == 'fewshot_gan':
    return {'z': z}
  g = config.model.generator
  inputs = {'z': z}
  if g.use_mri_encoder:
    inputs['mri'] = mri
  if g.use_tissue_encoder or g.use_boundary:
    inputs['tissues'] = tissue_maps(labels, n)
  return inputs


def tissue_maps(labels: jax.Array, n: int) -> jax.Array:
  """Labelled maps [B_l, ...] -> [n, ...] int32, map j // (n / B_l) at j."""
  repeats = n // labels.shape[0]
  return jnp.repeat(labels.astype(jnp.int32), repeats, axis=0)


def _apply_generator(generator, variables: dict[str, Any],
                     inputs: dict[str, Any]
                     ) -> tuple[jax.Array, jax.Array | None, Any]:
  """(patches, boundary logits or None, new batch stats) in training mode."""
  kwargs = dict(inputs)
  if isinstance(generator, mrigan.NoiseGenerator):
    out, updates = generator.apply(variables, kwargs['z'], train=True,
                                   mutable=['batch_stats'])
    boundary = None
  else:
    if not generator.use_tissue_encoder and not generator.use_boundary:
      kwargs.pop('tissues', None)
    (out, boundary), updates = generator.apply(
        variables, **kwargs, train=True, mutable=['batch_stats'])
  return out, boundary, updates.get('batch_stats', {})


def _init_fn(config: ml_collections.ConfigDict):
  """`init(key) -> GANState`; 'supervised' has a generator without params."""
  check_config(config)
  disc = build_discriminator(config)
  gen = build_generator(config)
  p, c = config.data.patch_size, len(modalities(config))
  o = config.optim
  d_tx = optax.adam(o.d_learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
  g_tx = optax.adam(o.g_learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)

  def init(key):
    k_g, k_d, k_z = jax.random.split(jax.random.fold_in(key, _INIT), 3)
    d_vars = disc.init(k_d, jnp.zeros((1, p, p, p, c)))
    if gen is None:
      g_vars = {'params': {}}
    else:
      inputs = generator_inputs(config, jnp.zeros((1, p, p, p), jnp.int32),
                                jnp.zeros((1, p, p, p, c)),
                                jax.random.split(k_z, 1))
      if isinstance(gen, mrigan.NoiseGenerator):
        g_vars = gen.init(k_g, inputs['z'])
      else:
        if not gen.use_tissue_encoder and not gen.use_boundary:
          inputs.pop('tissues', None)
        g_vars = gen.init(k_g, **inputs)
    return GANState.create(NetState.create(g_vars, g_tx),
                           NetState.create(d_vars, d_tx))

  return init


def create_state(config: ml_collections.ConfigDict,
                 key: jax.Array) -> GANState:
  """A fresh state with both networks initialised from `key`."""
  return state_lib.compile_init(_init_fn(config), key)(key)


def abstract_state(config: ml_collections.ConfigDict) -> GANState:
  """Shapes and dtypes of the state (no compute): a target for restores."""
  return jax.eval_shape(_init_fn(config), jax.random.key(0))


# ----------------------------------------------------------------------------
# The training step.


def _gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """[num_devices, ...] copies of a per-device value ([1, ...] under jit)."""
  return x[None] if axis_name is None else lax.all_gather(x, axis_name)


def _global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """The sum over the devices of a per-device value."""
  return jnp.sum(_gather(x, axis_name), axis=0)


def _labelled_term(config: ml_collections.ConfigDict,
                   weights: tuple[float, ...] | None, logits: jax.Array,
                   labels: jax.Array, axis_name: str | None) -> jax.Array:
  """The labelled CE (+ soft Dice) of the global batch (module docstring)."""
  l = config.loss
  labels = labels.astype(jnp.int32)
  valid = (labels != l.ignore_label).astype(jnp.float32)
  if l.ce_normalize == 'weights' and weights is not None:
    safe = jnp.where(valid > 0, labels, 0)
    denominator = jnp.sum(valid * jnp.asarray(weights, jnp.float32)[safe])
  else:
    denominator = jnp.sum(valid)
  mean = losses.labelled_loss(logits, labels, weights, l.ignore_label,
                              normalize=l.ce_normalize)
  # mean * denominator is the local sum of (weighted) CE: exactly 0 when no
  # voxel is valid, like the loss itself.
  total = _global_sum(mean * denominator, axis_name)
  loss = total / jnp.maximum(_global_sum(denominator, axis_name), 1e-12)
  if labelled_loss(config) == 'dice_ce':
    # Batch Dice of the global batch, from per-class sums.
    intersection, union = losses.soft_dice_terms(logits, labels,
                                                 l.ignore_label)
    loss += l.dice_weight * losses.dice_from_terms(
        _global_sum(intersection, axis_name), _global_sum(union, axis_name),
        include_background=l.dice_include_background)
  return loss


def _batch_mean(features: jax.Array, axis_name: str | None) -> jax.Array:
  """Mean over the global batch of [B, *spatial, C] -> [*spatial, C]."""
  return jnp.mean(_gather(jnp.mean(features, axis=0), axis_name), axis=0)


def _foreground_dice(cm: jax.Array) -> jax.Array:
  """Pooled Dice of all tissue voxels together; a progress number only."""
  tp = jnp.sum(jnp.diagonal(cm)[1:])
  fp = jnp.sum(cm[0, 1:])
  fn = jnp.sum(cm[1:, 0])
  return 2.0 * tp / jnp.maximum(2.0 * tp + fp + fn, 1.0)


def _d_objective(config: ml_collections.ConfigDict,
                 class_weights: tuple[float, ...] | None, logits: jax.Array,
                 labels: jax.Array, tissues: jax.Array | None, n_l: int,
                 step: jax.Array, axis_name: str | None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """D's loss on its logits of [labelled, unlabelled, generated] patches.

  lambda_l l_labelled and, for the GANs, + r(step) (lambda_u l_unlabelled +
  lambda_f l_fake) + [step >= transfer_start_step] lambda_t l_transfer: r is
  the warm-up ramp (1 without one), l_transfer the labelled term of the
  generated patches against `tissues`, the maps that conditioned them.

  Returns:
    (loss, metrics).
  """
  l = config.loss
  loss_l = _labelled_term(config, class_weights, logits[:n_l], labels,
                          axis_name)
  total = l.labelled_weight * loss_l
  aux = {'loss_labelled': loss_l}
  if not is_gan(config):
    return total, aux
  n_u = (logits.shape[0] - n_l) // 2
  loss_u = losses.unlabelled_loss(logits[n_l:n_l + n_u])
  loss_f = losses.fake_loss(logits[n_l + n_u:])
  w_u, w_f = l.unlabelled_weight, l.fake_weight
  warmup = loss_option(config, 'unsupervised_warmup_steps')
  if warmup:
    aux['unsupervised_ramp'] = ramp = losses.sigmoid_rampup(step, warmup)
    w_u, w_f = w_u * ramp, w_f * ramp
  total = total + w_u * loss_u + w_f * loss_f
  transfer = loss_option(config, 'transfer_weight')
  if transfer:
    aux['loss_transfer'] = loss_t = _labelled_term(
        config, class_weights, logits[n_l + n_u:], tissues, axis_name)
    on = step >= loss_option(config, 'transfer_start_step')
    total = total + jnp.where(on, transfer, 0.0) * loss_t
  lse = jax.nn.logsumexp(logits[n_l:], axis=-1)
  aux.update(
      loss_unlabelled=loss_u, loss_fake=loss_f,
      # D's mean probability that a voxel is real, Z / (Z + 1).
      d_real=jnp.mean(jax.nn.sigmoid(lse[:n_u])),
      d_fake=jnp.mean(jax.nn.sigmoid(lse[n_u:])))
  return total, aux


def _g_adversarial(config: ml_collections.ConfigDict, real_mean: jax.Array,
                   real_feats: jax.Array, fake_logits: jax.Array,
                   fake_feats: jax.Array, axis_name: str | None
                   ) -> tuple[str, jax.Array]:
  """The generator's term against D, and its metric name.

  'feature_matching' between the global batch means of D's features (the
  default); 'paper_eq7_8': eq. (7)-(8) as printed
  (`losses.paper_eq7_8_loss`), fake j against real patch j.
  """
  l = config.loss
  if loss_option(config, 'generator_objective') == 'paper_eq7_8':
    return 'paper_eq7_8', losses.paper_eq7_8_loss(real_mean, real_feats,
                                                  fake_logits)
  return 'feature_matching', losses.feature_matching_loss(
      real_mean[None], _batch_mean(fake_feats, axis_name)[None],
      kind=l.feature_matching,
      reduce_spatial=l.feature_matching_spatial_mean)


def make_train_step(config: ml_collections.ConfigDict,
                    class_weights: Any = None):
  """Returns `step(state, batch, key, *, axis_name=None) -> (state, metrics)`.

  `batch` holds 'labelled' {'image' [B_l, X, Y, Z, C], 'label' [B_l, X, Y,
  Z]} and, for the GANs, 'unlabelled' {'image' [B_u, X, Y, Z, C]}.
  `class_weights` (K floats) weigh the labelled CE; None: the config's
  (`explicit_class_weights`; 'frequency' must be resolved and passed).
  """
  check_config(config)
  if class_weights is None:
    class_weights = explicit_class_weights(config)
  class_weights = tuple(class_weights) if class_weights else None
  kind = config.model.kind
  gan = is_gan(config)
  disc = build_discriminator(config)
  l = config.loss
  k = config.model.num_classes
  dropout = config.model.discriminator.dropout_rate > 0
  boundary_on = (kind == 'mrigan' and config.model.generator.use_boundary)
  pos_weight = l.boundary_pos_weight or None

  def d_apply(params, x, keys, return_features=False):
    if not dropout:
      return disc.apply({'params': params}, x, train=True,
                        return_features=return_features)
    # One example per call: dropout masks keyed per example, so they do not
    # depend on how the batch is split over devices.
    def one(xi, ki):
      out = disc.apply({'params': params}, xi[None], train=True,
                       return_features=return_features, rngs={'dropout': ki})
      return jax.tree.map(lambda a: a[0], out)
    return jax.vmap(one)(x, keys)

  def step(state: GANState, batch: dict[str, Any], key: jax.Array, *,
           axis_name: str | None = None):
    key = jax.random.fold_in(key, state.step)
    keys = lambda tag, n: parallel_lib.example_keys(
        jax.random.fold_in(key, tag), n, axis_name)
    images = batch['labelled']['image']
    labels = batch['labelled']['label'].astype(jnp.int32)
    n_l = images.shape[0]
    generator = build_generator(config, bn_axis_name=axis_name)

    tissues = None
    if gan:
      real = batch['unlabelled']['image']
      n_u = real.shape[0]
      inputs = generator_inputs(config, labels, real, keys(_G_NOISE, n_u))
      tissues = inputs.get('tissues')
      g_vars = {'params': state.gen.params}
      if state.gen.batch_stats:
        g_vars['batch_stats'] = state.gen.batch_stats
      fake, _, _ = _apply_generator(generator, g_vars, inputs)
      fake = lax.stop_gradient(fake)
      d_inputs = jnp.concatenate([images, real, fake.astype(images.dtype)])
      d_keys = jnp.concatenate([keys(_D_LABELLED, n_l),
                                keys(_D_UNLABELLED, n_u), keys(_D_FAKE, n_u)])
    else:
      d_inputs, d_keys = images, keys(_D_LABELLED, n_l)

    def d_loss_fn(params):
      logits = d_apply(params, d_inputs, d_keys)
      total, aux = _d_objective(config, class_weights, logits, labels,
                                tissues, n_l, state.step, axis_name)
      return total, (aux, logits[:n_l])

    (d_loss, (metrics, lab_logits)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(state.disc.params)
    new_disc = state.disc.apply_gradients(
        parallel_lib.mean_over_devices(d_grads, axis_name))
    metrics['d_loss'] = d_loss
    cm = metrics_lib.confusion_matrix(jnp.argmax(lab_logits, -1), labels, k,
                                      ignore_label=l.ignore_label)
    if axis_name is not None:
      cm = lax.psum(cm, axis_name)
    metrics['train_dice'] = _foreground_dice(cm)
    new_gen = state.gen

    if gan:
      g_keys = keys(_G_FAKE, n_u)
      _, real_feats = d_apply(new_disc.params, real, g_keys,
                              return_features=True)
      real_mean = lax.stop_gradient(_batch_mean(real_feats, axis_name))

      def g_loss_fn(params):
        variables = {'params': params}
        if state.gen.batch_stats:
          variables['batch_stats'] = state.gen.batch_stats
        fake, boundary, stats = _apply_generator(generator, variables, inputs)
        fake_logits, fake_feats = d_apply(new_disc.params, fake, g_keys,
                                          return_features=True)
        name, adversarial = _g_adversarial(config, real_mean, real_feats,
                                           fake_logits, fake_feats,
                                           axis_name)
        total = l.feature_matching_weight * adversarial
        aux = {name: adversarial}
        if boundary_on:
          targets = mrigan.boundaries_from_labels(inputs['tissues'], k)
          b = losses.boundary_loss(boundary, targets, pos_weight=pos_weight)
          total = total + l.boundary_weight * b
          aux['boundary_loss'] = b
        return total, (aux, stats)

      (g_loss, (g_metrics, stats)), g_grads = jax.value_and_grad(
          g_loss_fn, has_aux=True)(state.gen.params)
      # Batch norm already pooled over the global batch: every device holds
      # the same statistics.
      new_gen = state.gen.apply_gradients(
          parallel_lib.mean_over_devices(g_grads, axis_name),
          batch_stats=stats if state.gen.batch_stats else
          state.gen.batch_stats)
      metrics.update(g_metrics, g_loss=g_loss)

    metrics = parallel_lib.mean_over_devices(metrics, axis_name)
    return state.replace(step=state.step + 1, gen=new_gen,
                         disc=new_disc), metrics

  return step


# ----------------------------------------------------------------------------
# Data.


def slab_subjects(subjects: list[dict[str, Any]], slabs: int,
                  axis: int = 0) -> list[dict[str, Any]]:
  """Cuts each subject's brain into `slabs` equal slabs along `axis`.

  The brain's extent along the axis (from the brain mask) is split evenly;
  slab k keeps that range of every volume, gets id '<id>-slab<k>' and an
  affine shifted by its offset, so a prediction written with it overlays
  the original image.
  """
  if slabs <= 1:
    return subjects
  if axis not in (0, 1, 2):
    raise ValueError(f'data.slab_axis must be 0, 1 or 2; got {axis}.')
  out = []
  for subject in subjects:
    mask = np.asarray(subject['brain_mask'], bool)
    others = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(mask.any(axis=others))
    lo, hi = int(present[0]), int(present[-1]) + 1
    if hi - lo < slabs:
      raise volumes.DataError(
          f'subject {subject["id"]!r}: its brain spans {hi - lo} voxels '
          f'along axis {axis}, too few for {slabs} slabs.')
    edges = np.round(np.linspace(lo, hi, slabs + 1)).astype(int)
    shape = mask.shape
    for i in range(slabs):
      index = [slice(None)] * 3
      index[axis] = slice(edges[i], edges[i + 1])
      index = tuple(index)
      slab = {}
      for name, value in subject.items():
        if isinstance(value, np.ndarray) and value.shape == shape:
          slab[name] = value[index]
        else:
          slab[name] = value
      affine = np.array(subject['affine'], np.float64)
      affine[:3, 3] += affine[:3, axis] * edges[i]
      slab['affine'] = affine
      slab['id'] = f'{subject["id"]}-slab{i}'
      out.append(slab)
  return out


def block_downsample(subject: dict[str, Any], factor: int
                     ) -> dict[str, Any]:
  """A subject on a grid `factor` times coarser (for CPU-sized runs).

  Images are block means; labels the most frequent label of each block
  (ties to the lower label; 255 counts like any label); the brain mask a
  majority vote. The affine maps the new voxel centres (block centres) to
  the same world positions. Trailing voxels that do not fill a block are
  dropped.
  """
  if factor <= 1:
    return subject
  # An unlabelled image (--mode=predict) has its brain mask's grid.
  shape = np.asarray(subject['label' if 'label' in subject
                             else 'brain_mask']).shape
  crop = tuple(slice(0, (n // factor) * factor) for n in shape)
  new_shape = tuple(n // factor for n in shape)

  def blocks(x):
    x = np.asarray(x)[crop]
    x = x.reshape(new_shape[0], factor, new_shape[1], factor, new_shape[2],
                  factor)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(new_shape + (-1,))

  out = {}
  for name, value in subject.items():
    if not (isinstance(value, np.ndarray) and value.shape == shape):
      out[name] = value
    elif name == 'label':
      b = blocks(value)
      values = np.unique(b)
      counts = np.stack([(b == v).sum(-1) for v in values], axis=-1)
      out[name] = values[counts.argmax(-1)].astype(value.dtype)
    elif value.dtype == bool:
      out[name] = blocks(value).mean(-1) >= 0.5
    else:
      out[name] = blocks(value).mean(-1).astype(value.dtype)
  affine = np.array(subject['affine'], np.float64)
  centre = affine @ np.r_[(factor - 1) / 2.0, (factor - 1) / 2.0,
                          (factor - 1) / 2.0, 1.0]
  affine[:3, :3] *= factor
  affine[:3, 3] = centre[:3]
  out['affine'] = affine
  return out


def load_splits(config: ml_collections.ConfigDict
                ) -> dict[str, list[dict[str, Any]]]:
  """Loads, splits and normalises the subjects of `config.data`.

  Returns:
    {'labelled', 'validation', 'test', 'unlabelled'}: normalised subject
    dicts (see mrseg.data.volumes).
  """
  d = config.data
  mods = modalities(config)
  subjects = volumes.load_volumes(
      d.name, modalities=mods, num_subjects=d.num_subjects, seed=d.seed,
      downsample=d.downsample, num_classes=config.model.num_classes,
      manual_dir=d.manual_dir, data_dir=d.data_dir)
  if d.brain_mask == 'nonzero':
    # Skull-stripped scans: the brain is where the image is, not where the
    # labels are (FreeSurfer leaves sulcal CSF unlabelled; a label-derived
    # mask would paint the label border into the normalised image).
    for s in subjects:
      s['brain_mask'] = np.any([np.asarray(s[m]) > 0 for m in mods], axis=0)
  subjects = [block_downsample(s, d.block_downsample) for s in subjects]
  # Normalised before cutting slabs, so that all slabs of a subject share
  # one intensity scale (a lateral slab has no ventricles to set its min).
  subjects = volumes.normalize_subjects(
      subjects, mods, d.normalization,
      percentiles=tuple(d.percentiles) or None)
  subjects = slab_subjects(subjects, d.slabs, d.slab_axis)
  out = volumes.few_shot_split(
      subjects, num_labelled=d.num_labelled, num_validation=d.num_validation,
      num_test=d.num_test, num_unlabelled=d.num_unlabelled,
      seed=d.split_seed, shuffle=d.shuffle)
  for name, group in out.items():
    logging.info('%s subjects (%d): %s', name, len(group),
                 [s['id'] for s in group])
  return out


def _pad_value(config: ml_collections.ConfigDict) -> float:
  return volumes.background_value(config.data.normalization)


def train_dataset(config: ml_collections.ConfigDict,
                  splits: dict[str, list[dict[str, Any]]], start_step: int,
                  global_batch: bool = False):
  """The step's batches as a tf.data.Dataset of nested dicts.

  Args:
    config: the run's config.
    splits: from `load_splits`.
    start_step: the first step to produce (a resumed run's step).
    global_batch: read whole global batches (figures) instead of this
      process's share.
  """
  from mrseg.data import patches  # pylint: disable=g-import-not-at-top
  d = config.data
  kwargs = dict(patch_size=d.patch_size, sampling=d.sampling,
                stride=d.stride, min_foreground=d.min_foreground,
                foreground_fraction=d.foreground_fraction,
                start_step=start_step, pad_value=_pad_value(config),
                num_classes=config.model.num_classes)
  if global_batch:
    kwargs.update(process_index=0, process_count=1)
  mods = modalities(config)
  if not splits['labelled']:
    raise ValueError('The split has no labelled training subject; set '
                     'data.num_labelled >= 1.')
  if is_gan(config):
    if not splits['unlabelled']:
      raise ValueError(
          f'model.kind={config.model.kind!r} needs unlabelled subjects, but '
          'the split leaves none: load more (data.num_subjects) or lower '
          'data.num_test / num_validation / num_labelled.')
    return patches.semi_supervised_dataset(
        splits['labelled'], splits['unlabelled'], mods, config.batch_size,
        config.unlabelled_batch_size, config.seed,
        class_balanced=d.class_balanced, **kwargs)
  ds = patches.patch_dataset(splits['labelled'], mods, config.batch_size,
                             config.seed, labelled=True,
                             class_balanced=d.class_balanced, **kwargs)
  return ds.map(lambda b: {'labelled': b})


# ----------------------------------------------------------------------------
# Inference.


def make_predict_fn(config: ml_collections.ConfigDict,
                    parallel: parallel_lib.Parallel):
  """`predict(params, windows [B, p, p, p, C]) -> logits`, sharded over B."""
  disc = build_discriminator(config)
  return jax.jit(lambda params, x: disc.apply({'params': params}, x),
                 in_shardings=(parallel.replicated, parallel.data_sharding),
                 out_shardings=parallel.data_sharding)


def predict_subject(config: ml_collections.ConfigDict, predict, params: Any,
                    image: np.ndarray) -> np.ndarray:
  """Class probabilities [X, Y, Z, K] of a whole volume [X, Y, Z, C]."""
  p = config.eval.window_size or config.data.patch_size
  return sliding_window.sliding_window_inference(
      lambda windows: predict(params, windows), image, window=(p, p, p),
      overlap=config.eval.overlap, weighting=config.eval.weighting,
      batch_size=config.eval.window_batch_size,
      pad_value=_pad_value(config))


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
  """Voxel sizes in mm: the lengths of the affine's first three columns."""
  a = np.asarray(affine, np.float64)[:3, :3]
  return tuple(float(v) for v in np.linalg.norm(a, axis=0))


def confusion_of(config: ml_collections.ConfigDict, predict, params: Any,
                 subjects: list[dict[str, Any]]
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
  """Exact int64 confusion matrix over all subjects, and the predictions."""
  k = config.model.num_classes
  total = np.zeros((k, k), np.int64)
  predictions = []
  for s in subjects:
    image = volumes.stack_modalities(s, modalities(config))
    pred = predict_subject(config, predict, params, image).argmax(-1)
    pred = pred.astype(np.uint8)
    total += metrics_lib.case_confusion_matrix(pred, s['label'], k,
                                               config.loss.ignore_label)
    predictions.append(pred)
  return total, predictions


def class_names(num_classes: int) -> list[str]:
  if num_classes == len(CLASS_NAMES):
    return list(CLASS_NAMES)
  return ['background'] + [f'class{i}' for i in range(1, num_classes)]


# ----------------------------------------------------------------------------
# Training.


# Counts a run needs above zero, checked before anything is written.
POSITIVE_KEYS = ('num_train_steps', 'log_every_steps', 'eval_every_steps',
                 'checkpoint_every_steps', 'keep_checkpoints')


@workdir_lib.locked
def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`, keeps the best checkpoint, evaluates.

  Returns:
    The test metrics written to metrics.json, or the best validation record
    if `config.eval.after_training` is off.
  """
  from mrseg.data import pipeline  # pylint: disable=g-import-not-at-top
  run = runner_lib.Runner(
      config, workdir, positive=POSITIVE_KEYS,
      check=lambda parallel: check_config(config, parallel.num_devices))
  splits = load_splits(config)
  if not splits['validation']:
    raise ValueError('Validation picks the best checkpoint: set '
                     'data.num_validation >= 1.')
  weights = resolve_class_weights(config, splits['labelled'])
  workdir_lib.write_json(os.path.join(workdir, 'class_weights.json'), weights)

  def batches(start_step: int):
    return pipeline.as_numpy(train_dataset(config, splits, start_step))

  result = run.train(runner_lib.Task(
      num_steps=config.num_train_steps,
      init=functools.partial(create_state, config),
      abstract=functools.partial(abstract_state, config),
      step=make_train_step(config, weights['weights']), batches=batches,
      validation=runner_lib.Validation(
          _make_validate(config, run.parallel, splits['validation']),
          config.eval_every_steps, 'val_mean_dice'),
      name=config.model.kind))
  if result.best['step'] is None:
    raise RuntimeError('No validation Dice was defined: no best checkpoint '
                       'to evaluate.')
  plot_curves(workdir)
  if config.eval.after_training:
    return evaluate(config, workdir, splits=splits)
  return result.best


def _make_validate(config: ml_collections.ConfigDict,
                   parallel: parallel_lib.Parallel,
                   subjects: list[dict[str, Any]]):
  """`validate(step, host_state) -> record`: pooled Dice per tissue."""
  predict = make_predict_fn(config, parallel)
  names = class_names(config.model.num_classes)

  def validate(step: int, host_state: GANState) -> dict[str, float]:
    params = jax.device_put(host_state.disc.params, parallel.replicated)
    cm, _ = confusion_of(config, predict, params, subjects)
    pooled = metrics_lib.pooled_metrics(cm, names)
    record = {'val_mean_dice': pooled['mean_dice']}
    record.update({f'val_dice/{n}': pooled[f'dice/{n}'] for n in names[1:]})
    logging.info('step %d validation: %s', step,
                 ', '.join(f'{k}={v:.4f}' for k, v in record.items()))
    return record

  return validate


def plot_curves(workdir: str) -> None:
  """Training losses and validation Dice against step."""
  from mrseg.train import logs  # pylint: disable=g-import-not-at-top
  records = logs.read_history(os.path.join(workdir, 'history.jsonl'))
  figures = os.path.join(workdir, 'figures')
  viz.plot_losses(records, os.path.join(figures, 'losses.png'),
                  keys=('d_loss', 'g_loss', 'loss_labelled',
                        'loss_unlabelled', 'loss_fake', 'loss_transfer',
                        'feature_matching', 'paper_eq7_8', 'boundary_loss'),
                  title='Training losses')
  viz.plot_losses(records, os.path.join(figures, 'val_dice.png'),
                  keys=('val_mean_dice', 'val_dice/csf', 'val_dice/gm',
                        'val_dice/wm', 'train_dice'),
                  title='Dice (validation: pooled per tissue)',
                  ylabel='Dice')


# ----------------------------------------------------------------------------
# Evaluation.


def restore_best(config: ml_collections.ConfigDict,
                 workdir: str) -> tuple[GANState, int]:
  """The best checkpoint (by validation Dice) and its step.

  Raises:
    FileNotFoundError: if `workdir/best` holds no checkpoint.
  """
  return checkpoint_lib.restore_best(workdir, abstract_state(config))


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             splits: dict[str, list[dict[str, Any]]] | None = None
             ) -> dict[str, Any]:
  """Evaluates the best checkpoint on the test subjects; writes the report.

  Args:
    config: the run's config.
    workdir: the trained run's folder.
    splits: `load_splits(config)`, if already loaded.

  Returns:
    The metrics written to metrics.json. Top-level numbers (for sweep
    tables): pooled test Dice per tissue and their mean, and the mean
    per-subject HD95 per tissue in mm.

  Raises:
    FileNotFoundError: if there is no best checkpoint yet.
  """
  state, step = restore_best(config, workdir)
  parallel = parallel_lib.Parallel(config.parallel)
  check_config(config, parallel.num_devices)
  splits = splits or load_splits(config)
  test = splits['test']
  if not test:
    raise ValueError('No test subjects: set data.num_test >= 1.')
  k = config.model.num_classes
  names = class_names(k)
  predict = make_predict_fn(config, parallel)
  params = jax.device_put(state.disc.params, parallel.replicated)
  total, predictions = confusion_of(config, predict, params, test)

  cases = []
  for s, pred in zip(test, predictions):
    case = {'id': s['id']}
    case.update(metrics_lib.case_metrics(
        pred, s['label'], k, spacing=voxel_spacing(s['affine']),
        class_names=names, ignore_label=config.loss.ignore_label,
        empty_value=config.eval.hd95_empty_value))
    cases.append(case)
    if config.eval.write_nifti:
      eval_io.write_nifti(pred, s['affine'], os.path.join(
          workdir, 'predictions', f'{s["id"]}.nii.gz'))

  best_record = {}
  best_path = os.path.join(workdir, 'best.json')
  if os.path.exists(best_path):
    best_record = workdir_lib.read_json(best_path)
  pooled = metrics_lib.pooled_metrics(total, names)
  per_subject = metrics_lib.summarize(
      [{m: v for m, v in c.items() if m != 'id'} for c in cases])
  result = {
      'kind': config.model.kind,
      'checkpoint_step': step,
      'mean_dice': pooled['mean_dice'],
      **{f'dice/{n}': pooled[f'dice/{n}'] for n in names[1:]},
      **{f'hd95/{n}': per_subject[f'hd95/{n}/mean'] for n in names[1:]},
      'data': config.data.name,
      'test_ids': [s['id'] for s in test],
      'validation': {m: v for m, v in best_record.items() if m != 'step'},
      'distance_unit': 'mm',
      'pooled': pooled,
      'per_subject': per_subject,
      'confusion_matrix': total.tolist(),
      'class_weights': resolve_class_weights(config, splits['labelled']),
  }
  _write_csv(cases, os.path.join(workdir, 'per_subject.csv'))
  plot_segmentations(config, test, predictions,
                     os.path.join(workdir, 'figures', 'segmentation.png'))
  if is_gan(config):
    plot_generated(config, state, splits,
                   os.path.join(workdir, 'figures', 'generated_patches.png'))
  if os.path.exists(os.path.join(workdir, 'history.jsonl')):
    plot_curves(workdir)
  # Last: the marker that sweeps read as "done".
  workdir_lib.write_json(os.path.join(workdir, 'metrics.json'), result)
  logging.info('Test (%d subjects, best step %d): pooled Dice %s; mean %.4f.',
               len(test), step,
               ', '.join(f'{n}={pooled[f"dice/{n}"]:.4f}' for n in names[1:]),
               pooled['mean_dice'])
  return result


def _write_csv(cases: list[dict[str, Any]], path: str) -> None:
  with workdir_lib.atomic_open(path, newline='') as f:
    out = csv.DictWriter(f, fieldnames=list(cases[0]))
    out.writeheader()
    out.writerows(cases)


def _to_unit(image: np.ndarray) -> np.ndarray:
  """A normalised slice to [0, 1] for display (min-max of the slice)."""
  image = np.asarray(image, np.float32)
  lo, hi = float(image.min()), float(image.max())
  return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _pad_to(arrays: list[np.ndarray]) -> np.ndarray:
  h = max(a.shape[0] for a in arrays)
  w = max(a.shape[1] for a in arrays)
  return np.stack([np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])))
                   for a in arrays])


def plot_segmentations(config: ml_collections.ConfigDict,
                       subjects: list[dict[str, Any]],
                       predictions: list[np.ndarray], path: str,
                       max_subjects: int = 3) -> None:
  """T1 / truth / prediction through the brain's centre, three orientations."""
  first = modalities(config)[0]
  images, truths, preds, titles = [], [], [], []
  for s, pred in list(zip(subjects, predictions))[:max_subjects]:
    label = np.where(s['label'] == config.loss.ignore_label, 0, s['label'])
    centre = np.round(np.mean(np.argwhere(s['brain_mask']), axis=0))
    for axis in range(3):
      index = int(centre[axis])
      take = lambda v: np.take(v, index, axis=axis)
      images.append(_to_unit(take(s[first])))
      truths.append(take(label))
      preds.append(take(pred))
      titles.append(f'{s["id"]} axis {axis} #{index}')
  viz.plot_segmentation_overlays(
      _pad_to(images), _pad_to(truths), _pad_to(preds), path,
      row_titles=titles,
      title=f'{config.model.kind}: {first.upper()}, truth, prediction')


def plot_generated(config: ml_collections.ConfigDict, state: GANState,
                   splits: dict[str, list[dict[str, Any]]], path: str) -> None:
  """Middle slices of real unlabelled patches, (tissue maps,) generated ones.

  Generated with batch statistics of the figure's own batch (training-mode
  batch norm, as the discriminator saw the fakes).
  """
  from mrseg.data import pipeline  # pylint: disable=g-import-not-at-top
  n = config.eval.num_figure_patches
  figure_config = ml_collections.ConfigDict(config.to_dict())
  figure_config.batch_size = n
  figure_config.unlabelled_batch_size = n
  ds = train_dataset(figure_config, splits, start_step=0, global_batch=True)
  batch = next(iter(pipeline.as_numpy(ds)))
  real = batch['unlabelled']['image']
  labels = batch['labelled']['label']
  generator = build_generator(config)
  keys = jax.random.split(
      jax.random.fold_in(runner_lib.base_key(config), _FIGURE), n)
  inputs = generator_inputs(config, jnp.asarray(labels), jnp.asarray(real),
                            keys)
  fake, _, _ = jax.jit(functools.partial(_apply_generator, generator))(
      state.gen.variables, inputs)
  fake = np.asarray(fake)
  middle = config.data.patch_size // 2
  unit = lambda x: (np.clip(x, -1.0, 1.0) + 1.0) / 2.0
  rows = [unit(real[:, :, :, middle, :1])]
  if 'tissues' in inputs:
    tissues = np.asarray(inputs['tissues'])[:, :, :, middle]
    shown = np.where(tissues > config.model.num_classes - 1, 0, tissues)
    rows.append((shown / max(config.model.num_classes - 1, 1))[..., None])
  rows.append(unit(fake[:, :, :, middle, :1]))
  grid = viz.image_grid(np.concatenate(rows).astype(np.float32), columns=n)
  viz.save_png(grid, path)
  logging.info('Wrote %s (rows: real%s, generated).', path,
               ', tissue maps' if 'tissues' in inputs else '')
