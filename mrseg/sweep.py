"""Runs a config's `sweep()` (ablations x seeds) and writes one results table.

A config file may define `sweep(add)`, calling `add(**overrides)` once per
run with dotted keys (`add(**{'loss': 'minimax', 'seed': 1})`). Each run
trains in `workdir/<run name>` with the trainer's `train_and_evaluate` and is
skipped when its `metrics.json` is already there, so an interrupted sweep
continues where it stopped. The table groups runs that differ only in
`seed` and reports mean and standard deviation over seeds:
`workdir/results.csv` (one row per run) and `workdir/results.md`; the
learning curves of each setting (validation metrics against step, mean ±
std over seeds, `mrseg.curves`): `curves.csv` and `curves.png`, from each
run's `history.jsonl` or the file the config names in `SWEEP_HISTORY` (a
path inside the run's folder, e.g. `'unet/history.jsonl'`).

A setting is what a run overrides apart from `seed` and the folders it
keeps or shares (keys ending in `_dir`). The config file may name its
baseline settings in a module-level `SWEEP_BASELINES`: a list of override
dicts without the seed, each one setting its `sweep()` adds (`[{}]` names
the run of the base config, with no overrides but the seed), e.g.

  SWEEP_BASELINES = [{'train_data': 'real'}]

Then `workdir/paired.md` and `paired.csv` compare every other setting S with
each baseline B seed by seed (`mrseg.paired`): the differences S - B on the
seeds both have, their mean ± std, how many are above zero, and whether the
mean difference exceeds the baseline's own spread over seeds. It compares
the metrics whose name contains 'dice', or those the file lists in
`SWEEP_PAIRED_METRICS` (a tuple of metric names). A baseline that names no
setting of the sweep fails before anything trains.
"""
from collections.abc import Callable, Mapping, Sequence
import csv
import os
import re
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from mrseg import curves
from mrseg import overrides as overrides_lib
from mrseg import paired
from mrseg import workdir as workdir_lib

SEED_KEY = 'seed'


def _is_setting(key: str) -> bool:
  """Keys that group runs in results.md: not the seed, and not where a run
  keeps or shares its files (`gan_dir`, `reference_dir`, ...), which differ
  per seed when runs of one seed share a stage."""
  return key != SEED_KEY and not key.endswith('_dir')


def setting(overrides: Mapping[str, Any]) -> paired.Setting:
  """The setting a run belongs to: its sorted overrides but seed and folders."""
  return tuple((k, _short(v)) for k, v in sorted(overrides.items())
               if _is_setting(k))


def baseline_settings(baselines: Sequence[Mapping[str, Any]],
                      runs: Sequence[Mapping[str, Any]] | None = None
                      ) -> list[paired.Setting]:
  """The settings `baselines` (a config's SWEEP_BASELINES) name.

  Args:
    baselines: override dicts, each one setting without seed or folders.
    runs: if given, the sweep's override dicts: each baseline must be one
      of their settings.

  Raises:
    ValueError: for a seed or folder key in a baseline, or a baseline that
      is not a setting of `runs`.
  """
  settings = []
  for baseline in baselines:
    extra = [k for k in baseline if not _is_setting(k)]
    if extra:
      raise ValueError(f'Baseline {dict(baseline)} names {extra}: a baseline '
                       'is a setting, paired over seeds; leave out the seed '
                       'and folders.')
    settings.append(setting(baseline))
  if runs is not None:
    known = {setting(o) for o in runs}
    for baseline, s in zip(baselines, settings):
      if s not in known:
        raise ValueError(
            f'Baseline {dict(baseline)} is none of the sweep\'s settings: '
            f'{sorted(paired.label(k) for k in known)}.')
  return settings


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
        only: str = '', baselines: Sequence[Mapping[str, Any]] = (),
        paired_metrics: Sequence[str] | None = None,
        history: str = curves.HISTORY) -> list[dict[str, Any]]:
  """Runs every run of the sweep (skipping finished ones) and writes tables.

  Args:
    config: the base config every run overrides.
    sweep_fn: the config file's `sweep(add)`.
    workdir: the sweep's folder; run `name` trains in `workdir/name`.
    train_fn: `train_fn(config, run_dir)`, writing `run_dir/metrics.json`.
    only: a regular expression; if given, only runs whose name it matches
      (`re.search`) are trained, e.g. 'seed=0' to spread a sweep over
      sessions. The tables hold every finished run of the sweep either way.
    baselines: the config file's SWEEP_BASELINES, for paired.md.
    paired_metrics: the config file's SWEEP_PAIRED_METRICS; None: the Dice
      metrics.
    history: the config file's SWEEP_HISTORY: each run's history file,
      relative to its folder, for the learning curves.

  Returns:
    One record per finished run: its overrides and its metrics.json.
  """
  runs = collect(sweep_fn)
  baseline_settings(baselines, runs)  # a wrong baseline fails before training
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
  write_tables(records, workdir, baselines, paired_metrics, history)
  return records


def write_tables(records: Sequence[Mapping[str, Any]], workdir: str,
                 baselines: Sequence[Mapping[str, Any]] = (),
                 paired_metrics: Sequence[str] | None = None,
                 history: str = curves.HISTORY) -> None:
  """results.csv (per run), results.md (mean ± std over seeds), curves.csv
  and curves.png and, given baselines, paired.md and paired.csv
  (differences per seed).

  Args:
    records: {'run': name, 'overrides': dict, 'metrics': dict} per run.
    workdir: the folder the tables go to.
    baselines: override dicts naming baseline settings (SWEEP_BASELINES).
    paired_metrics: the metrics paired.md compares; None: the Dice ones.
    history: each run's history file, relative to its folder.
  """
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

  groups: dict[paired.Setting, list[Mapping[str, Any]]] = {}
  for r in records:
    groups.setdefault(setting(r['overrides']), []).append(r)
  group_keys = [k for k in keys if _is_setting(k)]
  lines = ['| ' + ' | '.join([*group_keys, 'seeds', *metrics]) + ' |',
           '|' + '---|' * (len(group_keys) + 1 + len(metrics))]
  for group, members in groups.items():
    values = dict(group)
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
  curves.write(curves.collect(
      {paired.label(group): [os.path.join(workdir, r['run']) for r in members]
       for group, members in groups.items()}, history), workdir)
  if baselines:
    if paired_metrics is None:
      paired_metrics = paired.default_metrics(metrics)
    missing = sorted(set(paired_metrics) - set(metrics))
    if missing:
      logging.warning('paired.md: no run reports %s (numeric metrics: %s).',
                      missing, metrics)
    settings = baseline_settings(baselines)
    paired.write(paired.compare(groups, settings, paired_metrics),
                 [(s, paired.seeds_of(groups.get(s, ()))) for s in settings],
                 workdir)


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
