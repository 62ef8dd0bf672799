"""The runner on a toy task: outputs, resume, validation, checks first."""
import json
import os
import subprocess

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mrseg import workdir as workdir_lib
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import loop
from mrseg.train import logs
from mrseg.train import parallel as parallel_lib
from mrseg.train import runner as runner_lib


class ToyState(flax.struct.PyTreeNode):
  step: jax.Array
  w: jax.Array


def _config(parallel='jit'):
  return ml_collections.ConfigDict({
      'seed': 0, 'parallel': parallel, 'keep_checkpoints': 2,
      'log_every_steps': 1, 'checkpoint_every_steps': 2})


def _init(key):
  del key
  return ToyState(step=jnp.zeros((), jnp.int32), w=jnp.zeros((), jnp.float32))


def _step(state, batch, key, *, axis_name=None):
  del key
  mean = parallel_lib.mean_over_devices(jnp.mean(batch['x']), axis_name)
  w = state.w + mean
  return state.replace(step=state.step + 1, w=w), {'w': w}


def _batches(start_step):
  step = start_step
  while True:
    step += 1
    yield {'x': np.full((4, 1), step, np.float32)}


def _task(num_steps, **kwargs):
  return runner_lib.Task(num_steps=num_steps, init=_init, step=_step,
                         batches=_batches, **kwargs)


@pytest.mark.parametrize('parallel', ['jit', 'pmap'])
def test_trains_and_writes_the_run(tmp_path, parallel):
  workdir = str(tmp_path / 'run')
  seen = []
  result = runner_lib.Runner(_config(parallel), workdir).train(
      _task(3, hooks=[loop.Hook(lambda s, st: seen.append(s), 2)]))
  assert int(result.state.step) == 3
  assert float(result.state.w) == 1 + 2 + 3
  assert result.best is None and result.workdir == workdir
  assert result.history_path == os.path.join(workdir, 'history.jsonl')
  assert [r['w'] for r in logs.read_history(result.history_path)] == [1, 3, 6]
  assert seen == [2, 3]
  assert json.load(open(os.path.join(workdir, 'config.json')))['seed'] == 0
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 3


def test_resume_continues_the_same_run(tmp_path):
  workdir = str(tmp_path / 'run')
  runner_lib.Runner(_config(), workdir).train(_task(2))
  inits = []

  def counted_init(key):
    inits.append(key)
    return _init(key)

  result = runner_lib.Runner(_config(), workdir).train(runner_lib.Task(
      num_steps=4, init=counted_init, step=_step, batches=_batches,
      abstract=lambda: _init(None)))
  assert not inits  # restored into the abstract state, not initialised
  assert float(result.state.w) == 1 + 2 + 3 + 4
  assert [r['step'] for r in logs.read_history(result.history_path)] == [
      1, 2, 3, 4]


def test_validation_keeps_the_best(tmp_path):
  workdir = str(tmp_path / 'run')
  scores = {1: 0.5, 2: 0.9, 3: 0.7}
  validation = runner_lib.Validation(
      lambda step, state: {'val_dice': scores[step]}, 1, 'val_dice')
  result = runner_lib.Runner(_config(), workdir).train(
      _task(3, validation=validation))
  assert result.best['step'] == 2 and result.best['val_dice'] == 0.9
  assert json.load(open(os.path.join(workdir, 'best.json')))['step'] == 2
  history = logs.read_history(result.history_path)
  assert [r['val_dice'] for r in history if 'val_dice' in r] == [0.5, 0.9, 0.7]
  state, step = checkpoint_lib.restore_best(workdir, _init(None))
  assert step == 2 and float(state.w) == 1 + 2


def test_check_runs_before_anything_is_written(tmp_path):
  workdir = tmp_path / 'run'

  def check(parallel):
    assert parallel.mode == 'jit'
    raise ValueError('bad batch size')

  with pytest.raises(ValueError, match='bad batch size'):
    runner_lib.Runner(_config(), str(workdir), check=check)
  assert not workdir.exists()


def test_nan_stops_and_closes(tmp_path):
  workdir = str(tmp_path / 'run')

  def nan_step(state, batch, key, *, axis_name=None):
    state, metrics = _step(state, batch, key, axis_name=axis_name)
    return state, {'w': jnp.where(state.step == 3, jnp.nan, metrics['w'])}

  task = runner_lib.Task(num_steps=4, init=_init, step=nan_step,
                         batches=_batches)
  with pytest.raises(loop.NonFiniteLossError, match='at step 3'):
    runner_lib.Runner(_config(), workdir).train(task)
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 2


def test_preemption_sync_point_saves_that_step_stops_and_resumes(
    tmp_path, monkeypatch):
  # On one process without jax.distributed there is no preemption service.
  assert not checkpoint_lib.Checkpointer(
      str(tmp_path / 'plain')).reached_preemption(1)
  reference = runner_lib.Runner(_config(), str(tmp_path / 'ref')).train(
      _task(5))
  # The detector says "preempted" at step 3, between the periodic saves.
  workdir = str(tmp_path / 'run')
  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'reached_preemption',
                      lambda self, step: step == 3)
  with pytest.raises(workdir_lib.Preempted,
                     match='Stopped at a preemption sync point after step 3, '
                     'saved in .*; rerun the same command to resume') as err:
    runner_lib.Runner(_config(), workdir).train(_task(5))
  assert err.value.step == 3 and err.value.exit_code == 128 + 15
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 3
  assert [r['step'] for r in logs.read_history(
      os.path.join(workdir, 'history.jsonl'))] == [1, 2, 3]
  monkeypatch.undo()
  result = runner_lib.Runner(_config(), workdir).train(_task(5))
  assert float(result.state.w) == float(reference.state.w) == 15
  untimed = lambda path: [{k: v for k, v in r.items() if k != 'steps_per_sec'}
                           for r in logs.read_history(path)]
  assert untimed(result.history_path) == untimed(reference.history_path)


def test_every_start_is_recorded_in_environment_json(tmp_path):
  workdir = str(tmp_path / 'run')
  runner_lib.Runner(_config(), workdir).train(_task(2))
  runner_lib.Runner(_config(), workdir).train(_task(4))  # a resume
  entries = json.load(open(os.path.join(workdir, 'environment.json')))
  assert len(entries) == 2
  for e in entries:
    assert e['packages']['jax'] == jax.__version__
    assert e['num_processes'] == 1 and e['num_devices'] == jax.device_count()
    assert e['cpu'] and e['python'] and e['started_utc']
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, cwd=os.path.dirname(__file__))
  if head.returncode == 0:  # a git checkout: the code's own commit
    assert entries[0]['commit'] == head.stdout.strip()


# ----------------------------------------------------------------------------
# Early stop at a plateau of the validation metric.


def _plateau_config(patience, min_delta=0.0):
  config = _config()
  config.early_stop_patience = patience
  config.early_stop_min_delta = min_delta
  return config


def _capped(step, state):
  """A validation Dice that rises with training, then stays flat: w is
  1, 3, 6, 10, 15, ... after steps 1, 2, 3, 4, 5, ...; capped at 6."""
  del step
  return {'val_dice': min(float(state.w), 6.0) / 10}


def _untimed(path):
  return [{k: v for k, v in r.items() if k != 'steps_per_sec'}
          for r in logs.read_history(path)]


@pytest.mark.parametrize('patience,min_delta,stop', [
    (2, 0.0, 5),   # best at 3, then 4 and 5 do not improve
    (3, 0.0, 6),
    # Step 2 is 0.2 above step 1 (not more than 0.25), step 3 0.5 above.
    (1, 0.25, 2),
    (2, 0.25, 5),
])
def test_plateau_stops_saves_and_records_the_step(tmp_path, patience,
                                                  min_delta, stop):
  workdir = str(tmp_path / 'run')
  validation = runner_lib.Validation(_capped, 1, 'val_dice')
  result = runner_lib.Runner(_plateau_config(patience, min_delta),
                             workdir).train(_task(10, validation=validation))
  assert result.stopped_early_at == stop
  assert int(result.state.step) == stop
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == stop
  assert max(r['step'] for r in logs.read_history(result.history_path)) == stop
  record = json.load(open(os.path.join(workdir, 'early_stop.json')))
  assert record['stopped_early_at'] == stop
  assert record['best_step'] == result.best['step'] == min(3, stop)
  assert record['val_dice'] == result.best['val_dice']


def test_plateau_off_or_not_reached_trains_to_the_end(tmp_path):
  validation = runner_lib.Validation(_capped, 1, 'val_dice')
  runs = {}
  for name, config in [('off', _config()), ('zero', _plateau_config(0)),
                       ('long', _plateau_config(5))]:
    workdir = str(tmp_path / name)
    runs[name] = runner_lib.Runner(config, workdir).train(
        _task(6, validation=validation))
    assert runs[name].stopped_early_at is None
    assert int(runs[name].state.step) == 6
    assert not os.path.exists(os.path.join(workdir, 'early_stop.json'))
  # The same run, the same history, whether the keys exist or not.
  assert (_untimed(runs['off'].history_path)
          == _untimed(runs['zero'].history_path)
          == _untimed(runs['long'].history_path))
  # A plateau reached at the last step is the end, not an early stop.
  result = runner_lib.Runner(_plateau_config(3), str(tmp_path / 'last')).train(
      _task(6, validation=validation))
  assert result.stopped_early_at is None and int(result.state.step) == 6


def test_plateau_is_not_judged_before_plateau_after(tmp_path):
  """A warm-up: validation flat up to step 4, then rising to 0.7 at 7."""
  def warming(step, state):
    del state
    return {'val_dice': 0.5 if step <= 4 else min(step, 7) / 10}

  stops = {}
  for after in (0, 4):
    validation = runner_lib.Validation(warming, 1, 'val_dice',
                                       plateau_after=after)
    stops[after] = runner_lib.Runner(
        _plateau_config(2), str(tmp_path / f'after{after}')).train(
            _task(12, validation=validation))
  assert stops[0].stopped_early_at == 3  # flat at 2 and 3
  assert stops[4].stopped_early_at == 9  # judged from 5: flat at 8 and 9
  assert stops[4].best['step'] == 7


class _Killed(Exception):
  pass


def test_plateau_resumed_mid_plateau_stops_at_the_same_step(tmp_path):
  validation = runner_lib.Validation(_capped, 1, 'val_dice')
  reference = runner_lib.Runner(_plateau_config(3), str(tmp_path / 'ref')
                                ).train(_task(10, validation=validation))
  assert reference.stopped_early_at == 6

  # Killed inside the validation of step 5: the plateau had begun (best at
  # 3, no improvement at 4); the last checkpoint is step 4, and the history
  # holds step 5's training metrics, which the resumed run writes again.
  workdir = str(tmp_path / 'run')

  def killed_at_5(step, state):
    if step == 5:
      raise _Killed()
    return _capped(step, state)

  with pytest.raises(_Killed):
    runner_lib.Runner(_plateau_config(3), workdir).train(_task(
        10, validation=runner_lib.Validation(killed_at_5, 1, 'val_dice')))
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 4
  assert max(r['step'] for r in logs.read_history(
      os.path.join(workdir, 'history.jsonl'))) == 5
  result = runner_lib.Runner(_plateau_config(3), workdir).train(
      _task(10, validation=validation))
  assert result.stopped_early_at == 6
  assert float(result.state.w) == float(reference.state.w) == 21
  assert result.best == reference.best
  assert _untimed(result.history_path) == _untimed(reference.history_path)
  assert (json.load(open(os.path.join(workdir, 'early_stop.json')))
          == json.load(open(os.path.join(str(tmp_path / 'ref'),
                                         'early_stop.json'))))

  # Rerun once stopped (or killed after the stop's save): done, nothing
  # trained, nothing validated; even asked for more steps.
  def never(step, state):
    raise AssertionError(f'validated at step {step} after the stop')

  for num_steps in (10, 20):
    again = runner_lib.Runner(_plateau_config(3), workdir).train(_task(
        num_steps, validation=runner_lib.Validation(never, 1, 'val_dice')))
    assert again.stopped_early_at == 6 and int(again.state.step) == 6
    assert _untimed(again.history_path) == _untimed(reference.history_path)
    assert os.path.exists(os.path.join(workdir, 'early_stop.json'))

  # Switched off on a resume (a run-length key): it trains on.
  more = runner_lib.Runner(_plateau_config(0), workdir).train(
      _task(8, validation=validation))
  assert more.stopped_early_at is None and int(more.state.step) == 8
  assert not os.path.exists(os.path.join(workdir, 'early_stop.json'))


@pytest.mark.parametrize('key,value', [
    ('early_stop_patience', -1), ('early_stop_min_delta', -0.1),
    ('early_stop_min_delta', float('nan'))])
def test_bad_early_stop_settings_are_refused_naming_the_key(
    tmp_path, key, value):
  config = _plateau_config(2)
  config[key] = value
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=f'config.{key}='):
    runner_lib.Runner(config, str(workdir))
  assert not workdir.exists()


def test_early_stop_without_validation_is_refused(tmp_path):
  with pytest.raises(ValueError, match='config.early_stop_patience=2: the '
                     'model has no validation'):
    runner_lib.Runner(_plateau_config(2), str(tmp_path / 'run')).train(
        _task(3))
