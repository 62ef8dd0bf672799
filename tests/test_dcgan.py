"""DCGAN model, losses and train step: counts, maths and parallel equivalence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcgan as dcgan_config
from mrseg import losses
from mrseg.data import phantom
from mrseg.models import dcgan
from mrseg.train import dcgan_masks
from mrseg.train import dcgan_trainer
from mrseg.train import parallel as parallel_lib


def _count(module, *shape):
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))
  return dcgan.count_params(variables)


@pytest.mark.parametrize('upsample', ['conv_transpose', 'subpixel'])
def test_paper_parameter_counts(upsample):
  # Paper 1, Fig. 1-2 (and the table).
  assert _count(dcgan.Generator(upsample=upsample), 1, 100) == 27_265_281
  assert _count(dcgan.Discriminator(), 1, 128, 128, 1) == 582_785


def test_paper_config_builds_paper_sizes():
  config = dcgan_config.get_config()
  generator, discriminator = dcgan_trainer.build_models(config)
  assert _count(generator, 1, config.model.noise_dim) == 27_265_281
  assert _count(discriminator, 1, 128, 128, 1) == 582_785
  shape = jax.eval_shape(
      lambda: generator.apply(
          generator.init(jax.random.key(0), jnp.zeros((1, 100))),
          jnp.zeros((3, 100))))
  assert shape.shape == (3, 128, 128, 1)


def test_image_size_mismatch_is_a_config_error():
  config = dcgan_config.get_config('test')
  config.data.image_size = 32
  with pytest.raises(ValueError, match='data.image_size=32'):
    dcgan_trainer.build_models(config)


def test_losses_against_hand_values():
  real = jnp.array([0.0, 2.0])
  fake = jnp.array([-1.0])
  sig = lambda x: 1 / (1 + np.exp(-x))
  expected_d = -np.mean(np.log(sig(np.array([0.0, 2.0])))) - np.log(1 - sig(-1.0))
  np.testing.assert_allclose(
      losses.discriminator_loss('minimax', real, fake), expected_d, rtol=1e-6)
  np.testing.assert_allclose(
      losses.generator_loss('minimax', fake), np.log(1 - sig(-1.0)), rtol=1e-6)
  np.testing.assert_allclose(
      losses.generator_loss('non_saturating', fake), -np.log(sig(-1.0)), rtol=1e-6)
  # Saturated logits stay finite (the reason the losses take logits).
  assert np.isfinite(losses.discriminator_loss('minimax', jnp.array([-200.0]),
                                               jnp.array([200.0])))
  with pytest.raises(ValueError, match='wasserstein'):
    losses.generator_loss('wasserstein', fake)


def test_wasserstein_losses_and_gradient_penalty_by_hand():
  real, fake = jnp.array([1.0, 3.0]), jnp.array([-2.0])
  assert float(losses.discriminator_loss('wgan_gp', real, fake)) == -4.0
  assert float(losses.generator_loss('wgan_gp', fake)) == 2.0
  # A linear critic f(x) = <w, x> has gradient w everywhere: with w = 0.5 on
  # 16 pixels, ||w|| = 2 and the penalty is (2 - 1)^2 = 1 for any mix.
  x_real = jnp.ones((3, 4, 4, 1))
  x_fake = -jnp.ones((3, 4, 4, 1))
  linear = lambda x: jnp.sum(0.5 * x, axis=(1, 2, 3))
  gp = losses.gradient_penalty(linear, x_real, x_fake, jnp.array([0.0, 0.3, 1.0]))
  np.testing.assert_allclose(gp, 1.0, rtol=1e-6)
  # f(x) = sum(x^2): gradient 2 x_hat; with 4 pixels at x_hat = 2*mix - 1 the
  # norm is 4 |2 mix - 1|. Mix 0.5 -> norm 0 -> 1; mix 1 -> norm 4 -> 9.
  x_real, x_fake = jnp.ones((2, 2, 2, 1)), -jnp.ones((2, 2, 2, 1))
  square = lambda x: jnp.sum(x**2, axis=(1, 2, 3))
  gp = losses.gradient_penalty(square, x_real, x_fake, jnp.array([0.5, 1.0]))
  np.testing.assert_allclose(gp, (1.0 + 9.0) / 2, rtol=1e-5)


def _run_steps(config, mode, devices, batches):
  parallel = parallel_lib.Parallel(mode, devices=devices)
  key = jax.random.key(config.seed)
  state = parallel.replicate(dcgan_trainer.create_state(config, key))
  step = parallel.compile(dcgan_trainer.make_train_step(config))
  history = []
  for batch in batches:
    state, metrics = step(state, parallel.shard_batch(batch), key)
    history.append(jax.device_get(metrics))
  return jax.device_get(parallel.unreplicate(state)), history


def _batches(config, num, seed=0):
  """Random image batches in [-1, 1]; joint: with -1/+1 masks (~1/4 tumour)."""
  rng = np.random.default_rng(seed)
  size = config.batch_size * config.d_steps
  shape = (size, config.data.image_size, config.data.image_size)
  out = []
  for _ in range(num):
    image = rng.uniform(-1, 1, shape + (1,)).astype(np.float32)
    if config.model.joint_mask:
      mask = np.where(rng.uniform(size=shape + (1,)) < 0.25, 1.0, -1.0)
      image = np.concatenate([image, mask.astype(np.float32)], -1)
    out.append({'image': image})
  return out


# 'test,joint,small_data': DiffAugment, R1, spectral norm, EMA, sigmoid
# masks and misplaced-mask negatives, all drawn per example.
@pytest.mark.parametrize('variant',
                         ['test', 'test,wgan_gp', 'test,joint,small_data'])
def test_jit_pmap_and_device_counts_agree(variant):
  config = dcgan_config.get_config(variant)
  if config.loss == 'wgan_gp':
    config.d_steps = 2  # exercises the grouping of real images per update
  batches = _batches(config, 2)
  devices = jax.devices()
  assert len(devices) == 4, 'conftest should give 4 fake CPU devices'
  reference_state, reference_metrics = _run_steps(
      config, 'jit', devices[:1], batches)
  for mode, devs in (('jit', devices), ('pmap', devices[:1]), ('pmap', devices)):
    state, metrics = _run_steps(config, mode, devs, batches)
    for m, ref in zip(metrics, reference_metrics):
      for name in ref:
        np.testing.assert_allclose(m[name], ref[name], rtol=1e-5, atol=1e-6,
                                   err_msg=f'{mode} x{len(devs)} {name}')
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-6),
                 state.gen.params, reference_state.gen.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-6),
                 state.disc.params, reference_state.disc.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-6),
                 state.ema, reference_state.ema)
  # And the step really trained something.
  fresh = dcgan_trainer.create_state(config, jax.random.key(config.seed))
  assert not np.allclose(fresh.gen.params['out']['kernel'],
                         reference_state.gen.params['out']['kernel'])


def test_example_keys_are_the_global_split_under_pmap():
  key = jax.random.key(3)
  devices = jax.devices()
  per_device = jax.pmap(
      lambda x: jax.random.key_data(
          parallel_lib.example_keys(key, 2, 'data')), axis_name='data',
      devices=devices)(jnp.zeros(len(devices)))
  expected = jax.random.key_data(jax.random.split(key, 2 * len(devices)))
  np.testing.assert_array_equal(
      np.asarray(per_device).reshape(expected.shape), expected)


def test_spectral_norm_keeps_counts_and_makes_d_scale_invariant():
  d = dcgan.Discriminator(spectral_norm=True, conv='fast_grad')
  assert _count(d, 1, 128, 128, 1) == 582_785
  # With zero biases (their init) and LeakyReLU (positively homogeneous),
  # a D whose kernels are divided by their norms ignores a kernel scale.
  d = dcgan.Discriminator(features=(4, 8), strides=(1, 2), spectral_norm=True)
  variables = d.init(jax.random.key(0), jnp.zeros((1, 16, 16, 2)))
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 2))
  scaled = jax.tree.map(lambda p: 10 * p, variables)
  np.testing.assert_allclose(d.apply(scaled, x), d.apply(variables, x),
                             rtol=1e-4)
  plain = dcgan.Discriminator(features=(4, 8), strides=(1, 2))
  np.testing.assert_allclose(plain.apply(scaled, x),
                             1000 * plain.apply(variables, x), rtol=1e-4)


def test_sigmoid_mask_channel_is_a_probability_and_thresholds_at_half():
  config = dcgan_config.get_config('test,joint')
  config.model.mask_output = 'sigmoid'
  generator, _ = dcgan_trainer.build_models(config)
  state = dcgan_trainer.create_state(config, jax.random.key(0))
  # Large weights: the tanh image channel saturates to +-1, the sigmoid
  # mask to {0, 1}; neither leaves its range.
  params = jax.tree.map(lambda p: 50 * p, state.gen.params)
  # The noise dcgan_trainer.generate draws from key(1).
  z = jax.vmap(lambda k: jax.random.normal(k, (8,)))(
      jax.random.split(jax.random.key(1), 8))
  raw = generator.apply({'params': params}, z)
  assert raw[..., 1].min() >= 0 and raw[..., 1].max() <= 1
  assert raw[..., 0].min() < -0.99 and raw[..., 1].min() < 0.01
  images = dcgan_trainer.generate(config, params, jax.random.key(1), 8)
  np.testing.assert_allclose(images[..., 1], raw[..., 1], atol=1e-6)
  np.testing.assert_allclose(images[..., 0], (raw[..., 0] + 1) / 2, atol=1e-6)
  _, masks = dcgan_masks.split_pair(config, images)
  np.testing.assert_array_equal(masks[..., 0], raw[..., 1] > 0.5)
  # Real masks enter D smoothed: -1 -> 0.05, +1 -> 0.95; the image stays.
  pair = jnp.stack([jnp.full((2, 2), 0.3), jnp.array([[-1., 1.], [1., -1.]])],
                   -1)[None]
  encoded = dcgan_masks.encode_masks(config, pair)
  np.testing.assert_allclose(encoded[0, ..., 1], [[0.05, 0.95], [0.95, 0.05]],
                             atol=1e-6)
  np.testing.assert_array_equal(encoded[..., 0], pair[..., 0])
  config.model.mask_output = 'relu'
  with pytest.raises(ValueError, match='mask_output'):
    dcgan_trainer.build_models(config)


def _one_step(config, state=None, batches=None):
  state = state or dcgan_trainer.create_state(config, jax.random.key(0))
  batches = batches or _batches(config, 1)
  step = jax.jit(dcgan_trainer.make_train_step(config))
  for batch in batches:
    state, metrics = step(state, batch, jax.random.key(0))
  return state, jax.device_get(metrics)


def test_mismatch_weight_counts_misplaced_masks_as_fakes():
  config = dcgan_config.get_config('test,joint')
  _, plain = _one_step(config)
  assert 'd_mismatch' not in plain
  # With weight 1 the generated pairs drop out of D's loss: a different
  # generator leaves it unchanged, and the misplaced pairs are scored.
  config.mismatch_weight = 1.0
  state = dcgan_trainer.create_state(config, jax.random.key(0))
  _, with_mismatch = _one_step(config, state)
  other_gen = state.replace(gen=state.gen.replace(
      params=jax.tree.map(lambda p: p + 0.1, state.gen.params)))
  _, other = _one_step(config, other_gen)
  assert 0 < with_mismatch['d_mismatch'] < 1
  assert with_mismatch['d_loss'] != plain['d_loss']
  np.testing.assert_allclose(other['d_loss'], with_mismatch['d_loss'],
                             rtol=1e-6)
  assert other['d_fake'] != with_mismatch['d_fake']


def test_r1_penalty_is_added_and_refused_with_wgan_gp():
  config = dcgan_config.get_config('test')
  _, plain = _one_step(config)
  config.r1_gamma = 10.0
  _, metrics = _one_step(config)
  assert metrics['r1'] > 0
  np.testing.assert_allclose(metrics['d_loss'],
                             plain['d_loss'] + 5.0 * metrics['r1'], rtol=1e-5)
  config = dcgan_config.get_config('test,wgan_gp')
  config.r1_gamma = 1.0
  with pytest.raises(ValueError, match='r1_gamma=1.0 with loss=wgan_gp'):
    dcgan_trainer.make_train_step(config)
  # The variants give the same config in either order, without the clash.
  for variant in ('test,wgan_gp,small_data', 'test,small_data,wgan_gp'):
    config = dcgan_config.get_config(variant)
    assert config.r1_gamma == 0 and config.diffaug
    assert not config.model.discriminator.spectral_norm


def test_generator_ema_follows_the_warmed_up_formula():
  config = dcgan_config.get_config('test')
  state = dcgan_trainer.create_state(config, jax.random.key(0))
  assert jax.tree.all(jax.tree.map(np.array_equal, state.ema, state.gen.params))
  raw, _ = _one_step(config, state, _batches(config, 2))
  # Off (the paper): the EMA is the generator.
  assert jax.tree.all(jax.tree.map(np.array_equal, raw.ema, raw.gen.params))
  config.ema_decay = 0.9
  step = jax.jit(dcgan_trainer.make_train_step(config))
  ema, s = state.gen.params, state
  for batch in _batches(config, 2):
    decay = min(0.9, (1 + int(s.step)) / (10 + int(s.step)))
    s, _ = step(s, batch, jax.random.key(0))
    ema = jax.tree.map(lambda e, p, d=decay: d * e + (1 - d) * p, ema,
                       s.gen.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7), s.ema, ema)
  # The raw generator is the same as without the EMA; the EMA lags it.
  jax.tree.map(np.testing.assert_array_equal, s.gen.params, raw.gen.params)
  assert not np.allclose(s.ema['out']['kernel'], s.gen.params['out']['kernel'])


def test_matching_aware_d_learns_that_a_misplaced_mask_is_wrong():
  """Issue 10: without misplaced-mask negatives the joint D scored a real
  image with another slice's mask like its own. With them, a short training
  on the phantom ranks a held-out slice's own mask above a moved one."""
  config = dcgan_config.get_config('test,joint')
  config.data.image_size = 32
  config.model.generator.base_size = 8
  config.model.discriminator.features = (8, 16, 16, 16)
  config.batch_size = 8
  config.optim.d_learning_rate = 1e-3
  config.model.mask_output = 'sigmoid'
  config.mismatch_weight = 0.5
  train = phantom.tumor_slices(32, 32, seed=0)
  pairs = np.concatenate([train['image'], train['mask']], -1) * 2.0 - 1.0
  rng = np.random.default_rng(0)
  batches = [{'image': pairs[rng.choice(32, 8, replace=False)]
              .astype(np.float32)} for _ in range(120)]
  state, _ = _one_step(config, batches=batches)

  held_out = phantom.tumor_slices(16, 32, seed=0, first_index=100)
  _, discriminator = dcgan_trainer.build_models(config)

  def scores(masks):
    pair = np.concatenate([held_out['image'], masks], -1) * 2.0 - 1.0
    pair = dcgan_masks.encode_masks(config, jnp.asarray(pair, jnp.float32))
    return np.asarray(discriminator.apply({'params': state.disc.params}, pair))

  right = scores(held_out['mask'])
  wrong = scores(np.roll(held_out['mask'], (10, 10), axis=(1, 2)))
  # Measured: 14 of 16 ranked right, mean margin 1.41 logits; without the
  # negatives (mismatch_weight=0) 12 of 16 and 0.34.
  assert np.mean(right > wrong) >= 0.75, (right, wrong)
  assert np.mean(right - wrong) > 1.0, (right, wrong)
