"""Runs saved before a config key existed: resumed at the value that
reproduces them, refused at any other (mrseg.saved_configs)."""
import importlib
import json
import os
import re

import pytest

from configs import unet as unet_config
from mrseg import overrides as overrides_lib
from mrseg import saved_configs
from mrseg import workdir as workdir_lib
from mrseg.train import unet_trainer

CONFIGS = ('dcgan', 'unet', 'cgan', 'synth2seg', 'tissue_base', 'seg3d',
           'fewshot_gan', 'mrigan')


def _flat_configs():
  out = {}
  for name in CONFIGS:
    module = importlib.import_module(f'configs.{name}')
    config = json.loads(module.get_config().to_json_best_effort())
    out[name] = saved_configs.flatten(config)
  return out


def test_every_listed_key_is_a_config_key_of_the_listed_type():
  flat = _flat_configs()
  for key, legacy in saved_configs.ADDED_KEYS.items():
    found = [(name, k, v) for name, keys in flat.items()
             for k, v in keys.items() if k == key or k.endswith('.' + key)]
    assert found, f'ADDED_KEYS lists {key!r}, which no config has.'
    for name, k, value in found:
      legacy = json.loads(json.dumps(legacy))
      numbers = (int, float)
      same = (isinstance(value, numbers) and isinstance(legacy, numbers)
              and not isinstance(value, bool)) or type(value) is type(legacy)
      assert same, (f'configs/{name}.py {k}={value!r}; ADDED_KEYS {key!r}: '
                    f'{legacy!r}')


def test_a_key_missing_from_a_saved_config_agrees_only_at_its_legacy_value():
  saved = {'loss': {'labelled_loss': 'ce'}, 'seed': 0}
  wanted = {'loss': {'labelled_loss': 'ce', 'transfer_weight': 0.0,
                     'transfer_start_step': 750},
            'augment': {'flip_axes': [], 'gamma': 0.0},
            'seed': 0}
  # transfer_start_step differs from its legacy 0, which the old run had.
  assert saved_configs.changes(saved, wanted) == ['loss.transfer_start_step']
  wanted['augment']['flip_axes'] = [0]
  assert saved_configs.changes(saved, wanted) == [
      'augment.flip_axes', 'loss.transfer_start_step']
  # Either side may lack it; an unlisted key missing is always a change.
  assert saved_configs.changes(wanted, saved) == [
      'augment.flip_axes', 'loss.transfer_start_step']
  assert saved_configs.changes(saved, {**saved, 'new_key': 0}) == ['new_key']
  # Nested copies match by suffix (synth2seg's stage configs); the
  # tumour-class default changed, so today's 3 is not the old run's 1.
  assert saved_configs.changes({}, {'cgan': {'layout': {
      'tumour_classes': 3}}}) == ['cgan.layout.tumour_classes']
  assert saved_configs.changes({}, {'unet': {'model': {
      'input_norm': 'none'}}}) == []


def test_get_reads_the_legacy_value_of_a_missing_key():
  assert saved_configs.get({'loss': {}}, 'loss.transfer_weight') == 0.0
  assert saved_configs.get({'loss': {'transfer_weight': 0.5}},
                           'loss.transfer_weight') == 0.5
  with pytest.raises(KeyError, match='loss.nonexistent'):
    saved_configs.get({'loss': {}}, 'loss.nonexistent')


def test_a_run_saved_before_a_key_existed_resumes_and_is_refused_off_it(
    tmp_path):
  run = str(tmp_path / 'run')

  def config(**overrides):  # overrides_lib.apply changes its argument
    return overrides_lib.apply(unet_config.get_config('test'),
                               {'num_epochs': 1, **overrides})

  assert config().model.input_norm == 'none'
  unet_trainer.train_and_evaluate(config(), run)
  # As a run of a commit before model.input_norm and augment.on_device.
  path = os.path.join(run, 'config.json')
  saved = json.load(open(path))
  del saved['model']['input_norm'], saved['augment']['on_device']
  with open(path, 'w') as f:
    json.dump(saved, f)
  znorm = config(**{'model.input_norm': 'zscore'})
  with pytest.raises(ValueError,
                     match=re.escape("differs in ['model.input_norm']")):
    unet_trainer.train_and_evaluate(znorm, run)
  assert 'input_norm' not in json.load(open(path))['model']
  # Today's defaults are the old behaviour: it resumes (one more epoch).
  steps = lambda: [json.loads(line)['step'] for line in open(
      os.path.join(run, 'history.jsonl'))]
  before = steps()
  unet_trainer.train_and_evaluate(config(num_epochs=2), run)
  assert max(steps()) > max(before)
  assert json.load(open(path))['model']['input_norm'] == 'none'


def test_an_evaluation_with_another_config_gets_a_folder_of_its_own(
    tmp_path):
  """workdir.report_dir: run-length keys aside, any change (eval.* too)."""
  config = unet_config.get_config('quick')
  workdir = str(tmp_path)
  assert workdir_lib.report_dir(config, workdir) == workdir  # no config.json
  workdir_lib.write_text(os.path.join(workdir, 'config.json'),
                         config.to_json_best_effort())
  assert workdir_lib.report_dir(config, workdir) == workdir
  # Run length and devices do not change what a best checkpoint predicts.
  longer = overrides_lib.apply(config, {'num_train_steps': 7,
                                        'parallel': 'pmap'})
  assert workdir_lib.report_dir(longer, workdir) == workdir
  other = overrides_lib.apply(config, {'data.test_ids': '1001-1400',
                                       'eval.overlap': 0.25})
  assert workdir_lib.report_dir(other, workdir) == os.path.join(
      workdir, 'test_ids=1001-1400,eval.overlap=0.25')
  # A name too long for a file system is cut and made unique by a hash.
  many = overrides_lib.apply(config, {'data.test_ids': ','.join(
      str(i) for i in range(100))})
  name = os.path.basename(workdir_lib.report_dir(many, workdir))
  assert name.startswith('test_ids=0,1,2,') and len(name) == 113
