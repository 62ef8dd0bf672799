r"""Runs an mrseg experiment: `python launch.py --config=configs/X.py --workdir=DIR`.

  python launch.py --config=configs/dcgan.py:quick --workdir=runs/dcgan_quick
  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan \
      --config.batch_size=8 --config.optim.d_learning_rate=1e-4
  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan \
      --mode=sample --num_samples=200

Rerunning a training command with the same workdir resumes from its latest
checkpoint.
"""
import importlib
import importlib.util
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally with a variant: '
    'configs/dcgan.py:quick.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs, '
                               'samples and figures go.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'sample', 'eval', 'sweep', 'pipeline'],
    'train: train (or resume) and evaluate; sample: write --num_samples '
    'images from the latest checkpoint; eval: evaluate a trained model; '
    "sweep: train every run of the config file's sweep() in WORKDIR/<run> "
    'and write WORKDIR/results.{csv,md}; pipeline: run (or resume) every '
    'stage of a pipeline config (configs/synth2seg.py).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 200,
                                    'Images to write in --mode=sample.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder for --mode=sample '
                                  '(default: WORKDIR/generated/step_N).')
_SWEEP_ONLY = flags.DEFINE_string(
    'sweep_only', '', '--mode=sweep: train only the runs whose name matches '
    "this regular expression (e.g. 'seed=0'); the tables still hold every "
    'finished run.')
_VERBOSE_LIBRARIES = flags.DEFINE_bool(
    'verbose_libraries', False, 'Keep the INFO logs of Orbax and TFDS, which '
    'describe every checkpoint write in detail.')
_TRACEBACK = flags.DEFINE_bool(
    'traceback', False, 'On an error, print the full traceback instead of '
    'one line naming the culprit.')
flags.mark_flags_as_required(['config', 'workdir'])

# config.trainer -> the module holding its train_and_evaluate(config, workdir)
# (and, where the model supports them, sample(...) and evaluate(...)).
TRAINERS = {
    'dcgan': 'mrseg.train.dcgan_trainer',
    'unet': 'mrseg.train.unet_trainer',
    # Paper 1's pipeline (GAN -> synthetic pairs -> UNet -> test), --mode=pipeline.
    'synth2seg': 'mrseg.train.synth2seg',
    # Paper 2: model.kind picks supervised / fewshot_gan / mrigan.
    'mrigan': 'mrseg.train.mrigan_trainer',
}


def _quiet_library_logs(record) -> bool:
  """Drops INFO records logged from inside Orbax/TFDS (absl shares one logger)."""
  if record.levelno >= 30:  # warnings and errors always pass
    return True
  path = record.pathname.replace('\\', '/')
  return not any(f'/{lib}/' in path for lib in
                 ('orbax', 'tensorflow_datasets', 'etils'))


def _sweep_fn():
  """The sweep() of the file --config names (variants after ':' dropped)."""
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  # ml_collections keeps the ':variant' suffix in the name it returns.
  path = path.split(':', 1)[0]
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'sweep'):
    raise app.UsageError(f'{path} defines no sweep(add) for --mode=sweep.')
  return module.sweep


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # tf.data only: keep TensorFlow off the accelerators JAX uses.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  import jax  # pylint: disable=g-import-not-at-top

  if not _VERBOSE_LIBRARIES.value:
    logging.get_absl_handler().addFilter(_quiet_library_logs)
  config = _CONFIG.value
  logging.info('JAX %s: %d process(es), devices %s.', jax.__version__,
               jax.process_count(), jax.devices())
  if config.trainer not in TRAINERS:
    raise ValueError(f'Unsupported config.trainer {config.trainer!r}; '
                     f'choose one of {sorted(TRAINERS)}.')
  trainer = importlib.import_module(TRAINERS[config.trainer])
  mode = {'train': 'train_and_evaluate', 'sample': 'sample',
          'eval': 'evaluate', 'sweep': 'train_and_evaluate',
          'pipeline': 'run_pipeline'}[_MODE.value]
  if not hasattr(trainer, mode):
    raise app.UsageError(f'--mode={_MODE.value} is not supported by the '
                         f'{config.trainer!r} trainer.')
  from mrseg import sweep  # pylint: disable=g-import-not-at-top
  from mrseg import workdir  # pylint: disable=g-import-not-at-top
  from mrseg.train import loop  # pylint: disable=g-import-not-at-top
  try:
    if _MODE.value == 'sample':
      trainer.sample(config, _WORKDIR.value, _NUM_SAMPLES.value,
                     _OUTPUT_DIR.value)
    elif _MODE.value == 'sweep':
      sweep.run(config, _sweep_fn(), _WORKDIR.value,
                trainer.train_and_evaluate, only=_SWEEP_ONLY.value)
    else:
      getattr(trainer, mode)(config, _WORKDIR.value)
  except workdir.Interrupted as e:
    _exit_with(str(e), 128 + e.signum)
  except (loop.NonFiniteLossError, ValueError, OSError, RuntimeError,
          KeyError) as e:
    # Bad data (DataError is a ValueError), bad settings, a full disk or a
    # busy workdir: one line naming the culprit, not a traceback.
    if _TRACEBACK.value:
      raise
    _exit_with(f'{type(e).__name__}: {e} (--traceback shows where)', 1)


def _exit_with(message: str, code: int) -> None:
  print(f'launch.py: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
