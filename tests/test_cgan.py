"""The label-conditioned GAN: models, DiffAugment, the step, a run, alignment."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cgan as cgan_config
from mrseg import losses
from mrseg.data import layouts
from mrseg.data import phantom
from mrseg.models import cgan
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import cgan_inputs
from mrseg.train import cgan_trainer
from mrseg.train import diffaug
from mrseg.train import parallel as parallel_lib


@pytest.mark.parametrize('norm', ['spade', 'instance', 'none'])
def test_generator_and_patch_discriminator_shapes(norm):
  g = cgan.Generator(features=(4, 8), norm=norm, spade_hidden=4,
                     noise_features=3)
  layout = jnp.zeros((2, 16, 16, 5))
  variables = g.init(jax.random.key(0), layout, jnp.zeros((2, 4)))
  out = g.apply(variables, layout, jnp.ones((2, 4)))
  assert out.shape == (2, 16, 16, 1) and float(jnp.abs(out).max()) <= 1
  d = cgan.Discriminator(features=(4, 8), spectral_norm=True)
  dv = d.init(jax.random.key(1), jnp.zeros((2, 16, 16, 6)))
  assert d.apply(dv, jnp.ones((2, 16, 16, 6))).shape == (2, 4, 4)
  with pytest.raises(ValueError, match='norm'):
    cgan.Generator(norm='batch').init(jax.random.key(0), layout,
                                      jnp.zeros((2, 4)))


def test_spectral_norm_divides_the_kernel_by_its_largest_singular_value():
  conv = cgan.SNConv(3, (2, 2), power_iterations=30)
  x = jnp.zeros((1, 4, 4, 2))
  variables = conv.init(jax.random.key(0), x)
  kernel = variables['params']['kernel']
  sigma = np.linalg.svd(np.asarray(kernel).reshape(-1, 3), compute_uv=False)[0]
  # A 1-pixel input at the kernel's centre reads one tap; compare with a
  # plain convolution of the kernel divided by sigma.
  x = jax.random.normal(jax.random.key(1), (1, 4, 4, 2))
  expected = jax.lax.conv_general_dilated(
      x, kernel / sigma, (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-4,
                             atol=1e-5)


def test_diffaug_moves_layout_and_image_together_and_colours_the_image_only():
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)
  pair = np.concatenate([image, image], axis=-1)  # channel 1: a "layout" copy
  keys = jax.random.split(jax.random.key(0), 8)
  geo = diffaug.augment(pair, keys, 'translation,flip,cutout',
                        image_channels=(1,))
  np.testing.assert_array_equal(geo[..., 0], geo[..., 1])
  assert not np.allclose(geo, pair)
  coloured = diffaug.augment(pair, keys, 'color', image_channels=(1,))
  np.testing.assert_array_equal(coloured[..., 0], pair[..., 0])
  assert not np.allclose(coloured[..., 1], pair[..., 1])
  # Per-example keys: an example's draw does not depend on its batch.
  half = diffaug.augment(pair[:4], keys[:4], 'translation,flip,color',
                         image_channels=(1,))
  full = diffaug.augment(pair, keys, 'translation,flip,color',
                         image_channels=(1,))
  np.testing.assert_allclose(half, full[:4], rtol=1e-6)
  with pytest.raises(ValueError, match='policy'):
    diffaug.check_policy('translation,mixup')


def test_hinge_and_r1():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
  # relu(1 - real) = (0, 0.5); relu(1 + fake) = (0, 1).
  assert losses.discriminator_loss('hinge', real, fake) == pytest.approx(0.75)
  assert losses.generator_loss('hinge', fake) == pytest.approx(1.0)
  # D(x) = sum(3 x): gradient 3 everywhere; 4 pixels -> squared norm 36.
  r1 = losses.r1_penalty(lambda x: 3 * jnp.sum(x, axis=(1, 2, 3)),
                         jnp.ones((2, 2, 2, 1)))
  assert r1 == pytest.approx(36.0)


def _batches(config, num):
  data = phantom.tumor_slices(config.batch_size * num, 16, seed=0)
  spec = cgan_inputs.layout_spec(config)
  classes = np.stack([layouts.host_layout(i, m, spec)[0]
                      for i, m in zip(data['image'], data['mask'])])[..., None]
  tumour = np.stack([layouts.tumour_labels(i, m, spec)
                     for i, m in zip(data['image'], data['mask'])])[..., None]
  b = config.batch_size
  return [{'image': data['image'][i * b:(i + 1) * b] * 2 - 1,
           'classes': classes[i * b:(i + 1) * b],
           'tumour': tumour[i * b:(i + 1) * b]} for i in range(num)]


def _run_steps(config, mode, devices, batches):
  parallel = parallel_lib.Parallel(mode, devices=devices)
  key = jax.random.key(config.seed)
  state = parallel.replicate(cgan_trainer.create_state(config, key))
  step = parallel.compile(cgan_trainer.make_train_step(config))
  history = []
  for batch in batches:
    state, metrics = step(state, parallel.shard_batch(batch), key)
    history.append(jax.device_get(metrics))
  return jax.device_get(parallel.unreplicate(state)), history


def test_jit_pmap_and_device_counts_agree():
  config = cgan_config.get_config('test')
  config.r1_gamma = 1.0
  batches = _batches(config, 2)
  devices = jax.devices()
  ref_state, ref_metrics = _run_steps(config, 'jit', devices[:1], batches)
  for mode, devs in (('jit', devices), ('pmap', devices)):
    state, metrics = _run_steps(config, mode, devs, batches)
    for m, ref in zip(metrics, ref_metrics):
      for name in ref:
        np.testing.assert_allclose(m[name], ref[name], rtol=1e-4, atol=1e-5,
                                   err_msg=f'{mode} x{len(devs)} {name}')
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-5),
                 state.ema, ref_state.ema)
  fresh = cgan_trainer.create_state(config, jax.random.key(config.seed))
  assert not np.allclose(fresh.gen.params['out']['kernel'],
                         ref_state.gen.params['out']['kernel'])
  assert ref_metrics[-1]['r1'] > 0


def test_tumour_classes_build_the_same_layout_in_training_and_synthesis():
  config = cgan_config.get_config('test')
  for num in (3, 1):
    config.layout.tumour_classes = num
    spec = cgan_inputs.layout_spec(config)
    batch = {k: np.concatenate([b[k] for b in _batches(config, 4)])
             for k in ('image', 'classes', 'tumour')}
    kinds = set(np.unique(batch['tumour']))
    # With 1 class the mask; with 3, outside and two kinds at least.
    assert kinds == {0, 1} if num == 1 else len(kinds) >= 3
    # The step's one-hot layout (jax) is the one synthesis paints (numpy).
    trained = cgan_inputs.compose_layout(batch['classes'], batch['tumour'],
                                         spec)
    painted = np.stack([layouts.with_tumour(c[..., 0], t[..., 0], spec)
                        for c, t in zip(batch['classes'], batch['tumour'])])
    np.testing.assert_array_equal(trained,
                                  layouts.one_hot(painted, spec.num_labels))
    _, (metrics,) = _run_steps(config, 'jit', jax.devices()[:1], [batch])
    assert all(np.isfinite(v) for v in metrics.values())


def test_tumour_weight_raises_the_l1_on_tumour_pixels_only():
  config = cgan_config.get_config('test')
  batch = _batches(config, 1)
  _, (plain,) = _run_steps(config, 'jit', jax.devices()[:1], batch)
  config.rec_tumour_weight = 11.0
  _, (weighted,) = _run_steps(config, 'jit', jax.devices()[:1], batch)
  # The same first G output: the extra L1 is 10x its tumour pixels' share.
  assert weighted['g_l1'] > plain['g_l1']
  np.testing.assert_allclose(weighted['d_loss'], plain['d_loss'], rtol=1e-6)
  tumour_free = [{**b, 'tumour': np.zeros_like(b['tumour'])} for b in batch]
  _, (a,) = _run_steps(config, 'jit', jax.devices()[:1], tumour_free)
  config.rec_tumour_weight = 1.0
  _, (b,) = _run_steps(config, 'jit', jax.devices()[:1], tumour_free)
  np.testing.assert_allclose(a['g_l1'], b['g_l1'], rtol=1e-6)


def test_host_image_context_paints_the_hole_only():
  config = cgan_config.get_config('test')
  config.context = 'host_image'
  batches = _batches(config, 2)
  devices = jax.devices()
  state, ref = _run_steps(config, 'jit', devices[:1], batches)
  _, other = _run_steps(config, 'pmap', devices, batches)
  for m, r in zip(other, ref):
    for name in r:
      np.testing.assert_allclose(m[name], r[name], rtol=1e-4, atol=1e-5,
                                 err_msg=name)
  assert all(np.isfinite(v) for m in ref for v in m.values())
  # Synthesis: the host's pixels outside the hole, G's inside it; the hole
  # covers the new tumour and the host's own.
  data = phantom.tumor_slices(12, 16, seed=1)
  arrays = {'image': data['image'], 'mask': data['mask'],
            'id': np.arange(12)}
  arrays['classes'] = np.stack([
      layouts.host_layout(i, m, cgan_inputs.layout_spec(config))[0]
      for i, m in zip(data['image'], data['mask'])])[..., None]
  layouts_, masks, records = cgan_inputs.synthesis_layouts(config, arrays, 6,
                                                           seed=0)
  hosts, holes = cgan_inputs.host_context(config, arrays, masks, records)
  for h, m, r in zip(holes, masks, records):
    assert (h[m > 0] == 1).all()
    assert (h[arrays['mask'][r['host_index']] > 0] == 1).all()
  images = cgan_trainer.generate(config, state.ema, layouts_,
                                 jax.random.key(0), hosts=hosts, holes=holes)
  outside = holes == 0
  np.testing.assert_allclose(images[outside], np.clip(hosts, 0, 1)[outside],
                             atol=1e-6)
  assert np.abs(images - hosts)[~outside].mean() > 1e-3
  with pytest.raises(ValueError, match='host images'):
    cgan_trainer.generate(config, state.ema, layouts_, jax.random.key(0))
  config.context = 'host'
  with pytest.raises(ValueError, match="context 'host'"):
    cgan_trainer.build_models(config)


def test_run_resumes_exactly_and_samples_pairs_with_provenance(tmp_path):
  config = cgan_config.get_config('test')
  full = str(tmp_path / 'full')
  metrics = cgan_trainer.train_and_evaluate(config, full)
  assert metrics['step'] == 4 and np.isfinite(metrics['g_loss'])
  for name in ('samples/step_4.png', 'figures/losses.png', 'metrics.json',
               'figures/intensity_distribution.png'):
    assert os.path.exists(os.path.join(full, name)), name

  part = str(tmp_path / 'part')
  config.num_train_steps = 2
  cgan_trainer.train_and_evaluate(config, part)
  config.num_train_steps = 4
  cgan_trainer.train_and_evaluate(config, part)
  a, _ = cgan_trainer.restore(config, full)
  b, _ = cgan_trainer.restore(config, part)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)

  out = cgan_trainer.sample(config, full, 6, output_dir=str(tmp_path / 's'))
  with np.load(os.path.join(out, 'samples.npz')) as npz:
    assert npz['image'].shape == (6, 16, 16, 1)
    assert npz['mask'].reshape(6, -1).max(1).min() == 1  # none empty
    np.testing.assert_array_equal(npz['layout'] >= 4, npz['mask'][..., 0] == 1)
  rows = list(csv.DictReader(open(os.path.join(out, 'provenance.csv'))))
  assert len(rows) == 6 and {'host_id', 'source_id', 'angle', 'scale'} <= set(
      rows[0])
  assert all(0 <= int(r['host_id']) <= 11 for r in rows)
  with pytest.raises(ValueError, match='num_samples'):
    cgan_trainer.sample(config, full, 0)


def test_discriminator_learns_that_a_misplaced_mask_is_wrong(tmp_path):
  """After a short training on the phantom, D scores a real slice with its
  own tumour mask above the same slice with the mask moved elsewhere."""
  config = cgan_config.get_config('test')
  config.data.image_size = 32
  config.data.train_ids = '0-31'
  config.batch_size = 8
  config.num_train_steps = 150
  config.checkpoint_every_steps = 150
  config.sample_every_steps = 150
  config.log_every_steps = 50
  config.model.generator.features = (8, 16)
  config.model.discriminator.features = (16, 32)
  config.optim.d_learning_rate = 1e-3
  config.diffaug = ''
  workdir = str(tmp_path / 'run')
  cgan_trainer.train_and_evaluate(config, workdir)
  state, _ = cgan_trainer.restore(config, workdir)

  held_out = phantom.tumor_slices(16, 32, seed=0, first_index=100)
  spec = cgan_inputs.layout_spec(config)
  right, wrong = [], []
  for image, mask in zip(held_out['image'], held_out['mask']):
    classes, _ = layouts.host_layout(image, mask, spec)
    tumour = layouts.tumour_labels(image, mask, spec)
    right.append(layouts.with_tumour(classes, tumour, spec))
    moved = np.roll(tumour, (10, 10), axis=(0, 1))
    wrong.append(layouts.with_tumour(classes, moved, spec))
  scores_right = cgan_trainer.discriminator_scores(
      config, state.disc.params, np.stack(right), held_out['image'])
  scores_wrong = cgan_trainer.discriminator_scores(
      config, state.disc.params, np.stack(wrong), held_out['image'])
  assert np.mean(scores_right > scores_wrong) >= 0.75, (scores_right,
                                                        scores_wrong)


def test_sample_for_given_masks_keeps_their_shape_and_place(tmp_path):
  """--mode=sample --masks=DIR: one image per mask file, of any size."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  config = cgan_config.get_config('test')
  workdir = str(tmp_path / 'run')
  config.num_train_steps = 2
  cgan_trainer.train_and_evaluate(config, workdir)
  masks = tmp_path / 'masks'
  masks.mkdir()
  square = np.zeros((32, 32), np.uint8)
  square[12:20, 14:22] = 255  # 32x32: resized to the model's 16x16
  Image.fromarray(square).save(masks / 'square.png')
  small = np.zeros((16, 16), np.uint8)
  small[6:9, 5:8] = 1
  Image.fromarray(small).save(masks / 'small.png')
  out = cgan_trainer.sample(config, workdir, 0, str(tmp_path / 'out'),
                            masks_dir=str(masks))
  with np.load(os.path.join(out, 'samples.npz')) as npz:
    assert npz['image'].shape == (2, 16, 16, 1)
    got = npz['mask'][..., 0]
    layout = npz['layout']
  rows = list(csv.DictReader(open(os.path.join(out, 'provenance.csv'))))
  by_file = {r['mask_file']: i for i, r in enumerate(rows)}
  assert set(by_file) == {'square.png', 'small.png'}
  np.testing.assert_array_equal(got[by_file['small.png']], small)
  # Each mask is painted with one tumour class (the commonest real one).
  under = layout[got > 0]
  assert len(np.unique(under)) == 1 and under[0] >= 4
  assert got[by_file['square.png']][6:10, 7:11].all()
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(masks / 'empty.png')
  with pytest.raises(ValueError, match='empty.png: the mask is empty'):
    cgan_trainer.sample(config, workdir, 0, str(tmp_path / 'out2'),
                        masks_dir=str(masks))
