"""Orbax checkpoints: periodic, keep-N, atomic, resumed from the latest step."""
from collections.abc import Callable
import gc
import math
import os
import shutil
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from mrseg import workdir as workdir_lib
from mrseg.train import parallel as parallel_lib


def _unreadable(directory: str, steps: list[int], error: Exception
                ) -> ValueError:
  return ValueError(
      f'Cannot restore checkpoint step(s) {steps} in {directory}: {error}. '
      'Either their files are damaged (delete them to start over) or they '
      'hold a model other than the one this config builds.')


class Checkpointer:
  """Saves and restores one state pytree under `workdir/checkpoints`.

  Orbax writes each step into a temporary folder and renames it when
  complete, so an interrupted save never replaces a good checkpoint. In a
  multi-process run every process makes the same calls (Orbax's saves,
  restores and deletes are collective); each process writes the parts of
  the state it holds, and process 0 the metadata.
  """

  def __init__(self, workdir: str, keep: int = 3, subdir: str = 'checkpoints',
               create: bool = True):
    """Opens `workdir/subdir`, keeping the last `keep` (>= 1) saves.

    Raises:
      ValueError: if `keep` < 1 (Orbax would delete every save).
      FileNotFoundError: if `create` is False and the folder is missing
        (nothing is created then).
    """
    if keep < 1:
      raise ValueError(f'keep_checkpoints={keep} must be at least 1: with '
                       'fewer every checkpoint would be deleted as it is '
                       'written.')
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(
          f'No checkpoint in {self.directory}: train first with '
          f'--mode=train --workdir={workdir}.')
    self._options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                 create=create)
    self.manager = ocp.CheckpointManager(self.directory,
                                         options=self._options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the newest readable one) into `target`.

    With `step` None, a checkpoint that cannot be read (cut short, damaged)
    is moved to `<subdir>_unreadable/` with a warning naming it, and the
    next older one is tried.

    Args:
      target: a state of the right structure (its values are not used);
        static fields (optimizers, apply functions) are kept from it.
      step: which checkpoint; None for the newest readable one.

    Returns:
      The restored state, or `target` itself if there is no checkpoint.

    Raises:
      FileNotFoundError: if `step` is given and was not saved.
      ValueError: if no checkpoint (or `step`) can be restored into the
        target: damaged files, or a model other than the config's.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    if step is not None:
      if step not in self.manager.all_steps():
        raise FileNotFoundError(
            f'No checkpoint for step {step} in {self.directory}; '
            f'saved steps: {sorted(self.manager.all_steps())}.')
      try:
        return self._restore(step, abstract)
      except Exception as e:  # pylint: disable=broad-except
        raise _unreadable(self.directory, [step], e) from e
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, s in enumerate(steps):
      try:
        restored = self._restore(s, abstract)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Cannot restore checkpoint step %d in %s: %s', s,
                        self.directory, e)
        if i == len(steps) - 1:
          raise _unreadable(self.directory, steps, e) from e
        continue
      if i:
        self._set_aside(steps[:i], s)
      return restored
    return target

  def _restore(self, step: int, abstract: Any) -> Any:
    try:
      restored = self.manager.restore(step,
                                      args=ocp.args.StandardRestore(abstract))
    except Exception:
      # A failed read leaves Orbax's other read coroutines pending: collect
      # them now, while their files exist, not in whatever code the garbage
      # collector next interrupts (a CI worker once died right after one).
      gc.collect()
      raise
    logging.info('Restored step %d from %s.', step, self.directory)
    return restored

  def _set_aside(self, steps: list[int], readable: int) -> None:
    """Moves unreadable steps out of the way; the run saves them anew."""
    aside = self.directory + '_unreadable'
    for s in steps:
      target = os.path.join(aside, str(s))
      if workdir_lib.is_main_process():
        os.makedirs(aside, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(os.path.join(self.directory, str(s)), target)
      logging.warning('Checkpoint step %d in %s is unreadable: moved to %s; '
                      'resuming from step %d.', s, self.directory, target,
                      readable)
    parallel_lib.barrier('checkpoint.set_aside')
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory,
                                         options=self._options)

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    saved = self.manager.save(step, args=ocp.args.StandardSave(state),
                              force=force)
    if saved:
      logging.info('Saving checkpoint for step %d.', step)
    return saved

  def reached_preemption(self, step: int) -> bool:
    """Whether the run must save `step` and stop for a preemption.

    Orbax's `CheckpointManager.reached_preemption`: True at the step that
    JAX's preemption service (multi-process runs after
    `jax.distributed.initialize`) chose for every process once one got a
    preemption notice. Always False without that service (one process).
    A collective: every process calls it at every step.
    """
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class BestCheckpoint:
  """The state with the best validation Dice, in `workdir/best`.

  Kept apart from the periodic checkpoints (which rotate) so that evaluation
  finds the state the validation chose. `record` is the best validation
  record so far, shaped like its history line ({'step': s, metric: value,
  ...}; 'step' is None before there is one); each new best is also written
  to `workdir/best.json`, for the report.
  """

  def __init__(self, workdir: str, metric: str):
    """Opens (or creates) `workdir/best`; `metric` is the record's Dice key."""
    self.metric = metric
    self.json_path = os.path.join(workdir, 'best.json')
    self.checkpointer = Checkpointer(workdir, keep=1, subdir='best')
    self.record: dict[str, Any] = {'step': None, metric: -math.inf}

  def resume(self, history_path: str, start_step: int) -> None:
    """Takes the best record up to `start_step` from the history.

    Best checkpoints from after `start_step` (saved before an interruption
    that lost the regular checkpoint of their step) are deleted: the resumed
    run repeats those steps exactly and saves them again if still best.

    Args:
      history_path: the run's history.jsonl.
      start_step: the step the run resumes from.
    """
    # Here, not at the top: logs imports clu, which the GPU benchmarks that
    # import the trainers (and so this module) do without.
    from mrseg.train import logs  # pylint: disable=g-import-not-at-top
    manager = self.checkpointer.manager
    for step in manager.all_steps():
      if step > start_step:
        manager.delete(step)
    for r in logs.read_history(history_path):
      if r['step'] <= start_step and self._beats(r.get(self.metric)):
        self.record = dict(r)

  def _beats(self, value: float | None) -> bool:
    # NaN (an undefined Dice) compares False, so it never becomes best.
    return value is not None and value > self.record[self.metric]

  def offer(self, step: int, record: dict[str, Any], state: Any) -> bool:
    """Keeps `state` and writes best.json if `record[metric]` is a new best.

    Returns:
      Whether it was.
    """
    dice = record[self.metric]
    if not self._beats(dice):
      return False
    # 'step' first, as in the history line that `resume` reads back: the
    # record (and best.json) does not depend on whether the run resumed.
    self.record = {'step': step, **record}
    if step not in self.checkpointer.manager.all_steps():
      self.checkpointer.save(step, state, force=True)
      # Before best.json names it: an interruption then never leaves a
      # best.json whose checkpoint was not written.
      self.checkpointer.wait()
    if workdir_lib.is_main_process():
      workdir_lib.write_json(self.json_path, self.record)
    logging.info('New best validation Dice %.4f at step %d.', dice, step)
    return True

  def close(self) -> None:
    self.checkpointer.close()


def restore_best(workdir: str, target: Any) -> tuple[Any, int]:
  """The best checkpoint of `workdir` (restored into `target`) and its step.

  It lands on this process's first device: with several processes each
  gets its own copy, to evaluate its share of the cases with.

  Raises:
    FileNotFoundError: if `workdir/best` holds no checkpoint.
  """
  folder = os.path.join(os.path.abspath(workdir), 'best')
  if not os.path.isdir(folder):  # create nothing on a wrong workdir
    raise FileNotFoundError(
        f'No best checkpoint in {folder}: train first with --mode=train '
        f'--workdir={workdir}.')
  checkpointer = Checkpointer(workdir, keep=1, subdir='best')
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'No best checkpoint in {checkpointer.directory}: train first '
          f'with --mode=train --workdir={workdir}.')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        target)
    return checkpointer.restore(target, step), step
  finally:
    checkpointer.close()


def restore_latest(workdir: str, target: Callable[[], Any],
                   step: int | None = None, keep: int = 3,
                   restore: Callable[[Checkpointer, Any, int], Any] | None
                   = None) -> tuple[Any, int]:
  """The checkpoint at `step` (default: the latest) and that step.

  Args:
    workdir: the run's folder.
    target: `target() -> state` to restore into, built only if there is a
      checkpoint.
    step: the step to restore; None: the latest.
    keep: the run's `keep_checkpoints`.
    restore: `restore(checkpointer, target, step)` for states whose old
      checkpoints need converting; None: `checkpointer.restore`.

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint.
  """
  checkpointer = Checkpointer(workdir, keep=keep, create=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f'No checkpoint in {checkpointer.directory}: train first with '
          f'--mode=train --workdir={workdir}.')
    if restore is None:
      return checkpointer.restore(target(), step), step
    return restore(checkpointer, target(), step), step
  finally:
    checkpointer.close()
