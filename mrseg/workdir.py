"""Crash-safe workdirs: atomic writes, done markers, a lock, clean stops.

What a run writes survives `kill -9` at any moment, because

* every output goes through `atomic_open` (a temporary file in the same
  folder, then `os.replace`): a reader sees the old file or the new one,
  never half of one;
* a stage writes its "done" marker (metrics.json, fidelity.json) last, and
  `is_done` treats a marker that does not parse as "not done";
* `lock` lets one process at a time work in a workdir (the kernel drops the
  lock when its holder dies, even by kill -9, so it never goes stale);
* `StopOnSignal` turns SIGTERM/SIGINT into a request the training loop
  honours after the current step: it saves that step and raises
  `Interrupted`, which launch.py reports in one line (`Preempted` when the
  checkpoint manager reports a preemption sync point instead).

`start_run` does the checks every trainer makes before it touches a
workdir: counts that must be positive, and a resume must use the config the
run started with (run-length keys aside).

In a multi-process run (launch.py --distributed) all processes share one
workdir and only process 0 writes into it (`is_main_process`): it alone
holds the lock and writes config.json, the history, TensorBoard events,
figures and reports; checkpoints are written by all processes together
(Orbax).
"""
from collections.abc import Callable, Iterator, Sequence
import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import tempfile
import threading
from typing import Any

from absl import logging

from mrseg import saved_configs

try:
  import fcntl
except ImportError:  # not POSIX: no locking
  fcntl = None

# Read once: mkstemp makes 0600 files; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)

LOCK_FILE = '.lock'


# ----------------------------------------------------------------------------
# Atomic writes and markers.


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w', **kwargs) -> Iterator[Any]:
  """Opens a temporary file beside `path`; it becomes `path` on success.

  On any exception (or a kill) `path` keeps its old content (or stays
  absent); the temporary file is removed on exceptions, and a kill leaves
  only a hidden `.NAME.*.tmp` beside it.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, suffix='.tmp',
                             prefix=f'.{os.path.basename(path)}.')
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2))


def read_json(path: str) -> Any:
  """The JSON in `path`; a damaged file is a ValueError naming it."""
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); it was probably cut '
                     'short by an interruption: delete it and rerun.') from e


def is_done(marker: str) -> bool:
  """Whether a stage's marker exists and parses (else the stage reruns)."""
  if not os.path.exists(marker):
    return False
  try:
    read_json(marker)
  except ValueError as e:
    logging.warning('%s; running its stage again.', e)
    return False
  return True


# ----------------------------------------------------------------------------
# One process per workdir.


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lock."""


_HELD: dict[str, list] = {}  # path -> [fd, depth]: the lock is re-entrant
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def lock(workdir: str, wait: bool = False) -> Iterator[None]:
  """Holds `workdir/.lock` (re-entrant within this process).

  Args:
    workdir: created if missing.
    wait: block until the holder is done instead of failing.

  Raises:
    WorkdirBusyError: if another process holds it and `wait` is False; the
      message names that process.
  """
  path = os.path.abspath(workdir)
  with _HELD_LOCK:
    held = _HELD.get(path)
    if held:
      held[1] += 1
  if held:
    try:
      yield
    finally:
      with _HELD_LOCK:
        held[1] -= 1
    return
  os.makedirs(path, exist_ok=True)
  lock_path = os.path.join(path, LOCK_FILE)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
  try:
    if fcntl is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or '?'
        if not wait:
          raise WorkdirBusyError(
              f'{path} is in use by process {holder} (it holds {lock_path}): '
              'wait for it to finish or stop it, or use another workdir.'
          ) from None
        logging.info('Waiting for process %s to release %s.', holder, lock_path)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    with _HELD_LOCK:
      _HELD[path] = [fd, 1]
    try:
      yield
    finally:
      with _HELD_LOCK:
        del _HELD[path]
  finally:
    os.close(fd)  # releases the flock


def is_main_process() -> bool:
  """Whether this process writes the workdir: process 0 (or the only one)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Runs the block on process 0 first, then on the others (which reuse
  what it wrote: a prepared dataset). Every process must enter it, in the
  same order; with one process it is the block alone."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multi = jax.process_count() > 1
  if multi and not is_main_process():
    multihost_utils.sync_global_devices(f'{name}: process 0 done')
  try:
    yield
  finally:  # also on an error: the others then meet it themselves
    if multi and is_main_process():
      multihost_utils.sync_global_devices(f'{name}: process 0 done')


def locked(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates `fn(config, workdir, ...)` to run holding `lock(workdir)`.

  In a multi-process run only process 0 takes the lock (the others share
  its workdir and write nothing there); if it cannot, every process raises
  WorkdirBusyError.
  """

  @functools.wraps(fn)
  def wrapper(config, workdir, *args, **kwargs):
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    with contextlib.ExitStack() as stack:
      busy = None
      if is_main_process():
        try:
          stack.enter_context(lock(workdir))
        except WorkdirBusyError as e:
          busy = e
      if jax.process_count() > 1 and multihost_utils.broadcast_one_to_all(
          busy is not None):
        busy = busy or WorkdirBusyError(
            f'{os.path.abspath(workdir)} is in use by another run (process 0 '
            'of this run could not take its lock).')
      if busy is not None:
        raise busy
      return fn(config, workdir, *args, **kwargs)

  return wrapper


# ----------------------------------------------------------------------------
# Checks at the start of a run.

# Keys a resumed run may change: how long it runs, how often it logs, saves
# and evaluates, and how it is parallelised (which gives the same numbers).
RUN_LENGTH_KEYS = ('num_epochs', 'steps_per_epoch', 'num_train_steps',
                   'log_every_steps', 'checkpoint_every_steps',
                   'sample_every_steps', 'eval_every_steps',
                   'keep_checkpoints', 'num_grid_samples', 'num_eval_samples',
                   'parallel', 'eval', 'early_stop_patience',
                   'early_stop_min_delta')


def refused_changes(changed: Sequence[str]) -> list[str]:
  """The changed keys a resumed run may not change (all but RUN_LENGTH_KEYS)."""
  return [k for k in changed if k.split('.')[0] not in RUN_LENGTH_KEYS]


def report_dir(config: Any, workdir: str) -> str:
  """Where `--mode=eval` writes the report of a trained run.

  The run's own folder if `config` is the one it trained with (up to
  run-length keys, which do not change an evaluation of its best
  checkpoint; `eval.*` keys do); otherwise a subfolder named by the changed
  keys and their values, data keys without their 'data.' prefix, e.g.
  workdir/test_ids=351-400/ or workdir/unlabelled_in_brain=ignore/, so that
  the run's report, predictions and the metrics.json that sweeps and
  pipelines read as "done" stay as they were.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return workdir
  wanted = json.loads(config.to_json_best_effort())
  changed = [k for k in saved_configs.changes(read_json(path), wanted)
             if k.startswith('eval.') or refused_changes([k])]
  if not changed:
    return workdir
  flat = saved_configs.flatten(wanted)
  name = ','.join(f'{k.removeprefix("data.")}={flat.get(k)}' for k in changed)
  name = re.sub(r'[^A-Za-z0-9_.,=+-]', '_', name)
  if len(name) > 120:  # file systems limit a name to 255 bytes
    name = name[:100] + '_' + hashlib.sha1(name.encode()).hexdigest()[:12]
  return os.path.join(workdir, name)


def check_positive(config: Any, keys: Sequence[str]) -> None:
  """Raises ValueError naming the first of `keys` (dotted) that is <= 0."""
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    if value <= 0:
      raise ValueError(f'config.{key}={value} must be positive.')


def has_checkpoints(workdir: str, subdir: str = 'checkpoints') -> bool:
  folder = os.path.join(workdir, subdir)
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def start_run(config: Any, workdir: str, *,
              positive: Sequence[str] = ()) -> None:
  """Checks `config`, writes workdir/config.json and adds this start to
  workdir/environment.json (mrseg.environment: commit, versions, CPU).

  Every process checks; process 0 alone writes.

  Args:
    config: the run's ConfigDict.
    workdir: the run's folder (created if missing). If it holds checkpoints,
      its saved config.json must agree with `config` except in
      RUN_LENGTH_KEYS (differences there are logged); a key added since
      it was saved agrees at its legacy value (mrseg.saved_configs).
    positive: dotted keys that must be > 0.

  Raises:
    ValueError: a count is not positive, or the config changed.
  """
  check_positive(config, positive)
  path = os.path.join(workdir, 'config.json')
  wanted = json.loads(config.to_json_best_effort())
  if has_checkpoints(workdir) and os.path.exists(path):
    changed = saved_configs.changes(read_json(path), wanted)
    refused = refused_changes(changed)
    if refused:
      raise ValueError(
          f'{workdir} holds a run started with another config (differs in '
          f'{refused}); resume it with its config ({path}) or use another '
          'workdir.')
    if changed:
      logging.warning('Resuming %s with changed %s.', workdir, changed)
  if is_main_process():
    write_text(path, config.to_json_best_effort(indent=2))
    # pylint: disable-next=g-import-not-at-top
    from mrseg import environment  # imports this module
    environment.record(workdir)


# ----------------------------------------------------------------------------
# SIGTERM / SIGINT: finish the step, save, stop.


class Interrupted(Exception):
  """Training stopped on a signal after saving `step`."""

  def __init__(self, signum: int | None, step: int, directory: str,
               cause: str | None = None):
    self.signum, self.step, self.directory = signum, step, directory
    cause = cause or f'by {signal.Signals(signum).name}'
    super().__init__(
        f'Stopped {cause} after step {step}, saved in {directory}; rerun '
        'the same command to resume.')

  @property
  def exit_code(self) -> int:
    """128 + the signal, as a shell reports a process the signal ended."""
    return 128 + (self.signum or signal.SIGTERM)


class Preempted(Interrupted):
  """Training stopped at a preemption sync point after saving `step`.

  Orbax's `CheckpointManager.reached_preemption` (JAX's preemption service,
  multi-process runs): every process stops after the same step. Its exit
  code is SIGTERM's, the preemption notice's default signal.
  """

  def __init__(self, step: int, directory: str):
    super().__init__(None, step, directory,
                     cause='at a preemption sync point')


class StopOnSignal:
  """While active, SIGTERM/SIGINT set `signum` instead of killing.

  A second signal stops at once (KeyboardInterrupt). Outside the main thread
  signals cannot be caught, and nothing is installed.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('%s received: stopping after this step.',
                    signal.Signals(signum).name)

  def __enter__(self) -> 'StopOnSignal':
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
