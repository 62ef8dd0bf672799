"""Learning curves of a sweep: validation metrics against step, per setting.

Every run's history.jsonl (or the file a config names in SWEEP_HISTORY)
holds its validation records (keys starting with
'val_'). `write` averages each metric over the seeds of a setting at every
evaluation step and writes, in the sweep's folder:

  curves.csv: setting, step, metric, mean, std (ddof=1; empty for one
    seed), seeds (how many runs reached the step: runs stopped at a
    plateau end early);
  curves.png: one panel per validation metric (at most MAX_PANELS, mean
    Dice first), a line per setting with a ± std band.

A protocol's run lengths are read off these: where the mean curve stops
rising by more than its seed spread.
"""
from collections.abc import Mapping, Sequence
import csv
import math
import os
from typing import Any

import numpy as np

from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.train import logs

PREFIX = 'val_'
HISTORY = 'history.jsonl'
MAX_PANELS = 4

# {setting label: {metric: {step: [value per seed]}}}
Curves = dict[str, dict[str, dict[int, list[float]]]]


def collect(groups: Mapping[str, Sequence[str]],
            history: str = HISTORY) -> Curves:
  """The validation values of each setting's runs, by metric and step.

  Args:
    groups: {setting label: the run folders of its seeds}.
    history: each run's history file, relative to its folder (a pipeline's
      runs validate in a stage folder: configs/synth2seg.py's SWEEP_HISTORY).
  """
  curves: Curves = {}
  for label, run_dirs in groups.items():
    metrics = curves.setdefault(label, {})
    for run_dir in run_dirs:
      by_step: dict[tuple[str, int], float] = {}
      for record in logs.read_history(os.path.join(run_dir, history)):
        for key, value in record.items():
          if key.startswith(PREFIX) and _finite(value):
            # A resumed run may log a step twice: its last value counts.
            by_step[(key, int(record['step']))] = float(value)
      for (key, step), value in by_step.items():
        metrics.setdefault(key, {}).setdefault(step, []).append(value)
  return curves


def write(curves: Curves, workdir: str) -> None:
  """curves.csv and curves.png in `workdir`; nothing if no run validated."""
  rows = []
  for label, metrics in curves.items():
    for metric, steps in sorted(metrics.items()):
      for step, values in sorted(steps.items()):
        xs = np.asarray(values, np.float64)
        rows.append((label, step, metric, xs.mean(),
                     xs.std(ddof=1) if xs.size > 1 else math.nan, xs.size))
  if not rows:
    return
  with workdir_lib.atomic_open(os.path.join(workdir, 'curves.csv'),
                               newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['setting', 'step', 'metric', 'mean', 'std', 'seeds'])
    for label, step, metric, mean, std, n in rows:
      writer.writerow([label, step, metric, f'{mean:.6g}',
                       '' if math.isnan(std) else f'{std:.6g}', n])
  names = sorted({r[2] for r in rows}, key=lambda m: ('mean' not in m, m))
  viz.plot_bands(
      {m: {label: [(s, mean, std) for label_, s, m_, mean, std, _ in rows
                   if label_ == label and m_ == m]
           for label in curves} for m in names[:MAX_PANELS]},
      os.path.join(workdir, 'curves.png'),
      title='Validation, mean ± std over seeds')


def _finite(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))
