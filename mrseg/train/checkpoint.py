"""Orbax checkpoints: periodic, keep-N, atomic, resumed from the latest step."""
import json
import math
import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores one state pytree under `workdir/checkpoints`.

  Orbax writes each step into a temporary folder and renames it when
  complete, so an interrupted save never replaces a good checkpoint.
  """

  def __init__(self, workdir: str, keep: int = 3, subdir: str = 'checkpoints'):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) into the structure of `target`.

    Args:
      target: a state of the right structure (its values are not used);
        static fields (optimizers, apply functions) are kept from it.
      step: which checkpoint; None for the latest.

    Returns:
      The restored state, or `target` itself if there is no checkpoint.

    Raises:
      FileNotFoundError: if `step` is given and was not saved.
      ValueError: if the checkpoint does not fit the target (e.g. the config
        changed the model since it was written).
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        return target
    elif step not in self.manager.all_steps():
      raise FileNotFoundError(
          f'No checkpoint for step {step} in {self.directory}; '
          f'saved steps: {sorted(self.manager.all_steps())}.')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = self.manager.restore(
          step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f'Checkpoint step {step} in {self.directory} does not match the '
          'model built from this config (was the config changed after it '
          f'was written?): {e}') from e
    logging.info('Restored step %d from %s.', step, self.directory)
    return restored

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    saved = self.manager.save(step, args=ocp.args.StandardSave(state),
                              force=force)
    if saved:
      logging.info('Saving checkpoint for step %d.', step)
    return saved

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
    with open(self.json_path, 'w') as f:
      json.dump(self.record, f, indent=2)
    logging.info('New best validation Dice %.4f at step %d.', dice, step)
    return True

  def close(self) -> None:
    self.checkpointer.close()


def restore_best(workdir: str, target: Any) -> tuple[Any, int]:
  """The best checkpoint of `workdir` (restored into `target`) and its step.

  Raises:
    FileNotFoundError: if `workdir/best` holds no checkpoint.
  """
  checkpointer = Checkpointer(workdir, keep=1, subdir='best')
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'No best checkpoint in {checkpointer.directory}: train first '
          f'with --mode=train --workdir={workdir}.')
    return checkpointer.restore(target, step), step
  finally:
    checkpointer.close()
