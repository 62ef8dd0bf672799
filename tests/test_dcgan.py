"""DCGAN model, losses and train step: counts, maths and parallel equivalence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcgan as dcgan_config
from mrseg import losses
from mrseg.models import dcgan
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


@pytest.mark.parametrize('variant', ['test', 'test,wgan_gp'])
def test_jit_pmap_and_device_counts_agree(variant):
  config = dcgan_config.get_config(variant)
  if config.loss == 'wgan_gp':
    config.d_steps = 2  # exercises the grouping of real images per update
  rng = np.random.default_rng(0)
  size = config.batch_size * config.d_steps
  batches = [{'image': rng.uniform(-1, 1, (size, 16, 16, 1)).astype(np.float32)}
             for _ in range(2)]
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
