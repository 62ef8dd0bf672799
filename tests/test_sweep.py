"""The sweep runner: runs, skip-on-rerun, and the results tables."""
import csv
import importlib
import json
import os

import numpy as np
import pytest

from configs import dcgan as dcgan_config
from mrseg import sweep
from mrseg.train import dcgan_trainer


def test_sweep_runs_skips_finished_runs_and_tabulates(tmp_path):
  config = dcgan_config.get_config('test')
  config.steps_per_epoch = 1

  def sweep_fn(add):
    for seed in (0, 1):
      add(seed=seed)
    add(**{'loss': 'minimax', 'seed': 0})

  workdir = str(tmp_path / 'sweep')
  records = sweep.run(config, sweep_fn, workdir, dcgan_trainer.train_and_evaluate)
  assert [r['run'] for r in records] == ['seed=0', 'seed=1', 'loss=minimax,seed=0']
  # Different seeds really are different runs.
  assert records[0]['metrics']['d_loss'] != records[1]['metrics']['d_loss']

  rows = list(csv.DictReader(open(os.path.join(workdir, 'results.csv'))))
  assert [r['run'] for r in rows] == ['seed=0', 'seed=1', 'loss=minimax,seed=0']
  assert float(rows[1]['d_loss']) == pytest.approx(records[1]['metrics']['d_loss'])
  table = open(os.path.join(workdir, 'results.md')).read()
  base_row = [l for l in table.splitlines() if l.startswith('|  | 2 |')]
  assert len(base_row) == 1 and '±' in base_row[0]  # two seeds: mean ± std
  assert any(l.startswith('| minimax | 1 |') for l in table.splitlines())

  # A rerun trains nothing: every run has its metrics.json.
  stamp = os.path.getmtime(os.path.join(workdir, 'seed=0', 'metrics.json'))
  def fail(*_):
    raise AssertionError('a finished run was trained again')
  sweep.run(config, sweep_fn, workdir, fail)
  assert os.path.getmtime(os.path.join(workdir, 'seed=0', 'metrics.json')) == stamp


def test_mean_and_std_over_seeds(tmp_path):
  records = [
      {'run': 'a', 'overrides': {'x': 1, 'seed': 0}, 'metrics': {'dice': 0.5}},
      {'run': 'b', 'overrides': {'x': 1, 'seed': 1}, 'metrics': {'dice': 0.7}},
      {'run': 'c', 'overrides': {'x': 2, 'seed': 0},
       'metrics': {'dice': float('inf')}},
  ]
  sweep.write_tables(records, str(tmp_path))
  lines = open(tmp_path / 'results.md').read().splitlines()
  assert '| 1 | 2 | 0.6 ± 0.14 |' in lines  # std with ddof=1: 0.1414
  assert '| 2 | 1 | n/a (1 non-finite) |' in lines


def test_runs_of_one_setting_group_over_seeds_whatever_folders_they_share(
    tmp_path):
  # Runs of one seed share a GAN folder; that folder is not a setting.
  records = [
      {'run': f's{s}', 'overrides': {'x': 1, 'seed': s,
                                     'gan_dir': f'../gans/seed{s}'},
       'metrics': {'dice': d}} for s, d in ((0, 0.5), (1, 0.7))]
  sweep.write_tables(records, str(tmp_path))
  lines = open(tmp_path / 'results.md').read().splitlines()
  assert lines[2] == '| x | seeds | dice |'
  assert '| 1 | 2 | 0.6 ± 0.14 |' in lines


def test_unknown_override_key_fails():
  with pytest.raises(KeyError, match='optim.lrr'):
    sweep.apply_overrides(dcgan_config.get_config('test'), {'optim.lrr': 1})
  with pytest.raises(ValueError, match='no runs'):
    sweep.collect(lambda add: None)


def test_sweep_filter_trains_matching_runs_and_tabulates_all_finished(tmp_path):
  config = dcgan_config.get_config('test')
  trained = []

  def train_fn(run_config, run_dir):
    trained.append(os.path.basename(run_dir))
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, 'metrics.json'), 'w') as f:
      json.dump({'score': run_config.seed + 10 * (run_config.loss == 'minimax')}, f)

  def sweep_fn(add):
    for loss in ('non_saturating', 'minimax'):
      for seed in (0, 1):
        add(loss=loss, seed=seed)

  workdir = str(tmp_path / 'sweep')
  records = sweep.run(config, sweep_fn, workdir, train_fn, only='seed=1')
  assert trained == ['loss=non_saturating,seed=1', 'loss=minimax,seed=1']
  assert [r['metrics']['score'] for r in records] == [1, 11]
  # The rest later: the table then holds all four, in sweep order.
  records = sweep.run(config, sweep_fn, workdir, train_fn, only='seed=0')
  assert trained[2:] == ['loss=non_saturating,seed=0', 'loss=minimax,seed=0']
  assert [r['metrics']['score'] for r in records] == [0, 1, 10, 11]
  rows = list(csv.DictReader(open(os.path.join(workdir, 'results.csv'))))
  assert len(rows) == 4
  with pytest.raises(ValueError, match='matches none'):
    sweep.run(config, sweep_fn, workdir, train_fn, only='seed=7')
  with pytest.raises(ValueError, match='not a regular expression'):
    sweep.run(config, sweep_fn, workdir, train_fn, only='seed=(')


def _records(values_by_setting):
  """Hand-made sweep records: {overrides without seed: {seed: metrics}}."""
  records = []
  for overrides, by_seed in values_by_setting:
    for seed, metrics in by_seed.items():
      o = {**overrides, 'seed': seed}
      records.append({'run': sweep.run_name(o), 'overrides': o,
                      'metrics': metrics})
  return records


def _paired_rows(workdir):
  return {(r['baseline'], r['setting'], r['metric']): r
          for r in csv.DictReader(open(os.path.join(workdir, 'paired.csv')))}


def test_paired_differences_per_seed_against_each_baseline(tmp_path):
  records = _records([
      ({'x': 'a'}, {0: {'dice': 0.50, 'loss': 1.0}, 1: {'dice': 0.60},
                    2: {'dice': 0.70}}),
      ({'x': 'b'}, {0: {'dice': 0.55}, 1: {'dice': 0.62}, 2: {'dice': 0.78}}),
      # Seed 2 missing here, seed 3 missing in the baseline: left out.
      ({'x': 'c'}, {0: {'dice': 0.40}, 1: {'dice': 0.45}, 3: {'dice': 0.9}}),
  ])
  # A folder key differs per seed but is no part of the setting.
  for r in records:
    r['overrides']['gan_dir'] = f'../gan{r["overrides"]["seed"]}'
  sweep.write_tables(records, str(tmp_path), baselines=[{'x': 'a'}])
  rows = _paired_rows(tmp_path)
  # Only the Dice metric by default, and no baseline against itself.
  assert set(rows) == {('x=a', 'x=b', 'dice'), ('x=a', 'x=c', 'dice')}
  b = rows['x=a', 'x=b', 'dice']
  assert b['seeds'] == '0;1;2' and b['num_seeds'] == '3'
  assert [float(d) for d in b['differences'].split(';')] == pytest.approx(
      [0.05, 0.02, 0.08])
  assert float(b['mean']) == pytest.approx(0.05)
  assert float(b['std']) == pytest.approx(0.03)  # ddof=1
  assert b['num_above'] == '3' and b['verdict'] == 'above at every seed'
  # The baseline's own std over seeds is 0.1 > 0.05: within the spread.
  assert float(b['baseline_std']) == pytest.approx(0.1)
  assert b['exceeds_seed_spread'] == 'no' and b['num_left_out'] == '0'
  c = rows['x=a', 'x=c', 'dice']
  assert c['seeds'] == '0;1' and c['verdict'] == 'below at every seed'
  assert float(c['mean']) == pytest.approx(-0.125)
  assert float(c['std']) == pytest.approx(np.std([-0.1, -0.15], ddof=1))
  assert c['num_above'] == '0' and c['exceeds_seed_spread'] == 'yes'
  assert c['left_out'] == '2: no run of this setting; 3: no baseline run'
  assert c['num_left_out'] == '2'

  lines = open(tmp_path / 'paired.md').read().splitlines()
  assert '## Baseline: x=a (seeds: 0, 1, 2)' in lines
  assert ('| x=b | dice | 3 | 0: +0.05, 1: +0.02, 2: +0.08 | +0.05 ± 0.03 '
          '| 3/3 | above at every seed | 0.1 | no |  |') in lines
  assert ('| x=c | dice | 2 | 0: -0.1, 1: -0.15 | -0.125 ± 0.035 | 0/2 '
          '| below at every seed | 0.1 | yes | 2 (seed 2: no run of this '
          'setting; seed 3: no baseline run) |') in lines
  # results.md still groups over seeds, whatever folders the runs share.
  assert '| a | 3 | 0.6 ± 0.1 | 1 |' in open(tmp_path / 'results.md').read()


def test_paired_with_the_base_config_as_baseline(tmp_path):
  records = _records([
      ({}, {0: {'test_dice': 0.50, 'val_mean_dice': 0.4, 'd_loss': 1.0},
            1: {'test_dice': 0.51, 'val_mean_dice': 0.4},
            2: {'test_dice': 0.52, 'val_mean_dice': 0.4}}),
      ({'loss': 'minimax'}, {0: {'test_dice': 0.60, 'd_loss': 2.0},
                             1: {'test_dice': 0.40},
                             2: {'test_dice': float('nan')}}),
      ({'loss': 'hinge'}, {0: {'test_dice': 0.50}, 1: {'test_dice': 0.61},
                           2: {'test_dice': 0.7}}),
  ])
  sweep.write_tables(records, str(tmp_path), baselines=[{}],
                     paired_metrics=['test_dice', 'd_loss'])
  rows = _paired_rows(tmp_path)
  # val_mean_dice is not asked for; hinge reports no d_loss, minimax and
  # the base config at seed 0 only.
  assert set(rows) == {('base', 'loss=minimax', 'test_dice'),
                       ('base', 'loss=minimax', 'd_loss'),
                       ('base', 'loss=hinge', 'test_dice')}
  m = rows['base', 'loss=minimax', 'test_dice']
  # A NaN at seed 2 leaves that seed out.
  assert m['seeds'] == '0;1' and m['left_out'] == '2: not a finite number'
  assert m['verdict'] == 'mixed' and m['num_above'] == '1'
  assert float(m['mean']) == pytest.approx(-0.005)
  # |mean| 0.005 is below the base config's spread, 0.01.
  assert m['exceeds_seed_spread'] == 'no'
  h = rows['base', 'loss=hinge', 'test_dice']
  # A zero difference is not above zero.
  assert h['verdict'] == 'mixed' and h['num_above'] == '2'
  assert float(h['mean']) == pytest.approx(0.28 / 3)  # 0, 0.10, 0.18
  assert h['exceeds_seed_spread'] == 'yes'
  d = rows['base', 'loss=minimax', 'd_loss']
  # One common seed: a mean, no std, no spread of the baseline to compare.
  assert float(d['mean']) == 1.0 and d['std'] == ''
  assert d['exceeds_seed_spread'] == 'n/a'
  assert d['left_out'] == '1: no value; 2: no value'
  text = open(tmp_path / 'paired.md').read()
  assert '## Baseline: base (seeds: 0, 1, 2)' in text


def test_no_baselines_no_paired_table(tmp_path):
  sweep.write_tables(_records([({'x': 1}, {0: {'dice': 0.5}})]),
                     str(tmp_path))
  assert not os.path.exists(tmp_path / 'paired.md')


def test_a_wrong_baseline_fails_before_training(tmp_path):
  def sweep_fn(add):
    for seed in (0, 1):
      add(seed=seed)
      add(loss='minimax', seed=seed)

  def fail(*_):
    raise AssertionError('trained despite a wrong baseline')

  config = dcgan_config.get_config('test')
  with pytest.raises(ValueError, match="none of the sweep's settings"):
    sweep.run(config, sweep_fn, str(tmp_path), fail,
              baselines=[{'loss': 'hinge'}])
  with pytest.raises(ValueError, match='leave out the seed'):
    sweep.run(config, sweep_fn, str(tmp_path), fail,
              baselines=[{'loss': 'minimax', 'seed': 0}])
  assert sweep.baseline_settings([{}, {'loss': 'minimax'}],
                                 sweep.collect(sweep_fn)) == [
                                     (), (('loss', 'minimax'),)]


@pytest.mark.parametrize('name', ['synth2seg', 'mrigan', 'tissue_base'])
def test_configs_baselines_are_settings_of_their_sweep(name):
  module = importlib.import_module(f'configs.{name}')
  runs = sweep.collect(module.sweep)
  settings = sweep.baseline_settings(module.SWEEP_BASELINES, runs)
  assert settings
  for s in settings:
    # Every baseline runs at every seed of the sweep, so all pairs match.
    seeds = {o['seed'] for o in runs if sweep.setting(o) == s}
    assert seeds == {o['seed'] for o in runs}
  others = {sweep.setting(o) for o in runs} - set(settings)
  assert others  # something to compare with the baselines


def _history(run_dir, records):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, 'history.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)


def test_learning_curves_average_validation_over_seeds(tmp_path):
  # Seed 1 stopped at a plateau after step 200; seed 0 logged step 200 twice
  # (a resume): its last value counts.
  _history(tmp_path / 'a0', [{'step': 100, 'loss': 1.0},
                             {'step': 100, 'val_dice': 0.4},
                             {'step': 200, 'val_dice': 0.1},
                             {'step': 200, 'val_dice': 0.6},
                             {'step': 300, 'val_dice': 0.7}])
  _history(tmp_path / 'a1', [{'step': 100, 'val_dice': 0.6},
                             {'step': 200, 'val_dice': 0.8}])
  records = [{'run': f'a{s}', 'overrides': {'x': 1, 'seed': s},
              'metrics': {'dice': 0.5}} for s in (0, 1)]
  sweep.write_tables(records, str(tmp_path))
  rows = list(csv.DictReader(open(tmp_path / 'curves.csv')))
  got = {int(r['step']): r for r in rows}
  assert [r['metric'] for r in rows] == ['val_dice'] * 3  # not 'loss'
  assert {r['setting'] for r in rows} == {'x=1'}
  assert float(got[100]['mean']) == pytest.approx(0.5)
  assert float(got[200]['mean']) == pytest.approx(0.7)
  assert float(got[200]['std']) == pytest.approx(np.std([0.6, 0.8], ddof=1),
                                                rel=1e-5)
  assert (got[200]['seeds'], got[300]['seeds'], got[300]['std']) == (
      '2', '1', '')
  assert os.path.getsize(tmp_path / 'curves.png') > 0


def test_learning_curves_read_the_history_a_config_names(tmp_path):
  # A pipeline's runs validate in a stage folder (configs/synth2seg.py):
  # without SWEEP_HISTORY the sweep finds no curve.
  history = importlib.import_module('configs.synth2seg').SWEEP_HISTORY
  for s in (0, 1):
    _history(tmp_path / f'a{s}' / os.path.dirname(history),
             [{'step': 50, 'val_dice': 0.2 + s}])
  records = [{'run': f'a{s}', 'overrides': {'seed': s},
              'metrics': {'dice': 0.5}} for s in (0, 1)]
  sweep.write_tables(records, str(tmp_path))
  assert not os.path.exists(tmp_path / 'curves.csv')
  sweep.write_tables(records, str(tmp_path), history=history)
  rows = list(csv.DictReader(open(tmp_path / 'curves.csv')))
  assert [(r['step'], float(r['mean']), r['seeds']) for r in rows] == [
      ('50', pytest.approx(0.7), '2')]


def test_sweep_of_a_trainer_writes_its_validation_curves(tmp_path):
  seg3d = importlib.import_module('configs.seg3d')
  from mrseg.train import mrigan_trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'sweep')
  sweep.run(seg3d.get_config('test'), lambda add: [add(seed=s) for s in (0, 1)],
            workdir, mrigan_trainer.train_and_evaluate)
  rows = [r for r in csv.DictReader(open(os.path.join(workdir, 'curves.csv')))
          if r['metric'] == 'val_mean_dice']
  runs = [[r for r in map(json.loads, open(os.path.join(workdir, f'seed={s}',
                                                        'history.jsonl')))
           if 'val_mean_dice' in r] for s in (0, 1)]
  assert [int(r['step']) for r in rows] == [r['step'] for r in runs[0]]
  assert float(rows[0]['mean']) == pytest.approx(
      np.mean([runs[0][0]['val_mean_dice'], runs[1][0]['val_mean_dice']]),
      rel=1e-5)
  assert rows[0]['seeds'] == '2'
