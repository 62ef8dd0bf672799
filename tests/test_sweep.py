"""The sweep runner: runs, skip-on-rerun, and the results tables."""
import csv
import json
import os

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
