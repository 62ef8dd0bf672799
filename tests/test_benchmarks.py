"""Smoke tests of the benchmark scripts in benchmarks/ (tiny configs)."""
import json
import math
import pathlib
import subprocess
import sys

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))

from mrseg import overrides as overrides_lib  # noqa: E402  pylint: disable=g-import-not-at-top
import mrigan_step  # noqa: E402  pylint: disable=g-import-not-at-top

TIMING = ('examples_per_s', 'step_time_ms', 'flops_per_step',
          'achieved_flops_per_s')


def _positive(record, key):
  value = record[key]
  assert isinstance(value, (int, float)) and math.isfinite(value), (key,
                                                                    record)
  assert value > 0, (key, record)


def test_mrigan_step_writes_positive_finite_records(tmp_path, capsys):
  out = tmp_path / 'bench.jsonl'
  # 'test' networks, 8^3 patches; a 16^3 volume in 8^3 windows (8 windows,
  # 2 predict calls of 4).
  records = mrigan_step.main([
      '--variant', 'test', '--patch', '8', '--steps', '1', '--warmup', '0',
      '--volume', '16x16x16', '--set', 'eval.window_size=8',
      '--impl', 'mrseg', '--out', str(out)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert [json.loads(l) for l in lines] == records
  assert [json.loads(l) for l in out.read_text().splitlines()] == records

  train = [r for r in records if r['bench'] == 'mrigan_train_step']
  assert [r['kind'] for r in train] == list(mrigan_step.KINDS)
  for r in train:
    for key in ('bench', 'kind', 'batch', 'patch', 'dtype', 'device',
                'commit', 'date'):
      assert r[key] not in (None, ''), (key, r)
    for key in TIMING + ('batch', 'd_params', 'd_loss', 'xla_memory_bytes'):
      _positive(r, key)
    assert r['impl'] == 'mrseg' and r['conv'] == 'depth_to_channels'
    assert len(r['load_average']) == 3
    assert (r['patch'], r['channels'], r['dtype']) == (8, 2, 'float32')
    gan = r['kind'] != 'supervised'
    assert r['unlabelled_batch'] == (4 if gan else 0)
    assert r['d_patches_per_step'] == (12 if gan else 4)
    assert r['examples_per_s'] * r['step_time_ms'] / 1e3 == pytest.approx(
        r['batch'] + r['unlabelled_batch'])
    assert (r['g_params'] > 0) == gan
  assert len({r['flops_per_step'] for r in train}) == 3

  (window,) = [r for r in records if r['bench'] == 'mrigan_sliding_window']
  assert window['kind'] == 'supervised,fewshot_gan,mrigan'
  assert window['volume'] == [16, 16, 16] and window['patch'] == 8
  assert (window['windows'], window['predict_calls']) == (8, 2)
  for key in TIMING + ('seconds_per_volume', 'voxels_per_s',
                        'xla_memory_bytes'):
    _positive(window, key)
  assert math.isclose(window['flops_per_step'],
                      2 * window['flops_per_predict_call'])


def _tiny_3d(*args):
  return mrigan_step.main([
      '--variant', 'test', '--patch', '8', '--steps', '1', '--warmup', '0',
      '--volume', '8x8x16', '--set', 'eval.window_size=8',
      'model.discriminator.features=(2,4)', *args])


def test_mrigan_step_times_convs_side_by_side(capsys):
  records = _tiny_3d('--kinds', 'supervised', '--impl', 'mrseg',
                     '--conv', 'xla', 'depth_to_channels')
  capsys.readouterr()
  train = [r for r in records if r['bench'] == 'mrigan_train_step']
  window = [r for r in records if r['bench'] == 'mrigan_sliding_window']
  for group in (train, window):
    assert [r['conv'] for r in group] == ['xla', 'depth_to_channels']
    assert {r['kind'] for r in group} == {'supervised'}
    # Same network and maths, another convolution primitive.
    assert len({r['d_params'] for r in group}) == 1
  assert train[0]['d_loss'] == pytest.approx(train[1]['d_loss'], rel=1e-5)


def test_mrigan_step_torch_reference(capsys):
  pytest.importorskip('torch')  # only installed to measure
  records = _tiny_3d('--kinds', 'supervised', 'mrigan', '--impl', 'mrseg',
                     'torch', '--conv', 'depth_to_channels')
  capsys.readouterr()
  torch_records = [r for r in records if r['impl'] == 'torch']
  # torch implements the supervised step and the segmenter only.
  assert [(r['bench'], r['kind']) for r in torch_records] == [
      ('mrigan_train_step', 'supervised'),
      ('mrigan_sliding_window', 'supervised,mrigan')]
  mrseg = {(r['bench'], r['kind'].split(',')[0]): r for r in records
           if r['impl'] == 'mrseg'}
  for r in torch_records:
    ref = mrseg[(r['bench'], 'supervised')]
    assert r['d_params'] == ref['d_params']  # the same network
    for key in TIMING:
      _positive(r, key)
  assert torch_records[1]['windows'] == mrseg[
      ('mrigan_sliding_window', 'supervised')]['windows'] == 2


@pytest.mark.parametrize('script', ['mrigan_step', 'unet_step', 'dcgan_step'])
def test_gpu_benchmarks_import_neither_tensorflow_nor_clu(script):
  # A GPU host may have JAX alone: the scripts must not need TensorFlow.
  code = (f'import sys; sys.path.insert(0, "benchmarks"); import {script}; '
          'print(sorted(m for m in ("tensorflow", "clu") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip().splitlines()[-1] == '[]'


# Run first in a subprocess: makes TensorFlow and TFDS unimportable, as on an
# accelerator host that has JAX alone.
_BLOCK_TENSORFLOW = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
      raise ImportError(f'{name} is blocked by the test')
sys.meta_path.insert(0, _Block())
sys.path.insert(0, 'benchmarks')
"""


@pytest.mark.parametrize('script', sorted(
    p.stem for p in (ROOT / 'benchmarks').glob('*.py')))
def test_every_benchmark_imports_without_tensorflow(script):
  code = _BLOCK_TENSORFLOW + f'import {script}; print("imported")'
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == 'imported'


def test_unet_step_count_needs_no_tensorflow():
  # Steps from epochs count the training ids (mrseg.data.ids), not the data.
  code = _BLOCK_TENSORFLOW + (
      'from configs import unet; from mrseg.train import unet_trainer\n'
      'c = unet.get_config("test"); c.num_train_steps = 0\n'
      'c.num_epochs = 2; c.steps_per_epoch = 0; c.batch_size = 4\n'
      'c.data.train_ids = "1-10"\n'
      'print(unet_trainer.num_train_steps(c))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == '6'  # 2 * ceil(10 / 4)


def test_apply_overrides_parses_by_type():
  config = ml_collections.ConfigDict(
      {'a': {'flag': True, 'n': 1, 'x': 0.5, 's': 'u', 't': (1, 2)}})
  overrides_lib.apply(config, {'a.flag': 'false', 'a.n': '3', 'a.x': '2',
                               'a.s': 'v', 'a.t': '(4, 8, 16)'}, parse=True)
  assert config.a.to_dict() == {'flag': False, 'n': 3, 'x': 2.0, 's': 'v',
                                't': (4, 8, 16)}


def test_unet_step_conv_flag_sets_the_config(capsys):
  # --conv xla must time XLA's convolutions and say so (the config's
  # default is fast_grad); a tiny UNet stands in for the paper's.
  import unet_step  # pylint: disable=g-import-not-at-top
  (record,) = unet_step.main([
      '--impl', 'mrseg', '--bench', 'train', '--batch', '2', '--steps', '1',
      '--warmup', '0', '--conv', 'xla', '--set', 'data.image_size=16',
      'model.depth=1', 'model.base_features=2'])
  capsys.readouterr()
  assert record['conv'] == 'xla'
  assert record['overrides']['model.conv'] == 'xla'
  assert record['examples_per_s'] > 0
