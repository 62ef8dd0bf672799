"""End to end: a tiny DCGAN run writes every output, resumes exactly, stops on NaN."""
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from configs import dcgan as dcgan_config
from conftest import shared_data
from mrseg import overrides as overrides_lib
from mrseg.data import pipeline
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import dcgan_trainer
from mrseg.train import logs
from mrseg.train import loop
from mrseg.train.state import GANState


def _config(variant='test', **overrides):
  config = dcgan_config.get_config(variant)
  return overrides_lib.apply(config, overrides)


def _restore(config, workdir, step=None):
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  state = checkpointer.restore(
      dcgan_trainer.create_state(config, jax.random.key(99)), step)
  checkpointer.close()
  return jax.device_get(state)


def test_three_step_run_writes_every_output(tmp_path):
  workdir = str(tmp_path / 'run')
  config = _config()
  metrics = dcgan_trainer.train_and_evaluate(config, workdir)

  files = set(os.listdir(workdir))
  assert {'config.json', 'checkpoints', 'samples', 'figures', 'metrics.json',
          'history.jsonl'} <= files
  assert any(f.startswith('events.out.tfevents') for f in files)
  assert json.load(open(os.path.join(workdir, 'config.json')))['batch_size'] == 4
  assert sorted(os.listdir(os.path.join(workdir, 'samples'))) == [
      'step_2.png', 'step_3.png']
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_3.png')))
  assert grid.shape[0] > 2 * 16 and grid.std() > 0  # a 2x2 grid of 16x16 images
  for figure in ('losses.png', 'intensity_distribution.png'):
    assert Image.open(os.path.join(workdir, 'figures', figure)).size[0] > 100
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 3

  saved = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert saved == pytest.approx(metrics)
  assert saved['step'] == 3
  for name in ('d_loss', 'g_loss', 'intensity_wasserstein'):
    assert np.isfinite(saved[name])
  assert 0 <= saved['d_real'] <= 1 and 0 <= saved['d_fake'] <= 1
  assert 0 <= saved['histogram_intersection'] <= 1
  assert saved['num_real'] == 12 and saved['num_fake'] == 8
  assert 0 <= saved['ms_ssim_diversity_fake'] <= 1
  history = logs.read_history(os.path.join(workdir, 'history.jsonl'))
  assert [r['step'] for r in history] == [1, 2, 3]

  # --mode=sample: 200 PNGs plus one .npz, from the latest checkpoint.
  out = dcgan_trainer.sample(config, workdir, 200)
  pngs = [f for f in os.listdir(out) if f.endswith('.png')]
  assert len(pngs) == 200
  npz = np.load(os.path.join(out, 'samples.npz'))
  assert npz['image'].shape == (200, 16, 16, 1) and int(npz['step']) == 3
  first = np.asarray(Image.open(os.path.join(out, 'sample_0000.png')))
  np.testing.assert_array_equal(
      first, (npz['image'][0, ..., 0] * 255 + 0.5).astype(np.uint8))
  assert npz['image'].min() >= 0 and npz['image'].max() <= 1


# 'test,joint,small_data' resumes the generator EMA and the options' draws.
@pytest.mark.parametrize('variant', ['test', 'test,joint,small_data'])
def test_resumed_run_equals_uninterrupted_run(tmp_path, variant):
  straight = str(tmp_path / 'straight')
  dcgan_trainer.train_and_evaluate(_config(variant, steps_per_epoch=4),
                                   straight)
  resumed = str(tmp_path / 'resumed')
  # "Interrupted" after step 2, then the same command with the full budget.
  dcgan_trainer.train_and_evaluate(_config(variant, steps_per_epoch=2), resumed)
  dcgan_trainer.train_and_evaluate(_config(variant, steps_per_epoch=4), resumed)

  a = _restore(_config(variant), straight, 4)
  b = _restore(_config(variant), resumed, 4)
  assert int(a.step) == int(b.step) == 4
  jax.tree.map(np.testing.assert_array_equal, a.gen.params, b.gen.params)
  jax.tree.map(np.testing.assert_array_equal, a.disc.params, b.disc.params)
  jax.tree.map(np.testing.assert_array_equal, a.gen.opt_state, b.gen.opt_state)
  jax.tree.map(np.testing.assert_array_equal, a.ema, b.ema)
  history = logs.read_history(os.path.join(resumed, 'history.jsonl'))
  assert [r['step'] for r in history] == [1, 2, 3, 4]
  reference = logs.read_history(os.path.join(straight, 'history.jsonl'))
  np.testing.assert_allclose([r['d_loss'] for r in history],
                             [r['d_loss'] for r in reference], rtol=1e-6)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  # An infinite generator learning rate makes its parameters inf in step 1,
  # so the losses of step 2 are NaN.
  config = _config(checkpoint_every_steps=1, **{
      'optim.g_learning_rate': float('inf')})
  with pytest.raises(loop.NonFiniteLossError, match='at step 2') as err:
    dcgan_trainer.train_and_evaluate(config, workdir)
  assert err.value.step == 2
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  assert checkpointer.latest_step() == 1
  state = _restore(config, workdir, 1)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.disc.params))


def test_sample_without_checkpoint_names_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    dcgan_trainer.sample(_config(), str(tmp_path / 'empty'), 2)


def test_joint_gan_generates_labelled_pairs(tmp_path):
  config = dcgan_config.get_config('test,joint')
  generator, discriminator = dcgan_trainer.build_models(config)
  state = dcgan_trainer.create_state(config, jax.random.key(0))
  assert state.gen.params['out']['kernel'].shape[-1] == 2  # image + mask
  assert state.disc.params['conv0']['kernel'].shape[-2] == 2  # judges pairs

  # The pair a discriminator sees: image and its own mask, both in [-1, 1].
  image = np.random.default_rng(0).uniform(size=(16, 16, 1)).astype(np.float32)
  mask = (image > 0.5).astype(np.uint8)
  pair = pipeline.pair_preprocess(1)({'image': image, 'mask': mask})
  pair = np.asarray(pair['image'])
  np.testing.assert_allclose(pair[..., 0], image[..., 0] * 2 - 1, atol=1e-6)
  np.testing.assert_array_equal(pair[..., 1], mask[..., 0] * 2.0 - 1)

  workdir = str(tmp_path / 'joint')
  dcgan_trainer.train_and_evaluate(config, workdir)
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_3.png')))
  assert grid.ndim == 3 and grid.shape[-1] == 3  # image with mask overlay
  out = dcgan_trainer.sample(config, workdir, 5)
  npz = np.load(os.path.join(out, 'samples.npz'))
  assert npz['image'].shape == (5, 16, 16, 1)
  assert npz['mask'].shape == (5, 16, 16, 1)
  assert set(np.unique(npz['mask'])) <= {0, 1}
  png_mask = np.asarray(Image.open(os.path.join(out, 'sample_0003_mask.png')))
  np.testing.assert_array_equal(png_mask, npz['mask'][3, ..., 0] * 255)


def test_joint_gan_needs_masks(tmp_path):
  config = dcgan_config.get_config('test,joint')
  config.data.name = 'brain_tumor_detection'
  config.data.manual_dir = str(shared_data('brain_tumor_detection'))
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match='has no masks'):
    dcgan_trainer.train_and_evaluate(config, str(tmp_path / 'joint'))
  assert not os.path.exists(tmp_path / 'joint' / 'checkpoints')


def test_checkpoint_from_before_the_ema_restores(tmp_path):
  workdir = str(tmp_path / 'old')
  config = _config()
  state = dcgan_trainer.create_state(config, jax.random.key(5))
  old = GANState(step=state.step + 7, gen=state.gen, disc=state.disc)
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  checkpointer.save(7, old, force=True)
  checkpointer.close()
  restored, step = dcgan_trainer.restore(config, workdir)
  assert step == 7 and int(restored.step) == 7
  jax.tree.map(np.testing.assert_array_equal, restored.gen.params,
               state.gen.params)
  jax.tree.map(np.testing.assert_array_equal, restored.ema, state.gen.params)
  # A checkpoint of another model still fails loudly.
  with pytest.raises(ValueError, match='model other than the one this config'):
    dcgan_trainer.restore(_config(**{'model.noise_dim': 9}), workdir)
