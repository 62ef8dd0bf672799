"""Paper 1's pipeline: train a GAN, sample pairs, train a UNet on them, test.

Stages, each in its own folder of the workdir and each resumable:

  gan/        a joint image+mask GAN (DCGAN or WGAN-GP) on the real training
              split: done when gan/metrics.json exists; else (re)started,
              resuming from its checkpoints.
  synthetic/  `num_synthetic` generated pairs (PNGs + samples.npz): done when
              samples.npz holds that many. With gan_type='manual' an
              image-only DCGAN exports images for annotation, as the paper
              did, and `manual_masks_dir` brings the masks back.
  unet/       the UNet trained on synthetic, real or both, validated on the
              real validation split and tested on the real test split
              (unet/metrics.json, figures, per-case CSV).
  fidelity.json  real vs synthetic: intensity distances, MS-SSIM diversity,
              and FID/KID on UNet bottleneck features (not Inception): of
              this run's UNet by default, or of the UNet in
              `fidelity_unet_dir` (e.g. one trained on real data), which
              makes the scores of different runs comparable.
  report.md, metrics.json  the summary (metrics.json is written last, so a
              sweep treats the run as finished only when all is done).

Rerunning the same command skips finished stages and continues an
interrupted one.
"""
import functools
import json
import os
from typing import Any
import zipfile

from absl import logging
import jax
import ml_collections
import numpy as np

from configs import dcgan as dcgan_config
from mrseg import fidelity
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.models import unet as unet_lib
from mrseg.train import dcgan_trainer

GAN_TYPES = ('joint', 'joint_wgan_gp', 'manual')
# Data keys the pipeline copies into both stages, so that the GAN, the UNet
# and the test see the same dataset, size and splits.
SHARED_DATA_KEYS = ('name', 'manual_dir', 'data_dir', 'image_size', 'channels',
                    'resize', 'train_ids', 'val_ids', 'test_ids', 'contrast',
                    'tumor_probability', 'seed')
ALL_STAGES = ('gan', 'sample', 'unet', 'fidelity', 'report')


def stage_configs(config: ml_collections.ConfigDict
                  ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """The GAN's and the UNet's configs, with the pipeline's shared settings."""
  if config.gan_type not in GAN_TYPES:
    raise ValueError(f'Unsupported gan_type {config.gan_type!r}; choose one '
                     f'of {GAN_TYPES}.')
  gan = ml_collections.ConfigDict(config.gan.to_dict())
  unet = ml_collections.ConfigDict(config.unet.to_dict())
  for key in SHARED_DATA_KEYS:
    gan.data[key] = config.data[key]
    unet.data[key] = config.data[key]
  gan.seed = unet.seed = config.seed
  gan.model.joint_mask = config.gan_type != 'manual'
  if config.gan_type == 'joint_wgan_gp':
    dcgan_config.use_wgan_gp(gan)
  unet.data.train_source = config.train_data
  return gan, unet


def _paths(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  # The GAN may live outside the workdir (`gan_dir`, relative to it), so that
  # a sweep's runs that differ only after the GAN stage share one GAN.
  gan = os.path.normpath(os.path.join(workdir, config.gan_dir or 'gan'))
  return {'gan': gan,
          'synthetic': os.path.join(workdir, 'synthetic'),
          'unet': os.path.join(workdir, 'unet'),
          'fidelity': os.path.join(workdir, 'fidelity.json'),
          'report': os.path.join(workdir, 'report.md'),
          'metrics': os.path.join(workdir, 'metrics.json')}


def _check_gan_dir(gan_config: ml_collections.ConfigDict, gan_dir: str) -> None:
  """A GAN folder trained with another config must not be reused silently."""
  path = os.path.join(gan_dir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  wanted = json.loads(gan_config.to_json_best_effort())
  if saved != wanted:
    changed = sorted(k for k in set(saved) | set(wanted)
                     if saved.get(k) != wanted.get(k))
    raise ValueError(
        f'{gan_dir} holds a GAN trained with another config (differs in '
        f'{changed}); give this run its own gan_dir or remove that folder.')


def _npz_count(path: str, key: str = 'image') -> int:
  try:
    with np.load(path) as npz:
      return int(len(npz[key])) if key in npz else -1
  # Missing, or cut short by an interruption (before samples.npz was
  # written atomically): then the stage runs again.
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return -1


@workdir_lib.locked
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
  gan_config, unet_config = stage_configs(config)
  needs_gan = config.train_data != 'real'
  if needs_gan:
    _check_gan_dir(gan_config, paths['gan'])

  if needs_gan and 'gan' in stages:
    if workdir_lib.is_done(os.path.join(paths['gan'], 'metrics.json')):
      logging.info('Stage gan: done before, skipped.')
    else:
      logging.info('Stage gan: training the %s GAN in %s.', config.gan_type,
                   paths['gan'])
      dcgan_trainer.train_and_evaluate(gan_config, paths['gan'])

  if needs_gan and 'sample' in stages:
    unet_config.data.synthetic_npz = _sample_stage(config, gan_config, paths)

  if 'unet' in stages:
    if workdir_lib.is_done(os.path.join(paths['unet'], 'metrics.json')):
      logging.info('Stage unet: done before, skipped.')
    else:
      if needs_gan and not unet_config.data.synthetic_npz:
        unet_config.data.synthetic_npz = _synthetic_npz(config, paths)
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
  summary = summarize(config, paths)
  write_report(config, paths, summary)
  workdir_lib.write_json(paths['metrics'], summary)
  logging.info('Wrote %s and %s.', paths['report'], paths['metrics'])
  return summary


run_pipeline = train_and_evaluate  # launch.py --mode=pipeline


def _synthetic_npz(config: ml_collections.ConfigDict, paths: dict[str, str]) -> str:
  name = 'annotated.npz' if config.gan_type == 'manual' else 'samples.npz'
  return os.path.join(paths['synthetic'], name)


def _sample_stage(config: ml_collections.ConfigDict,
                  gan_config: ml_collections.ConfigDict,
                  paths: dict[str, str]) -> str:
  """Writes (or finds) the synthetic pairs; returns their npz path."""
  samples = os.path.join(paths['synthetic'], 'samples.npz')
  if _npz_count(samples) == config.num_synthetic:
    logging.info('Stage sample: %d samples there, skipped.', config.num_synthetic)
  else:
    dcgan_trainer.sample(gan_config, paths['gan'], config.num_synthetic,
                         output_dir=paths['synthetic'])
  if config.gan_type != 'manual':
    with np.load(samples) as npz:
      empty = int((npz['mask'].reshape(len(npz['mask']), -1).max(1) == 0).sum())
    if empty:
      # A joint GAN learns the (small) mask channel late: say so rather
      # than train a UNet on pairs without tumours in silence.
      logging.warning('%d of %d synthetic masks are empty: those pairs teach '
                      'the UNet that their images hold no tumour (a large '
                      'share means the GAN needs more steps).', empty,
                      config.num_synthetic)
    return samples
  # Paper 1's route: the images were annotated by hand.
  from mrseg.data import annotated  # pylint: disable=g-import-not-at-top
  if not config.manual_masks_dir:
    raise RuntimeError(
        f'gan_type=manual: annotate the {config.num_synthetic} images in '
        f'{paths["synthetic"]} (one mask per image, same file stem, 0/255 or '
        '0/1), then rerun with --config.manual_masks_dir=<masks folder>.')
  pairs = annotated.load(paths['synthetic'], config.manual_masks_dir,
                         config.data.image_size)
  out = _synthetic_npz(config, paths)
  with workdir_lib.atomic_open(out, 'wb') as f:
    np.savez_compressed(f, **pairs)
  return out


def _feature_network(config: ml_collections.ConfigDict,
                     unet_config: ml_collections.ConfigDict,
                     paths: dict[str, str]):
  """`feature_fn` for FID/KID and a line saying which network made it."""
  # pylint: disable=g-import-not-at-top
  from mrseg.train import unet_trainer
  # pylint: enable=g-import-not-at-top
  workdir = config.fidelity_unet_dir or paths['unet']
  if config.fidelity_unet_dir:
    # Another run's UNet (e.g. one trained on real data), so that every run
    # of a sweep is scored by the same network: read its own config.
    config_path = os.path.join(workdir, 'config.json')
    try:
      with open(config_path) as f:
        unet_config = ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
      raise FileNotFoundError(
          f'fidelity_unet_dir={workdir!r}: cannot read its config.json '
          f'({e}); point it at a UNet workdir (configs/unet.py).') from e
  state, step = unet_trainer.restore_best(unet_config, workdir)
  model = unet_trainer.build_model(unet_config)
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
  with np.load(_synthetic_npz(config, paths)) as npz:
    fake, masks = npz['image'], npz['mask']
  feature_fn, features = _feature_network(config, unet_config, paths)
  report = fidelity.fidelity_report(
      real, fake, feature_fn=feature_fn, num_pairs=config.fidelity_pairs,
      kid_subset_size=min(len(real), len(fake), 100), seed=config.seed)
  report['features'] = features
  viz.save_png(viz.image_grid(viz.overlay_masks(fake[:16], masks[:16])),
               os.path.join(paths['synthetic'], 'pairs_grid.png'))
  workdir_lib.write_json(paths['fidelity'], report)  # the marker, last
  logging.info('Fidelity: %s', report)


def summarize(config: ml_collections.ConfigDict, paths: dict[str, str]
              ) -> dict[str, Any]:
  """The numbers of the run, flat, for report.md and sweep tables."""
  test = workdir_lib.read_json(os.path.join(paths['unet'], 'metrics.json'))
  pooled, per_case, table = test['pooled'], test['per_case'], test['table_iii']
  summary = {
      'test_dice': pooled.get('dice/tumor', pooled['mean_dice']),
      'test_iou': pooled.get('iou/tumor', pooled['mean_iou']),
      'test_accuracy': pooled['accuracy'],
      'test_case_dice_mean': per_case.get('dice/tumor/mean'),
      'test_hd95_median': per_case.get('hd95/tumor/median'),
      'test_hd95_inf_cases': per_case.get('hd95/tumor/n_inf'),
      'table_iii_correct': table['correct'],
      'table_iii_incorrect': table['incorrect'],
      'num_test_cases': test['num_cases'],
  }
  samples = os.path.join(paths['synthetic'], 'samples.npz')
  if config.train_data != 'real' and os.path.exists(samples):
    with np.load(samples) as npz:
      masks = npz['mask'] if 'mask' in npz else None
    if masks is not None:
      summary['synthetic_empty_masks'] = int(
          (masks.reshape(len(masks), -1).max(1) == 0).sum())
      summary['synthetic_mask_fraction'] = float(masks.mean())
  if os.path.exists(paths['fidelity']):
    fid = workdir_lib.read_json(paths['fidelity'])
    summary.update({k: fid[k] for k in ('fid', 'kid_mean', 'kid_std',
                                        'intensity_wasserstein',
                                        'ms_ssim_diversity_fake',
                                        'ms_ssim_diversity_real',
                                        'features') if k in fid})
  return summary


def write_report(config: ml_collections.ConfigDict, paths: dict[str, str],
                 summary: dict[str, Any]) -> None:
  """report.md: the setting, the metrics table and the figures."""
  def fmt(v):
    return 'n/a' if v is None else (f'{v:.4g}' if isinstance(v, float) else str(v))

  needs_gan = config.train_data != 'real'
  lines = [
      '# Synthesize, then segment (paper 1)', '',
      f'- data: `{config.data.name}`'
      f'{" (" + config.data.manual_dir + ")" if config.data.manual_dir else ""}, '
      f'{config.data.image_size}x{config.data.image_size}; train ids '
      f'`{config.data.train_ids}`, validation `{config.data.val_ids}`, test '
      f'`{config.data.test_ids}` (real images)',
      f'- UNet trained on: **{config.train_data}**'
      + (f' ({config.num_synthetic} pairs from a `{config.gan_type}` GAN)'
         if needs_gan else ''),
      f'- seed: {config.seed}', '',
      '## Test metrics (real test images)', '',
      '| metric | value |', '|---|---|',
      f'| Dice (tumour, pooled over pixels) | {fmt(summary["test_dice"])} |',
      f'| IoU (tumour, pooled) | {fmt(summary["test_iou"])} |',
      f'| pixel accuracy | {fmt(summary["test_accuracy"])} |',
      f'| Dice per case, mean | {fmt(summary["test_case_dice_mean"])} |',
      f'| HD95 per case, median (pixels) | {fmt(summary["test_hd95_median"])} |',
      f'| cases with HD95 = inf (tumour missed or hallucinated) | '
      f'{fmt(summary["test_hd95_inf_cases"])} |',
      f'| Table III: correctly / incorrectly segmented (Dice >= '
      f'{config.unet.eval.correct_threshold}) | {summary["table_iii_correct"]}'
      f' / {summary["table_iii_incorrect"]} of {summary["num_test_cases"]} |',
      '',
  ]
  if summary.get('synthetic_empty_masks'):
    lines += [
        f'**Note:** {summary["synthetic_empty_masks"]} of '
        f'{config.num_synthetic} synthetic masks are empty (tumour pixels: '
        f'{100 * summary["synthetic_mask_fraction"]:.2f}% of all synthetic '
        'pixels): those pairs teach the UNet that their images hold no '
        'tumour. A large share means the GAN has not learnt to draw masks '
        'yet: train it longer (gan.steps_per_epoch).', '']
  if 'fid' in summary:
    lines += [
        '## Fidelity of the synthetic images', '',
        f'FID/KID use the {summary.get("features", "UNet bottleneck")}, '
        'standardised by the real features\' mean and spread, not Inception: '
        'compare them only between runs scored by the same network '
        '(`fidelity_unet_dir`).', '',
        '| metric | value |', '|---|---|',
        f'| intensity Wasserstein-1 (real vs synthetic) | '
        f'{fmt(summary.get("intensity_wasserstein"))} |',
        f'| FID (UNet features) | {fmt(summary.get("fid"))} |',
        f'| KID x 1000 (UNet features) | '
        f'{fmt(1000 * summary["kid_mean"])} ± {fmt(1000 * summary["kid_std"])} |',
        f'| MS-SSIM among synthetic / among real (lower = more diverse) | '
        f'{fmt(summary.get("ms_ssim_diversity_fake"))} / '
        f'{fmt(summary.get("ms_ssim_diversity_real"))} |', '']
  lines += ['## Figures', '']
  if needs_gan:
    gan = os.path.relpath(paths['gan'], os.path.dirname(paths['report']))
    lines += [
        f'- GAN losses (paper Fig. 10): ![]({gan}/figures/losses.png)',
        '- Real vs generated intensities (paper Fig. 11): '
        f'![]({gan}/figures/intensity_distribution.png)',
        '- Synthetic image/mask pairs: ![](synthetic/pairs_grid.png)',
    ]
  lines += [
      '- UNet loss (paper Fig. 13): ![](unet/figures/loss.png)',
      '- UNet accuracy (paper Fig. 14): ![](unet/figures/accuracy.png)',
      '- Test predictions, best / median / worst case: '
      '![](unet/figures/overlays.png)', '',
      'Per-case metrics: `unet/per_case.csv`; all test metrics: '
      '`unet/metrics.json`.', '']
  workdir_lib.write_text(paths['report'], '\n'.join(lines))
