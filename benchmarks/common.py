"""Helpers shared by the benchmark scripts (`*_step.py` in this folder).

Timing, FLOP counting, device and commit labels, config overrides and the
JSON-lines output, so that every script measures and reports the same way:

* `time_calls` runs `warmup` untimed calls of each runner, then `steps`
  timed rounds that call the runners one after another (interleaved, so
  that load from other jobs on a shared machine hits them alike). Each
  runner's call must end with `jax.block_until_ready` (or return host
  data), so that a time covers the whole computation.
* `timing_fields` turns the times into the fields every record carries:
  examples_per_s and step_time_ms from the median, flops_per_step and
  achieved_flops_per_s (counted FLOPs / median time).
* `emit` prints one record as a JSON line and optionally appends it to a
  file.

Imports jax only (no TensorFlow, no clu), so that the scripts run on an
accelerator host without them.
"""
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def num_cores() -> int:
  """Cores this process may run on (the affinity mask, not the host's)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def git_commit() -> str:
  """The repository's short HEAD commit ('unknown' without git)."""
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT,
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def jax_device() -> str:
  """'cpu xN cores' or '<platform>: <device kind>' of JAX's first device."""
  d = jax.devices()[0]
  if d.platform == 'cpu':
    return f'cpu x{num_cores()} cores'
  return f'{d.platform}: {d.device_kind}'


def load_average() -> list[float] | None:
  """The machine's 1-, 5- and 15-minute load averages (None if unknown)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except (AttributeError, OSError):
    return None


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of one call from XLA's cost analysis (None where unavailable)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per partition
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def xla_bytes_accessed(compiled: Any) -> float | None:
  """HBM bytes one call reads and writes, by XLA's cost analysis.

  Counted over the optimised HLO (fusions count their inputs and outputs
  once); None where the backend does not report it.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'bytes accessed' not in cost:
    return None
  return float(cost['bytes accessed'])


def roofline_fields(flops: float | None, bytes_accessed: float | None,
                    seconds: float, peak_flops: float,
                    peak_bytes_per_s: float) -> dict[str, Any]:
  """Roofline time (max of FLOP time at peak and HBM time at bandwidth) and
  the fraction of it a call of `seconds` achieves (1 = at the roofline)."""
  if not flops or not bytes_accessed or seconds <= 0:
    return {'roofline_s': None, 'roofline_fraction': None,
            'bound': None, 'arithmetic_intensity': None}
  t_flops = flops / peak_flops
  t_bytes = bytes_accessed / peak_bytes_per_s
  roof = max(t_flops, t_bytes)
  return {'roofline_s': roof, 'roofline_fraction': roof / seconds,
          'bound': 'compute' if t_flops >= t_bytes else 'memory',
          'arithmetic_intensity': flops / bytes_accessed}


def xla_memory_bytes(compiled: Any) -> int | None:
  """Memory one call needs by XLA's memory analysis (None where unknown).

  Arguments + outputs + temporaries, less the outputs that alias donated
  arguments. (`peak_memory_in_bytes` is left alone: XLA:CPU fills it with
  the arguments only.)
  """
  try:
    m = compiled.memory_analysis()
  except (AttributeError, NotImplementedError):
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes +
             m.temp_size_in_bytes - m.alias_size_in_bytes)


def time_calls(runners: Mapping[str, Callable[[], Any]], steps: int,
               warmup: int) -> dict[str, list[float]]:
  """Seconds of each of `steps` timed calls per runner, interleaved."""
  for call in runners.values():
    for _ in range(warmup):
      call()
  times: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(steps):
    for name, call in runners.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return times


def timing_fields(examples: float, times: list[float],
                  flops: float | None) -> dict[str, Any]:
  """examples_per_s, step_time_ms, flops_per_step, achieved_flops_per_s."""
  t = statistics.median(times)
  return {
      'examples_per_s': examples / t, 'step_time_ms': t * 1e3,
      'flops_per_step': flops,
      'achieved_flops_per_s': flops / t if flops else None,
  }


def times_ms(times: list[float]) -> list[float]:
  return [round(x * 1e3, 1) for x in times]


def emit(record: Mapping[str, Any], out: str | None = None) -> str:
  """Prints `record` as one JSON line; appends it to `out` if given."""
  line = json.dumps(record)
  print(line, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'a') as f:
      f.write(line + '\n')
  return line
