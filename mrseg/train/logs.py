"""Metric writers: TensorBoard events, plain logs and a JSON-lines history.

The history (`workdir/history.jsonl`) is what the figures are drawn from; on
resume it is cut back to the restored step, because the steps after it are
run again (and, with step-keyed randomness, produce the same values).
"""
import json
import os
from collections.abc import Mapping
from typing import Any

from absl import logging
from clu import metric_writers
import numpy as np

from mrseg import workdir as workdir_lib


class JsonlWriter(metric_writers.MetricWriter):
  """Appends scalars as {"step": s, name: value, ...} lines to a file."""

  def __init__(self, path: str):
    self.path = path

  def truncate_after(self, step: int) -> None:
    """Drops lines of steps > `step` (they will be written again).

    Atomically: the best checkpoint is chosen from this history on resume,
    so an interruption here must leave the whole old history.
    """
    if not os.path.exists(self.path):
      return
    records = read_history(self.path)
    with workdir_lib.atomic_open(self.path) as f:
      for r in records:
        if r['step'] <= step:
          f.write(json.dumps(r) + '\n')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step)}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def read_history(path: str) -> list[dict[str, float]]:
  """The records of a history file, [] if it does not exist yet.

  A last line cut short by an interruption (it has no newline) is dropped
  with a warning; a damaged line before it is a ValueError naming the file.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split('\n')
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if i == len(lines) - 1:
        logging.warning('Dropping the last line of %s, cut short by an '
                        'interruption: %r', path, line[:80])
        continue
      raise ValueError(f'{path} line {i + 1} is not a JSON record ({e}): '
                       f'{line[:80]!r}') from e
  return records


def flatten_hparams(tree: Mapping[str, Any],
                    prefix: str = '') -> dict[str, Any]:
  """A nested config dict as {'a.b': value} with TensorBoard-friendly values."""
  flat = {}
  for k, v in tree.items():
    name = f'{prefix}{k}'
    if isinstance(v, Mapping):
      flat.update(flatten_hparams(v, name + '.'))
    else:
      flat[name] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return flat


def create_writer(workdir: str, history: JsonlWriter) -> metric_writers.MetricWriter:
  """TensorBoard + logging (clu's default writer) + the JSON-lines history.

  On processes other than 0 of a multi-process run: logging only (process 0
  writes the files).
  """
  if not workdir_lib.is_main_process():
    return metric_writers.create_default_writer(
        workdir, just_logging=True, asynchronous=False)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      history,
  ])
