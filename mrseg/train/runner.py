"""The run every trainer shares: workdir, devices, restore, writers, loop.

A trainer describes what is specific to its model as a `Task`: a fresh
state, the step, the batches from a given step on, its hooks (sample grids)
and, for the segmenters, the validation whose metric picks the best
checkpoint. `Runner` does the rest, the same way for every trainer:

  runner = Runner(config, workdir, positive=..., check=...)
      checks, devices, the base key; workdir/config.json (a resume must
      keep the config: `workdir.start_run`)
  ... the trainer loads its data ...
  result = runner.train(task)
      checkpoints (restore the newest readable one, or initialise), the
      history and TensorBoard writers, the best checkpoint, `loop.run`
      (NaN checks, SIGTERM/SIGINT or a preemption sync point: save and
      stop), the early stop at a plateau of the validation metric
      (`Plateau`), and closing all of them

Data are loaded between the two calls: a config a resume may not use is
refused before any data are read, and data that cannot be used fail before
a checkpoint folder exists. The caller holds the workdir's lock
(`workdir.locked`).

With several processes (launch.py --distributed) every process makes the
same calls: process 0 writes config.json, the history, TensorBoard events
and best.json, all processes save and restore the checkpoints together (a
restore lands straight in `Parallel.global_replicated`), the hooks that
write files run on process 0 only (loop.Hook), and `train` returns when
every process is done, so that what process 0 wrote can be read by all.
"""
from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import math
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from mrseg import workdir as workdir_lib
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import loop
from mrseg.train import parallel as parallel_lib
# mrseg.train.logs (clu, TensorFlow) is imported in `Runner.train`: the
# trainers import this module, and their steps and models run where
# TensorFlow is not installed (the GPU benchmarks).


def base_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The run's key; every draw of a run is folded out of it."""
  return jax.random.key(config.seed)


@dataclasses.dataclass(frozen=True)
class Validation:
  """A periodic validation whose `metric` picks the best checkpoint.

  Attributes:
    evaluate: `evaluate(step, host_state) -> record` of scalars; it logs
      them. Every process calls it, with its own copy of the state. The
      runner writes the record to the history and keeps the state
      in workdir/best if `record[metric]` is the best so far.
    every_steps: the period (it also runs at the last step).
    metric: the record's key to maximise (checkpoint.BestCheckpoint).
    plateau_after: validations at steps <= this one are not judged for an
      early stop (`Plateau`), e.g. while a warm-up still changes the
      objective; they still compete for the best checkpoint.
  """

  evaluate: Callable[[int, Any], dict[str, float]]
  every_steps: int
  metric: str
  plateau_after: int = 0


@dataclasses.dataclass(frozen=True)
class Task:
  """What a trainer trains; `Runner.train` runs it.

  Attributes:
    num_steps: the step to train to.
    init: `init(key) -> state`: a fresh host state from the run's key.
    step: `step(state, batch, key, *, axis_name=None) -> (state, metrics)`,
      not yet compiled (parallel.Parallel.compile).
    batches: `batches(start_step)`: this process's batches as numpy trees,
      the first one for step `start_step + 1`.
    abstract: `abstract() -> state` of shapes and dtypes to restore into, so
      that a resumed run does not initialise (nor compile the initialiser);
      None: `jax.eval_shape(init, key)`. Its shardings are not used: a
      checkpoint is restored into `Parallel.global_replicated`.
    restore: `restore(checkpointer, target) -> state`, for states whose old
      checkpoints need converting; None: `checkpointer.restore(target)`.
    hooks: called with the host state during training (sample grids).
    validation: the validation that keeps the best checkpoint, if any.
    name: what is trained, for the log.
  """

  num_steps: int
  init: Callable[[jax.Array], Any]
  step: Callable[..., tuple[Any, dict[str, jax.Array]]]
  batches: Callable[[int], Iterator[Any]]
  abstract: Callable[[], Any] | None = None
  restore: Callable[[checkpoint_lib.Checkpointer, Any], Any] | None = None
  hooks: Sequence[loop.Hook] = ()
  validation: Validation | None = None
  name: str = 'the model'


@dataclasses.dataclass(frozen=True)
class Result:
  """What a trainer needs after training.

  Attributes:
    state: the final state, one copy (on device; with several processes on
      this process's first device: `Parallel.unreplicate`).
    best: the best validation record ({'step': s, metric: value, ...};
      'step' None if no validation defined the metric), or None for a task
      without validation.
    history_path: workdir/history.jsonl, every logged scalar.
    workdir: the run's folder.
    stopped_early_at: the step the run stopped at for a plateau of its
      validation metric (`Plateau`), or None if it ran to `Task.num_steps`.
  """

  state: Any
  best: dict[str, Any] | None
  history_path: str
  workdir: str
  stopped_early_at: int | None = None


class Runner:
  """Starts a run in a workdir, then trains a `Task` there."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               positive: Sequence[str] = (),
               check: Callable[[parallel_lib.Parallel], None] | None = None):
    """Checks the config, sets up the devices and writes config.json.

    Args:
      config: the run's config (`parallel`, `seed`, `keep_checkpoints`,
        `log_every_steps`, `checkpoint_every_steps` are read here, and
        `early_stop_patience`, `early_stop_min_delta` where the config
        declares them: `Plateau`).
      workdir: the run's folder (created if missing).
      positive: dotted config keys that must be > 0.
      check: `check(parallel)` raises on settings the devices cannot run
        (batch sizes), before anything is written.

    Raises:
      ValueError: a bad setting, or a resume with another config.
    """
    self.config = config
    self.workdir = workdir
    self.parallel = parallel_lib.Parallel(config.parallel)
    if check is not None:
      check(self.parallel)
    self.patience, self.min_delta = early_stop_settings(config)
    workdir_lib.start_run(config, workdir, positive=positive)
    self.key = base_key(config)
    self.history_path = os.path.join(workdir, 'history.jsonl')

  def train(self, task: Task) -> Result:
    """Trains `task` from the newest checkpoint (or from scratch) to the end.

    Raises:
      loop.NonFiniteLossError: a metric was NaN/inf (the last good
        checkpoint is kept).
      workdir.Interrupted: SIGTERM/SIGINT arrived, or (workdir.Preempted)
        a preemption sync point was reached; the step was saved.
      ValueError: an early stop is asked for a task without validation.
    """
    from mrseg.train import logs  # pylint: disable=g-import-not-at-top
    config, parallel = self.config, self.parallel
    with contextlib.ExitStack() as closing:
      checkpointer = checkpoint_lib.Checkpointer(
          self.workdir, keep=config.keep_checkpoints)
      closing.callback(checkpointer.close)
      state = self._restore_or_init(checkpointer, task)
      start_step = int(state.step)
      history = logs.JsonlWriter(self.history_path)
      if workdir_lib.is_main_process():
        history.truncate_after(start_step)
      writer = logs.create_writer(self.workdir, history)
      closing.callback(writer.close)
      if start_step == 0:
        writer.write_hparams(logs.flatten_hparams(config.to_dict()))
      hooks = list(task.hooks)
      best = plateau = None
      num_steps = task.num_steps
      if self.patience and task.validation is None:
        raise ValueError(
            f'config.early_stop_patience={self.patience}: {task.name} has no '
            'validation to stop at a plateau of; set it to 0.')
      if task.validation is not None:
        best = checkpoint_lib.BestCheckpoint(self.workdir,
                                             task.validation.metric)
        closing.callback(best.close)
        best.resume(history.path, start_step)
        if self.patience:
          plateau = Plateau(task.validation.metric, self.patience,
                            self.min_delta, best,
                            after=task.validation.plateau_after)
          # A run that stopped (or would have stopped) at a plateau before
          # `start_step` is done: it trains no further.
          if plateau.resume(history.path, start_step) and (
              start_step < num_steps):
            num_steps = start_step
        hooks.append(_validation_hook(task.validation, writer, best,
                                      parallel, plateau))
      if workdir_lib.is_main_process():
        Plateau.forget(self.workdir)  # written again if it stops early
      self._log_start(task, start_step, num_steps)
      batches = parallel_lib.prefetch(task.batches(start_step),
                                      parallel.shard_batch)
      state = loop.run(
          state=parallel.replicate(state), step_fn=parallel.compile(task.step),
          batches=batches, key=self.key, start_step=start_step,
          num_steps=num_steps, writer=writer, checkpointer=checkpointer,
          parallel=parallel, log_every_steps=config.log_every_steps,
          checkpoint_every_steps=config.checkpoint_every_steps, hooks=hooks,
          stop_early=None if plateau is None else plateau.stopped)
      final = parallel.unreplicate(state)
      stopped_early_at = None
      if plateau is not None and int(final.step) < task.num_steps:
        stopped_early_at = int(final.step)
        if workdir_lib.is_main_process():
          plateau.write(self.workdir, stopped_early_at)
    parallel_lib.barrier('runner.train')
    return Result(state=final, best=None if best is None else best.record,
                  history_path=self.history_path, workdir=self.workdir,
                  stopped_early_at=stopped_early_at)

  def _restore_or_init(self, checkpointer: checkpoint_lib.Checkpointer,
                       task: Task) -> Any:
    """The newest readable checkpoint, read into the devices' copies; else
    (no checkpoint) the initial state, this process's copy."""
    if checkpointer.latest_step() is None:
      return task.init(self.key)
    restore = task.restore or (lambda c, target: c.restore(target))
    target = (jax.eval_shape(task.init, self.key) if task.abstract is None
              else task.abstract())
    return restore(checkpointer, self.parallel.restore_target(target))

  def _log_start(self, task: Task, start_step: int, total: int) -> None:
    if start_step >= total:
      if total < task.num_steps:
        logging.info('Already stopped early at step %d of %d (a plateau of '
                     'the validation metric): training no further.',
                     start_step, task.num_steps)
      else:
        logging.info('Already trained to step %d of %d.', start_step, total)
      return
    validating = ''
    if task.validation is not None:
      validating = f'; validating every {task.validation.every_steps} steps'
    devices, processes = self.parallel.num_devices, ''
    if jax.process_count() > 1:  # every device of every process
      devices = jax.device_count()
      processes = f' in {jax.process_count()} processes'
    logging.info('Training %s, steps %d..%d on %d %s device(s)%s%s.',
                 task.name, start_step + 1, total, devices,
                 self.config.parallel, processes, validating)


def _validation_hook(validation: Validation, writer: Any,
                     best: checkpoint_lib.BestCheckpoint,
                     parallel: parallel_lib.Parallel,
                     plateau: 'Plateau | None' = None) -> loop.Hook:
  # On every process: the best checkpoint is saved by all of them.
  def validate(step: int, state: Any) -> None:
    record = validation.evaluate(step, parallel.unreplicate(state))
    writer.write_scalars(step, record)
    best.offer(step, record, parallel.checkpoint_copy(state))
    if plateau is not None:
      plateau.observe(step, record.get(validation.metric))
  return loop.Hook(validate, validation.every_steps, all_processes=True)


# ----------------------------------------------------------------------------
# Early stop at a plateau of the validation metric.


def early_stop_settings(config: ml_collections.ConfigDict
                        ) -> tuple[int, float]:
  """(early_stop_patience, early_stop_min_delta) of `config`, checked.

  Configs without validation do not declare them: (0, 0.0), no early stop.

  Raises:
    ValueError: naming the key, if patience is not a whole number >= 0 or
      min_delta is not a finite number >= 0.
  """
  patience = config.get('early_stop_patience', 0)
  min_delta = config.get('early_stop_min_delta', 0.0)
  if (isinstance(patience, bool) or not isinstance(patience, int)
      or patience < 0):
    raise ValueError(
        f'config.early_stop_patience={patience!r} must be a whole number '
        '>= 0: the validations without improvement to stop after (0: never '
        'stop early).')
  if (isinstance(min_delta, bool) or not isinstance(min_delta, (int, float))
      or not math.isfinite(min_delta) or min_delta < 0):
    raise ValueError(
        f'config.early_stop_min_delta={min_delta!r} must be a number >= 0: '
        'the least rise of the validation metric that counts as an '
        'improvement.')
  return patience, float(min_delta)


class Plateau:
  """Decides when the validation metric stopped improving.

  A validation improves if its metric exceeds the last improvement's value
  by more than `min_delta` (the first finite value always does; NaN never
  does); after `patience` validations in a row without one, the run stops
  (`stopped`): the loop saves that step and the run finishes as if it were
  the last. With `min_delta` 0 an improvement is exactly a new best
  checkpoint.

  The decision is a function of the validation records alone, so a resumed
  run takes it from the history (`resume`) at the same step as a run never
  interrupted, and a run that stopped is still stopped when run again. With
  several processes process 0's decision is everyone's (its metric is
  already everyone's: validations gather their sums). Validations at steps
  <= `after` are not judged at all (`Validation.plateau_after`).
  """

  FILENAME = 'early_stop.json'

  def __init__(self, metric: str, patience: int, min_delta: float,
               best: checkpoint_lib.BestCheckpoint, after: int = 0):
    self.metric, self.patience, self.min_delta = metric, patience, min_delta
    self.best, self.after = best, after
    self.reference = -math.inf  # the metric at the last improvement
    self.waited = 0  # validations since then
    self.stopped_at: int | None = None

  def _update(self, step: int, value: float | None) -> None:
    if step <= self.after:
      return
    if value is not None and value > self.reference + self.min_delta:
      self.reference, self.waited = value, 0
    else:
      self.waited += 1
    if self.stopped_at is None and self.waited >= self.patience:
      self.stopped_at = step

  def resume(self, history_path: str, start_step: int) -> bool:
    """Replays the history's validations up to `start_step`; whether the
    run had stopped (or, with a changed patience, would have) by then."""
    from mrseg.train import logs  # pylint: disable=g-import-not-at-top
    for r in logs.read_history(history_path):
      if r['step'] <= start_step and self.metric in r:
        self._update(r['step'], r[self.metric])
    stopped = parallel_lib.from_main_process(
        np.int32(-1 if self.stopped_at is None else self.stopped_at))
    self.stopped_at = None if int(stopped) < 0 else int(stopped)
    return self.stopped_at is not None

  def observe(self, step: int, value: float | None) -> None:
    """Takes the validation at `step` into account (on every process)."""
    self._update(step, value)
    stopped = bool(parallel_lib.from_main_process(
        np.int32(self.stopped_at == step)))
    self.stopped_at = step if stopped else None
    if stopped:
      logging.info(
          'Stopping early after step %d: %s has not improved by more than '
          '%g for %d validation(s); best step %s, %s=%.4f.', step,
          self.metric, self.min_delta, self.patience, self.best.record['step'],
          self.metric, self.best.record[self.metric])

  def stopped(self, step: int) -> bool:
    """Whether the run stops after `step` (loop.run's `stop_early`)."""
    return self.stopped_at is not None and self.stopped_at <= step

  def write(self, workdir: str, step: int) -> None:
    """workdir/early_stop.json: where the run stopped, for its report
    (`segmentation.stopped_early_at` puts it in metrics.json)."""
    workdir_lib.write_json(os.path.join(workdir, self.FILENAME), {
        'stopped_early_at': step, 'best_step': self.best.record['step'],
        self.metric: self.best.record[self.metric],
        'early_stop_patience': self.patience,
        'early_stop_min_delta': self.min_delta})

  @classmethod
  def forget(cls, workdir: str) -> None:
    """Removes an early_stop.json a resumed run is no longer bound by."""
    path = os.path.join(workdir, cls.FILENAME)
    if os.path.exists(path):
      os.remove(path)

