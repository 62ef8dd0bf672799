"""launch.py as a user runs it: config typos and unknown variants fail clearly."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _launch(*args, workdir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, str(ROOT / 'launch.py'), f'--workdir={workdir}', *args],
      cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def test_mistyped_override_fails_before_training(tmp_path):
  result = _launch('--config=configs/dcgan.py:test', '--config.optim.lrr=1',
                   workdir=tmp_path / 'typo')
  assert result.returncode != 0
  assert 'lrr' in result.stderr
  assert not (tmp_path / 'typo' / 'checkpoints').exists()


def test_unknown_variant_fails(tmp_path):
  result = _launch('--config=configs/dcgan.py:bogus', workdir=tmp_path / 'v')
  assert result.returncode != 0
  assert "Unknown variant 'bogus'" in result.stderr


def test_override_reaches_the_run(tmp_path):
  workdir = tmp_path / 'ok'
  result = _launch('--config=configs/dcgan.py:test', '--config.batch_size=8',
                   '--config.steps_per_epoch=1', workdir=workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  config = (workdir / 'config.json').read_text()
  assert '"batch_size": 8' in config
  assert (workdir / 'metrics.json').exists()


def test_batch_that_does_not_split_over_devices_is_a_clear_error(tmp_path):
  # conftest's XLA_FLAGS give the child process 4 CPU devices.
  result = _launch('--config=configs/dcgan.py:test', '--config.batch_size=6',
                   workdir=tmp_path / 'split')
  assert result.returncode != 0
  assert 'config.batch_size=6 must be divisible by the number of devices (4)' in (
      result.stderr)


def test_errors_are_one_line_naming_the_culprit(tmp_path):
  result = _launch('--config=configs/dcgan.py:test', '--config.num_epochs=0',
                   workdir=tmp_path / 'zero')
  assert result.returncode == 1
  assert ('launch.py: ValueError: config.num_epochs=0 must be positive. '
          '(--traceback shows where)') in result.stderr.splitlines()
  assert 'Traceback' not in result.stderr
  result = _launch('--config=configs/dcgan.py:test', '--config.num_epochs=0',
                   '--traceback', workdir=tmp_path / 'zero')
  assert 'Traceback' in result.stderr
