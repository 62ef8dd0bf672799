"""End to end: the UNet trainer trains, validates, keeps the best, evaluates."""
import csv
import json
import os
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

from configs import unet as unet_config
from conftest import shared_data
from mrseg import metrics as metrics_lib
from mrseg import overrides as overrides_lib
from mrseg import viz
from mrseg.data import builders
from mrseg.data import datasets
from mrseg.data import slices
from mrseg.eval import batched
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import logs
from mrseg.train import parallel as parallel_lib
from mrseg.train import unet_model
from mrseg.train import unet_trainer


def _config(**overrides):
  config = unet_config.get_config('test')
  return overrides_lib.apply(config, overrides)


def _restore(config, workdir, step, subdir='checkpoints'):
  checkpointer = checkpoint_lib.Checkpointer(workdir, subdir=subdir)
  state = checkpointer.restore(unet_trainer.abstract_state(config), step)
  checkpointer.close()
  return jax.device_get(state)


_CACHE_OPTIONS = {
    'jax_compilation_cache_dir': None,
    'jax_persistent_cache_min_compile_time_secs': 0.5,
    'jax_persistent_cache_min_entry_size_bytes': 0,
}


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """XLA's persistent cache for this module: the runs below compile the same
  steps again and again (each run builds new step closures), and loading a
  compiled step takes about a second instead of ten."""
  saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  options = dict(_CACHE_OPTIONS, jax_compilation_cache_dir=str(
      tmp_path_factory.mktemp('xla_cache')))
  for name, value in options.items():
    jax.config.update(name, value)
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """One 4-step run (validation at steps 2 and 4), evaluated at 64x64."""
  workdir = str(tmp_path_factory.mktemp('unet') / 'run')
  config = _config()
  result = unet_trainer.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_tiny_run_writes_every_output(tiny_run):
  config, workdir, result = tiny_run
  files = set(os.listdir(workdir))
  assert {'config.json', 'history.jsonl', 'checkpoints', 'best', 'best.json',
          'metrics.json', 'per_case.csv', 'predictions.npz',
          'figures'} <= files
  assert any(f.startswith('events.out.tfevents') for f in files)
  for figure in ('overlays.png', 'loss.png', 'accuracy.png'):
    assert Image.open(os.path.join(workdir, 'figures', figure)).size[0] > 100

  history = logs.read_history(os.path.join(workdir, 'history.jsonl'))
  train = [r for r in history if 'loss' in r]
  val = [r for r in history if 'val_dice' in r]
  assert [r['step'] for r in train] == [1, 2, 3, 4]
  assert [r['step'] for r in val] == [2, 4]
  for r in train:
    assert np.isfinite(r['loss']) and 0 <= r['accuracy'] <= 1
  for r in val:
    assert np.isfinite(r['val_loss']) and 0 <= r['val_accuracy'] <= 1

  saved = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert saved == json.loads(json.dumps(result))
  assert saved['num_cases'] == 4 and saved['image_size'] == 64
  assert saved['sliding_window']  # 64x64 test images, 32x32 windows
  pooled = saved['pooled']
  cm = np.asarray(saved['confusion_matrix'])
  assert cm.sum() == 4 * 64 * 64
  assert pooled['accuracy'] == pytest.approx(np.trace(cm) / cm.sum())
  assert pooled['dice/tumor'] == pytest.approx(
      2 * cm[1, 1] / (2 * cm[1, 1] + cm[0, 1] + cm[1, 0]))
  assert 0 <= pooled['iou/tumor'] <= pooled['dice/tumor'] <= 1
  per_case = saved['per_case']
  assert per_case['dice/tumor/n'] == 4
  assert per_case['hd95/tumor/n_inf'] + per_case['hd95/tumor/n_nan'] <= 4
  table = saved['table_iii']
  assert table['threshold'] == 0.5
  assert table['correct'] + table['incorrect'] + table['undefined'] == 4

  rows = list(csv.DictReader(open(os.path.join(workdir, 'per_case.csv'))))
  assert [int(r['id']) for r in rows] == [14, 15, 16, 17]
  dice = [float(r['dice/tumor']) for r in rows]
  assert np.nanmean(dice) == pytest.approx(per_case['dice/tumor/mean'])
  assert sum(r['correct'] == 'True' for r in rows) == table['correct']
  npz = np.load(os.path.join(workdir, 'predictions.npz'))
  assert npz['prediction'].shape == npz['truth'].shape == (4, 64, 64)
  np.testing.assert_array_equal(npz['id'], [14, 15, 16, 17])
  # The per-case rows are the predictions' own Dice.
  np.testing.assert_allclose(
      metrics_lib.per_case_dice(npz['prediction'], npz['truth'], 2)[:, 1],
      dice)


def test_best_checkpoint_has_the_best_validation_dice(tiny_run):
  config, workdir, result = tiny_run
  history = logs.read_history(os.path.join(workdir, 'history.jsonl'))
  val = [r for r in history if 'val_dice' in r]
  best = max(val, key=lambda r: r['val_dice'])  # the first of ties
  recorded = json.load(open(os.path.join(workdir, 'best.json')))
  assert recorded['step'] == best['step'] == result['checkpoint_step']
  assert recorded['val_dice'] == pytest.approx(best['val_dice'])
  # The best checkpoint is the state of that step.
  a = _restore(config, workdir, best['step'], subdir='best')
  b = _restore(config, workdir, best['step'])
  jax.tree.map(np.testing.assert_array_equal, a.net.params, b.net.params)
  # --mode=eval restores it again and reproduces the report.
  again = unet_trainer.evaluate(config, workdir)
  assert again['pooled'] == pytest.approx(result['pooled'], nan_ok=True)
  assert again['table_iii'] == result['table_iii']
  # On another test split it writes a report of its own beside the run's.
  own = open(os.path.join(workdir, 'metrics.json')).read()
  other = _config(**{'data.test_ids': config.data.val_ids})
  near = unet_trainer.evaluate(other, workdir)
  folder = os.path.join(workdir, f'test_ids={config.data.val_ids}')
  assert json.load(open(os.path.join(folder, 'metrics.json'))) == near
  assert near['test_ids'] == config.data.val_ids
  assert os.path.exists(os.path.join(folder, 'per_case.csv'))
  assert open(os.path.join(workdir, 'metrics.json')).read() == own


def test_best_is_kept_across_a_worse_validation(tmp_path, monkeypatch):
  # Validation Dice 0.5, 0.7, 0.6 at steps 1, 2, 3: step 2 must stay best.
  dice = iter([0.5, 0.7, 0.6])
  original = metrics_lib.pooled_metrics

  def fake_pooled(cm, names=None, **kw):
    out = original(cm, names, **kw)
    out['mean_dice'] = next(dice)
    return out

  monkeypatch.setattr(unet_trainer.metrics_lib, 'pooled_metrics', fake_pooled)
  workdir = str(tmp_path / 'run')
  config = _config(eval_every_steps=1, num_train_steps=3,
                   checkpoint_every_steps=1, **{'eval.after_training': False})
  best = unet_trainer.train_and_evaluate(config, workdir)
  assert best['step'] == 2 and best['val_dice'] == 0.7
  assert checkpoint_lib.Checkpointer(workdir, subdir='best').latest_step() == 2
  _, step = unet_trainer.restore_best(config, workdir)
  assert step == 2


def test_augmentation_options_are_the_augment_module_s():
  from mrseg.data import augment  # pylint: disable=g-import-not-at-top
  assert set(_config().augment.to_dict()) == set(
      augment.default_config()) | {'on_device'}
  assert slices.make_preprocess(_config()) is None  # all off
  assert callable(slices.make_preprocess(
      _config(**{'augment.flip': True})))
  # On the device: no tf.data augmentation, an augmentation in the step.
  on_device = _config(**{'augment.flip': True, 'augment.on_device': True})
  assert slices.make_preprocess(on_device) is None
  assert callable(slices.make_device_augment(on_device))
  assert slices.make_device_augment(_config(**{
      'augment.flip': True})) is None


def _one_step(config, parallel, state, batch):
  step = parallel.compile(unet_trainer.make_train_step(config), donate=False)
  new, metrics = step(parallel.replicate(state), parallel.shard_batch(batch),
                      jax.random.key(0))
  return jax.device_get(parallel.unreplicate(new)), jax.device_get(metrics)


def test_one_step_is_the_same_under_jit_and_pmap_on_1_and_4_devices():
  assert jax.device_count() >= 4, 'conftest provides 4 CPU devices'
  # Batch norm, dropout, class weights and batch Dice: everything that
  # couples the examples of a batch.
  # One level keeps the three compilations short.
  config = _config(**{'model.norm': 'batch', 'model.dropout_rate': 0.5,
                      'model.depth': 1,
                      'loss.name': 'dice_ce', 'loss.class_weights': (1.0, 5.0),
                      'batch_size': 8})
  data = datasets.load_2d_split(config.data, 'train')
  batch = {'image': data['image'], 'mask': data['mask']}
  state = jax.device_get(
      unet_trainer.create_state(config, jax.random.key(0)))
  results = {
      'jit1': _one_step(config, parallel_lib.Parallel(
          'jit', jax.devices()[:1]), state, batch),
      'jit4': _one_step(config, parallel_lib.Parallel(
          'jit', jax.devices()[:4]), state, batch),
      'pmap4': _one_step(config, parallel_lib.Parallel(
          'pmap', jax.devices()[:4]), state, batch),
  }
  ref_state, ref_metrics = results['jit1']
  assert ref_state.net.batch_stats  # batch norm is on
  for name, (new, metrics) in results.items():
    assert int(new.step) == 1, name
    for k in ref_metrics:
      np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5,
                                 err_msg=f'{name}: {k}')
    for tree in ('params', 'batch_stats'):
      jax.tree.map(
          lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6,
                                                  err_msg=f'{name}: {tree}'),
          getattr(new.net, tree), getattr(ref_state.net, tree))


def test_validation_sums_are_exact_for_any_batching_and_mode():
  config = _config()
  val = datasets.load_2d_split(config.data, 'val')  # 6 cases
  state = unet_trainer.create_state(config, jax.random.key(0))
  eval_step = unet_trainer.make_eval_step(config)
  results = []
  for mode, devices, batch_size in (('jit', 1, 4), ('jit', 4, 8),
                                    ('pmap', 4, 4)):
    parallel = parallel_lib.Parallel(mode, jax.devices()[:devices])
    fn = batched.compile_eval(parallel, eval_step)
    result, logits = batched.run_eval(
        fn, parallel.replicate(state), val, batch_size, parallel,
        keep_logits=True)
    results.append((result, logits))
  # Padded examples count nowhere: the confusion matrix is the host's.
  host = sum(metrics_lib.case_confusion_matrix(p, t[..., 0], 2)
             for p, t in zip(results[0][1].argmax(-1), val['mask']))
  for result, logits in results:
    assert result['count'] == 6 and logits.shape == (6, 32, 32, 2)
    np.testing.assert_array_equal(result['confusion'], host)
    assert result['loss'] == pytest.approx(results[0][0]['loss'], rel=1e-5)


def test_resumed_run_equals_uninterrupted_run(tiny_run, tmp_path):
  _, straight, _ = tiny_run  # 4 steps, validated at steps 2 and 4
  resumed = str(tmp_path / 'resumed')
  # "Interrupted" after step 2, then the same command with the full budget.
  unet_trainer.train_and_evaluate(
      _config(num_train_steps=2, **{'eval.after_training': False}), resumed)
  unet_trainer.train_and_evaluate(_config(**{'eval.after_training': False}),
                                  resumed)
  a = _restore(_config(), straight, 4)
  b = _restore(_config(), resumed, 4)
  assert int(a.step) == int(b.step) == 4
  jax.tree.map(np.testing.assert_array_equal, a.net.params, b.net.params)
  jax.tree.map(np.testing.assert_array_equal, a.net.opt_state, b.net.opt_state)
  history = logs.read_history(os.path.join(resumed, 'history.jsonl'))
  reference = logs.read_history(os.path.join(straight, 'history.jsonl'))
  assert [r['step'] for r in history] == [r['step'] for r in reference]
  for r, ref in zip(history, reference):
    assert r.keys() == ref.keys()
    for k in r:
      if k != 'steps_per_sec':
        assert r[k] == pytest.approx(ref[k], rel=1e-6), k
  assert (json.load(open(os.path.join(resumed, 'best.json'))) ==
          json.load(open(os.path.join(straight, 'best.json'))))


def test_metrics_json_is_written_last(tiny_run, tmp_path, monkeypatch):
  # metrics.json (what the pipeline and sweeps read as "done") came before
  # per_case.csv, predictions and figures: a kill in between left them
  # missing for good.
  config, straight, result = tiny_run
  workdir = tmp_path / 'run'
  shutil.copytree(straight, workdir)
  for name in ('metrics.json', 'per_case.csv', 'predictions.npz'):
    (workdir / name).unlink()

  def killed(*args, **kwargs):
    raise KeyboardInterrupt('killed while drawing the overlays')

  monkeypatch.setattr(viz, 'plot_ranked_cases', killed)
  with pytest.raises(KeyboardInterrupt):
    unet_trainer.evaluate(config, str(workdir))
  assert (workdir / 'per_case.csv').exists()
  assert not (workdir / 'metrics.json').exists()
  monkeypatch.undo()
  again = unet_trainer.evaluate(config, str(workdir))
  assert again['checkpoint_step'] == result['checkpoint_step']
  assert again['pooled']['mean_dice'] == pytest.approx(
      result['pooled']['mean_dice'], nan_ok=True)
  assert (workdir / 'metrics.json').exists()


def test_flat_validation_dice_stops_early_and_is_reported(tmp_path):
  # A learning rate of 0: the network never changes, so validation Dice is
  # the same at every validation. Best at step 2 (the first); steps 4 and 6
  # do not improve on it: stop after 6 of 12.
  workdir = str(tmp_path / 'run')
  config = _config(num_train_steps=12, early_stop_patience=2,
                   **{'optim.learning_rate': 0.0})
  metrics = unet_trainer.train_and_evaluate(config, workdir)
  assert metrics['stopped_early_at'] == 6
  assert metrics['checkpoint_step'] == 2
  assert json.load(open(os.path.join(workdir, 'metrics.json')))[
      'stopped_early_at'] == 6
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 6
  history = logs.read_history(os.path.join(workdir, 'history.jsonl'))
  assert max(r['step'] for r in history) == 6
  dice = [r['val_dice'] for r in history if 'val_dice' in r]
  assert len(dice) == 3 and len(set(dice)) == 1
  with pytest.raises(ValueError, match='config.early_stop_patience=-1'):
    unet_trainer.train_and_evaluate(_config(early_stop_patience=-1),
                                    str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad' / 'config.json')


def test_evaluate_without_checkpoint_names_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='No best checkpoint in'):
    unet_trainer.evaluate(_config(), str(tmp_path / 'empty'))


def test_bad_settings_fail_clearly():
  with pytest.raises(ValueError, match='loss.name'):
    unet_model.make_loss_fn(_config(**{'loss.name': 'focal'}))
  with pytest.raises(ValueError, match='one weight per class'):
    unet_model.make_loss_fn(_config(**{'loss.class_weights': (1.0,)}))
  with pytest.raises(ValueError, match='optim.schedule'):
    unet_model.make_schedule(_config(**{'optim.schedule': 'cyclic'}), 10)
  arrays = {'image': np.zeros((3, 4, 4, 1), np.float32),
            'mask': np.zeros((3, 4, 4, 1), np.uint8),
            'id': np.array([7, 8, 9])}
  arrays['mask'][1, 0, 0] = 2  # a third class in a two-class problem
  with pytest.raises(ValueError, match=r'case\(s\) \[8\]'):
    slices.check_masks(arrays, 'train', _config())


def test_phantom_splits_are_disjoint_example_ranges():
  data = _config().data
  splits = {s: datasets.load_2d_split(data, s) for s in datasets.SPLITS}
  assert splits['train']['id'].tolist() == list(range(0, 8))
  assert splits['val']['id'].tolist() == list(range(8, 14))
  assert splits['test']['id'].tolist() == list(range(14, 18))
  # Example i depends on (seed, i) only: a split is a slice of one sequence.
  both = datasets.load_2d_split(data.copy_and_resolve_references(), 'train')
  np.testing.assert_array_equal(both['image'], splits['train']['image'])
  data2 = data.copy_and_resolve_references()
  data2.train_ids = '0-3,10-11'
  mixed = datasets.load_2d_split(data2, 'train')
  np.testing.assert_array_equal(mixed['image'][:4],
                                splits['train']['image'][:4])
  np.testing.assert_array_equal(mixed['image'][4:], splits['val']['image'][2:4])
  assert splits['test']['image'].shape == (4, 32, 32, 1)
  assert datasets.load_2d_split(data, 'test', 64)['image'].shape == (
      4, 64, 64, 1)
  with pytest.raises(ValueError, match='split'):
    datasets.load_2d_split(data, 'holdout')


def test_real_segmentation_pairs_in_contiguous_id_splits(tmp_path):
  root = shared_data('brain_tumor_segmentation')
  config = _config(**{'data.name': 'brain_tumor_segmentation',
                      'data.manual_dir': str(root),
                      'data.data_dir': str(tmp_path / 'tfds'),
                      'data.image_size': 64, 'data.train_ids': '1-12',
                      'data.val_ids': '13-16', 'data.test_ids': '17-20,955'})
  splits = {s: datasets.load_2d_split(config.data, s) for s in datasets.SPLITS}
  ids = {s: splits[s]['id'].tolist() for s in splits}
  assert ids == {'train': list(range(1, 13)), 'val': [13, 14, 15, 16],
                 'test': [17, 18, 19, 20, 955]}
  assert not (set(ids['train']) & set(ids['val']) or
              set(ids['train']) & set(ids['test']) or
              set(ids['val']) & set(ids['test']))
  for s, arrays in splits.items():
    n = len(ids[s])
    assert arrays['image'].shape == arrays['mask'].shape == (n, 64, 64, 1)
    assert arrays['image'].dtype == np.float32
    assert 0 <= arrays['image'].min() and arrays['image'].max() <= 1
    assert arrays['mask'].dtype == np.uint8
    # Nearest-neighbour resizing keeps masks binary; no real mask is empty.
    assert set(np.unique(arrays['mask']).tolist()) == {0, 1}
    assert arrays['mask'].reshape(n, -1).max(1).min() == 1
  # The mask is the file's, resized by nearest neighbour.
  original = np.asarray(Image.open(root / 'masks' / '1.png')) // 255
  np.testing.assert_array_equal(splits['train']['mask'][0, ..., 0],
                                original[4::8, 4::8])
  # The paper's split sizes for the done-when run.
  paper = unet_config.get_config().data
  assert len(builders.select_ids(paper.train_ids)) == 300
  config.data.test_ids = '399-401'
  with pytest.raises(ValueError, match='401'):
    datasets.load_2d_split(config.data, 'test')


def test_an_empty_share_of_the_test_images_predicts_nothing():
  # With more processes than test images some process gets no image
  # (shards.share); its predictions are empty, for the gather to fill in.
  config = _config()
  state = unet_trainer.create_state(config, jax.random.key(0))
  parallel = parallel_lib.Parallel('jit', jax.devices()[:1])
  k, c = config.model.num_classes, config.data.channels
  for size in (config.data.image_size, 2 * config.data.image_size):
    probs = unet_trainer.predict_probabilities(
        config, state, np.zeros((0, size, size, c), np.float32), parallel)
    assert probs.shape == (0, size, size, k)
