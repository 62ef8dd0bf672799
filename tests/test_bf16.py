"""bfloat16 compute end to end, on the CPU: every model trains a few steps.

`--config.model.dtype=bfloat16` computes in bf16 and keeps everything that
persists in float32. For the DCGAN, paper 1's UNet (with batch norm, so
that its statistics are checked too) and paper 2's 3D segmenter and
MRI-GAN: the same state and batches train 3 steps at float32 and at
bfloat16; the bf16 losses are finite and within LOSS_RTOL (relative, plus
LOSS_ATOL) of the float32 ones; parameters, optimizer state and batch-norm
statistics stay float32 (and close to the float32 run's); what the models
write (generated images, class probabilities) is float32.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcgan as dcgan_config
from configs import tissue_base
from configs import unet as unet_config
from mrseg.data import tissue
from mrseg.eval import segmentation
from mrseg.train import dcgan_trainer
from mrseg.train import mrigan_options
from mrseg.train import mrigan_step
from mrseg.train import mrigan_trainer
from mrseg.train import parallel as parallel_lib
from mrseg.train import unet_trainer

STEPS = 3
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2 %); over a
# forward and backward pass of these small networks and 3 Adam steps the
# losses may drift by a few rounding steps per layer: 5 % (+ 0.02) bounds it
# with room, and still catches a wrong dtype or a lost cast.
LOSS_RTOL, LOSS_ATOL = 0.05, 0.02
# Parameters after 3 Adam steps of ~lr each: the bf16 run's may differ by
# a few learning rates where gradient signs flip.
PARAM_ATOL = 0.05


def _float_leaves_are_f32(tree, what):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, (what, jax.tree_util.keystr(path),
                                         leaf.dtype)


def _check_state(net_states, what):
  for name, net in net_states.items():
    _float_leaves_are_f32(net.params, f'{what} {name} params')
    _float_leaves_are_f32(net.opt_state, f'{what} {name} opt_state')
    _float_leaves_are_f32(net.batch_stats, f'{what} {name} batch_stats')


def _train(make_state, make_step, batch, key):
  state = make_state()
  step = jax.jit(make_step)
  history = []
  for _ in range(STEPS):
    state, metrics = step(state, batch, key)
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def _compare(runs, nets):
  (s32, h32), (s16, h16) = runs['float32'], runs['bfloat16']
  for m32, m16 in zip(h32, h16):
    for k, v in m32.items():
      if not jnp.issubdtype(np.asarray(v).dtype, jnp.floating):
        continue
      assert np.isfinite(m16[k]).all(), (k, m16)
      if 'loss' in k:
        np.testing.assert_allclose(m16[k], v, rtol=LOSS_RTOL, atol=LOSS_ATOL,
                                   err_msg=k)
  for state, what in ((s32, 'float32'), (s16, 'bfloat16')):
    _check_state({n: getattr(state, n) for n in nets}, what)
  for n in nets:
    for a, b in zip(jax.tree.leaves(getattr(s32, n).params),
                    jax.tree.leaves(getattr(s16, n).params)):
      np.testing.assert_allclose(b, a, atol=PARAM_ATOL)
    _tree_close(getattr(s32, n).batch_stats, getattr(s16, n).batch_stats)


def _tree_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(y, x, rtol=0.05, atol=0.05)


def test_dcgan_bf16():
  runs = {}
  key = jax.random.key(0)
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1),
                              jnp.float32, -1.0, 1.0)
  for dtype in ('float32', 'bfloat16'):
    config = dcgan_config.get_config('test')
    config.model.dtype = dtype
    runs[dtype] = _train(lambda c=config: dcgan_trainer.create_state(c, key),
                         dcgan_trainer.make_train_step(config),
                         {'image': images}, key)
    samples = dcgan_trainer.generate(config, runs[dtype][0].gen.params, key, 3)
    assert samples.dtype == np.float32 and np.isfinite(samples).all()
  _compare(runs, ('gen', 'disc'))


def test_unet_bf16_with_batch_norm():
  runs = {}
  key = jax.random.key(0)
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 1))
  masks = (images > 0.7).astype(jnp.uint8)
  parallel = parallel_lib.Parallel('jit')
  for dtype in ('float32', 'bfloat16'):
    config = unet_config.get_config('test')
    config.model.dtype = dtype
    config.model.norm = 'batch'
    runs[dtype] = _train(lambda c=config: unet_trainer.create_state(c, key),
                         unet_trainer.make_train_step(config),
                         {'image': images, 'mask': masks}, key)
    probs = unet_trainer.predict_probabilities(
        config, runs[dtype][0], np.asarray(images)[:2], parallel)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    # Larger images go through sliding windows: float32 too.
    big = np.asarray(jax.random.uniform(key, (1, 48, 48, 1)))
    probs = unet_trainer.predict_probabilities(config, runs[dtype][0], big,
                                               parallel)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
  assert jax.tree.leaves(runs['bfloat16'][0].net.batch_stats)
  _compare({d: (s, h) for d, (s, h) in runs.items()}, ())
  _check_state({'net': runs['bfloat16'][0].net}, 'bfloat16')
  _tree_close(runs['float32'][0].net.params, runs['bfloat16'][0].net.params)
  _tree_close(runs['float32'][0].net.batch_stats,
              runs['bfloat16'][0].net.batch_stats)


def _tissue_batch(config, key):
  p, n = config.data.patch_size, config.batch_size
  c = len(tissue.modalities(config))
  k1, k2, k3 = jax.random.split(key, 3)
  batch = {'labelled': {
      'image': jax.random.uniform(k1, (n, p, p, p, c), jnp.float32, -1, 1),
      'label': jax.random.randint(k2, (n, p, p, p), 0,
                                  config.model.num_classes).astype(jnp.uint8)}}
  if mrigan_options.is_gan(config):
    batch['unlabelled'] = {'image': jax.random.uniform(
        k3, (config.unlabelled_batch_size, p, p, p, c), jnp.float32, -1, 1)}
  return batch


@pytest.mark.parametrize('kind', ['supervised', 'mrigan'])
def test_3d_bf16(kind):
  runs = {}
  key = jax.random.key(0)
  parallel = parallel_lib.Parallel('jit')
  for dtype in ('float32', 'bfloat16'):
    config = tissue_base.get_config(f'{kind},test')
    config.data.patch_size = 8
    config.batch_size = config.unlabelled_batch_size = 2
    config.eval.window_size = 8
    config.model.dtype = dtype
    batch = _tissue_batch(config, jax.random.key(1))
    weights = mrigan_options.resolve_class_weights(
        config, [jax.device_get(batch['labelled'])])['weights']
    runs[dtype] = _train(
        lambda c=config: mrigan_step.create_state(c, key),
        mrigan_step.make_train_step(config, weights), batch, key)
    predict = mrigan_trainer.make_predict_fn(config, parallel)
    volume = np.asarray(jax.random.uniform(key, (12, 12, 12, 2)))
    probs = segmentation.predict_volume(config, predict,
                                           runs[dtype][0].disc.params, volume)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
  _compare(runs, ('gen', 'disc'))
