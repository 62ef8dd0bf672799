"""Runs a config's `sweep()` (ablations x seeds) and writes one results table.

A config file may define `sweep(add)`, calling `add(**overrides)` once per
run with dotted keys (`add(**{'loss': 'minimax', 'seed': 1})`). Each run
trains in `workdir/<run name>` with the trainer's `train_and_evaluate` and is
skipped when its `metrics.json` is already there, so an interrupted sweep
continues where it stopped. The table groups runs that differ only in
`seed` and reports mean and standard deviation over seeds:
`workdir/results.csv` (one row per run) and `workdir/results.md`.
"""
from collections.abc import Callable, Mapping, Sequence
import csv
import os
import re
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from mrseg import overrides as overrides_lib
from mrseg import workdir as workdir_lib

SEED_KEY = 'seed'


def _is_setting(key: str) -> bool:
  """Keys that group runs in results.md: not the seed, and not where a run
  keeps or shares its files (`gan_dir`, `reference_dir`, ...), which differ
  per seed when runs of one seed share a stage."""
  return key != SEED_KEY and not key.endswith('_dir')


def collect(sweep_fn: Callable[[Callable[..., None]], None]
            ) -> list[dict[str, Any]]:
  """The override dicts that `sweep_fn` adds, in order."""
  runs: list[dict[str, Any]] = []
  sweep_fn(lambda **overrides: runs.append(dict(overrides)))
  if not runs:
    raise ValueError('sweep() added no runs.')
  return runs


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides; unknown keys fail."""
  return overrides_lib.apply(ml_collections.ConfigDict(config.to_dict()),
                             overrides)


def run_name(overrides: Mapping[str, Any]) -> str:
  """A folder name that says what the run changes: 'loss=minimax,seed=1'."""
  if not overrides:
    return 'base'
  parts = [f'{k}={_short(v)}' for k, v in sorted(overrides.items())]
  return re.sub(r'[^A-Za-z0-9_.=,+-]', '_', ','.join(parts))


def run(config: ml_collections.ConfigDict,
        sweep_fn: Callable[[Callable[..., None]], None], workdir: str,
        train_fn: Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]],
        only: str = '') -> list[dict[str, Any]]:
  """Runs every run of the sweep (skipping finished ones) and writes tables.

  Args:
    config: the base config every run overrides.
    sweep_fn: the config file's `sweep(add)`.
    workdir: the sweep's folder; run `name` trains in `workdir/name`.
    train_fn: `train_fn(config, run_dir)`, writing `run_dir/metrics.json`.
    only: a regular expression; if given, only runs whose name it matches
      (`re.search`) are trained, e.g. 'seed=0' to spread a sweep over
      sessions. The tables hold every finished run of the sweep either way.

  Returns:
    One record per finished run: its overrides and its metrics.json.
  """
  runs = collect(sweep_fn)
  try:
    pattern = re.compile(only) if only else None
  except re.error as e:
    raise ValueError(f'Sweep filter {only!r} is not a regular expression: '
                     f'{e}') from e
  names = [run_name(overrides) for overrides in runs]
  if pattern and not any(pattern.search(n) for n in names):
    raise ValueError(f'Sweep filter {only!r} matches none of the runs: '
                     f'{names}.')
  os.makedirs(workdir, exist_ok=True)
  records = []
  for i, (name, overrides) in enumerate(zip(names, runs)):
    run_dir = os.path.join(workdir, name)
    metrics_path = os.path.join(run_dir, 'metrics.json')
    if workdir_lib.is_done(metrics_path):
      logging.info('Sweep run %d/%d %s: done before, skipped.', i + 1,
                   len(runs), name)
    elif pattern and not pattern.search(name):
      continue
    else:
      logging.info('Sweep run %d/%d: %s', i + 1, len(runs), name)
      try:
        train_fn(apply_overrides(config, overrides), run_dir)
      except workdir_lib.WorkdirBusyError as e:
        # Another session runs it (sweeps spread with --sweep_only).
        logging.warning('Sweep run %s skipped: %s', name, e)
        continue
    metrics = workdir_lib.read_json(metrics_path)
    records.append({'run': name, 'overrides': overrides, 'metrics': metrics})
  write_tables(records, workdir)
  return records


def write_tables(records: Sequence[Mapping[str, Any]], workdir: str) -> None:
  """results.csv (per run) and results.md (mean ± std over seeds)."""
  keys = sorted({k for r in records for k in r['overrides']})
  metrics = sorted({m for r in records for m, v in r['metrics'].items()
                    if _is_number(v)})
  with workdir_lib.atomic_open(os.path.join(workdir, 'results.csv'),
                               newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['run', *keys, *metrics])
    for r in records:
      writer.writerow([r['run'], *[r['overrides'].get(k, '') for k in keys],
                       *[r['metrics'].get(m, '') for m in metrics]])

  groups: dict[tuple, list[Mapping[str, Any]]] = {}
  for r in records:
    setting = tuple((k, _short(r['overrides'][k])) for k in keys
                    if _is_setting(k) and k in r['overrides'])
    groups.setdefault(setting, []).append(r)
  group_keys = [k for k in keys if _is_setting(k)]
  lines = ['| ' + ' | '.join([*group_keys, 'seeds', *metrics]) + ' |',
           '|' + '---|' * (len(group_keys) + 1 + len(metrics))]
  for setting, members in groups.items():
    values = dict(setting)
    cells = [str(values.get(k, '')) for k in group_keys]
    cells.append(str(len(members)))
    for m in metrics:
      xs = np.array([r['metrics'][m] for r in members
                     if _is_number(r['metrics'].get(m))], np.float64)
      cells.append(_mean_std(xs))
    lines.append('| ' + ' | '.join(cells) + ' |')
  with workdir_lib.atomic_open(os.path.join(workdir, 'results.md')) as f:
    f.write('Mean ± standard deviation over seeds (sample std, ddof=1).\n\n')
    f.write('\n'.join(lines) + '\n')


def _mean_std(xs: np.ndarray) -> str:
  if not xs.size:
    return ''
  finite = xs[np.isfinite(xs)]
  note = f' ({xs.size - finite.size} non-finite)' if finite.size < xs.size else ''
  if not finite.size:
    return f'n/a{note}'
  if finite.size == 1:
    return f'{finite[0]:.4g}{note}'
  return f'{finite.mean():.4g} ± {finite.std(ddof=1):.2g}{note}'


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any) -> str:
  if isinstance(v, (list, tuple)):
    return '+'.join(map(str, v))
  return str(v)
