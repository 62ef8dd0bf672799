"""Crash-safe workdirs: kills, torn files, bad counts, a second process.

Each test reproduces one way a run used to lose or corrupt results: a real
signal (SIGTERM, SIGINT, SIGKILL) where its moment can be timed, and a torn
write (a file cut short, or an exception in the middle of writing it) where
it cannot.
"""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcgan as dcgan_config
from configs import synth2seg as synth2seg_config
from configs import unet as unet_config
from conftest import ROOT, other_process_holding
from mrseg import overrides as overrides_lib
from mrseg import sweep
from mrseg import workdir
from mrseg.data import datasets
from mrseg.data import slices
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import dcgan_trainer
from mrseg.train import logs
from mrseg.train import loop
from mrseg.train import parallel as parallel_lib
from mrseg.synth2seg import pairs as pairs_lib
from mrseg.synth2seg import pipeline as synth2seg
from mrseg.train import unet_trainer


def _config(module, **overrides):
  config = module.get_config('test')
  return overrides_lib.apply(config, overrides)


def _cut_in_half(path):
  """What a kill in the middle of a plain (non-atomic) write leaves."""
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def _killed(*args, **kwargs):
  raise KeyboardInterrupt('killed here')


# --- Atomic outputs and "done" markers (cases 1, 2, 4, 11) -------------------


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
  path = str(tmp_path / 'metrics.json')
  workdir.write_json(path, {'dice': 0.5})
  with pytest.raises(KeyboardInterrupt):
    with workdir.atomic_open(path) as f:
      f.write('{"dice": ')
      _killed()
  assert json.load(open(path)) == {'dice': 0.5}
  assert os.listdir(tmp_path) == ['metrics.json']  # no temporary left
  with open(path, 'w') as f:
    f.write('{"dice": ')  # a marker torn by an old, non-atomic writer
  with pytest.raises(ValueError, match=re.escape(path)):
    workdir.read_json(path)
  assert not workdir.is_done(path)


def test_torn_samples_npz_reruns_the_sample_stage_and_names_the_file(
    tmp_path):
  # Case 1: np.load raises zipfile.BadZipFile on a cut npz.
  path = str(tmp_path / 'samples.npz')
  np.savez_compressed(path, image=np.zeros((4, 32, 32, 1), np.float32),
                      mask=np.zeros((4, 32, 32, 1), np.uint8))
  assert pairs_lib.npz_count(path) == 4
  _cut_in_half(path)
  assert pairs_lib.npz_count(path) == -1  # so the stage writes it again
  data = _config(unet_config).data
  data.train_source, data.synthetic_npz = 'synthetic', path
  with pytest.raises(ValueError, match=f'Cannot read image/mask pairs from '
                     f'{re.escape(path)}'):
    datasets.load_2d_split(data, 'train')


def test_interrupted_history_rewrite_keeps_the_history_and_the_best(
    tmp_path, monkeypatch):
  # Case 2: a kill while resume cut history.jsonl back emptied it, and the
  # best record is read from it.
  history = logs.JsonlWriter(str(tmp_path / 'history.jsonl'))
  for step, dice in ((1, 0.1), (2, 0.5), (3, 0.2), (4, 0.3)):
    history.write_scalars(step, {'val_dice': dice})
  real_dumps, calls = json.dumps, []

  def dumps_then_die(obj, *args, **kwargs):
    calls.append(obj)
    if len(calls) == 2:
      _killed()
    return real_dumps(obj, *args, **kwargs)

  monkeypatch.setattr(logs.json, 'dumps', dumps_then_die)
  with pytest.raises(KeyboardInterrupt):
    history.truncate_after(2)
  monkeypatch.undo()
  assert [r['step'] for r in logs.read_history(history.path)] == [1, 2, 3, 4]
  best = checkpoint_lib.BestCheckpoint(str(tmp_path), 'val_dice')
  best.resume(history.path, 2)
  assert best.record == {'step': 2, 'val_dice': 0.5}
  best.close()


def test_torn_last_history_line_is_dropped_with_a_warning(tmp_path, caplog):
  # Case 11.
  path = tmp_path / 'history.jsonl'
  path.write_text('{"step": 1, "d_loss": 1.0}\n{"step": 2, "d_loss": 0.9}\n'
                  '{"step": 3, "d_lo')
  with caplog.at_level(logging.WARNING):
    assert [r['step'] for r in logs.read_history(str(path))] == [1, 2]
  assert f'Dropping the last line of {path}' in caplog.text
  history = logs.JsonlWriter(str(path))
  history.truncate_after(2)  # what a resume from step 2 does
  history.write_scalars(3, {'d_loss': 0.8})
  assert [r['step'] for r in logs.read_history(str(path))] == [1, 2, 3]
  path.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
  with pytest.raises(ValueError, match=f'{re.escape(str(path))} line 2'):
    logs.read_history(str(path))


def test_torn_done_marker_reruns_the_sweep_run(tmp_path):
  # Case 4: a half-written metrics.json crashed every rerun of the sweep.
  run_dir = tmp_path / 'sweep' / 'seed=0'
  run_dir.mkdir(parents=True)
  (run_dir / 'metrics.json').write_text('{"d_loss": 0.')
  trained = []

  def train_fn(config, run_dir):
    del config
    trained.append(run_dir)
    workdir.write_json(os.path.join(run_dir, 'metrics.json'), {'d_loss': 1.0})

  records = sweep.run(_config(dcgan_config), lambda add: add(seed=0),
                      str(tmp_path / 'sweep'), train_fn)
  assert trained == [str(run_dir)]
  assert records[0]['metrics'] == {'d_loss': 1.0}


def test_fidelity_marker_is_written_after_the_pairs_grid(tmp_path,
                                                         monkeypatch):
  # Case 4: fidelity.json came before pairs_grid.png, so a kill between
  # them left report.md linking a figure that is never made.
  config = synth2seg_config.get_config('test')
  paths = synth2seg._paths(config, str(tmp_path))
  os.makedirs(paths['synthetic'])
  np.savez_compressed(os.path.join(paths['synthetic'], 'samples.npz'),
                      image=np.full((4, 16, 16, 1), 0.5, np.float32),
                      mask=np.zeros((4, 16, 16, 1), np.uint8))
  monkeypatch.setattr(synth2seg.fidelity, 'fidelity_report',
                      lambda *a, **k: {'fid': 1.0})
  monkeypatch.setattr(synth2seg, '_feature_network',
                      lambda *a: (None, 'features'))
  monkeypatch.setattr(datasets, 'load_2d_split', lambda *a, **k: {
      'image': np.zeros((4, 16, 16, 1), np.float32)})
  monkeypatch.setattr(synth2seg.viz, 'save_png', _killed)
  _, unet, _ = synth2seg.stage_configs(config)
  with pytest.raises(KeyboardInterrupt):
    synth2seg._fidelity_stage(config, unet, paths)
  assert not os.path.exists(paths['fidelity'])


# --- Checkpoints (cases 5, 6) ------------------------------------------------


def _damage(step_dir):
  """Empties the array files of a checkpoint, as a torn copy would."""
  for root, _, files in os.walk(step_dir):
    if os.path.basename(root) == 'd':
      for name in files:
        open(os.path.join(root, name), 'w').close()


def _state(step):
  return {'w': np.full((2,), step, np.float32)}


def test_unreadable_latest_checkpoint_falls_back_to_an_older_one(
    tmp_path, caplog):
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  for step in (1, 2, 3):
    checkpointer.save(step, _state(step), force=True)
  checkpointer.close()
  _damage(tmp_path / 'checkpoints' / '3')
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  with caplog.at_level(logging.WARNING):
    restored = checkpointer.restore(_state(0))
  np.testing.assert_array_equal(restored['w'], [2, 2])
  assert 'Checkpoint step 3 in' in caplog.text and 'unreadable' in caplog.text
  assert checkpointer.latest_step() == 2  # the resumed run saves 3 anew
  assert checkpointer.save(3, _state(3), force=True)
  checkpointer.close()
  assert (tmp_path / 'checkpoints_unreadable' / '3').is_dir()


def test_no_readable_checkpoint_is_an_error_naming_both_causes(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  checkpointer.save(1, _state(1), force=True)
  checkpointer.close()
  _damage(tmp_path / 'checkpoints' / '1')
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(ValueError, match=r'step\(s\) \[1\] in .*damaged.*'
                     'other than the one this config builds'):
    checkpointer.restore(_state(0))
  checkpointer.close()


def test_keep_checkpoints_below_one_is_refused(tmp_path):
  # Case 6: Orbax's max_to_keep=0 deleted every save as it was written.
  with pytest.raises(ValueError, match='keep_checkpoints=0 must be at least 1'):
    checkpoint_lib.Checkpointer(str(tmp_path), keep=0)
  assert not (tmp_path / 'checkpoints').exists()


# --- Settings checked before anything runs (cases 6, 7, 8, 10, 12, 13, 15) ---


@pytest.mark.parametrize('trainer, key, value, message', [
    ('dcgan', 'keep_checkpoints', 0, 'config.keep_checkpoints=0 must be'),
    ('dcgan', 'num_epochs', 0, 'config.num_epochs=0 must be positive'),
    ('dcgan', 'steps_per_epoch', -3, 'config.steps_per_epoch=-3 must be'),
    ('dcgan', 'checkpoint_every_steps', 0, 'checkpoint_every_steps=0 must'),
    ('dcgan', 'log_every_steps', 0, 'config.log_every_steps=0 must be'),
    ('unet', 'num_epochs', 0, 'The run would train 0 steps'),
    ('unet', 'eval_batch_size', 0, 'config.eval_batch_size=0 must be'),
    ('unet', 'checkpoint_every_steps', 0, 'checkpoint_every_steps=0 must'),
    ('unet', 'keep_checkpoints', 0, 'config.keep_checkpoints=0 must be'),
    ('unet', 'data.val_ids', '6-13',
     "data.train_ids='0-7' and data.val_ids='6-13' share 2 id(s) [6, 7]"),
    ('unet', 'data.test_ids', '', 'data.test_ids is empty'),
    ('unet', 'data.test_ids', '14-x', "data.test_ids: Bad id selection"),
])
def test_bad_settings_fail_before_anything_runs(tmp_path, trainer, key, value,
                                                message):
  module, config_module = {
      'dcgan': (dcgan_trainer, dcgan_config),
      'unet': (unet_trainer, unet_config)}[trainer]
  run = tmp_path / 'run'
  with pytest.raises(ValueError, match=re.escape(message)):
    module.train_and_evaluate(_config(config_module, **{key: value}), str(run))
  assert not (run / 'checkpoints').exists()
  assert not (run / 'history.jsonl').exists()


def test_resume_with_another_config_is_refused(tmp_path):
  # Case 8: the new config silently overwrote config.json.
  run = str(tmp_path / 'run')
  dcgan_trainer.train_and_evaluate(_config(dcgan_config, steps_per_epoch=2),
                                   run)
  changed = _config(dcgan_config, steps_per_epoch=3,
                    **{'optim.d_learning_rate': 1e-4})
  with pytest.raises(ValueError,
                     match=re.escape("differs in ['optim.d_learning_rate']")):
    dcgan_trainer.train_and_evaluate(changed, run)
  saved = json.load(open(os.path.join(run, 'config.json')))
  assert saved['optim']['d_learning_rate'] == 2e-4
  assert saved['steps_per_epoch'] == 2
  # Run-length keys may change (test_dcgan_train's resume test does).


def test_num_samples_must_be_positive(tmp_path):
  # Case 15.
  with pytest.raises(ValueError, match='--num_samples=0 must be positive'):
    dcgan_trainer.sample(_config(dcgan_config), str(tmp_path), 0)


def test_sample_and_eval_on_a_wrong_workdir_create_nothing(tmp_path):
  # Case 16: they left empty checkpoints/ and best/ folders behind.
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    dcgan_trainer.sample(_config(dcgan_config), str(tmp_path), 2)
  with pytest.raises(FileNotFoundError, match='No best checkpoint in'):
    unet_trainer.evaluate(_config(unet_config), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_synthetic_pairs_are_checked_naming_the_file_and_sample(tmp_path):
  # Case 14: shapes went unchecked; NaN and bad masks named internal ids.
  path = str(tmp_path / 'samples.npz')
  config = _config(unet_config, **{'data.train_source': 'synthetic',
                                   'data.synthetic_npz': path})
  image = np.full((5, 32, 32, 1), 0.5, np.float32)
  mask = np.zeros((5, 32, 32, 1), np.uint8)
  nan, bad_mask = image.copy(), mask.copy()
  nan[3, 4, 4] = np.nan
  bad_mask[1, 0, 0] = 2
  for pair, message in (
      ((image[..., 0], mask), 'expected image [N, S, S, 1] and mask'),
      ((nan, mask), 'sample 3 (of 1 such) has NaN/inf pixels'),
      ((image, bad_mask), 'sample 1 (of 1 such) has mask values other than'),
  ):
    np.savez(path, image=pair[0], mask=pair[1])
    with pytest.raises(ValueError, match=re.escape(f'{path}: ') + '.*' +
                       re.escape(message)):
      slices.load_split(config, 'train')


# --- One process per workdir (case 3) -----------------------------------------


def test_a_second_process_is_refused_until_the_first_dies(tmp_path):
  run = tmp_path / 'run'
  with other_process_holding(run) as holder:
    with pytest.raises(workdir.WorkdirBusyError,
                       match=f'in use by process {holder.pid}'):
      dcgan_trainer.train_and_evaluate(_config(dcgan_config), str(run))
    assert sorted(os.listdir(run)) == ['.lock']  # nothing touched
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir.lock(str(run)):  # kill -9 left no stale lock
    with workdir.lock(str(run)):  # and it is re-entrant in one process
      pass


# --- SIGTERM / SIGINT (cases 9, 17) ------------------------------------------


def test_sigint_finishes_the_step_saves_it_and_stops(tmp_path):
  # What the run replaces and must put back: Python's default_int_handler,
  # or SIG_IGN where the shell started pytest in the background.
  before = signal.getsignal(signal.SIGINT)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  history = logs.JsonlWriter(str(tmp_path / 'history.jsonl'))

  def step_fn(state, batch, key):
    del batch, key
    if int(state['step']) == 2:
      os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 3
    return ({'step': state['step'] + 1, 'w': state['w'] + 1},
            {'loss': jnp.ones(())})

  with pytest.raises(workdir.Interrupted) as err:
    loop.run(state={'step': np.int32(0), 'w': np.zeros(2, np.float32)},
             step_fn=step_fn, batches=iter(range(100)), key=jax.random.key(0),
             start_step=0, num_steps=100, writer=history,
             checkpointer=checkpointer,
             parallel=parallel_lib.Parallel('jit'), log_every_steps=10,
             checkpoint_every_steps=50)
  checkpointer.close()
  assert (err.value.step, err.value.signum) == (3, signal.SIGINT)
  assert 'Stopped by SIGINT after step 3' in str(err.value)
  assert checkpoint_lib.Checkpointer(str(tmp_path)).latest_step() == 3
  assert [r['step'] for r in logs.read_history(history.path)] == [3]
  assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_saves_and_exits_in_one_line_and_the_run_resumes(tmp_path):
  run = tmp_path / 'run'
  overrides = {'steps_per_epoch': 100000, 'checkpoint_every_steps': 100000,
               'log_every_steps': 1, 'sample_every_steps': 0}
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  stderr_path = tmp_path / 'stderr.txt'
  with open(stderr_path, 'w') as stderr:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / 'launch.py'), f'--workdir={run}',
         '--config=configs/dcgan.py:test',
         *[f'--config.{k}={v}' for k, v in overrides.items()]],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.time() + 900  # a busy machine starts JAX slowly
    while len(logs.read_history(str(run / 'history.jsonl'))) < 2:
      assert proc.poll() is None, stderr_path.read_text()[-3000:]
      assert time.time() < deadline, 'training did not start'
      time.sleep(0.2)
    # A second run on the busy workdir is refused, naming the first (one
    # step long, so that without the lock it would end, not hang).
    with pytest.raises(workdir.WorkdirBusyError,
                       match=f'in use by process {proc.pid}'):
      dcgan_trainer.train_and_evaluate(
          _config(dcgan_config, **dict(overrides, steps_per_epoch=1)),
          str(run))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
  finally:
    proc.kill()
    proc.wait()
  text = stderr_path.read_text()
  assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
  assert 'Traceback' not in text
  match = re.search(r'^launch\.py: Stopped by SIGTERM after step (\d+), saved '
                    r'in \S+; rerun the same command to resume\.$', text,
                    re.MULTILINE)
  assert match, text[-3000:]
  step = int(match.group(1))
  assert checkpoint_lib.Checkpointer(str(run)).latest_step() == step
  history = logs.read_history(str(run / 'history.jsonl'))
  assert [r['step'] for r in history] == list(range(1, step + 1))
  # The same command, with a budget that ends one step later, resumes.
  dcgan_trainer.train_and_evaluate(
      _config(dcgan_config, **dict(overrides, steps_per_epoch=step + 1)),
      str(run))
  history = logs.read_history(str(run / 'history.jsonl'))
  assert [r['step'] for r in history] == list(range(1, step + 2))
