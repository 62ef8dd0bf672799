"""The tissue segmenters' networks, state and training step.

The segmenter of every kind is Mondal et al.'s 3D UNet
(`mrigan.SegDiscriminator`); the GANs add a generator (`build_generator`).
`make_train_step` returns the one pure step that `mrigan_trainer` compiles
for jit or pmap.

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

Nothing here imports TensorFlow or clu: the step, the models and the state
run where they are not installed (benchmarks/mrigan_step.py on a GPU).
"""
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import optax

from mrseg import losses
from mrseg import metrics as metrics_lib
from mrseg.data import augment_3d
from mrseg.data import tissue
from mrseg.models import mrigan
from mrseg.models import mrigan_generator
from mrseg.models.layers import compute_dtype
from mrseg.train import mrigan_kinds
from mrseg.train import mrigan_options as options
from mrseg.train import parallel as parallel_lib
from mrseg.train import state as state_lib
from mrseg.train.state import GANState
from mrseg.train.state import NetState

# Folded into the run's key for initialisation.
_INIT = 10**9 + 3
# Stream tags inside a step's key.
_D_LABELLED, _D_UNLABELLED, _D_FAKE, _G_NOISE, _G_FAKE = range(5)
_AUG_LABELLED, _AUG_UNLABELLED = 5, 6


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


def _noise_generator(config: ml_collections.ConfigDict,
                     bn_axis_name: str | None) -> mrigan.NoiseGenerator:
  g = config.model.noise_generator
  return mrigan.NoiseGenerator(
      out_channels=len(tissue.modalities(config)),
      base_size=options.noise_base_size(config),
      base_features=g.base_features, up_features=tuple(g.up_features),
      up_kernel=g.up_kernel, spatial_dims=3, norm=g.norm,
      bn_momentum=g.bn_momentum, bn_axis_name=bn_axis_name,
      weight_norm_output=g.weight_norm_output, upsample=g.upsample,
      weight_init=g.weight_init, dtype=compute_dtype(config.model.dtype))


def _mrigan_generator(config: ml_collections.ConfigDict,
                      bn_axis_name: str | None
                      ) -> mrigan_generator.MRIGANGenerator:
  g = config.model.generator
  return mrigan_generator.MRIGANGenerator(
      out_channels=len(tissue.modalities(config)),
      num_classes=config.model.num_classes,
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
      weight_init=g.weight_init, dtype=compute_dtype(config.model.dtype))


# How each generator of mrigan_kinds.GENERATORS is built.
_GENERATORS = {'noise': _noise_generator, 'mrigan': _mrigan_generator}


def build_generator(config: ml_collections.ConfigDict,
                    bn_axis_name: str | None = None):
  """The kind's generator (None for a kind without one: 'supervised').

  Args:
    config: the run's config.
    bn_axis_name: the pmap axis over which batch norm pools its statistics
      (None where the step sees the whole batch).
  """
  kind = mrigan_kinds.spec(config)
  if kind.generator is None:
    return None
  return _GENERATORS[kind.generator](config, bn_axis_name)


def generator_inputs(config: ml_collections.ConfigDict,
                     labels: jax.Array | None, mri: jax.Array | None,
                     noise_keys: jax.Array) -> dict[str, Any]:
  """Keyword inputs of the generator for one (local) batch of fakes.

  Args:
    config: the run's config (of a kind with a generator).
    labels: labelled patches' labels [B_l, X, Y, Z] (conditioned
      generators).
    mri: unlabelled patches [B_u, X, Y, Z, C] (conditioned generators).
    noise_keys: one key per generated patch [B_u].

  Returns:
    kwargs for `generator.apply`; 'tissues' repeats each labelled map
    B_u / B_l times (see the module docstring for the pairing).
  """
  kind = mrigan_kinds.spec(config)
  n = noise_keys.shape[0]
  dim = kind.generator_settings(config).noise_dim
  z = None
  if dim > 0:
    # Mondal et al. draw z from U(-1, 1).
    z = jax.vmap(lambda k: jax.random.uniform(k, (dim,), minval=-1.0,
                                              maxval=1.0))(noise_keys)
  inputs = {'z': z}
  if not kind.conditioned:
    return inputs
  g = kind.generator_settings(config)
  if g.use_mri_encoder:
    inputs['mri'] = mri
  if g.use_tissue_encoder or g.use_boundary:
    inputs['tissues'] = tissue_maps(labels, n)
  return inputs


def tissue_maps(labels: jax.Array, n: int) -> jax.Array:
  """Labelled maps [B_l, ...] -> [n, ...] int32, map j // (n / B_l) at j."""
  repeats = n // labels.shape[0]
  return jnp.repeat(labels.astype(jnp.int32), repeats, axis=0)


def apply_generator(generator, variables: dict[str, Any],
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
  options.check_config(config)
  disc = build_discriminator(config)
  gen = build_generator(config)
  p, c = config.data.patch_size, len(tissue.modalities(config))
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
  if options.labelled_loss(config) == 'dice_ce':
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
  if not options.is_gan(config):
    return total, aux
  n_u = (logits.shape[0] - n_l) // 2
  loss_u = losses.unlabelled_loss(logits[n_l:n_l + n_u])
  loss_f = losses.fake_loss(logits[n_l + n_u:])
  w_u, w_f = l.unlabelled_weight, l.fake_weight
  warmup = options.loss_option(config, 'unsupervised_warmup_steps')
  if warmup:
    aux['unsupervised_ramp'] = ramp = losses.sigmoid_rampup(step, warmup)
    w_u, w_f = w_u * ramp, w_f * ramp
  total = total + w_u * loss_u + w_f * loss_f
  transfer = options.loss_option(config, 'transfer_weight')
  if transfer:
    aux['loss_transfer'] = loss_t = _labelled_term(
        config, class_weights, logits[n_l + n_u:], tissues, axis_name)
    on = step >= options.loss_option(config, 'transfer_start_step')
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
  if options.loss_option(config, 'generator_objective') == 'paper_eq7_8':
    return 'paper_eq7_8', losses.paper_eq7_8_loss(real_mean, real_feats,
                                                  fake_logits)
  return 'feature_matching', losses.feature_matching_loss(
      real_mean[None], _batch_mean(fake_feats, axis_name)[None],
      kind=l.feature_matching,
      reduce_spatial=l.feature_matching_spatial_mean)


def _discriminator_apply(disc: mrigan.SegDiscriminator, dropout: bool):
  """`d_apply(params, x, keys, return_features=False)` in training mode."""

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

  return d_apply


def _generator_update(config: ml_collections.ConfigDict, generator, d_apply,
                      gen: NetState, disc_params: Any, real: jax.Array,
                      inputs: dict[str, Any], g_keys: jax.Array,
                      axis_name: str | None
                      ) -> tuple[NetState, dict[str, jax.Array], jax.Array]:
  """G's update against the updated D: (generator, metrics, G's loss)."""
  l = config.loss
  k = config.model.num_classes
  kind = mrigan_kinds.spec(config)
  boundary_on = (kind.boundary_loss
                 and kind.generator_settings(config).use_boundary)
  pos_weight = l.boundary_pos_weight or None
  _, real_feats = d_apply(disc_params, real, g_keys, return_features=True)
  real_mean = lax.stop_gradient(_batch_mean(real_feats, axis_name))

  def g_loss_fn(params):
    variables = {'params': params}
    if gen.batch_stats:
      variables['batch_stats'] = gen.batch_stats
    fake, boundary, stats = apply_generator(generator, variables, inputs)
    fake_logits, fake_feats = d_apply(disc_params, fake, g_keys,
                                      return_features=True)
    name, adversarial = _g_adversarial(config, real_mean, real_feats,
                                       fake_logits, fake_feats, axis_name)
    total = l.feature_matching_weight * adversarial
    aux = {name: adversarial}
    if boundary_on:
      targets = mrigan_generator.boundaries_from_labels(inputs['tissues'], k)
      b = losses.boundary_loss(boundary, targets, pos_weight=pos_weight)
      total = total + l.boundary_weight * b
      aux['boundary_loss'] = b
    return total, (aux, stats)

  (g_loss, (g_metrics, stats)), g_grads = jax.value_and_grad(
      g_loss_fn, has_aux=True)(gen.params)
  # Batch norm already pooled over the global batch: every device holds
  # the same statistics.
  new_gen = gen.apply_gradients(
      parallel_lib.mean_over_devices(g_grads, axis_name),
      batch_stats=stats if gen.batch_stats else gen.batch_stats)
  return new_gen, g_metrics, g_loss


def make_train_step(config: ml_collections.ConfigDict,
                    class_weights: Any = None):
  """Returns `step(state, batch, key, *, axis_name=None) -> (state, metrics)`.

  `batch` holds 'labelled' {'image' [B_l, X, Y, Z, C], 'label' [B_l, X, Y,
  Z]} and, for the GANs, 'unlabelled' {'image' [B_u, X, Y, Z, C]}.
  `class_weights` (K floats) weigh the labelled CE; None: the config's
  (`explicit_class_weights`; 'frequency' must be resolved and passed).
  """
  options.check_config(config)
  if class_weights is None:
    class_weights = options.explicit_class_weights(config)
  class_weights = tuple(class_weights) if class_weights else None
  gan = options.is_gan(config)
  k = config.model.num_classes
  aug = augment_3d.from_config(config)
  d_apply = _discriminator_apply(
      build_discriminator(config),
      config.model.discriminator.dropout_rate > 0)

  def step(state: GANState, batch: dict[str, Any], key: jax.Array, *,
           axis_name: str | None = None):
    key = jax.random.fold_in(key, state.step)
    keys = lambda tag, n: parallel_lib.example_keys(
        jax.random.fold_in(key, tag), n, axis_name)
    images = batch['labelled']['image']
    labels = batch['labelled']['label'].astype(jnp.int32)
    n_l = images.shape[0]
    images, labels = augment_3d.apply(aug, keys(_AUG_LABELLED, n_l), images,
                                      labels)
    generator = build_generator(config, bn_axis_name=axis_name)

    tissues = None
    if gan:
      real = batch['unlabelled']['image']
      n_u = real.shape[0]
      real, _ = augment_3d.apply(aug, keys(_AUG_UNLABELLED, n_u), real)
      inputs = generator_inputs(config, labels, real, keys(_G_NOISE, n_u))
      tissues = inputs.get('tissues')
      g_vars = {'params': state.gen.params}
      if state.gen.batch_stats:
        g_vars['batch_stats'] = state.gen.batch_stats
      fake, _, _ = apply_generator(generator, g_vars, inputs)
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
                                      ignore_label=config.loss.ignore_label)
    if axis_name is not None:
      cm = lax.psum(cm, axis_name)
    metrics['train_dice'] = metrics_lib.foreground_dice(cm)
    new_gen = state.gen
    if gan:
      new_gen, g_metrics, g_loss = _generator_update(
          config, generator, d_apply, state.gen, new_disc.params, real,
          inputs, keys(_G_FAKE, n_u), axis_name)
      metrics.update(g_metrics, g_loss=g_loss)

    metrics = parallel_lib.mean_over_devices(metrics, axis_name)
    return state.replace(step=state.step + 1, gen=new_gen,
                         disc=new_disc), metrics

  return step
