"""Trains the label-conditioned GAN and writes synthetic image/mask pairs.

One step (pure, jittable):

  D: hinge (or non-saturating) loss on three kinds of (layout, image) pairs,
     each DiffAugmented with one geometric draw for both halves:
       real layout + real image                 -> real
       real layout + G(layout, z)               -> fake   (weight 1 - m)
       layout with the tumour shifted + real    -> fake   (weight m)
     plus gamma/2 R1 on the real pairs (optional).
  G: adversarial loss on G(layout, z) + rec_weight * |G(layout, z) - x|_1,
     tumour pixels weighted rec_tumour_weight in the L1.
  EMA of the generator's parameters (used for all samples).

Noise, augmentation and shift draws come from per-example keys, so jit and
pmap, any device count and a resumed run give the same numbers.
"""
import functools
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mrseg import losses
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import layouts as layouts_lib
from mrseg.data import synthetic
from mrseg.eval import gan_report
from mrseg.models import cgan
from mrseg.models.layers import compute_dtype
from mrseg.train import cgan_inputs
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import diffaug
from mrseg.train import loop
from mrseg.train import parallel as parallel_lib
from mrseg.train import runner as runner_lib
from mrseg.train import state as state_lib
from mrseg.train.state import NetState

# Folded into the run's key for draws that are not training steps.
_GRID_NOISE, _EVAL_NOISE, _SAMPLE_NOISE, _INIT = 10**9, 10**9 + 1, 10**9 + 2, 10**9 + 3
_MASK_NOISE = 10**9 + 4
LOSSES = ('hinge', 'non_saturating')
CONTEXTS = ('none', 'host_image')


# Both networks, the generator's EMA parameters and the step count.
CGANState = state_lib.EMAGANState


def build_models(config: ml_collections.ConfigDict
                 ) -> tuple[cgan.Generator, cgan.Discriminator]:
  m = config.model
  dtype = compute_dtype(m.dtype)
  g, d = m.generator, m.discriminator
  generator = cgan.Generator(
      features=tuple(g.features), out_channels=config.data.channels,
      norm=g.norm, spade_hidden=g.spade_hidden,
      noise_features=g.noise_features, weight_init=g.weight_init, dtype=dtype)
  discriminator = cgan.Discriminator(
      features=tuple(d.features), spectral_norm=d.spectral_norm, norm=d.norm,
      weight_init=d.weight_init, dtype=dtype)
  if config.context not in CONTEXTS:
    raise ValueError(f'Unsupported context {config.context!r} for the '
                     f'conditional GAN; choose one of {CONTEXTS}.')
  if config.data.image_size % 2**len(g.features):
    raise ValueError(f'data.image_size={config.data.image_size} must be '
                     f'divisible by 2^{len(g.features)} (model.generator.'
                     'features levels).')
  return generator, discriminator


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> CGANState:
  generator, discriminator = build_models(config)
  s, c = config.data.image_size, config.data.channels
  num_labels = cgan_inputs.layout_spec(config).num_labels
  o = config.optim
  g_tx = optax.adam(o.g_learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
  d_tx = optax.adam(o.d_learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)

  @jax.jit
  def init(key):
    k_g, k_d = jax.random.split(jax.random.fold_in(key, _INIT))
    g_vars = generator.init(
        k_g, jnp.zeros((1, s, s, cgan_inputs.g_input_channels(config))),
        jnp.zeros((1, config.model.noise_dim)))
    d_vars = discriminator.init(k_d, jnp.zeros((1, s, s, num_labels + c)))
    gen = NetState.create(g_vars, g_tx)
    return CGANState(step=jnp.zeros((), jnp.int32), gen=gen,
                     disc=NetState.create(d_vars, d_tx), ema=gen.params)

  return init(key)


def _check_step_config(config: ml_collections.ConfigDict) -> None:
  if config.loss not in LOSSES:
    raise ValueError(f'Unsupported loss {config.loss!r} for the conditional '
                     f'GAN; choose one of {LOSSES}.')
  diffaug.check_policy(config.diffaug)


def _d_apply(config: ml_collections.ConfigDict,
             discriminator: cgan.Discriminator, params: Any,
             layout: jax.Array, image: jax.Array, keys: jax.Array
             ) -> jax.Array:
  """D's patch logits of a DiffAugmented (layout, image) pair."""
  num_labels = layout.shape[-1]
  image_channels = tuple(range(num_labels, num_labels + config.data.channels))
  pair = jnp.concatenate([layout, image], axis=-1)
  pair = diffaug.augment(pair, keys, config.diffaug,
                         image_channels=image_channels)
  return discriminator.apply({'params': params}, pair)


def _step_inputs(config: ml_collections.ConfigDict,
                 spec: layouts_lib.LayoutSpec, batch: dict[str, jax.Array],
                 shift_keys: jax.Array) -> dict[str, jax.Array | None]:
  """The step's layouts: real, with the tumour shifted (config.
  mismatch_shift), its mask, G's hole (context='host_image') and input."""
  real, tumour = batch['image'], batch['tumour']
  shift_low, shift_high = config.mismatch_shift
  mask = (tumour > 0).astype(jnp.float32)
  layout = cgan_inputs.compose_layout(batch['classes'], tumour, spec)
  wrong_tumour = jax.vmap(
      lambda x, k: diffaug.random_shift(x, k, shift_low, shift_high))(
          tumour.astype(jnp.float32), shift_keys)
  wrong_mask = (wrong_tumour > 0).astype(jnp.float32)
  wrong = cgan_inputs.compose_layout(batch['classes'], wrong_tumour, spec)
  # context='host_image': G fills a hole in the real slice: around the
  # tumour (painted where the mask is) and around a shifted copy of it
  # (healthy tissue to paint, as where a host's own tumour is erased at
  # synthesis).
  where = (cgan_inputs.hole(jnp.maximum(mask, wrong_mask),
                            config.hole_dilation)
           if config.context == 'host_image' else None)
  return {'real': real, 'mask': mask, 'layout': layout, 'wrong': wrong,
          'where': where,
          'g_in': cgan_inputs.g_inputs(config, layout, real, where)}


def _d_loss(config: ml_collections.ConfigDict, d_apply, params: Any,
            inputs: dict[str, jax.Array], fake: jax.Array,
            keys: dict[str, jax.Array]):
  """The discriminator's loss on three kinds of pairs, plus R1.

    L_D = (1 - m) L(D(l, x), D(l, G(l, z))) + m L(D(l, x), D(l', x))
          + r1_gamma / 2 * R1(D(l, .), x)

  L: config.loss (hinge or non-saturating), m: config.mismatch_weight,
  l': the layout with its tumour shifted, r1_gamma: config.r1_gamma.
  Returns (loss, (real, fake and mismatch logits, R1)).
  """
  m, layout, real = config.mismatch_weight, inputs['layout'], inputs['real']
  real_logits = d_apply(params, layout, real, keys['real'])
  fake_logits = d_apply(params, layout, fake, keys['fake'])
  mis_logits = d_apply(params, inputs['wrong'], real, keys['mis'])
  loss = ((1 - m) * losses.discriminator_loss(config.loss, real_logits,
                                              fake_logits) +
          m * losses.discriminator_loss(config.loss, real_logits,
                                        mis_logits))
  r1 = jnp.zeros(())
  if config.r1_gamma > 0:
    r1 = losses.r1_penalty(
        lambda x: d_apply(params, layout, x, keys['real']), real)
    loss = loss + 0.5 * config.r1_gamma * r1
  return loss, (real_logits, fake_logits, mis_logits, r1)


def _g_loss(config: ml_collections.ConfigDict, d_apply, g_apply,
            params: Any, disc_params: Any, inputs: dict[str, jax.Array],
            z: jax.Array, aug_keys: jax.Array):
  """The generator's loss: adversarial plus weighted L1 reconstruction.

    L_G = L_adv(D(l, G(l, z))) + rec_weight * mean(w |G(l, z) - x|)

  with w = rec_tumour_weight on tumour pixels, 1 elsewhere, and with
  context='host_image' the L1 per hole pixel of each example. Returns
  (loss, (adversarial, L1)).
  """
  real, mask, where = inputs['real'], inputs['mask'], inputs['where']
  images = g_apply(params, z)
  adv = losses.generator_loss(config.loss, d_apply(disc_params,
                                                   inputs['layout'], images,
                                                   aug_keys))
  rec = jnp.abs(images - real)
  if config.rec_tumour_weight != 1:
    rec = rec * (1 + (config.rec_tumour_weight - 1) * (mask > 0))
  if config.context == 'host_image':  # per hole pixel, per example
    rec = jnp.mean(rec, axis=(1, 2, 3)) / jnp.maximum(
        jnp.mean(where, axis=(1, 2, 3)), 1e-6)
  rec = jnp.mean(rec)
  return adv + config.rec_weight * rec, (adv, rec)


def _metrics(d_loss, g_loss, adv, rec, real_l, fake_l, mis_l, r1):
  # "Accuracy" of D per kind of pair: the share of patches on the right
  # side of 0. d_mismatch near 1 means D rejects misplaced masks.
  return {'d_loss': d_loss, 'g_loss': g_loss, 'g_adv': adv, 'g_l1': rec,
          'd_real': jnp.mean(real_l > 0), 'd_fake': jnp.mean(fake_l < 0),
          'd_mismatch': jnp.mean(mis_l < 0),
          'd_margin_mismatch': jnp.mean(real_l) - jnp.mean(mis_l),
          'r1': r1}


def make_train_step(config: ml_collections.ConfigDict):
  """Returns `step(state, batch, key, *, axis_name=None) -> (state, metrics)`.

  `batch`: 'image' [B, S, S, C] in [-1, 1], 'classes' and 'tumour' uint8
  [B, S, S, 1] (the host layout without its tumour, and the tumour's
  classes: `layouts.tumour_labels`). D takes one update (`_d_loss`), then G
  one against the updated D (`_g_loss`), then the EMA (config.ema_decay).
  """
  generator, discriminator = build_models(config)
  _check_step_config(config)
  spec = cgan_inputs.layout_spec(config)
  noise_dim = config.model.noise_dim
  d_apply = functools.partial(_d_apply, config, discriminator)
  noise = jax.vmap(lambda k: jax.random.normal(k, (noise_dim,)))

  def step(state: CGANState, batch: dict[str, jax.Array], key: jax.Array, *,
           axis_name: str | None = None):
    key = jax.random.fold_in(key, state.step)
    k_z, k_real, k_fake, k_mis, k_shift, k_gz, k_gaug = [
        parallel_lib.example_keys(k, batch['image'].shape[0], axis_name)
        for k in jax.random.split(key, 7)]
    inputs = _step_inputs(config, spec, batch, k_shift)

    def g_apply(params, z):
      return cgan_inputs.paste(config, generator.apply({'params': params},
                                                       inputs['g_in'], z),
                               inputs['real'], inputs['where'])

    fake = jax.lax.stop_gradient(g_apply(state.gen.params, noise(k_z)))
    d_keys = {'real': k_real, 'fake': k_fake, 'mis': k_mis}
    (d_loss, (real_l, fake_l, mis_l, r1)), d_grads = jax.value_and_grad(
        lambda p: _d_loss(config, d_apply, p, inputs, fake, d_keys),
        has_aux=True)(state.disc.params)
    disc = state.disc.apply_gradients(
        parallel_lib.mean_over_devices(d_grads, axis_name))
    (g_loss, (adv, rec)), g_grads = jax.value_and_grad(
        lambda p: _g_loss(config, d_apply, g_apply, p, disc.params, inputs,
                          noise(k_gz), k_gaug),
        has_aux=True)(state.gen.params)
    gen = state.gen.apply_gradients(
        parallel_lib.mean_over_devices(g_grads, axis_name))
    # EMA with a warm-up: early on the average must not remember the
    # random initialisation.
    ema = state_lib.ema_update(state.ema, gen.params, state.step,
                               config.ema_decay)
    metrics = parallel_lib.mean_over_devices(
        _metrics(d_loss, g_loss, adv, rec, real_l, fake_l, mis_l, r1),
        axis_name)
    return state.replace(step=state.step + 1, gen=gen, disc=disc,
                         ema=ema), metrics

  return step


def make_generate_fn(config: ml_collections.ConfigDict):
  """Jitted `generate(params, layouts one-hot, hosts, holes, keys)` -> images
  in [0, 1]; hosts (model range) and holes are used with context='host_image'."""
  generator, _ = build_models(config)
  noise_dim = config.model.noise_dim

  @jax.jit
  def generate(params, layout, host, where, keys):
    z = jax.vmap(lambda k: jax.random.normal(k, (noise_dim,)))(keys)
    images = generator.apply(
        {'params': params}, cgan_inputs.g_inputs(config, layout, host, where),
        z)
    images = cgan_inputs.paste(config, images, host, where)
    return (jnp.clip(images, -1.0, 1.0) + 1.0) / 2.0

  return generate


def generate(config: ml_collections.ConfigDict, params: Any,
             layouts: np.ndarray, key: jax.Array, batch_size: int = 32,
             hosts: np.ndarray | None = None, holes: np.ndarray | None = None
             ) -> np.ndarray:
  """Images in [0, 1], float32 [N, S, S, C], for uint8 layouts [N, S, S].

  With context='host_image', `hosts` (the host slices, [0, 1]) and `holes`
  (float [N, S, S, 1], `cgan_inputs.host_context`) are needed.
  """
  if config.context == 'host_image' and (hosts is None or holes is None):
    raise ValueError("context='host_image' needs the host images and holes.")
  fn = make_generate_fn(config)
  num_labels = cgan_inputs.layout_spec(config).num_labels
  keys = jax.random.split(key, len(layouts))
  out = []
  for i in range(0, len(layouts), batch_size):
    part = slice(i, i + batch_size)
    host = None if hosts is None else np.asarray(hosts[part], np.float32) * 2 - 1
    where = None if holes is None else holes[part]
    out.append(np.asarray(fn(
        params, layouts_lib.one_hot(layouts[part], num_labels), host, where,
        keys[part])))
  return np.concatenate(out)


def discriminator_scores(config: ml_collections.ConfigDict, params: Any,
                         layouts: np.ndarray, images: np.ndarray) -> np.ndarray:
  """Mean patch logit of D (no augmentation) per (layout, image in [0, 1])."""
  _, discriminator = build_models(config)
  num_labels = cgan_inputs.layout_spec(config).num_labels
  pair = np.concatenate([layouts_lib.one_hot(layouts, num_labels),
                         np.asarray(images, np.float32) * 2 - 1], axis=-1)
  logits = jax.jit(discriminator.apply)({'params': params}, pair)
  return np.asarray(logits).reshape(len(pair), -1).mean(1)


# Counts a run needs above zero, checked before anything is written.
POSITIVE_KEYS = ('batch_size', 'num_train_steps', 'log_every_steps',
                 'checkpoint_every_steps', 'sample_every_steps',
                 'keep_checkpoints', 'num_grid_samples', 'num_eval_samples')


@workdir_lib.locked
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, float]:
  """Trains (or resumes) in `workdir`, then writes figures and metrics.json."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from mrseg.data import pipeline
  # pylint: enable=g-import-not-at-top
  run = runner_lib.Runner(
      config, workdir, positive=POSITIVE_KEYS,
      check=lambda parallel: parallel.check_batch_size(config.batch_size))
  key = run.key

  arrays = cgan_inputs.training_arrays(config)
  logging.info('Training data: %d slices of shape %s with layouts.',
               len(arrays['image']), arrays['image'].shape[1:])

  def preprocess(ex):
    return {'image': pipeline.to_model_range(tf.cast(ex['image'], tf.float32)),
            'classes': ex['classes'], 'tumour': ex['tumour'],
            '_global_index': ex['_global_index']}

  train = {k: v for k, v in arrays.items() if k not in ('id', 'mask')}

  def batches(start_step: int):
    return pipeline.as_numpy(pipeline.train_dataset(
        train, config.batch_size, config.seed, start_step=start_step,
        preprocess=preprocess))

  # Fixed new layouts (deformed masks in host brains) for the sample grids.
  grid_layouts, grid_masks, grid_records = cgan_inputs.synthesis_layouts(
      config, arrays, config.num_grid_samples, seed=config.seed + 10**6)
  grid_hosts, grid_holes = cgan_inputs.host_context(config, arrays,
                                                    grid_masks, grid_records)
  grid_keys = jax.random.fold_in(key, _GRID_NOISE)

  def write_samples(step: int, host_state: CGANState) -> None:
    images = generate(config, host_state.ema, grid_layouts, grid_keys,
                      hosts=grid_hosts, holes=grid_holes)
    path = os.path.join(workdir, 'samples', f'step_{step}.png')
    viz.save_png(viz.image_grid(viz.overlay_masks(images, grid_masks)), path)
    logging.info('Wrote %s.', path)

  result = run.train(runner_lib.Task(
      num_steps=config.num_train_steps,
      init=functools.partial(create_state, config),
      step=make_train_step(config), batches=batches,
      hooks=[loop.Hook(write_samples, config.sample_every_steps)],
      name='the conditional GAN'))
  final = result.state

  eval_layouts, eval_masks, eval_records = cgan_inputs.synthesis_layouts(
      config, arrays, config.num_eval_samples, seed=config.seed + 2 * 10**6)
  hosts, holes = cgan_inputs.host_context(config, arrays, eval_masks,
                                          eval_records)
  fake = generate(config, final.ema, eval_layouts,
                  jax.random.fold_in(key, _EVAL_NOISE), hosts=hosts,
                  holes=holes)
  return gan_report.write_gan_report(
      workdir, final.step, arrays['image'], fake, result.history_path,
      config.seed, loss_keys=('d_loss', 'g_adv', 'g_l1'),
      title=f'Conditional GAN losses ({config.loss})')


def restore(config: ml_collections.ConfigDict, workdir: str,
            step: int | None = None) -> tuple[CGANState, int]:
  """The state at `step` (default: the latest checkpoint) and that step.

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint.
  """
  return checkpoint_lib.restore_latest(
      workdir, lambda: create_state(config, runner_lib.base_key(config)),
      step, keep=config.keep_checkpoints)


def checkpoint_steps(config: ml_collections.ConfigDict, workdir: str) -> list[int]:
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=config.keep_checkpoints, create=False)
  steps = sorted(checkpointer.manager.all_steps())
  checkpointer.close()
  return steps


def synthesize(config: ml_collections.ConfigDict, params: Any, num: int,
               seed: int, arrays: dict[str, np.ndarray] | None = None
               ) -> dict[str, Any]:
  """`num` synthetic pairs: images [0, 1], masks {0, 1}, layouts, provenance."""
  arrays = cgan_inputs.training_arrays(config) if arrays is None else arrays
  layouts, masks, records = cgan_inputs.synthesis_layouts(config, arrays,
                                                          num, seed)
  key = jax.random.fold_in(
      jax.random.fold_in(runner_lib.base_key(config), _SAMPLE_NOISE), seed)
  hosts, holes = cgan_inputs.host_context(config, arrays, masks, records)
  images = generate(config, params, layouts, key, hosts=hosts, holes=holes)
  return {'image': images, 'mask': masks, 'layout': layouts,
          'provenance': records}


def sample(config: ml_collections.ConfigDict, workdir: str, num_samples: int,
           output_dir: str | None = None, step: int | None = None,
           masks_dir: str | None = None) -> str:
  """Writes new pairs from a checkpoint (default: the latest).

  Without `masks_dir`: `num_samples` pairs, each layout a real training
  slice's anatomy (the host) with a real training mask (the source),
  deformed and placed in the host's brain. With `masks_dir`: one image per
  mask file there (PNG/JPG, 0/255 or 0/1, any size; resized to the model's
  size by nearest neighbour), the tumour where the mask puts it, in a host
  brain that holds it. provenance.csv names host, source or mask file and
  transform per sample.
  """
  if masks_dir is None and num_samples <= 0:
    raise ValueError(f'--num_samples={num_samples} must be positive.')
  state, step = restore(config, workdir, step)
  if masks_dir is None:
    pairs = synthesize(config, state.ema, num_samples, seed=config.seed)
  else:
    pairs = _pairs_for_masks(config, state.ema, masks_dir)
  output_dir = output_dir or os.path.join(workdir, 'generated', f'step_{step}')
  synthetic.write_pairs(output_dir, pairs['image'], pairs['mask'], step,
                        pairs['layout'], pairs['provenance'])
  logging.info('Wrote %d pairs of step %d to %s.', len(pairs['image']), step,
               output_dir)
  return output_dir


def _pairs_for_masks(config: ml_collections.ConfigDict, params: Any,
                     masks_dir: str) -> dict[str, Any]:
  """One synthetic image per mask file in `masks_dir`."""
  # pylint: disable=g-import-not-at-top
  import pathlib
  from mrseg.data import annotated
  from mrseg.data import io
  # pylint: enable=g-import-not-at-top
  folder = io.require_dir(masks_dir, layout='mask images (PNG/JPG, 0/255 or '
                          '0/1), one synthetic image per mask')
  files = [p for p in io.list_files(folder)
           if p.suffix.lower() in ('.png', '.jpg', '.jpeg', '.bmp', '.tif',
                                   '.tiff')]
  if not files:
    raise io.DataError(f'{masks_dir}: no mask images (PNG/JPG) found.')
  size = config.data.image_size
  given = []
  for path in files:
    mask = annotated.resize_mask(io.read_mask(pathlib.Path(path)), size)
    if not mask.any():
      raise io.DataError(f'{path}: the mask is empty (no tumour to draw).')
    given.append(mask)
  arrays = cgan_inputs.training_arrays(config)
  # With tumour classes (layout.tumour_classes > 1), a given mask is painted
  # with the class most real training tumour pixels have.
  tumour = arrays['tumour'][arrays['tumour'] > 0]
  tumour_class = int(np.argmax(np.bincount(tumour))) if tumour.size else 1
  layouts, masks, records = layouts_lib.layouts_for_masks(
      arrays['image'], arrays['mask'], arrays['id'], np.stack(given),
      config.seed, cgan_inputs.layout_spec(config), config.masks.min_inside,
      tumour_class)
  for record, path in zip(records, files):
    record['mask_file'] = os.path.basename(str(path))
  key = jax.random.fold_in(runner_lib.base_key(config), _MASK_NOISE)
  images = generate(config, params, layouts, key)
  return {'image': images, 'mask': masks, 'layout': layouts,
          'provenance': records}
