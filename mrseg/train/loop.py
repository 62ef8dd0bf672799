"""The training loop every trainer shares.

It runs a compiled step over placed batches, averages metrics between log
points, checks them for NaN/inf before anything is saved, writes steps/s and
ETA, checkpoints periodically and calls per-trainer hooks (sample grids).
Metrics stay on device between log points so the host never waits on a step.

With several processes (launch.py --distributed) every process runs the
loop; process 0's metrics decide the NaN check, a signal to any process
(or a preemption notice, through Orbax's `reached_preemption`) stops all of
them after the same step, every process takes part in each
checkpoint save, and hooks run on process 0 only unless they ask for all.
An early stop (`stop_early`, the runner's plateau of the validation
metric) ends the run after a step where hooks ran, saved like the last.
"""
from collections.abc import Callable, Iterator, Sequence
import dataclasses
import math
import time
from typing import Any, TYPE_CHECKING

from absl import logging
import jax
import numpy as np

from mrseg import workdir as workdir_lib
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import parallel as parallel_lib

if TYPE_CHECKING:  # clu's writers import TensorFlow
  from clu import metric_writers


class NonFiniteLossError(FloatingPointError):
  """A loss or metric became NaN or inf; carries the step it happened at."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


@dataclasses.dataclass
class Hook:
  """Calls `fn(step, state)` every `every_steps` steps and at the last step.

  Attributes:
    fn: `fn(step, state)`.
    every_steps: the period.
    all_processes: False: `fn` runs on process 0 only and gets one copy of
      the state on that process (`Parallel.unreplicate`): for hooks that
      write files (sample grids). True: `fn` runs on every process and gets
      the placed state (for evaluations whose work the processes share).
  """

  fn: Callable[[int, Any], None]
  every_steps: int
  all_processes: bool = False

  def due(self, step: int, last_step: int) -> bool:
    return step == last_step or (self.every_steps > 0 and
                                 step % self.every_steps == 0)


def run(
    *,
    state: Any,
    step_fn: Callable[[Any, Any, jax.Array], tuple[Any, dict[str, jax.Array]]],
    batches: Iterator[Any],
    key: jax.Array,
    start_step: int,
    num_steps: int,
    writer: 'metric_writers.MetricWriter',
    checkpointer: checkpoint_lib.Checkpointer,
    parallel: parallel_lib.Parallel,
    log_every_steps: int,
    checkpoint_every_steps: int,
    hooks: Sequence[Hook] = (),
    stop_early: Callable[[int], bool] | None = None,
) -> Any:
  """Trains from `start_step` to `num_steps` and returns the final state.

  Args:
    state: the placed (replicated) state at `start_step`.
    step_fn: the compiled step `(state, batch, key) -> (state, metrics)`.
    batches: placed batches, the first one for step `start_step + 1`.
    key: the run's base key; the step folds the step number into it.
    start_step: steps already done (0, or the restored checkpoint's step).
    num_steps: the step to stop at.
    writer: where scalars go.
    checkpointer: saves every `checkpoint_every_steps` and at the end.
    parallel: to take one copy of the state for saving.
    log_every_steps: metrics are averaged over this many steps.
    checkpoint_every_steps: save period.
    hooks: e.g. sample grids, given the unreplicated state.
    stop_early: `stop_early(step) -> bool`, asked after the hooks of each
      step before `num_steps` where hooks ran; True: that step is saved
      and the run ends there, as if it were `num_steps`. It must answer
      the same on every process.

  Returns:
    The placed state after `num_steps` (or the step `stop_early` chose).

  Raises:
    NonFiniteLossError: a metric was NaN/inf; nothing after the last good
      checkpoint was saved.
    workdir.Interrupted: SIGTERM or SIGINT arrived; the step under way was
      finished, logged and saved. workdir.Preempted (an Interrupted): the
      same at the preemption sync point `checkpointer.reached_preemption`
      reported.
    ValueError: if a period is not positive.
  """
  workdir_lib.check_positive(
      {'log_every_steps': log_every_steps,
       'checkpoint_every_steps': checkpoint_every_steps},
      ('log_every_steps', 'checkpoint_every_steps'))
  try:
    with workdir_lib.StopOnSignal() as stop:
      state, last_step = _run(
          state=state, step_fn=step_fn, batches=batches, key=key,
          start_step=start_step, num_steps=num_steps, writer=writer,
          checkpointer=checkpointer, parallel=parallel,
          log_every_steps=log_every_steps,
          checkpoint_every_steps=checkpoint_every_steps, hooks=hooks,
          stop=stop, stop_early=stop_early)
      # A signal that arrived during the last step's saves.
      signum = parallel_lib.signal_on_any_process(stop.signum)
      if signum is not None:
        checkpointer.wait()
        raise workdir_lib.Interrupted(signum, last_step,
                                      checkpointer.directory)
      return state
  finally:
    # Also on errors: finish the saves already under way, so the last good
    # checkpoint is complete on disk.
    writer.flush()
    checkpointer.wait()


def _run(*, state, step_fn, batches, key, start_step, num_steps, writer,
         checkpointer, parallel, log_every_steps, checkpoint_every_steps,
         hooks, stop, stop_early):
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  timer_step, timer_time = start_step, time.perf_counter()
  for step in range(start_step + 1, num_steps + 1):
    try:
      batch = next(batches)
    except StopIteration:
      raise RuntimeError(f'The input pipeline ran dry before step {step}.') from None
    state, metrics = step_fn(state, batch, key)
    pending.append((step, metrics))

    # A stop request (SIGTERM/SIGINT, or a preemption sync point) ends the
    # run here: this step is logged (so checked for NaN) and saved like the
    # last one. Both calls are collectives, made at every step.
    signum = parallel_lib.signal_on_any_process(stop.signum)
    preempted = checkpointer.reached_preemption(step)
    stopping = signum is not None or preempted
    do_checkpoint = (step == num_steps or step % checkpoint_every_steps == 0
                     or stopping)
    due_hooks = [h for h in hooks if h.due(step, num_steps)]
    early = False
    if step % log_every_steps == 0 or do_checkpoint or due_hooks:
      # Metrics are checked before anything is written from this state.
      scalars = _mean_and_check(pending)
      pending = []
      now = time.perf_counter()
      steps_per_sec = (step - timer_step) / max(now - timer_time, 1e-9)
      timer_step, timer_time = step, now
      scalars['steps_per_sec'] = steps_per_sec
      writer.write_scalars(step, scalars)
      eta = (num_steps - step) / max(steps_per_sec, 1e-9)
      logging.info('step %d/%d: %s (%.2f steps/s, ETA %s)', step, num_steps,
                   ', '.join(f'{k}={v:.4g}' for k, v in scalars.items()
                             if k != 'steps_per_sec'),
                   steps_per_sec, _format_seconds(eta))
      _call_hooks(due_hooks, step, state, parallel)
      # After the hooks: the validation among them decides.
      early = (stop_early is not None and due_hooks and step < num_steps
               and stop_early(step))
      if do_checkpoint or early:
        checkpointer.save(step, parallel.checkpoint_copy(state),
                          force=step == num_steps or stopping or early)
    if early and not stopping:
      checkpointer.wait()
      return state, step
    if stopping:
      checkpointer.wait()
      if signum is None:
        raise workdir_lib.Preempted(step, checkpointer.directory)
      raise workdir_lib.Interrupted(signum, step, checkpointer.directory)
  return state, num_steps


def _call_hooks(hooks: Sequence[Hook], step: int, state: Any,
                parallel: parallel_lib.Parallel) -> None:
  main = workdir_lib.is_main_process()
  host_state = None
  for hook in hooks:
    if hook.all_processes:
      hook.fn(step, state)
    elif main:
      if host_state is None:
        host_state = parallel.unreplicate(state)
      hook.fn(step, host_state)


def _mean_and_check(pending: list[tuple[int, dict[str, jax.Array]]]) -> dict[str, float]:
  steps = [step for step, _ in pending]
  # Every process holds the same metrics; process 0's decide for all.
  values = parallel_lib.from_main_process(
      jax.device_get([metrics for _, metrics in pending]))
  host = list(zip(steps, values))
  for step, metrics in host:
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        raise NonFiniteLossError(
            f'{name} is {value} at step {step}: training stopped there; '
            'the last checkpoint saved before it is kept.', step)
  names = host[0][1].keys()
  return {n: float(np.mean([m[n] for _, m in host])) for n in names}


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
