"""Paired comparisons of a sweep's settings with its baselines, seed by seed.

Seeds pair runs: setting S at seed k against baseline B at seed k, so what
a seed changes in both (data split, initialisation, shared stages) cancels.
For each baseline, each other setting and each metric a row holds the
differences S - B on the seeds both have, their mean ± sample std (ddof=1),
how many are above zero, a verdict ('above at every seed', 'below at every
seed', 'mixed') and whether |mean difference| exceeds the baseline's own
standard deviation over its seeds (the spread a reader sees in results.md).
A seed that only one side has, or where either side has no value or not a
finite one, is left out of that pair and named in the row. `mrseg.sweep`
groups runs into settings and calls `compare` and `write`.
"""
from collections.abc import Mapping, Sequence
import csv
import math
import os
from typing import Any

import numpy as np

from mrseg import workdir as workdir_lib

# A setting: sorted (key, value as text) pairs of its overrides.
Setting = tuple[tuple[str, str], ...]

ABOVE, BELOW, MIXED = ('above at every seed', 'below at every seed', 'mixed')
CSV_COLUMNS = ('baseline', 'setting', 'metric', 'num_seeds', 'seeds',
               'differences', 'mean', 'std', 'num_above', 'verdict',
               'baseline_std', 'exceeds_seed_spread', 'num_left_out',
               'left_out')


def label(setting: Setting) -> str:
  """'augmentation=classical, train_data=real'; 'base' for no overrides."""
  return ', '.join(f'{k}={v}' for k, v in setting) or 'base'


def default_metrics(names: Sequence[str]) -> list[str]:
  """The metrics compared unless the config lists its own: the Dice ones."""
  return [n for n in names if 'dice' in n.lower()]


def compare(groups: Mapping[Setting, Sequence[Mapping[str, Any]]],
            baselines: Sequence[Setting],
            metrics: Sequence[str]) -> list[dict[str, Any]]:
  """One row per (baseline, other setting, metric), in sweep order.

  Args:
    groups: each setting's runs ({'overrides': ..., 'metrics': ...}).
    baselines: the settings to compare the others with.
    metrics: metric names; a metric that one side never reports as a
      number (e.g. a GAN's score in the real-only arm) gets no row.

  Returns:
    Rows with the keys of CSV_COLUMNS; 'differences' maps seed to S - B.
  """
  rows = []
  for baseline in baselines:
    base = _by_seed(groups.get(baseline, ()))
    for setting, members in groups.items():
      if setting == baseline:
        continue
      runs = _by_seed(members)
      for metric in metrics:
        if not (_reports(base, metric) and _reports(runs, metric)):
          continue
        rows.append({'baseline': label(baseline), 'setting': label(setting),
                     'metric': metric, **_pair(base, runs, metric)})
  return rows


def write(rows: Sequence[Mapping[str, Any]],
          baselines: Sequence[tuple[Setting, list[Any]]],
          workdir: str) -> None:
  """paired.md (one table per baseline) and paired.csv (the same rows).

  Args:
    rows: from `compare`.
    baselines: each baseline with the seeds of its finished runs.
    workdir: the sweep's folder.
  """
  with workdir_lib.atomic_open(os.path.join(workdir, 'paired.csv'),
                               newline='') as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
      diffs = r['differences']
      writer.writerow([
          r['baseline'], r['setting'], r['metric'], len(diffs),
          ';'.join(map(str, diffs)), ';'.join(repr(d) for d in diffs.values()),
          _num(r['mean']), _num(r['std']), r['num_above'], r['verdict'],
          _num(r['baseline_std']), r['exceeds_seed_spread'],
          len(r['left_out']), '; '.join(f'{s}: {why}' for s, why in r['left_out'].items())])

  lines = [
      'Each setting S against each baseline B at the same seed: S - B per '
      'seed, their mean ± sample std (ddof=1), how many are above 0, and '
      "whether |mean| exceeds B's own std over its seeds (results.md). "
      'Seeds that one side lacks, or where a value is missing or not finite, '
      'are left out of that pair.']
  header = ('| setting | metric | seeds | S - B at seed | mean ± std | > 0 '
            '| verdict | B std | exceeds seed spread | left out |')
  for baseline, seeds in baselines:
    seed_text = ', '.join(map(str, seeds)) if seeds else 'no finished run yet'
    lines += ['', f'## Baseline: {label(baseline)} (seeds: {seed_text})', '']
    mine = [r for r in rows if r['baseline'] == label(baseline)]
    if not mine:
      lines.append('No setting to compare yet.')
      continue
    lines += [header, '|' + '---|' * 10]
    for r in mine:
      diffs = r['differences']
      mean_std = (f'{r["mean"]:+.3g}' if len(diffs) == 1 else
                  f'{r["mean"]:+.3g} ± {r["std"]:.2g}' if diffs else '')
      cells = [
          r['setting'], r['metric'], str(len(diffs)),
          ', '.join(f'{s}: {d:+.3g}' for s, d in diffs.items()), mean_std,
          f'{r["num_above"]}/{len(diffs)}', r['verdict'],
          '' if math.isnan(r['baseline_std']) else f'{r["baseline_std"]:.2g}',
          r['exceeds_seed_spread'], _left_out(r['left_out'])]
      lines.append('| ' + ' | '.join(cells) + ' |')
  with workdir_lib.atomic_open(os.path.join(workdir, 'paired.md')) as f:
    f.write('\n'.join(lines) + '\n')


def seeds_of(members: Sequence[Mapping[str, Any]]) -> list[Any]:
  """The seeds of a setting's runs, sorted."""
  return sorted(_by_seed(members), key=_seed_order)


def _pair(base: Mapping[Any, Mapping[str, Any]],
          runs: Mapping[Any, Mapping[str, Any]], metric: str
          ) -> dict[str, Any]:
  diffs, left_out = {}, {}
  for seed in sorted(set(base) | set(runs), key=_seed_order):
    if seed not in base:
      left_out[seed] = 'no baseline run'
    elif seed not in runs:
      left_out[seed] = 'no run of this setting'
    else:
      a, b = runs[seed].get(metric), base[seed].get(metric)
      if not (_is_number(a) and _is_number(b)):
        left_out[seed] = 'no value'
      elif not (math.isfinite(a) and math.isfinite(b)):
        left_out[seed] = 'not a finite number'
      else:
        diffs[seed] = float(a) - float(b)
  d = np.array(list(diffs.values()), np.float64)
  mean = float(d.mean()) if d.size else math.nan
  std = float(d.std(ddof=1)) if d.size > 1 else math.nan
  base_values = np.array([v for v in (_finite(m.get(metric))
                                      for m in base.values()) if v is not None])
  base_std = (float(base_values.std(ddof=1)) if base_values.size > 1
              else math.nan)
  if not d.size:
    verdict = 'no common seed'
  else:
    verdict = ABOVE if (d > 0).all() else BELOW if (d < 0).all() else MIXED
  exceeds = ('n/a' if not d.size or math.isnan(base_std) else
             'yes' if abs(mean) > base_std else 'no')
  return {'differences': diffs, 'mean': mean, 'std': std,
          'num_above': int((d > 0).sum()), 'verdict': verdict,
          'baseline_std': base_std, 'exceeds_seed_spread': exceeds,
          'left_out': left_out}


def _by_seed(members: Sequence[Mapping[str, Any]]
             ) -> dict[Any, Mapping[str, Any]]:
  return {r['overrides'].get('seed'): r['metrics'] for r in members}


def _reports(runs: Mapping[Any, Mapping[str, Any]], metric: str) -> bool:
  return any(_is_number(m.get(metric)) for m in runs.values())


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> float | None:
  return float(v) if _is_number(v) and math.isfinite(v) else None


def _seed_order(seed: Any) -> tuple:
  number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
  return (not number, seed if number else str(seed))


def _left_out(left_out: Mapping[Any, str]) -> str:
  """'2 (seed 1: no baseline run; seed 2: no baseline run)'."""
  if not left_out:
    return ''
  why = '; '.join(f'seed {s}: {w}' for s, w in left_out.items())
  return f'{len(left_out)} ({why})'


def _num(x: float) -> str:
  return '' if math.isnan(x) else repr(x)
