"""Paper 1's pipeline: train a GAN, sample pairs, train a UNet on them, test.

Stages, each in its own folder of the workdir and each resumable:

  reference/  a UNet trained on the real training split at the same budget:
              the real-only baseline of the report, the judge of the
              synthetic pairs' alignment, and the FID/KID feature network
              (`reference_dir` lets sweep runs share one per seed).
  gan/        the GAN on the real training split: 'conditional' (layout ->
              image, mrseg.train.cgan_trainer), or a joint image+mask DCGAN
              / WGAN-GP: done when gan/metrics.json exists; else (re)started,
              resuming from its checkpoints.
  synthetic/  `num_synthetic` generated pairs (PNGs + samples.npz, and for the
              conditional GAN the layouts and provenance.csv), from the GAN
              checkpoint whose pairs the reference UNet finds best
              (selection in checks.json), then checked: empty masks,
              alignment, memorisation (checks.json, written last). Below
              the `gates` the pipeline stops, naming the numbers. With
              gan_type='manual' an image-only DCGAN exports images for
              annotation, as the paper did, and `manual_masks_dir` brings
              the masks back.
  unet/       the UNet trained on synthetic, real or both, validated on the
              real validation split and tested on the real test split
              (unet/metrics.json, figures, per-case CSV).
  fidelity.json  real vs synthetic: intensity distances, MS-SSIM diversity,
              and FID/KID on UNet bottleneck features (not Inception): of
              the reference UNet by default, or of the UNet in
              `fidelity_unet_dir`, which makes the scores of different runs
              comparable.
  report.md, metrics.json  the summary (metrics.json is written last, so a
              sweep treats the run as finished only when all is done).

Rerunning the same command skips finished stages and continues an
interrupted one.
"""
import functools
import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from mrseg import fidelity
from mrseg import saved_configs
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.models import unet as unet_lib
from mrseg.synth2seg import pairs as pairs_lib
from mrseg.synth2seg import report as report_lib
from mrseg.train import cgan_trainer
from mrseg.train import dcgan_trainer
from mrseg.train import dcgan_variants

# 'joint_small_data': the joint GAN made sound (mrseg/train/dcgan_variants.py
# use_small_data: sigmoid mask channel, matching-aware D, DiffAugment, R1,
# spectral norm, EMA, resize-convolutions).
GAN_TYPES = ('conditional', 'joint', 'joint_small_data', 'joint_wgan_gp',
             'manual')
# Data keys the pipeline copies into every stage, so that the GAN, the UNets
# and the test see the same dataset, size and splits.
SHARED_DATA_KEYS = ('name', 'manual_dir', 'data_dir', 'image_size', 'channels',
                    'resize', 'train_ids', 'val_ids', 'test_ids', 'contrast',
                    'tumor_probability', 'seed')
ALL_STAGES = ('reference', 'gan', 'sample', 'unet', 'fidelity', 'report')
AUGMENTATIONS = ('default', 'classical')


def stage_configs(config: ml_collections.ConfigDict
                  ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict,
                             ml_collections.ConfigDict]:
  """The GAN's, the UNet's and the reference UNet's configs."""
  if config.gan_type not in GAN_TYPES:
    raise ValueError(f'Unsupported gan_type {config.gan_type!r}; choose one '
                     f'of {GAN_TYPES}.')
  if config.augmentation not in AUGMENTATIONS:
    raise ValueError(f'Unsupported augmentation {config.augmentation!r}; '
                     f'choose one of {AUGMENTATIONS}.')
  if not (isinstance(config.keep_best_of, int) and config.keep_best_of >= 1):
    raise ValueError(f'keep_best_of must be an integer >= 1 (1 keeps every '
                     f'pair drawn); got {config.keep_best_of!r}.')
  source = config.cgan if config.gan_type == 'conditional' else config.gan
  gan = ml_collections.ConfigDict(source.to_dict())
  unet = ml_collections.ConfigDict(config.unet.to_dict())
  for key in SHARED_DATA_KEYS:
    gan.data[key] = config.data[key]
    unet.data[key] = config.data[key]
  gan.seed = unet.seed = config.seed
  if config.gan_type != 'conditional':
    gan.model.joint_mask = config.gan_type != 'manual'
  if config.gan_type == 'joint_wgan_gp':
    dcgan_variants.use_wgan_gp(gan)
  if config.gan_type == 'joint_small_data':
    dcgan_variants.use_small_data(gan)
  reference = ml_collections.ConfigDict(unet.to_dict())
  reference.data.train_source = 'real'
  unet.data.train_source = config.train_data
  if config.augmentation == 'classical':
    # The baseline synthetic pairs must beat: classical augmentation of the
    # real pairs at the same UNet budget.
    unet.augment.update(config.classical_augment.to_dict())
  return gan, unet, reference


def _paths(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  # The GAN and the reference UNet may live outside the workdir (`gan_dir`,
  # `reference_dir`, relative to it), so that a sweep's runs that differ
  # only after those stages share them.
  def inside(path, default):
    return os.path.normpath(os.path.join(workdir, path or default))
  synthetic_dir = os.path.join(workdir, 'synthetic')
  return {'gan': inside(config.gan_dir, 'gan'),
          'reference': inside(config.reference_dir, 'reference'),
          'synthetic': synthetic_dir,
          'checks': os.path.join(synthetic_dir, 'checks.json'),
          'unet': os.path.join(workdir, 'unet'),
          'fidelity': os.path.join(workdir, 'fidelity.json'),
          'report': os.path.join(workdir, 'report.md'),
          'metrics': os.path.join(workdir, 'metrics.json')}


def _check_saved_config(config: ml_collections.ConfigDict, folder: str,
                        what: str, option: str) -> None:
  """A stage folder trained with another config must not be reused silently.

  A finished stage is reused as it is, so every difference is refused; an
  unfinished one is resumed by its trainer, which may change run-length keys
  (`workdir.start_run`'s rule), e.g. to train a shared GAN longer.
  """
  path = os.path.join(folder, 'config.json')
  if not os.path.exists(path):
    return
  changed = saved_configs.changes(
      workdir_lib.read_json(path), json.loads(config.to_json_best_effort()))
  if not pairs_lib.stage_done(folder):
    changed = workdir_lib.refused_changes(changed)
  if changed:
    raise ValueError(
        f'{folder} holds a {what} trained with another config (differs in '
        f'{changed}); give this run its own {option} or remove that folder.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, Any]:
  """Runs (or resumes) every stage in `workdir`; returns the summary metrics."""
  # pylint: disable=g-import-not-at-top
  from mrseg.train import unet_trainer
  # pylint: enable=g-import-not-at-top
  workdir_lib.start_run(config, workdir)
  stages = tuple(s for s in config.stages.split(',') if s)
  unknown = set(stages) - set(ALL_STAGES)
  if unknown:
    raise ValueError(f'Unknown stage(s) {sorted(unknown)} in config.stages; '
                     f'choose from {ALL_STAGES}.')
  paths = _paths(config, workdir)
  gan_config, unet_config, reference_config = stage_configs(config)
  needs_gan = config.train_data != 'real'
  if needs_gan:
    _check_saved_config(gan_config, paths['gan'], 'GAN', 'gan_dir')
    _check_saved_config(reference_config, paths['reference'], 'reference UNet',
                        'reference_dir')

  if needs_gan and 'reference' in stages:
    if pairs_lib.stage_done(paths['reference']):
      logging.info('Stage reference: done before, skipped.')
    else:
      logging.info('Stage reference: a UNet on the real pairs in %s.',
                   paths['reference'])
      unet_trainer.train_and_evaluate(reference_config, paths['reference'])

  if needs_gan and 'gan' in stages:
    if pairs_lib.stage_done(paths['gan']):
      logging.info('Stage gan: done before, skipped.')
    else:
      logging.info('Stage gan: training the %s GAN in %s.', config.gan_type,
                   paths['gan'])
      trainer = (cgan_trainer if config.gan_type == 'conditional'
                 else dcgan_trainer)
      trainer.train_and_evaluate(gan_config, paths['gan'])

  if needs_gan and 'sample' in stages:
    unet_config.data.synthetic_npz = pairs_lib.sample_stage(
        config, gan_config, reference_config, paths)

  if 'unet' in stages:
    if pairs_lib.stage_done(paths['unet']):
      logging.info('Stage unet: done before, skipped.')
    else:
      if needs_gan and not unet_config.data.synthetic_npz:
        unet_config.data.synthetic_npz = pairs_lib.synthetic_npz(config, paths)
      logging.info('Stage unet: training on %s data in %s.', config.train_data,
                   paths['unet'])
      unet_trainer.train_and_evaluate(unet_config, paths['unet'])

  if needs_gan and 'fidelity' in stages:
    if workdir_lib.is_done(paths['fidelity']):
      logging.info('Stage fidelity: done before, skipped.')
    else:
      _fidelity_stage(config, unet_config, paths)

  if 'report' not in stages:
    return {}
  summary = report_lib.summarize(config, paths)
  report_lib.write_report(config, paths, summary)
  workdir_lib.write_json(paths['metrics'], summary)
  logging.info('Wrote %s and %s.', paths['report'], paths['metrics'])
  return summary


run_pipeline = train_and_evaluate  # launch.py --mode=pipeline


def _feature_network(config: ml_collections.ConfigDict,
                     unet_config: ml_collections.ConfigDict,
                     paths: dict[str, str]):
  """`feature_fn` for FID/KID and a line saying which network made it."""
  # pylint: disable=g-import-not-at-top
  from mrseg.train import unet_model
  from mrseg.train import unet_trainer
  # pylint: enable=g-import-not-at-top
  workdir = config.fidelity_unet_dir or (
      paths['reference'] if pairs_lib.stage_done(paths['reference'])
      else paths['unet'])
  # The network's own config (another run's UNet, or the reference).
  config_path = os.path.join(workdir, 'config.json')
  try:
    with open(config_path) as f:
      unet_config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f'fidelity_unet_dir={workdir!r}: cannot read its config.json '
        f'({e}); point it at a UNet workdir (configs/unet.py).') from e
  state, step = unet_trainer.restore_best(unet_config, workdir)
  model = unet_model.build_model(unet_config)
  feature_fn = fidelity.make_feature_fn(
      functools.partial(model.apply, method=unet_lib.UNet.encode),
      jax.device_get(state.net.variables), batch_size=16)
  return feature_fn, f'UNet bottleneck of {workdir} (best, step {step})'


def _fidelity_stage(config: ml_collections.ConfigDict,
                    unet_config: ml_collections.ConfigDict,
                    paths: dict[str, str]) -> None:
  """Real vs synthetic images: intensities, diversity, FID/KID."""
  from mrseg.data import datasets  # pylint: disable=g-import-not-at-top
  real_config = ml_collections.ConfigDict(unet_config.to_dict())
  real_config.data.train_source = 'real'
  real = datasets.load_2d_split(real_config.data, 'train')['image']
  with np.load(pairs_lib.synthetic_npz(config, paths)) as npz:
    fake, masks = npz['image'], npz['mask']
  feature_fn, features = _feature_network(config, unet_config, paths)
  report = fidelity.fidelity_report(
      real, fake, feature_fn=feature_fn, num_pairs=config.fidelity_pairs,
      kid_subset_size=min(len(real), len(fake), 100), seed=config.seed)
  report['features'] = features
  grid = os.path.join(paths['synthetic'], 'pairs_grid.png')
  if not os.path.exists(grid):
    viz.save_png(viz.image_grid(viz.overlay_masks(fake[:16], masks[:16])), grid)
  workdir_lib.write_json(paths['fidelity'], report)  # the marker, last
  logging.info('Fidelity: %s', report)
