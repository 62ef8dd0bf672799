"""What a run ran on: code commit, library versions and hardware.

The same seed reproduces a run bit for bit on one machine, but not always
on another: XLA:CPU chooses its kernels by the CPU's instruction set, so
rounding differs between CPU generations, and hundreds of training steps
amplify that (README, "On another CPU the same seed gives another run": a
UNet's test Dice moved by up to 0.03 at a seed between two AMD EPYC
generations). `record` appends this description to workdir/environment.json
at every start or resume, so a number can be traced to what produced it.
"""
from collections.abc import Sequence
import datetime
import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import jax

from mrseg import workdir as workdir_lib

FILENAME = 'environment.json'
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',
            'tensorflow-cpu', 'tensorflow', 'tensorflow-datasets', 'numpy')
_CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str:
  try:
    return subprocess.run(('git', *args), cwd=_CODE_DIR, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ''


def _cpu() -> dict[str, str]:
  """The CPU's model, family and model numbers (Linux), else platform's."""
  fields = {'model name': 'model', 'cpu family': 'family', 'model': 'number'}
  cpu = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        name = fields.get(key.strip())
        if name and name not in cpu:
          cpu[name] = value.strip()
        if not line.strip() and cpu:
          break  # the first processor's block is enough
  except OSError:
    pass
  return cpu or {'model': platform.processor() or platform.machine()}


def _versions(packages: Sequence[str]) -> dict[str, str]:
  versions = {}
  for name in packages:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def describe() -> dict[str, Any]:
  """This process's code, libraries and hardware, as JSON-ready values."""
  commit = _git('rev-parse', 'HEAD')
  devices = jax.devices()
  return {
      'started_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'commit': commit,
      # Tracked files changed since `commit` (what it says is then not all).
      'uncommitted_changes': bool(commit and _git(
          'status', '--porcelain', '--untracked-files=no')),
      'python': platform.python_version(),
      'packages': _versions(PACKAGES),
      'platform': platform.platform(),
      'cpu': _cpu(),
      'cpu_count': os.cpu_count(),
      'devices': sorted({d.device_kind for d in devices}),
      'num_devices': len(devices),
      'num_processes': jax.process_count(),
  }


def record(workdir: str) -> list[dict[str, Any]]:
  """Appends `describe()` to workdir/environment.json (one entry per start)."""
  path = os.path.join(workdir, FILENAME)
  entries = workdir_lib.read_json(path) if os.path.exists(path) else []
  entries.append(describe())
  workdir_lib.write_json(path, entries)
  return entries
