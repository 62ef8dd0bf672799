r"""Runs an mrseg experiment: `python launch.py --config=configs/X.py --workdir=DIR`.

  python launch.py --config=configs/dcgan.py:quick --workdir=runs/dcgan_quick
  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan \
      --config.batch_size=8 --config.optim.d_learning_rate=1e-4
  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan \
      --mode=sample --num_samples=200
  # A trained segmenter on your own images (no --config: RUN's is used):
  python launch.py --workdir=runs/unet --mode=predict --input=scans/ \
      --output=predictions/

Rerunning a training command with the same workdir resumes from its latest
checkpoint.

Several processes (one per host, or per group of devices) train one run
together with --distributed: start the same command on each, with its
--process_id (or let JAX read them from Slurm, Open MPI or a TPU pod):

  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan \
      --distributed --coordinator_address=host0:1234 --num_processes=2 \
      --process_id=0   # and --process_id=1 on the other
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
    'mode', 'train',
    ['train', 'sample', 'eval', 'sweep', 'pipeline', 'predict'],
    'train: train (or resume) and evaluate; sample: write --num_samples '
    'images from the latest checkpoint; eval: evaluate a trained model; '
    "sweep: train every run of the config file's sweep() in WORKDIR/<run> "
    'and write WORKDIR/results.{csv,md} (and paired.{csv,md} if the file '
    'names SWEEP_BASELINES); pipeline: run (or resume) every '
    'stage of a pipeline config (configs/synth2seg.py); predict: segment '
    '--input with the trained segmenter in WORKDIR (its config.json and best '
    'checkpoint; no --config) into --output.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 200,
                                    'Images to write in --mode=sample.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder for --mode=sample '
                                  '(default: WORKDIR/generated/step_N).')
_MASKS = flags.DEFINE_string(
    'masks', None, '--mode=sample with a conditional GAN (configs/cgan.py): '
    'a folder of tumour masks (PNG/JPG, 0/255 or 0/1); one synthetic image '
    'per mask, the tumour where the mask puts it.')
_SWEEP_ONLY = flags.DEFINE_string(
    'sweep_only', '', '--mode=sweep: train only the runs whose name matches '
    "this regular expression (e.g. 'seed=0'); the tables still hold every "
    'finished run.')
_INPUT = flags.DEFINE_string(
    'input', None, '--mode=predict: an image or volume, or a folder of them '
    '(PNG/JPG for a 2D UNet; NIfTI, MGZ or Analyze for a 3D segmenter).')
_OUTPUT = flags.DEFINE_string(
    'output', None, '--mode=predict: folder for the masks, overlays, '
    'predictions.csv and labels.json.')
_STRICT = flags.DEFINE_bool(
    'strict', False, '--mode=predict: stop at the first file that cannot be '
    'used instead of reporting it and going on.')
_PIXEL_SPACING = flags.DEFINE_float(
    'pixel_spacing', 0.0, '--mode=predict, 2D: pixel size in mm, if known, '
    'for tumour areas in mm^2.')
_VERBOSE_LIBRARIES = flags.DEFINE_bool(
    'verbose_libraries', False, 'Keep the INFO logs of Orbax and TFDS, which '
    'describe every checkpoint write in detail.')
_TRACEBACK = flags.DEFINE_bool(
    'traceback', False, 'On an error, print the full traceback instead of '
    'one line naming the culprit.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() before anything '
    'else: this process is one of several that train one run together '
    '(--mode=train only; all share --workdir, which process 0 writes). '
    'Without --coordinator_address, --num_processes and --process_id, JAX '
    'reads them from the cluster (Slurm, Open MPI, TPU pods).')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, '--distributed: host:port of process 0, '
    'which every process can reach.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, '--distributed: how many processes train the run.',
    lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, '--distributed: this process, 0..num_processes-1 '
    '(0 writes the workdir).', lower_bound=0)
flags.mark_flags_as_required(['workdir'])

# config.trainer -> the module holding its train_and_evaluate(config, workdir)
# (and, where the model supports them, sample(...) and evaluate(...)).
TRAINERS = {
    'dcgan': 'mrseg.train.dcgan_trainer',
    'unet': 'mrseg.train.unet_trainer',
    # Label-conditioned generation (layout + noise -> image).
    'cgan': 'mrseg.train.cgan_trainer',
    # Paper 1's pipeline (GAN -> synthetic pairs -> UNet -> test), --mode=pipeline.
    'synth2seg': 'mrseg.synth2seg.pipeline',
    # Paper 2: model.kind picks supervised / fewshot_gan / mrigan.
    'mrigan': 'mrseg.train.mrigan_trainer',
}

# Trainers that run multi-process (--distributed); tests/test_multihost.py
# trains each with two processes.
DISTRIBUTED_TRAINERS = ('dcgan', 'cgan', 'unet', 'mrigan')


def _quiet_library_logs(record) -> bool:
  """Drops INFO records logged from inside Orbax/TFDS (absl shares one logger)."""
  if record.levelno >= 30:  # warnings and errors always pass
    return True
  path = record.pathname.replace('\\', '/')
  return not any(f'/{lib}/' in path for lib in
                 ('orbax', 'tensorflow_datasets', 'etils'))


def _sweep_module():
  """The file --config names (variants after ':' dropped), with its sweep()."""
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  # ml_collections keeps the ':variant' suffix in the name it returns.
  path = path.split(':', 1)[0]
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'sweep'):
    raise app.UsageError(f'{path} defines no sweep(add) for --mode=sweep.')
  return module


def _predict() -> None:
  """--mode=predict; exits 1 if any input failed (the others are written)."""
  # pylint: disable=g-import-not-at-top
  from mrseg.data import io as data_io
  from mrseg.eval import predict
  # pylint: enable=g-import-not-at-top
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError('--mode=predict needs --input=PATH and --output=DIR.')
  if _CONFIG.value is not None:
    logging.warning('--mode=predict uses %s/config.json; --config is '
                    'ignored.', _WORKDIR.value)
  try:
    summary = predict.run(_WORKDIR.value, _INPUT.value, _OUTPUT.value,
                          strict=_STRICT.value,
                          pixel_spacing=_PIXEL_SPACING.value)
  except (predict.PredictError, data_io.DataError) as e:
    logging.error('%s', e)
    sys.exit(1)
  if summary.failed:
    logging.error('%d of %d file(s) could not be segmented:\n%s',
                  len(summary.failed), len(summary.rows),
                  '\n'.join(m for _, m in summary.failed))
    sys.exit(1)


def _initialize_distributed() -> None:
  """--distributed: joins the other processes before any device is used.

  On CPU the processes' collectives go over Gloo, JAX 0.10's default
  (jax_cpu_collectives_implementation='gloo').
  """
  given = {'--coordinator_address': _COORDINATOR_ADDRESS.value,
           '--num_processes': _NUM_PROCESSES.value,
           '--process_id': _PROCESS_ID.value}
  if not _DISTRIBUTED.value:
    named = [k for k, v in given.items() if v is not None]
    if named:
      raise app.UsageError(f'{", ".join(named)} need(s) --distributed.')
    return
  if _MODE.value != 'train':
    raise app.UsageError(f'--distributed supports --mode=train only, not '
                         f'--mode={_MODE.value}.')
  trainer = None if _CONFIG.value is None else _CONFIG.value.trainer
  if trainer not in DISTRIBUTED_TRAINERS:
    raise app.UsageError(
        f'--distributed supports the trainers {DISTRIBUTED_TRAINERS} (tested '
        f'with two processes), not config.trainer={trainer!r}.')
  if (_NUM_PROCESSES.value is not None and _PROCESS_ID.value is not None and
      _PROCESS_ID.value >= _NUM_PROCESSES.value):
    raise app.UsageError(f'--process_id={_PROCESS_ID.value} must be below '
                         f'--num_processes={_NUM_PROCESSES.value}.')
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(
      coordinator_address=_COORDINATOR_ADDRESS.value,
      num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  _initialize_distributed()  # first: refused settings fail in a second
  # tf.data only: keep TensorFlow off the accelerators JAX uses.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  import jax  # pylint: disable=g-import-not-at-top

  if not _VERBOSE_LIBRARIES.value:
    logging.get_absl_handler().addFilter(_quiet_library_logs)
  logging.info('JAX %s: process %d of %d, devices %s (local: %s).',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.devices(), jax.local_devices())
  if _MODE.value == 'predict':
    _predict()
    return
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required (except with --mode=predict).')
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
      extra = {}
      if _MASKS.value:
        if config.trainer != 'cgan':
          raise app.UsageError('--masks needs a conditional GAN '
                               '(configs/cgan.py).')
        extra['masks_dir'] = _MASKS.value
      trainer.sample(config, _WORKDIR.value, _NUM_SAMPLES.value,
                     _OUTPUT_DIR.value, **extra)
    elif _MODE.value == 'sweep':
      module = _sweep_module()
      sweep.run(config, module.sweep, _WORKDIR.value,
                trainer.train_and_evaluate, only=_SWEEP_ONLY.value,
                baselines=getattr(module, 'SWEEP_BASELINES', ()),
                paired_metrics=getattr(module, 'SWEEP_PAIRED_METRICS', None),
                history=getattr(module, 'SWEEP_HISTORY', sweep.curves.HISTORY))
    else:
      getattr(trainer, mode)(config, _WORKDIR.value)
  except workdir.Interrupted as e:
    _exit_with(str(e), e.exit_code)
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
