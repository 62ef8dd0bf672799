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
      stop), and closing all of them

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
import os
from typing import Any

from absl import logging
import jax
import ml_collections

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
  """

  evaluate: Callable[[int, Any], dict[str, float]]
  every_steps: int
  metric: str


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
  """

  state: Any
  best: dict[str, Any] | None
  history_path: str
  workdir: str


class Runner:
  """Starts a run in a workdir, then trains a `Task` there."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               positive: Sequence[str] = (),
               check: Callable[[parallel_lib.Parallel], None] | None = None):
    """Checks the config, sets up the devices and writes config.json.

    Args:
      config: the run's config (`parallel`, `seed`, `keep_checkpoints`,
        `log_every_steps`, `checkpoint_every_steps` are read here).
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
      best = None
      if task.validation is not None:
        best = checkpoint_lib.BestCheckpoint(self.workdir,
                                             task.validation.metric)
        closing.callback(best.close)
        best.resume(history.path, start_step)
        hooks.append(_validation_hook(task.validation, writer, best,
                                      parallel))
      self._log_start(task, start_step)
      batches = parallel_lib.prefetch(task.batches(start_step),
                                      parallel.shard_batch)
      state = loop.run(
          state=parallel.replicate(state), step_fn=parallel.compile(task.step),
          batches=batches, key=self.key, start_step=start_step,
          num_steps=task.num_steps, writer=writer, checkpointer=checkpointer,
          parallel=parallel, log_every_steps=config.log_every_steps,
          checkpoint_every_steps=config.checkpoint_every_steps, hooks=hooks)
      final = parallel.unreplicate(state)
    parallel_lib.barrier('runner.train')
    return Result(state=final, best=None if best is None else best.record,
                  history_path=self.history_path, workdir=self.workdir)

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

  def _log_start(self, task: Task, start_step: int) -> None:
    total = task.num_steps
    if start_step >= total:
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
                     parallel: parallel_lib.Parallel) -> loop.Hook:
  # On every process: the best checkpoint is saved by all of them.
  def validate(step: int, state: Any) -> None:
    record = validation.evaluate(step, parallel.unreplicate(state))
    writer.write_scalars(step, record)
    best.offer(step, record, parallel.checkpoint_copy(state))
  return loop.Hook(validate, validation.every_steps, all_processes=True)
