"""Trains paper 1's DCGAN and writes its samples, figures and checkpoints.

One step (pure, jittable) updates the discriminator on a real batch and a
generated batch, then the generator against the updated discriminator, as the
paper's Keras code does (`d_model.train_on_batch` then `gan_model.train_on_batch`
on fresh noise). All noise and dropout masks are drawn per example from keys
that depend on (seed, step, example index) only, so a run gives the same
numbers under jit or pmap, on any number of devices, and after a resume.

Options for 155 training images (all off by default, which is the paper):
DiffAugment of everything D sees, R1 or spectral norm against D's
memorising, a generator EMA for samples, and for the joint GAN a sigmoid
mask channel and a matching-aware D (real images with misplaced masks count
as fakes). configs/dcgan.py documents each key.
"""
import functools
import os
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mrseg import losses
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import synthetic
from mrseg.eval import gan_report
from mrseg.models import dcgan
from mrseg.models.layers import compute_dtype
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import dcgan_masks
from mrseg.train import diffaug
from mrseg.train import loop
from mrseg.train import parallel as parallel_lib
from mrseg.train import runner as runner_lib
from mrseg.train import state as state_lib
from mrseg.train.state import GANState, NetState

# Folded into the run's key for draws that are not training steps.
_GRID_NOISE, _EVAL_NOISE, _SAMPLE_NOISE, _INIT = 10**9, 10**9 + 1, 10**9 + 2, 10**9 + 3
# Folded into a step's keys for the draws of the options (augmentation,
# misplaced masks): the paper's draws stay what they were without them.
_OPTION_DRAWS = 10**6

# Samples come from `ema` (equal to gen.params when config.ema_decay = 0).
DCGANState = state_lib.EMAGANState


def build_models(config: ml_collections.ConfigDict
                 ) -> tuple[dcgan.Generator, dcgan.Discriminator]:
  m = config.model
  dtype = compute_dtype(m.dtype)
  g, d = m.generator, m.discriminator
  generator = dcgan.Generator(
      base_size=g.base_size, base_features=g.base_features,
      up_features=tuple(g.up_features), up_kernel=g.up_kernel,
      out_kernel=g.out_kernel, out_channels=dcgan_masks.num_channels(config),
      negative_slope=g.negative_slope, upsample=g.upsample,
      weight_init=g.weight_init, mask_channels=int(m.joint_mask),
      mask_output=m.mask_output, dtype=dtype)
  discriminator = dcgan.Discriminator(
      features=tuple(d.features), strides=tuple(d.strides), kernel=d.kernel,
      negative_slope=d.negative_slope, dropout_rate=d.dropout_rate,
      weight_init=d.weight_init, conv=d.conv, spectral_norm=d.spectral_norm,
      dtype=dtype)
  if m.mask_output not in dcgan.MASK_OUTPUTS:
    raise ValueError(f'Unsupported model.mask_output {m.mask_output!r}; '
                     f'choose one of {dcgan.MASK_OUTPUTS}.')
  size = g.base_size * 2**len(g.up_features)
  if size != config.data.image_size:
    raise ValueError(
        f'The generator makes {size}x{size} images (model.generator.base_size='
        f'{g.base_size} doubled {len(g.up_features)} times) but '
        f'data.image_size={config.data.image_size}.')
  return generator, discriminator


def create_state(config: ml_collections.ConfigDict, key: jax.Array
                 ) -> DCGANState:
  """A fresh GAN state with both networks initialised from `key`."""
  generator, discriminator = build_models(config)
  s = config.data.image_size
  o = config.optim
  g_tx = optax.adam(o.g_learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
  d_tx = optax.adam(o.d_learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)

  @jax.jit  # one compilation instead of hundreds of eager ops
  def init(key):
    k_g, k_d = jax.random.split(jax.random.fold_in(key, _INIT))
    g_vars = generator.init(k_g, jnp.zeros((1, config.model.noise_dim)))
    d_vars = discriminator.init(
        k_d, jnp.zeros((1, s, s, dcgan_masks.num_channels(config))))
    return DCGANState.create(NetState.create(g_vars, g_tx),
                             NetState.create(d_vars, d_tx))

  return init(key)


def _restore_into(checkpointer: checkpoint_lib.Checkpointer,
                  target: DCGANState, step: int | None = None) -> DCGANState:
  """`checkpointer.restore(target, step)`, old checkpoints included.

  Checkpoints written before the generator EMA existed hold a GANState
  (step, gen, disc); they restore with the EMA starting at the generator.
  """
  try:
    return checkpointer.restore(target, step)
  except ValueError as error:
    try:
      old = checkpointer.restore(
          GANState(step=target.step, gen=target.gen, disc=target.disc), step)
    except ValueError:
      raise error from None
    logging.warning('The checkpoint predates the generator EMA: it starts '
                    'from the generator parameters.')
    return DCGANState(step=old.step, gen=old.gen, disc=old.disc,
                      ema=old.gen.params)


def restore(config: ml_collections.ConfigDict, workdir: str,
            step: int | None = None) -> tuple[DCGANState, int]:
  """The state at `step` (default: the latest checkpoint) and that step.

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint.
  """
  return checkpoint_lib.restore_latest(
      workdir, lambda: create_state(config, runner_lib.base_key(config)),
      step, keep=config.keep_checkpoints, restore=_restore_into)


def _noise(keys: jax.Array, noise_dim: int) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(k, (noise_dim,)))(keys)


def _check_options(config: ml_collections.ConfigDict) -> None:
  diffaug.check_policy(config.diffaug)
  if config.r1_gamma < 0 or not 0 <= config.mismatch_weight <= 1:
    raise ValueError(f'config.r1_gamma={config.r1_gamma} must be >= 0 and '
                     f'config.mismatch_weight={config.mismatch_weight} in '
                     '[0, 1].')
  if config.r1_gamma > 0 and config.loss == 'wgan_gp':
    raise ValueError(
        f'config.r1_gamma={config.r1_gamma} with loss=wgan_gp: the critic '
        'has its gradient penalty (gp_weight) already; set r1_gamma=0.')


def _mismatch_weight(config: ml_collections.ConfigDict) -> float:
  """config.mismatch_weight; only the joint GAN has masks to misplace."""
  return config.mismatch_weight if config.model.joint_mask else 0.0


def _disc_logits(config: ml_collections.ConfigDict,
                 discriminator: dcgan.Discriminator, params: Any,
                 images: jax.Array, keys: jax.Array, aug_keys: jax.Array
                 ) -> jax.Array:
  """D's logits of DiffAugmented (config.diffaug) images, one per example."""
  # One geometric draw per pair moves image and mask alike; colour
  # touches the image channels only.
  images = diffaug.augment(images, aug_keys, config.diffaug,
                           image_channels=tuple(range(config.data.channels)))
  # Dropout keyed per example (not per device batch): sharding-invariant.
  def one(x, k):
    return discriminator.apply({'params': params}, x[None], train=True,
                               rngs={'dropout': k})[0]
  return jax.vmap(one)(images, keys)


def _d_keys(d_key: jax.Array, i: int, n: int, axis_name: str | None
            ) -> dict[str, jax.Array]:
  """Per-example keys of critic update `i`: the paper's draws, then (folded
  with _OPTION_DRAWS) the options' draws."""
  k_i = jax.random.fold_in(d_key, i)
  names = ('z', 'drop_real', 'drop_fake', 'mix', 'drop_gp')
  keys = {name: parallel_lib.example_keys(k, n, axis_name)
          for name, k in zip(names, jax.random.split(k_i, 5))}
  names = ('aug_real', 'aug_fake', 'aug_gp', 'aug_mis', 'drop_mis', 'shift')
  keys.update({name: parallel_lib.example_keys(k, n, axis_name)
               for name, k in zip(names, jax.random.split(
                   jax.random.fold_in(k_i, _OPTION_DRAWS), 6))})
  return keys


def _d_loss(config: ml_collections.ConfigDict, logits_fn, params: Any,
            real: jax.Array, fake: jax.Array, wrong: jax.Array | None,
            keys: dict[str, jax.Array]):
  """Paper 1's discriminator loss and the options' terms.

    L_D = (1 - m) L(D(x), D(G(z))) + m L(D(x), D(x_misplaced))
          + gp_weight * GP            (loss='wgan_gp')
          + r1_gamma / 2 * R1         (r1_gamma > 0)

  L is `losses.discriminator_loss(config.loss)` (paper 1: minimax BCE),
  m = config.mismatch_weight (joint GAN only). Returns (loss, (real logits,
  fake logits, {'mismatch', 'gp', 'r1'} where present)).
  """
  mismatch, r1_gamma = _mismatch_weight(config), config.r1_gamma
  real_logits = logits_fn(params, real, keys['drop_real'], keys['aug_real'])
  fake_logits = logits_fn(params, fake, keys['drop_fake'], keys['aug_fake'])
  loss = losses.discriminator_loss(config.loss, real_logits, fake_logits)
  aux = {}
  if mismatch > 0:
    # Misplaced masks count as fakes with weight `mismatch`.
    mis_logits = logits_fn(params, wrong, keys['drop_mis'], keys['aug_mis'])
    loss = ((1 - mismatch) * loss + mismatch *
            losses.discriminator_loss(config.loss, real_logits, mis_logits))
    aux['mismatch'] = mis_logits
  if config.loss == 'wgan_gp':
    mix = jax.vmap(jax.random.uniform)(keys['mix'])
    aux['gp'] = losses.gradient_penalty(
        lambda x: logits_fn(params, x, keys['drop_gp'], keys['aug_gp']), real,
        fake, mix)
    loss = loss + config.gp_weight * aux['gp']
  if r1_gamma > 0:
    aux['r1'] = losses.r1_penalty(
        lambda x: logits_fn(params, x, keys['drop_real'], keys['aug_real']),
        real)
    loss = loss + 0.5 * r1_gamma * aux['r1']
  return loss, (real_logits, fake_logits, aux)


def _d_metrics(config: ml_collections.ConfigDict, loss: jax.Array,
               real_logits: jax.Array, fake_logits: jax.Array,
               aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """One critic update's metrics: paper 1's D(x), D(G(z)) (or, for WGAN-GP,
  the critic's values and Wasserstein estimate) and the options' terms."""
  mismatch = _mismatch_weight(config)
  if config.loss == 'wgan_gp':
    metrics = {'d_loss': loss, 'gradient_penalty': aux['gp'],
               'critic_real': jnp.mean(real_logits),
               'critic_fake': jnp.mean(fake_logits),
               # The critic's estimate of the Wasserstein-1 distance.
               'wasserstein': jnp.mean(real_logits) - jnp.mean(fake_logits)}
    if mismatch > 0:
      metrics['critic_mismatch'] = jnp.mean(aux['mismatch'])
  else:
    metrics = {'d_loss': loss,
               # Paper 1's D(x) and D(G(z)): mean probabilities of "real".
               'd_real': jnp.mean(nn.sigmoid(real_logits)),
               'd_fake': jnp.mean(nn.sigmoid(fake_logits))}
    if mismatch > 0:
      # D's "real" for misplaced masks: near d_fake when D checks them.
      metrics['d_mismatch'] = jnp.mean(nn.sigmoid(aux['mismatch']))
  if config.r1_gamma > 0:
    metrics['r1'] = aux['r1']
  return metrics


def _d_update(config: ml_collections.ConfigDict, generator: dcgan.Generator,
              logits_fn, gen_params: Any, disc: NetState, pairs: jax.Array,
              i: int, d_key: jax.Array, axis_name: str | None):
  """Critic update `i` on real `pairs` and fresh fakes: (disc, metrics)."""
  keys = _d_keys(d_key, i, pairs.shape[0], axis_name)
  real = dcgan_masks.encode_masks(config, pairs)
  wrong = (dcgan_masks.misplaced(config, pairs, keys['shift'])
           if _mismatch_weight(config) > 0 else None)
  fake = jax.lax.stop_gradient(generator.apply(
      {'params': gen_params}, _noise(keys['z'], config.model.noise_dim)))
  (loss, (real_logits, fake_logits, aux)), grads = jax.value_and_grad(
      lambda p: _d_loss(config, logits_fn, p, real, fake, wrong, keys),
      has_aux=True)(disc.params)
  disc = disc.apply_gradients(parallel_lib.mean_over_devices(grads, axis_name))
  return disc, _d_metrics(config, loss, real_logits, fake_logits, aux)


def _g_update(config: ml_collections.ConfigDict, generator: dcgan.Generator,
              logits_fn, state: DCGANState, disc_params: Any, n: int,
              g_key: jax.Array, axis_name: str | None):
  """The generator's update against the updated D: (gen, ema, g_loss).

  L_G = `losses.generator_loss(config.loss)` of D(G(z)) on fresh noise
  (paper 1: minimax; non-saturating and WGAN as options); the samples'
  EMA decays by config.ema_decay (0: the generator's own parameters).
  """
  z_g, drop_g = [parallel_lib.example_keys(k, n, axis_name)
                 for k in jax.random.split(g_key)]
  aug_g = parallel_lib.example_keys(
      jax.random.fold_in(g_key, _OPTION_DRAWS), n, axis_name)

  def g_loss_fn(params):
    images = generator.apply({'params': params},
                             _noise(z_g, config.model.noise_dim))
    return losses.generator_loss(
        config.loss, logits_fn(disc_params, images, drop_g, aug_g))

  g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state.gen.params)
  gen = state.gen.apply_gradients(
      parallel_lib.mean_over_devices(g_grads, axis_name))
  if config.ema_decay > 0:
    ema = state_lib.ema_update(state.ema, gen.params, state.step,
                               config.ema_decay)
  else:
    ema = gen.params
  return gen, ema, g_loss


def make_train_step(config: ml_collections.ConfigDict):
  """Returns `step(state, batch, key, *, axis_name=None) -> (state, metrics)`.

  The batch holds `config.batch_size * config.d_steps` real images: the
  discriminator (critic) takes `d_steps` updates on `batch_size` real and
  `batch_size` generated images each (`_d_update`, loss `_d_loss`), then the
  generator one update on fresh noise against the updated discriminator
  (`_g_update`).
  """
  generator, discriminator = build_models(config)
  d_steps = config.d_steps
  losses.generator_loss(config.loss, jnp.zeros(1))  # fail fast on a bad name
  if d_steps < 1:
    raise ValueError(f'config.d_steps={d_steps} must be at least 1.')
  _check_options(config)
  logits_fn = functools.partial(_disc_logits, config, discriminator)

  def step(state: DCGANState, batch: dict[str, jax.Array], key: jax.Array, *,
           axis_name: str | None = None):
    real_all = batch['image']
    n = real_all.shape[0] // d_steps
    # Update i reads examples i, i + d_steps, i + 2 d_steps, ...: the same
    # global examples whether the step sees the global batch or one device's
    # contiguous slice of it.
    real_groups = jnp.swapaxes(
        real_all.reshape((n, d_steps) + real_all.shape[1:]), 0, 1)
    key = jax.random.fold_in(key, state.step)
    d_key, g_key = jax.random.split(key)
    # A Python loop (unrolled at trace time), not lax.scan: inside a scan
    # XLA:CPU picks a much slower algorithm for the convolutions' weight
    # gradients (about 4x slower steps, benchmarks/README.md).
    disc, d_metrics = state.disc, []
    for i in range(d_steps):
      disc, m = _d_update(config, generator, logits_fn, state.gen.params,
                          disc, real_groups[i], i, d_key, axis_name)
      d_metrics.append(m)
    # Mean over the critic updates.
    metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *d_metrics)
    gen, ema, metrics['g_loss'] = _g_update(
        config, generator, logits_fn, state, disc.params, n, g_key, axis_name)
    metrics = parallel_lib.mean_over_devices(metrics, axis_name)
    return state.replace(step=state.step + 1, gen=gen, disc=disc,
                         ema=ema), metrics

  return step


def make_generate_fn(config: ml_collections.ConfigDict):
  """Returns jitted `generate(gen_params, keys) -> images in [0, 1]`.

  Every channel comes out in [0, 1]: the tanh ones rescaled, a sigmoid mask
  as it is (a probability).
  """
  generator, _ = build_models(config)
  noise_dim = config.model.noise_dim
  c = config.data.channels

  @jax.jit
  def generate(params, keys):
    images = generator.apply({'params': params}, _noise(keys, noise_dim))
    scaled = (jnp.clip(images, -1.0, 1.0) + 1.0) / 2.0
    if dcgan_masks.sigmoid_masks(config):
      return jnp.concatenate([scaled[..., :c], images[..., c:]], axis=-1)
    return scaled

  return generate


def generate(config: ml_collections.ConfigDict, gen_params: Any, key: jax.Array,
             num: int, batch_size: int = 64) -> np.ndarray:
  """`num` generated images in [0, 1] as float32 numpy [num, S, S, C]."""
  fn = make_generate_fn(config)
  keys = jax.random.split(key, num)
  out = [np.asarray(fn(gen_params, keys[i:i + batch_size]))
         for i in range(0, num, batch_size)]
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def num_train_steps(config: ml_collections.ConfigDict) -> int:
  return config.num_epochs * config.steps_per_epoch


def _training_data(config: ml_collections.ConfigDict):
  """(real images, the arrays to train on, their tf.data preprocess)."""
  # pylint: disable=g-import-not-at-top
  from mrseg.data import datasets
  from mrseg.data import pipeline
  # pylint: enable=g-import-not-at-top
  arrays = datasets.load_2d(config.data)
  real = arrays['image']
  logging.info('Training data: %d images of shape %s.', len(real),
               real.shape[1:])
  if not config.model.joint_mask:
    return real, {'image': real}, pipeline.scale_images
  if 'mask' not in arrays:
    raise ValueError(
        f'model.joint_mask generates image/mask pairs, but data.name='
        f'{config.data.name} has no masks; use phantom2d or '
        'brain_tumor_segmentation.')
  return (real, {'image': real, 'mask': arrays['mask']},
          pipeline.pair_preprocess(config.data.channels))


# Counts a run needs above zero, checked before anything is written.
POSITIVE_KEYS = ('batch_size', 'd_steps', 'num_epochs', 'steps_per_epoch',
                 'log_every_steps', 'checkpoint_every_steps',
                 'keep_checkpoints', 'num_grid_samples', 'num_eval_samples')


@workdir_lib.locked
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, float]:
  """Trains (or resumes) in `workdir`, then writes figures and metrics.json.

  Returns:
    The metrics written to metrics.json.
  """
  # tf.data and clu's writers load TensorFlow: imported here so that the
  # models and the step import without it (GPU benchmark machines have none).
  # pylint: disable=g-import-not-at-top
  from mrseg.data import pipeline
  # pylint: enable=g-import-not-at-top
  run = runner_lib.Runner(
      config, workdir, positive=POSITIVE_KEYS,
      check=lambda parallel: parallel.check_batch_size(config.batch_size))
  key = run.key
  real, train_arrays, preprocess = _training_data(config)

  def batches(start_step: int):
    return pipeline.as_numpy(pipeline.train_dataset(
        train_arrays, config.batch_size * config.d_steps, config.seed,
        start_step=start_step, preprocess=preprocess))

  generate_fn = make_generate_fn(config)
  grid_keys = jax.random.split(jax.random.fold_in(key, _GRID_NOISE),
                               config.num_grid_samples)

  def write_samples(step: int, host_state: DCGANState) -> None:
    images, masks = dcgan_masks.split_pair(
        config, np.asarray(generate_fn(host_state.ema, grid_keys)))
    if masks is not None:
      images = viz.overlay_masks(images, masks)
    path = os.path.join(workdir, 'samples', f'step_{step}.png')
    viz.save_png(viz.image_grid(images), path)
    logging.info('Wrote %s.', path)

  result = run.train(runner_lib.Task(
      num_steps=num_train_steps(config),
      init=functools.partial(create_state, config),
      step=make_train_step(config), batches=batches, restore=_restore_into,
      hooks=[loop.Hook(write_samples, config.sample_every_steps)],
      name='the DCGAN'))
  final = result.state

  # Paper 1's Fig. 10 and 11, and the same comparison as numbers.
  fake, _ = dcgan_masks.split_pair(config, generate(
      config, final.ema, jax.random.fold_in(key, _EVAL_NOISE),
      config.num_eval_samples))
  return gan_report.write_gan_report(
      workdir, final.step, real, fake, result.history_path, config.seed,
      loss_keys=('d_loss', 'g_loss'), title=f'DCGAN losses ({config.loss})')


def sample(config: ml_collections.ConfigDict, workdir: str, num_samples: int,
           output_dir: str | None = None) -> str:
  """Writes `num_samples` PNGs and one samples.npz from the latest checkpoint.

  Returns:
    The folder written to.

  Raises:
    ValueError: if `num_samples` is not positive.
    FileNotFoundError: if the workdir holds no checkpoint (nothing is
      created then).
  """
  if num_samples <= 0:
    raise ValueError(f'--num_samples={num_samples} must be positive.')
  state, step = restore(config, workdir)
  key = jax.random.fold_in(runner_lib.base_key(config), _SAMPLE_NOISE)
  images = generate(config, state.ema, key, num_samples)
  output_dir = output_dir or os.path.join(workdir, 'generated', f'step_{step}')
  images, masks = dcgan_masks.split_pair(config, images)
  synthetic.write_pairs(output_dir, images, masks, step)
  logging.info('Wrote %d samples of step %d to %s.', num_samples, step, output_dir)
  return output_dir
