"""Tests for the on-device 2D augmentation (`mrseg.data.augment_jax`).

It must give what the tf.data version (`mrseg.data.augment`) gives: the same
random draws (TensorFlow's stateless Philox, reimplemented), hence the same
flips exactly and the same resampling up to float rounding.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import unet as unet_config
from mrseg.data import augment
from mrseg.data import augment_jax
from mrseg.data import pipeline
from mrseg.data import slices
from mrseg.train import parallel as parallel_lib
from mrseg.train import unet_trainer

ALL_ON = dict(flip=True, flip_up_down=True, rotation_degrees=20.0,
              elastic_alpha=2.0, elastic_sigma=6.0, intensity_scale=0.1,
              intensity_shift=0.05, gamma=0.2)

# Tolerances against the tf.data version (float32 on the CPU):
# - random draws: the same bits; uniform floats in [0, 1) equal, scaled
#   ones within 2e-7; normals (Box-Muller: log, sin, cos of the same
#   bits) within 1e-5;
# - flips: exact; intensity changes (pow, gain, offset): within 1e-6;
# - bilinear resampling of [0, 1] images: within 1e-3 (the elastic field's
#   matrix products and the angle's sin/cos round differently);
# - nearest-neighbour masks: at most 0.1 % of pixels differ (a source
#   coordinate within float rounding of a half-pixel rounds the other way).
IMAGE_ATOL = 1e-3
MASK_MISMATCH = 1e-3


def _tf_seed(seed, index):
  return tf.stack([tf.constant(seed, tf.int64), tf.constant(index, tf.int64)])


@pytest.mark.parametrize('seed,index', [(0, 0), (3, 12345), (2**40 + 7, 99),
                                        (-5, 2**31 - 1)])
def test_random_draws_are_tensorflow_s(seed, index):
  @jax.jit
  def draws(index):
    base = augment_jax.Seed.from_int64(seed, index)
    out = []
    for op in range(7):
      s = base.fold_in(op)
      out.append((jnp.stack(s.words), s.uniform((), -0.3, 0.7),
                  s.uniform((5, 3)), s.normal((7, 9))))
    return out

  tf_base = _tf_seed(seed, index)
  got = jax.device_get(draws(jnp.asarray(index, jnp.uint32)))
  for op, (words, scalar, uniform, normal) in enumerate(got):
    tf_seed = tf.random.experimental.stateless_fold_in(tf_base, op)
    want = tf_seed.numpy().astype(np.int64)
    words = words.astype(np.uint32)
    assert words[0].view(np.int32) == want[0] and words[2] == want[1]
    # Scaled to [min, max): within an ulp (XLA may fuse u * (max - min) +
    # min into one multiply-add); in [0, 1) (the flips' draw): exact.
    np.testing.assert_allclose(
        scalar, tf.random.stateless_uniform([], tf_seed, -0.3, 0.7).numpy(),
        rtol=0, atol=2e-7)
    np.testing.assert_array_equal(
        uniform, tf.random.stateless_uniform([5, 3], tf_seed).numpy())
    np.testing.assert_allclose(
        normal, tf.random.stateless_normal([7, 9], tf_seed).numpy(),
        atol=1e-5)


def _arrays(num=6, size=40, seed=0):
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[:size, :size]
  masks = np.zeros((num, size, size, 1), np.uint8)
  for m in masks:
    cr, cc = rng.integers(10, size - 10, 2)
    m[(rows - cr)**2 + (cols - cc)**2 < 40, 0] = 1
  images = (0.5 * np.sin(rows / 3.0)[None, ..., None] * np.cos(cols / 5.0)
            [None, ..., None] + 0.5) * 0.8 + 0.2 * masks
  return {'image': images.astype(np.float32), 'mask': masks}


def _tf_batch(arrays, options, seed, batch, step=0):
  """Batch `step` of pipeline.train_dataset with the tf.data augmentation,
  and the same batch unaugmented."""
  out = []
  for fn in (augment.make_augment_2d(**options, seed=seed), None):
    ds = pipeline.train_dataset(arrays, batch, seed, start_step=step,
                                process_index=0, process_count=1,
                                preprocess=fn)
    out.append(next(ds.as_numpy_iterator()))
  return out


@pytest.mark.parametrize('options', [
    dict(flip=True, flip_up_down=True),
    dict(intensity_scale=0.2, intensity_shift=0.1, gamma=0.3),
    dict(rotation_degrees=30.0),
    dict(elastic_alpha=3.0, elastic_sigma=5.0),
    ALL_ON,
], ids=['flips', 'intensity', 'rotation', 'elastic', 'all'])
def test_matches_the_tf_data_version(options):
  seed, batch, step = 4, 8, 3
  arrays = _arrays()
  want, plain = _tf_batch(arrays, options, seed, batch, step)
  indices = step * batch + np.arange(batch)
  fn = jax.jit(augment_jax.make_augment_2d(**options, seed=seed))
  got = jax.device_get(fn(plain, indices))
  assert got['image'].dtype == np.float32 and got['mask'].dtype == np.uint8
  geometric = 'rotation_degrees' in options or 'elastic_alpha' in options
  if not geometric:
    np.testing.assert_array_equal(got['mask'], want['mask'])
    np.testing.assert_allclose(got['image'], want['image'], atol=1e-6)
  else:
    np.testing.assert_allclose(got['image'], want['image'], atol=IMAGE_ATOL)
    assert np.mean(got['mask'] != want['mask']) <= MASK_MISMATCH
  # Something happened, and differently per example.
  assert not np.array_equal(got['image'], plain['image'])


def test_all_off_is_the_identity_and_checks_match():
  fn = augment_jax.make_augment_2d(**augment.default_config())
  batch = {'image': jnp.ones((2, 4, 4, 1))}
  assert fn(batch, jnp.arange(2))['image'] is batch['image']
  for bad in (dict(rotation_degrees=181.0), dict(gamma=-1.0),
              dict(intensity_scale=1.0),
              dict(elastic_alpha=1.0, elastic_sigma=0.0)):
    with pytest.raises(ValueError) as tf_error:
      augment.make_augment_2d(**bad)
    with pytest.raises(ValueError) as jax_error:
      augment_jax.make_augment_2d(**bad)
    assert str(jax_error.value) == str(tf_error.value)


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_train_step_on_device_equals_tf_data_augmentation(mode):
  """The UNet step with augment.on_device sees what tf.data would feed it."""
  options = dict(flip=True, rotation_degrees=15.0, intensity_scale=0.1)
  host = unet_config.get_config('test')
  host.parallel = mode
  for k, v in options.items():
    host.augment[k] = v
  device = unet_config.get_config('test')
  device.parallel = mode
  device.augment.update(host.augment.to_dict())
  device.augment.on_device = True
  arrays = _arrays(num=8, size=32)
  parallel = parallel_lib.Parallel(mode)
  key = jax.random.key(0)
  results = []
  for config in (host, device):
    ds = pipeline.train_dataset(arrays, config.batch_size, config.seed,
                                process_index=0, process_count=1,
                                preprocess=slices.make_preprocess(config))
    state = parallel.replicate(unet_trainer.create_state(config, key))
    step = parallel.compile(unet_trainer.make_train_step(config))
    losses = []
    for _, batch in zip(range(3), ds.as_numpy_iterator()):
      state, metrics = step(state, parallel.shard_batch(batch), key)
      losses.append(float(jax.device_get(metrics['loss'])))
    results.append(losses)
  # Same batches up to resampling round-off: the losses agree closely (they
  # differ completely if an index or a draw is off).
  np.testing.assert_allclose(results[1], results[0], rtol=2e-3)
