"""Orbax checkpoints: periodic, keep-N, atomic, resumed from the latest step."""
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
