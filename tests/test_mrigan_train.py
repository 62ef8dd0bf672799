"""Paper 2's trainer: one step per kind, jit/pmap agreement, end to end, resume."""
import csv
import functools
import json
import os

import jax
import nibabel as nib
import numpy as np
from PIL import Image
import pytest

from conftest import shared_data
from configs import fewshot_gan as fewshot_config
from configs import mrigan as mrigan_config
from configs import seg3d as seg3d_config
from configs import tissue_base
from mrseg import losses
from mrseg import overrides as overrides_lib
from mrseg import sweep as sweep_lib
from mrseg.data import pipeline
from mrseg.data import tissue as tissue_lib
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import logs
from mrseg.train import mrigan_options
from mrseg.train import mrigan_step
from mrseg.train import mrigan_trainer
from mrseg.train import parallel as parallel_lib

CONFIGS = {'supervised': seg3d_config, 'fewshot_gan': fewshot_config,
           'mrigan': mrigan_config}


def _config(kind='mrigan', **overrides):
  config = CONFIGS[kind].get_config('test')
  return overrides_lib.apply(config, overrides)


def _batch(config, seed=0):
  """A synthetic batch of the step's layout (no data pipeline needed)."""
  rng = np.random.default_rng(seed)
  p, c = config.data.patch_size, len(tissue_lib.modalities(config))
  n_l, n_u = config.batch_size, config.unlabelled_batch_size
  labels = rng.integers(0, 4, (n_l, p, p, p)).astype(np.uint8)
  labels[0, :2] = 255  # ignored voxels make per-device counts differ
  batch = {'labelled': {
      'image': rng.uniform(-1, 1, (n_l, p, p, p, c)).astype(np.float32),
      'label': labels}}
  if config.model.kind != 'supervised':
    batch['unlabelled'] = {
        'image': rng.uniform(-1, 1, (n_u, p, p, p, c)).astype(np.float32)}
  return batch


def _step_fn(config, batch):
  """The train step, its 'frequency' class weights from the batch's labels."""
  weights = mrigan_options.resolve_class_weights(config, [batch['labelled']])
  return mrigan_step.make_train_step(config, weights['weights'])


def test_configs_pick_kind_and_paper_weights():
  paper = mrigan_config.get_config()
  assert paper.model.kind == 'mrigan' and paper.trainer == 'mrigan'
  assert (paper.loss.labelled_weight, paper.loss.unlabelled_weight,
          paper.loss.fake_weight) == (1.0, 1.0, 2.0)
  assert paper.loss.feature_matching == 'l2'
  mondal = fewshot_config.get_config()
  assert (mondal.loss.unlabelled_weight, mondal.loss.fake_weight,
          mondal.loss.feature_matching) == (0.5, 0.5, 'l1')
  assert mondal.model.noise_generator.noise_dim == 200
  assert seg3d_config.get_config().model.kind == 'supervised'
  # The comparison config: a kind plus variants; kind overrides flip any
  # config of the family to another model.
  assert tissue_base.get_config('fewshot_gan,quick').model.kind == 'fewshot_gan'
  runs = []
  tissue_base.sweep(lambda **o: runs.append(o))
  assert len(runs) == 9 and {r['model.kind'] for r in runs} == set(
      tissue_base.KINDS)
  for module in CONFIGS.values():
    added = []
    module.sweep(lambda **o: added.append(o))
    assert {r['seed'] for r in added} == {0, 1, 2}
    for overrides in added:  # every ablation is a valid config
      mrigan_options.check_config(sweep_lib.apply_overrides(
          module.get_config('quick'), overrides))
  # The options beyond the paper's default reading are off by default.
  assert (paper.loss.generator_objective, paper.loss.unsupervised_warmup_steps,
          paper.loss.transfer_weight, paper.model.generator.tissue_code) == (
              'feature_matching', 0, 0.0, 'global')
  with pytest.raises(ValueError, match='Unknown variant'):
    mrigan_config.get_config('quik')


# 'mrigan' runs its steps in the jit/pmap test below (compiles are slow).
@pytest.mark.parametrize('kind', ['supervised', 'fewshot_gan'])
def test_one_step_of_each_kind_is_finite(kind):
  config = _config(kind)
  state = mrigan_step.create_state(config, jax.random.key(0))
  batch = _batch(config)
  step = jax.jit(_step_fn(config, batch))
  new, metrics = step(state, batch, jax.random.key(1))
  metrics = jax.device_get(metrics)
  assert int(new.step) == 1
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert 0 <= metrics['train_dice'] <= 1
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       state.disc.params, new.disc.params)
  assert max(jax.tree.leaves(moved)) > 0
  if kind == 'supervised':
    assert not new.gen.params
    assert set(metrics) == {'d_loss', 'loss_labelled', 'train_dice'}
  else:
    assert {'g_loss', 'feature_matching', 'loss_unlabelled', 'loss_fake',
            'd_real', 'd_fake'} <= set(metrics)
    assert new.gen.batch_stats  # batch norm statistics were updated
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                         state.gen.params, new.gen.params)
    assert max(jax.tree.leaves(moved)) > 0
  if kind == 'mrigan':
    assert 'boundary_loss' in metrics


def test_mrigan_step_agrees_under_jit_and_pmap_on_1_and_4_devices():
  # 2 fakes per map; patch augmentation on (its draws are per example too).
  config = _config('mrigan', unlabelled_batch_size=8,
                   **{'augment.flip_axes': (0, 2), 'augment.gamma': 0.3,
                      'augment.intensity_scale': 0.1,
                      'augment.intensity_shift': 0.05})
  state = mrigan_step.create_state(config, jax.random.key(0))
  batches = [_batch(config, seed) for seed in (0, 1)]
  key = jax.random.key(3)
  results = {}
  for name, parallel in (
      ('jit1', parallel_lib.Parallel('jit', jax.devices()[:1])),
      ('pmap4', parallel_lib.Parallel('pmap', jax.devices()[:4]))):
    step = parallel.compile(_step_fn(config, batches[0]), donate=False)
    placed = parallel.replicate(state)
    history = []
    for batch in batches:  # two steps: the second uses updated BN stats
      placed, metrics = step(placed, parallel.shard_batch(batch), key)
      history.append(jax.device_get(metrics))
    results[name] = (jax.device_get(parallel.unreplicate(placed)), history)
  ref_state, ref_history = results['jit1']
  for metrics in ref_history:
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert {'g_loss', 'feature_matching', 'boundary_loss', 'loss_fake',
            'loss_unlabelled', 'loss_labelled'} <= set(metrics)
  assert ref_state.gen.batch_stats
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       jax.device_get(state.gen.params), ref_state.gen.params)
  assert max(jax.tree.leaves(moved)) > 0
  for name in ('pmap4',):
    got_state, got_history = results[name]
    for ref, got in zip(ref_history, got_history):
      for metric in ref:
        np.testing.assert_allclose(got[metric], ref[metric], rtol=2e-4,
                                   atol=1e-6, err_msg=f'{name} {metric}')
    for part in ('params', 'batch_stats'):
      jax.tree.map(
          lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5),
          getattr(got_state.gen, part), getattr(ref_state.gen, part))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5),
        got_state.disc.params, ref_state.disc.params)


# Every option of issue 12 (items 3-4) at once: eq. (7)-(8) as printed, a
# 4-step warm-up, tissue transfer from step 1 at weight 0.5, SPADE layers.
_NEW_OPTIONS = {'loss.generator_objective': 'paper_eq7_8',
                'loss.unsupervised_warmup_steps': 4,
                'loss.transfer_weight': 0.5, 'loss.transfer_start_step': 1,
                'model.generator.tissue_code': 'spade'}


def test_warmup_transfer_and_eq7_8_enter_the_step():
  config = _config('mrigan', **_NEW_OPTIONS)
  batch = _batch(config)
  # Labelled patch j is all tissue j (ignored rows in patch 0): scored
  # against another patch's map, a generated patch gets another loss.
  labels = np.broadcast_to(np.arange(4, dtype=np.uint8)[:, None, None, None],
                           batch['labelled']['label'].shape).copy()
  labels[0, :2] = 255
  batch['labelled']['label'] = labels
  weights = mrigan_options.resolve_class_weights(config, [batch['labelled']])
  step = jax.jit(mrigan_step.make_train_step(config, weights['weights']))
  state = mrigan_step.create_state(config, jax.random.key(0))
  # D's logits x 30 (its output layer's weight-norm scale), so that its loss
  # on a generated patch depends clearly on the labels it is scored with.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 30.0 if 'logits_wn' in jax.tree_util.keystr(path)
      else p, state.disc.params)
  state = state.replace(disc=state.disc.replace(params=params))
  # The same networks at step 0 (transfer not yet on) and at step 2; the
  # step draws nothing at random here (no z, no dropout).
  runs = {t: jax.device_get(step(state.replace(step=state.step + t), batch,
                                 jax.random.key(1))[1]) for t in (0, 2)}
  for t, m in runs.items():
    ramp = np.exp(-5.0 * (1.0 - t / 4.0)**2)
    np.testing.assert_allclose(m['unsupervised_ramp'], ramp, rtol=1e-6)
    transfer = 0.5 * m['loss_transfer'] if t >= 1 else 0.0
    np.testing.assert_allclose(
        m['d_loss'], m['loss_labelled'] + ramp * (
            m['loss_unlabelled'] + 2.0 * m['loss_fake']) + transfer,
        rtol=1e-5)
    # G: eq. (7)-(8) in place of feature matching, plus the boundary loss.
    assert 'feature_matching' not in m
    np.testing.assert_allclose(m['g_loss'],
                               m['paper_eq7_8'] + m['boundary_loss'],
                               rtol=1e-5)
  assert runs[0]['loss_transfer'] > 0
  np.testing.assert_allclose(runs[2]['loss_transfer'],
                             runs[0]['loss_transfer'], rtol=1e-6)

  # The transfer term is D's labelled loss of the generated patches against
  # the tissue maps that conditioned them (labelled map j for fake j here).
  maps = mrigan_step.tissue_maps(jax.numpy.asarray(labels), 4)
  fake, _, _ = mrigan_step.apply_generator(
      mrigan_step.build_generator(config), state.gen.variables,
      {'mri': batch['unlabelled']['image'], 'tissues': maps})
  logits = mrigan_step.build_discriminator(config).apply(
      {'params': state.disc.params}, fake, train=True)
  transfer = lambda y: float(mrigan_step._labelled_term(
      config, weights['weights'], logits, y, None))
  np.testing.assert_allclose(transfer(maps), runs[0]['loss_transfer'],
                             rtol=1e-4)
  # The same fakes scored against the other patches' maps: a value 10x
  # the tolerance above away (1.5% here), so the check above can fail.
  assert abs(transfer(maps[::-1]) / runs[0]['loss_transfer'] - 1) > 1e-3


def test_tiny_run_with_every_new_option_has_finite_losses(tmp_path):
  config = _config('mrigan', **_NEW_OPTIONS, **{'eval.after_training': False})
  mrigan_trainer.train_and_evaluate(config, str(tmp_path))
  history = logs.read_history(os.path.join(str(tmp_path), 'history.jsonl'))
  train = [r for r in history if 'd_loss' in r]
  assert [r['step'] for r in train] == [1, 2, 3]
  for r in train:
    for key in ('d_loss', 'g_loss', 'loss_transfer', 'paper_eq7_8',
                'loss_labelled', 'loss_unlabelled', 'loss_fake'):
      assert np.isfinite(r[key]), (r['step'], key, r[key])
    # Record `step` follows the update of state step - 1.
    np.testing.assert_allclose(r['unsupervised_ramp'],
                               losses.sigmoid_rampup(r['step'] - 1, 4),
                               rtol=1e-6)


def test_bad_loss_options_fail_early():
  with pytest.raises(ValueError, match='generator_objective'):
    mrigan_options.check_config(
        _config(**{'loss.generator_objective': 'eq7'}))
  with pytest.raises(ValueError, match='unsupervised_warmup_steps'):
    mrigan_options.check_config(
        _config(**{'loss.unsupervised_warmup_steps': -1}))
  # Transfer needs tissue maps that condition the generated patches.
  for kind, extra in (('fewshot_gan', {}), ('mrigan', {
      'model.generator.use_tissue_encoder': False,
      'model.generator.fusion': 'none', 'model.generator.noise_dim': 4})):
    with pytest.raises(ValueError, match='transfer_weight'):
      mrigan_options.check_config(
          _config(kind, **{'loss.transfer_weight': 1.0}, **extra))


def test_tiny_run_trains_and_evaluates(tmp_path):
  workdir = str(tmp_path / 'run')
  config = _config('mrigan')
  metrics = mrigan_trainer.train_and_evaluate(config, workdir)

  files = set(os.listdir(workdir))
  assert {'config.json', 'checkpoints', 'best', 'best.json', 'metrics.json',
          'per_subject.csv', 'history.jsonl', 'predictions', 'figures',
          'class_weights.json'} <= files
  saved = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert saved['kind'] == 'mrigan' and saved['distance_unit'] == 'mm'
  # The weights used: median-frequency weights of the labelled subjects.
  used = json.load(open(os.path.join(workdir, 'class_weights.json')))
  assert saved['class_weights'] == used and used['scheme'] == 'frequency'
  assert used['weights'][1] > used['weights'][2] > used['weights'][0]
  for tissue in ('csf', 'gm', 'wm'):
    assert 0 <= saved[f'dice/{tissue}'] <= 1
    assert saved[f'hd95/{tissue}'] >= 0
  assert saved['mean_dice'] == pytest.approx(metrics['mean_dice'])
  assert np.sum(saved['confusion_matrix']) > 0
  history = logs.read_history(os.path.join(workdir, 'history.jsonl'))
  assert [r['step'] for r in history if 'val_mean_dice' in r] == [2, 3]
  assert all(np.isfinite(r['g_loss']) for r in history if 'g_loss' in r)

  rows = list(csv.DictReader(open(os.path.join(workdir, 'per_subject.csv'))))
  assert [r['id'] for r in rows] == saved['test_ids']
  assert {'dice/csf', 'hd95/wm'} <= set(rows[0])

  # The prediction overlays its input: same grid, same affine.
  splits = tissue_lib.load_splits(config)
  subject = splits['test'][0]
  image = nib.load(os.path.join(workdir, 'predictions',
                                f'{subject["id"]}.nii.gz'))
  np.testing.assert_allclose(image.affine, subject['affine'], atol=1e-5)
  assert image.shape == subject['label'].shape
  assert set(np.unique(np.asarray(image.dataobj))) <= {0, 1, 2, 3}
  for figure in ('segmentation.png', 'generated_patches.png', 'losses.png',
                 'val_dice.png'):
    assert Image.open(os.path.join(workdir, 'figures', figure)).size[0] > 50

  # --mode=eval with the run's config rewrites the same report; with another
  # config (here aseg-style unlabelled brain voxels ignored) it writes one of
  # its own beside it and leaves the run's report and predictions as they are.
  assert mrigan_trainer.evaluate(config, workdir)['mean_dice'] == (
      pytest.approx(saved['mean_dice']))
  before = {f: open(os.path.join(workdir, f), 'rb').read()
            for f in ('metrics.json', 'per_subject.csv',
                      f'predictions/{subject["id"]}.nii.gz')}
  other = _config('mrigan', **{'data.brain_mask': 'nonzero',
                               'data.unlabelled_in_brain': 'ignore'})
  ignored = mrigan_trainer.evaluate(other, workdir)
  folder = os.path.join(workdir,
                        'brain_mask=nonzero,unlabelled_in_brain=ignore')
  assert json.load(open(os.path.join(folder, 'metrics.json'))) == ignored
  assert os.path.exists(os.path.join(folder, 'per_subject.csv'))
  assert os.path.exists(os.path.join(folder, 'predictions',
                                     f'{subject["id"]}.nii.gz'))
  # Fewer voxels count: the confusion matrix shrinks.
  assert np.sum(ignored['confusion_matrix']) < np.sum(
      saved['confusion_matrix'])
  # Predictions restricted to the brain mask: background outside, the
  # run's own predictions inside.
  restricted = mrigan_trainer.evaluate(
      _config('mrigan', **{'eval.restrict_to_brain': True}), workdir)
  inside = np.asarray(subject['brain_mask'], bool)
  assert 0 < inside.sum() < inside.size
  ours = np.asarray(nib.load(os.path.join(
      workdir, 'eval.restrict_to_brain=True', 'predictions',
      f'{subject["id"]}.nii.gz')).dataobj)
  theirs = np.asarray(image.dataobj)
  assert theirs[~inside].any()  # the run labels some voxels outside
  np.testing.assert_array_equal(ours[~inside], 0)
  np.testing.assert_array_equal(ours[inside], theirs[inside])
  assert restricted['checkpoint_step'] == saved['checkpoint_step']
  for f, content in before.items():
    assert open(os.path.join(workdir, f), 'rb').read() == content, f


def test_supervised_run_predicts_every_tissue(tmp_path):
  # The 3 mm phantom (CSF 1% of the voxels), 30 steps of a (8, 16, 32)
  # segmenter on Mondal's grid. With Mondal's iSEG weights
  # ('loss.class_weights': 'mondal') it predicts 1 CSF voxel of 2,254 and
  # this test fails; the default median-frequency weights predict all three.
  config = _config('supervised', num_train_steps=30, eval_every_steps=30,
                   checkpoint_every_steps=30, log_every_steps=10,
                   **{'model.discriminator.features': (8, 16, 32),
                      'data.stride': 8, 'optim.d_learning_rate': 5e-4,
                      'eval.write_nifti': False})
  metrics = mrigan_trainer.train_and_evaluate(config, str(tmp_path))
  assert metrics['class_weights']['scheme'] == 'frequency'
  cm = np.asarray(metrics['confusion_matrix'])  # rows: truth
  predicted, true = cm.sum(0), cm.sum(1)
  for c, tissue in enumerate(('csf', 'gm', 'wm'), start=1):
    assert predicted[c] >= 0.1 * true[c], (tissue, predicted, true)


def test_flat_validation_dice_stops_early_and_is_reported(tmp_path):
  # A learning rate of 0: the segmenter never changes, so validation Dice is
  # the same at every validation. Best at step 2; step 4 does not improve
  # on it: with patience 1 the run stops after step 4 of 8.
  workdir = str(tmp_path / 'run')
  config = _config('supervised', num_train_steps=8, early_stop_patience=1,
                   **{'optim.d_learning_rate': 0.0, 'eval.write_nifti': False})
  metrics = mrigan_trainer.train_and_evaluate(config, workdir)
  assert metrics['stopped_early_at'] == 4 and metrics['checkpoint_step'] == 2
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 4
  history = logs.read_history(os.path.join(workdir, 'history.jsonl'))
  assert max(r['step'] for r in history) == 4
  # MRI-GAN with a 4-step warm-up of its unsupervised terms: validations
  # at steps 2 and 4 are not judged, 6 is the first (an improvement), 8
  # does not improve on it.
  config = _config('mrigan', num_train_steps=10, early_stop_patience=1,
                   **{'optim.d_learning_rate': 0.0,
                      'loss.unsupervised_warmup_steps': 4,
                      'eval.after_training': False})
  best = mrigan_trainer.train_and_evaluate(config, str(tmp_path / 'warm'))
  assert best['step'] == 2
  assert json.load(open(tmp_path / 'warm' / 'early_stop.json'))[
      'stopped_early_at'] == 8
  with pytest.raises(ValueError, match='config.early_stop_patience=-1'):
    mrigan_trainer.train_and_evaluate(_config(early_stop_patience=-1),
                                      str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad' / 'config.json')


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  fast = {'eval.after_training': False, 'eval_every_steps': 100}
  straight = str(tmp_path / 'straight')
  mrigan_trainer.train_and_evaluate(
      _config('fewshot_gan', num_train_steps=4, **fast), straight)
  resumed = str(tmp_path / 'resumed')
  mrigan_trainer.train_and_evaluate(
      _config('fewshot_gan', num_train_steps=2, **fast), resumed)
  mrigan_trainer.train_and_evaluate(
      _config('fewshot_gan', num_train_steps=4, **fast), resumed)

  config = _config('fewshot_gan')
  states = []
  for workdir in (straight, resumed):
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    states.append(jax.device_get(checkpointer.restore(
        mrigan_step.abstract_state(config), 4)))
    checkpointer.close()
  a, b = states
  for part in ('gen', 'disc'):
    jax.tree.map(np.testing.assert_array_equal, getattr(a, part).params,
                 getattr(b, part).params)
  jax.tree.map(np.testing.assert_array_equal, a.gen.batch_stats,
               b.gen.batch_stats)
  history = logs.read_history(os.path.join(resumed, 'history.jsonl'))
  reference = logs.read_history(os.path.join(straight, 'history.jsonl'))
  train = lambda h: [(r['step'], r['d_loss']) for r in h if 'd_loss' in r]
  assert train(history) == train(reference)


def test_slabs_keep_the_world_position():
  rng = np.random.default_rng(0)
  label = np.zeros((20, 6, 5), np.uint8)
  label[2:18] = rng.integers(1, 4, (16, 6, 5))
  affine = np.diag([2.0, 3.0, 4.0, 1.0])
  affine[:3, 3] = (10, 20, 30)
  subject = {'t1': rng.uniform(size=label.shape).astype(np.float32),
             'label': label, 'brain_mask': label > 0, 'affine': affine,
             'id': 'a', 'labelled': True}
  slabs = tissue_lib.slab_subjects([subject], 4, axis=0)
  assert [s['id'] for s in slabs] == ['a-slab0', 'a-slab1', 'a-slab2',
                                      'a-slab3']
  assert sum(s['label'].shape[0] for s in slabs) == 16  # the brain's extent
  second = slabs[1]
  # Voxel (0, 0, 0) of slab 1 is voxel (6, 0, 0) of the subject.
  np.testing.assert_allclose(second['affine'] @ [0, 0, 0, 1],
                             affine @ [6, 0, 0, 1])
  np.testing.assert_array_equal(second['t1'], subject['t1'][6:10])


def test_dice_ce_labelled_term_is_the_global_batch_loss_on_4_devices():
  config = _config('supervised', **{'loss.labelled_loss': 'dice_ce',
                                    'loss.dice_weight': 0.5})
  labels = _batch(config)['labelled']['label']  # ignored voxels in patch 0
  logits = np.random.default_rng(1).normal(
      size=labels.shape + (4,)).astype(np.float32)
  weights = (0.5, 4.0, 1.0, 2.0)
  term = lambda x, y, axis_name=None: mrigan_step._labelled_term(
      config, weights, x, y, axis_name)
  expected = losses.labelled_loss(logits, labels, weights) + 0.5 * (
      losses.soft_dice_loss(logits, labels, include_background=False))
  np.testing.assert_allclose(term(logits, labels), expected, rtol=1e-5)
  # One patch per device: each holds the global batch's loss, and the
  # gradient of its own logits is 4 times their share (the all-gather's
  # transpose sums the 4 copies; the pmean of gradients divides by 4).
  split = lambda a: a.reshape((4, 1) + a.shape[1:])
  on_devices = jax.pmap(jax.value_and_grad(functools.partial(
      term, axis_name='d')), axis_name='d', devices=jax.devices()[:4])
  values, grads = on_devices(split(logits), split(labels))
  np.testing.assert_allclose(values, np.full(4, expected), rtol=1e-5)
  np.testing.assert_allclose(grads / 4, split(jax.grad(term)(logits, labels)),
                             rtol=1e-4, atol=1e-8)


def test_class_weights_by_name_numbers_or_labelled_frequencies():
  config = _config('supervised')
  assert config.loss.class_weights == 'frequency'  # the default
  labelled = [{'label': np.repeat(np.array([0, 1, 2, 3, 255], np.uint8),
                                  [50, 10, 25, 15, 7])}]
  record = mrigan_options.resolve_class_weights(config, labelled)
  assert record['scheme'] == 'frequency'
  assert record['counts'] == [50, 10, 25, 15]  # 255 not counted
  np.testing.assert_allclose(record['frequencies'], [0.5, 0.1, 0.25, 0.15])
  np.testing.assert_allclose(record['weights'], [0.4, 2.0, 0.8, 0.2 / 0.15])
  with pytest.raises(ValueError, match='computed from the labelled'):
    mrigan_step.make_train_step(config)  # 'frequency' needs the data
  for value, weights in (('mondal', [0.33, 1.5, 0.83, 1.33]),
                         ((1, 10, 1, 1), [1.0, 10.0, 1.0, 1.0]),
                         ('1,10,1,1', [1.0, 10.0, 1.0, 1.0]), ((), None)):
    config.loss.class_weights = value
    record = mrigan_options.resolve_class_weights(config, labelled)
    assert record['weights'] == weights, value
  for bad in ((1.0, 2.0), 'median'):
    with pytest.raises(ValueError, match='one weight per class'):
      mrigan_options.check_config(_config(**{'loss.class_weights': bad}))


def test_class_balanced_labelled_patches_hold_every_tissue():
  config = _config('mrigan', **{'data.class_balanced': True})
  ds = tissue_lib.train_dataset(
      config, tissue_lib.load_splits(config), start_step=0, unlabelled=True)
  for _, batch in zip(range(3), pipeline.as_numpy(ds)):
    assert set(np.unique(batch['labelled']['label'])) >= {1, 2, 3}
    assert batch['unlabelled']['image'].shape[0] == 4


def test_bad_batch_pairing_fails_early():
  with pytest.raises(ValueError, match='multiple of config.batch_size'):
    mrigan_options.check_config(_config('mrigan', unlabelled_batch_size=6))
  with pytest.raises(ValueError, match='Unsupported model.kind'):
    mrigan_options.check_config(_config('mrigan', **{'model.kind': 'gan'}))


def test_block_downsample_keeps_world_positions_and_majority_labels():
  label = np.zeros((4, 4, 2), np.uint8)
  label[:2, :2, :2] = 2
  label[0, 0, 0] = 1  # outvoted 7 to 1
  affine = np.diag([1.0, 1.0, 1.0, 1.0])
  subject = {'t1': np.arange(32, dtype=np.float32).reshape(4, 4, 2),
             'label': label, 'brain_mask': label > 0, 'affine': affine,
             'id': 'a', 'labelled': True}
  small = tissue_lib.block_downsample(subject, 2)
  assert small['label'].shape == (2, 2, 1)
  assert small['label'][0, 0, 0] == 2 and small['label'][1, 1, 0] == 0
  assert small['brain_mask'][0, 0, 0] and not small['brain_mask'][1, 0, 0]
  assert small['t1'][0, 0, 0] == pytest.approx(
      subject['t1'][:2, :2, :2].mean())
  # New voxel (0, 0, 0) is the centre of the old 2x2x2 block.
  np.testing.assert_allclose(small['affine'] @ [0, 0, 0, 1],
                             [0.5, 0.5, 0.5, 1])
  np.testing.assert_allclose(small['affine'] @ [1, 0, 0, 1],
                             [2.5, 0.5, 0.5, 1])


def test_unlabelled_brain_voxels_can_be_ignored_instead_of_background():
  label = np.array([[[0, 0, 2, 3]]], np.uint8)
  subject = {'label': label, 'brain_mask': np.array([[[False, True, True,
                                                       True]]])}
  out = tissue_lib.ignore_unlabelled_brain(subject)
  np.testing.assert_array_equal(out['label'], [[[0, 255, 2, 3]]])
  assert subject['label'] is label and label[0, 0, 1] == 0  # not in place
  # Through load_splits, on the phantom with the image's nonzero mask:
  # every label-0 voxel inside it becomes 255, nothing else changes.
  overrides = {'data.brain_mask': 'nonzero'}
  base = tissue_lib.load_splits(_config('supervised', **overrides))
  ignored = tissue_lib.load_splits(_config(
      'supervised', **overrides, **{'data.unlabelled_in_brain': 'ignore'}))
  changed = 0
  for a, b in zip(base['labelled'] + base['test'],
                  ignored['labelled'] + ignored['test']):
    inside0 = a['brain_mask'] & (a['label'] == 0)
    np.testing.assert_array_equal(b['label'][inside0], 255)
    np.testing.assert_array_equal(b['label'][~inside0], a['label'][~inside0])
    changed += inside0.sum()
  assert changed > 0
  with pytest.raises(ValueError, match='data.unlabelled_in_brain'):
    mrigan_options.check_config(_config(
        'supervised', **{'data.unlabelled_in_brain': 'drop'}))


def test_tissue_t1_split_holds_every_tissue_in_test_validation_and_training(
    tmp_path):
  """The variant's slab order: no labelled split lacks CSF (real data)."""
  config = seg3d_config.get_config('quick,tissue_t1')
  config.data.manual_dir = str(shared_data('tissue_t1'))
  config.data.data_dir = str(tmp_path / 'tfds')
  splits = tissue_lib.load_splits(config)
  assert [[s['id'] for s in splits[k]] for k in ('test', 'validation',
                                                 'labelled')] == [
      ['subject01-slab1'], ['subject01-slab3'],
      ['subject01-slab2', 'subject01-slab4']]
  assert [s['id'] for s in splits['unlabelled']] == ['subject01-slab0']
  for key in ('test', 'validation', 'labelled'):
    counts = sum(np.bincount(np.asarray(s['label']).ravel(), minlength=256)
                 for s in splits[key])
    assert (counts[1:4] > 0).all(), (key, counts[:4])
