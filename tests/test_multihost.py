"""Two real processes train one run together (launch.py --distributed).

Each trainer's `:test` config trains three times: once as one process with 4
CPU devices (the reference, in this process: conftest's devices), and twice
as two `python launch.py` processes with 2 devices each (4 in all, the same
global batch) that talk over localhost: the first pair stops halfway, the
second resumes it. The segmenters validate during training and evaluate on
their test split after each half, each process its share of the cases. The
pair must write one set of outputs (process 0's) and give the reference's
losses, validation and final metrics. A SIGTERM to one process of a pair
must stop both after the same step.
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
from configs import mrigan as mrigan_config
from configs import seg3d as seg3d_config
from configs import unet as unet_config
from mrseg.train import cgan_trainer
from mrseg.train import dcgan_trainer
from mrseg.train import logs
from mrseg.train import mrigan_trainer
from mrseg.train import unet_trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Two processes reduce over the same 4 devices as one process, in another
# order (Gloo between processes), and sum their evaluation shares in
# another order: float32 rounding, nothing more.
RTOL, ATOL = 1e-5, 1e-6
# Test metrics count voxels of an argmax: the two runs' parameters agree to
# ~1e-6, which may flip a near-tied voxel (seen on AMD EPYC family 26: one
# voxel of ~40,000 moved a pooled precision by 8e-6 and two confusion-matrix
# counts by 1). A few voxels, no more: counts within 2, ratios within 1e-4.
METRICS_ATOL, METRICS_COUNT_ATOL = 1e-4, 2
STEPS = 4

# config file: (its config module, its trainer module, the key that sets
# the run's length, parallel modes of the pair's first and second half: each
# mode writes and restores once). seg3d is the mrigan trainer's supervised
# kind.
CASES = {
    'dcgan': (dcgan_config, dcgan_trainer, 'steps_per_epoch', ('jit', 'pmap')),
    'cgan': (cgan_config, cgan_trainer, 'num_train_steps', ('pmap', 'jit')),
    'unet': (unet_config, unet_trainer, 'num_train_steps', ('jit', 'pmap')),
    'mrigan': (mrigan_config, mrigan_trainer, 'num_train_steps',
               ('pmap', 'jit')),
    'seg3d': (seg3d_config, mrigan_trainer, 'num_train_steps',
              ('jit', 'pmap')),
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


def _assert_close(got, want, key='metrics', atol=ATOL, count_atol=0):
  """Numbers (also nested in dicts and lists) within RTOL/atol, integers
  within count_atol; the rest equal."""
  if isinstance(want, dict):
    assert got.keys() == want.keys(), key
    for k in want:
      _assert_close(got[k], want[k], f'{key}.{k}', atol, count_atol)
  elif isinstance(want, list) and want and not isinstance(
      want[0], (int, float)):
    assert len(got) == len(want), key
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_close(g, w, f'{key}[{i}]', atol, count_atol)
  elif isinstance(want, (str, bool)) or want is None:
    assert got == want, key
  elif np.asarray(want).dtype.kind in 'iu':
    np.testing.assert_allclose(got, want, rtol=0, atol=count_atol,
                               err_msg=key)
  else:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=key)


def _listing(workdir):
  """The files of each folder of `workdir` (not inside checkpoints): one
  set of outputs, whichever process wrote them."""
  out = {}
  for folder, dirs, files in os.walk(workdir):
    relative = os.path.relpath(folder, workdir)
    if relative.split(os.sep)[0] in ('checkpoints', 'best') and (
        relative not in ('checkpoints', 'best')):
      continue
    out[relative] = sorted(dirs + [f for f in files
                                   if not f.startswith('events.out')])
  return out


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
  assert [r['step'] for r in history] == [r['step'] for r in want]
  assert sorted({r['step'] for r in history}) == list(range(1, STEPS + 1))
  for got, expected in zip(_scalars(history), _scalars(want)):
    _assert_close(got, expected, f'history step {expected["step"]}')
  metrics = json.loads((two / 'metrics.json').read_text())
  reference_metrics = json.loads((one / 'metrics.json').read_text())
  for m in (metrics, reference_metrics):
    m.pop('steps_per_sec', None)
  _assert_close(metrics, reference_metrics, atol=METRICS_ATOL,
                count_atol=METRICS_COUNT_ATOL)

  # One set of outputs: process 1 wrote nothing of its own (no TensorBoard
  # file, no temporary files), and each launch left one events file.
  assert _listing(two) == _listing(one)
  if (one / 'predictions.npz').exists():
    # The test cases' predictions, gathered from both processes, in order.
    got, expected = np.load(two / 'predictions.npz'), np.load(
        one / 'predictions.npz')
    for key in ('id', 'prediction'):
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  if trainer == 'unet':
    # Each of the 6 validation cases counted once, not once per process.
    assert re.findall(r'validation \((\d+) cases\)',
                      logs_half[0] + logs_rest[0]) == ['6', '6']
  if trainer in ('dcgan', 'cgan'):
    assert sorted(os.listdir(two / 'samples')) == [
        f'step_{STEPS // 2}.png', f'step_{STEPS}.png']
  names = os.listdir(two)
  assert len([n for n in names if n.startswith('events.out')]) == 2
  assert [n for n in names if n.startswith('.')] == ['.lock']
  config_json = json.loads((two / 'config.json').read_text())
  assert config_json['parallel'] == second
  # Both launches recorded, by process 0 alone, as two-process runs.
  environment = json.loads((two / 'environment.json').read_text())
  assert [e['num_processes'] for e in environment] == [2, 2]


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


def _run_pair(script, tmp_path):
  """Runs python -c `script` as two processes, argv: port, index, tmp_path;
  both must succeed."""
  port = _free_port()
  started = [subprocess.Popen(
      [sys.executable, '-c', 'import jax, sys\n'
       "jax.distributed.initialize(f'localhost:{sys.argv[1]}', 2, "
       'int(sys.argv[2]))\n' + script, str(port), str(i), str(tmp_path)],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  try:
    for proc in started:
      out, _ = proc.communicate(timeout=120)
      assert proc.returncode == 0, out[-3000:]
  finally:
    for proc in started:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_process_0_prepares_data_before_the_others(tmp_path):
  # workdir.main_process_first (TFDS preparation): process 1 must find
  # what process 0 wrote in it.
  _run_pair("""
import os, time
from mrseg import workdir
marker = os.path.join(sys.argv[3], 'prepared')
with workdir.main_process_first('prepare'):
  if jax.process_index() == 0:
    time.sleep(2)
    open(marker, 'w').close()
  else:
    assert os.path.exists(marker), 'process 1 went first'
""", tmp_path)


def test_evaluation_shares_gather_every_case_in_order_and_exact_sums(
    tmp_path):
  _run_pair("""
import numpy as np
from mrseg.eval import shards
i = jax.process_index()
# 5 cases of different shapes: process 0 holds 0, 2, 4 and process 1 1, 3.
cases = [np.full((2 + k, 3, 1 + k % 2), k, np.uint8) for k in range(5)]
mine = shards.share(cases)
assert [int(c[0, 0, 0]) for c in mine] == list(range(i, 5, 2))
got = shards.gather_cases(mine, [c.shape for c in cases], np.uint8)
assert len(got) == 5 and all(
    g.shape == c.shape and (g == c).all() for g, c in zip(got, cases))
# Sums in the leaves' own dtypes, exact beyond 32 bits.
sums = shards.gather_sum({'count': 2**40 + i, 'loss': 0.1 + i * 1e-12,
                          'cm': np.full((2, 2), 2**33, np.int64)})
assert sums['count'] == 2**41 + 1, sums
assert sums['loss'] == 0.1 + (0.1 + 1e-12), sums
assert sums['cm'].dtype == np.int64 and (sums['cm'] == 2**34).all(), sums
assert shards.per_process(8, 'eval_batch_size') == 4
""", tmp_path)


@pytest.mark.parametrize('args, message', [
    (['--config=configs/synth2seg.py:test', '--distributed'],
     "not config.trainer='synth2seg'"),
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
