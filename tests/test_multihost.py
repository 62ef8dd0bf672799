"""Two real processes train one run together (launch.py --distributed).

Each trainer trains three times: once as one process with 4 CPU devices
(the reference, in this process: conftest's devices), and twice as two
`python launch.py` processes with 2 devices each (4 in all, the same global
batch) that talk over localhost: the first pair stops halfway, the second
resumes it. The pair must write one set of
outputs (process 0's) and give the reference's losses and final metrics.
A SIGTERM to one process of a pair must stop both after the same step.
"""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import cgan as cgan_config
from configs import dcgan as dcgan_config
from mrseg.train import cgan_trainer
from mrseg.train import dcgan_trainer
from mrseg.train import logs

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Two processes reduce over the same 4 devices as one process, in another
# order (Gloo between processes): float32 rounding, nothing more.
RTOL, ATOL = 1e-5, 1e-6
STEPS = 4

# trainer: (its config file, its module, the key that sets the run's
# length, parallel modes of the pair's first and second half: each mode
# writes and restores once).
CASES = {
    'dcgan': (dcgan_config, dcgan_trainer, 'steps_per_epoch', ('jit', 'pmap')),
    'cgan': (cgan_config, cgan_trainer, 'num_train_steps', ('pmap', 'jit')),
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir, args, processes, tag):
  """Starts launch.py as `processes` processes over 4 CPU devices in all,
  logging into WORKDIR/../TAG.pI.log."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count='
             f'{4 // processes}',
             # As conftest does in-process: these runs are compile-bound.
             JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             # A process stuck past the timeout prints every thread's stack.
             PYTHONFAULTHANDLER='1')
  # Orbax's INFO lines name every barrier: where a stuck pair waits.
  command = [sys.executable, str(ROOT / 'launch.py'), f'--workdir={workdir}',
             '--verbose_libraries', *args]
  port = _free_port()
  started = []
  for i in range(processes):
    extra = [] if processes == 1 else [
        '--distributed', f'--coordinator_address=localhost:{port}',
        f'--num_processes={processes}', f'--process_id={i}']
    log = open(workdir.parent / f'{tag}.p{i}.log', 'w')
    started.append((subprocess.Popen(command + extra, cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT),
                    log))
  return started


def _wait(started):
  """Waits for every process; returns their logs; fails naming the first
  process that failed."""
  texts = []
  try:
    for proc, log in started:
      try:
        proc.wait(timeout=300)
      except subprocess.TimeoutExpired:
        for p, _ in started:
          p.send_signal(signal.SIGABRT)  # faulthandler: all threads' stacks
        proc.wait(timeout=30)
      log.close()
      texts.append(pathlib.Path(log.name).read_text())
      assert proc.returncode == 0, (
          f'process {len(texts) - 1} exited with {proc.returncode}:\n'
          f'{texts[-1][-4000:]}')
  finally:
    for proc, _ in started:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return texts


def _scalars(records):
  return [{k: v for k, v in r.items() if k != 'steps_per_sec'}
          for r in records]


def _assert_close(got, want):
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL,
                               err_msg=key)


@pytest.mark.parametrize('trainer', sorted(CASES))
def test_two_processes_train_resume_and_write_like_one(tmp_path, trainer):
  config_file, trainer_module, length_key, (first, second) = CASES[trainer]
  assert jax.device_count() == 4  # conftest's
  one, two = tmp_path / 'one', tmp_path / 'two'
  two.mkdir()
  args = [f'--config=configs/{trainer}.py:test']
  half = _start(two, args + [f'--config.{length_key}={STEPS // 2}',
                             f'--config.parallel={first}'], 2, 'half')
  config = config_file.get_config('test')
  config[length_key] = STEPS
  try:
    trainer_module.train_and_evaluate(config, str(one))  # beside the pair
  finally:
    logs_half = _wait(half)
  logs_rest = _wait(_start(two, args + [f'--config.{length_key}={STEPS}',
                                        f'--config.parallel={second}'], 2,
                           'rest'))

  assert 'process 1 of 2' in logs_half[1]
  assert f'on 4 {first} device(s) in 2 processes' in logs_half[0]
  assert f'Restored step {STEPS // 2}' in logs_rest[1]
  # One history, by process 0: one line per logged step, the reference's
  # values (the first half's lines kept, the second half's appended).
  history = logs.read_history(str(two / 'history.jsonl'))
  want = logs.read_history(str(one / 'history.jsonl'))
  assert [r['step'] for r in history] == list(range(1, STEPS + 1))
  for got, expected in zip(_scalars(history), _scalars(want)):
    _assert_close(got, expected)
  metrics = json.loads((two / 'metrics.json').read_text())
  reference_metrics = json.loads((one / 'metrics.json').read_text())
  del metrics['steps_per_sec'], reference_metrics['steps_per_sec']
  _assert_close(metrics, reference_metrics)

  # One set of outputs: process 1 wrote nothing of its own (no TensorBoard
  # file, no temporary files), and each launch left one events file.
  assert sorted(os.listdir(two / 'samples')) == sorted(
      os.listdir(one / 'samples')) == [f'step_{STEPS // 2}.png',
                                       f'step_{STEPS}.png']
  assert sorted(os.listdir(two / 'figures')) == sorted(
      os.listdir(one / 'figures'))
  assert sorted(os.listdir(two / 'checkpoints')) == sorted(
      os.listdir(one / 'checkpoints'))
  names = os.listdir(two)
  assert len([n for n in names if n.startswith('events.out')]) == 2
  assert [n for n in names if n.startswith('.')] == ['.lock']
  config_json = json.loads((two / 'config.json').read_text())
  assert config_json['parallel'] == second


def test_a_signal_to_one_process_stops_both_after_the_same_step(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  started = _start(workdir, ['--config=configs/dcgan.py:test',
                             '--config.steps_per_epoch=10000'], 2, 'run')
  try:
    log = pathlib.Path(started[1][1].name)
    deadline = time.monotonic() + 240
    while 'step 1/10000' not in log.read_text():
      assert time.monotonic() < deadline and started[1][0].poll() is None, (
          log.read_text()[-4000:])
      time.sleep(0.2)
    started[1][0].send_signal(signal.SIGTERM)
    for proc, _ in started:
      proc.wait(timeout=120)
  finally:
    for proc, log in started:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()
  texts = [pathlib.Path(f.name).read_text() for _, f in started]
  stopped = [re.findall(r'Stopped by SIGTERM after step (\d+)', t)
             for t in texts]
  assert [p.returncode for p, _ in started] == [128 + signal.SIGTERM] * 2, (
      texts[0][-3000:], texts[1][-3000:])
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
  step = int(stopped[0][0])
  history = logs.read_history(str(workdir / 'history.jsonl'))
  assert [r['step'] for r in history] == list(range(1, step + 1))
  assert str(step) in os.listdir(workdir / 'checkpoints')


@pytest.mark.parametrize('args, message', [
    (['--config=configs/unet.py:test', '--distributed'],
     "not config.trainer='unet'"),
    (['--config=configs/dcgan.py:test', '--process_id=1'],
     '--process_id need(s) --distributed'),
])
def test_settings_it_cannot_run_are_refused_before_starting(
    tmp_path, args, message):
  result = subprocess.run(
      [sys.executable, str(ROOT / 'launch.py'), f'--workdir={tmp_path / "w"}',
       *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / 'w').exists()
