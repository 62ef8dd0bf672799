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
import zipfile

from absl import logging
import jax
import ml_collections
import numpy as np

from configs import dcgan as dcgan_config
from mrseg import fidelity
from mrseg import quality
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import synthetic
from mrseg.models import unet as unet_lib
from mrseg.train import cgan_trainer
from mrseg.train import dcgan_trainer

# 'joint_small_data': the joint GAN made sound (configs/dcgan.py
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
# Folded into a joint GAN's key for the pipeline's samples.
_JOINT_NOISE = 10**9 + 5
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
    dcgan_config.use_wgan_gp(gan)
  if config.gan_type == 'joint_small_data':
    dcgan_config.use_small_data(gan)
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
  """A stage folder trained with another config must not be reused silently."""
  path = os.path.join(folder, 'config.json')
  if not os.path.exists(path):
    return
  changed = workdir_lib.config_changes(
      workdir_lib.read_json(path), json.loads(config.to_json_best_effort()))
  if changed:
    raise ValueError(
        f'{folder} holds a {what} trained with another config (differs in '
        f'{changed}); give this run its own {option} or remove that folder.')


def _npz_count(path: str, key: str = 'image') -> int:
  try:
    with np.load(path) as npz:
      return int(len(npz[key])) if key in npz else -1
  # Missing, or cut short by an interruption (before samples.npz was
  # written atomically): then the stage runs again.
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return -1


def _done(folder: str) -> bool:
  return workdir_lib.is_done(os.path.join(folder, 'metrics.json'))


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
  gan_config, unet_config, reference_config = stage_configs(config)
  needs_gan = config.train_data != 'real'
  if needs_gan:
    _check_saved_config(gan_config, paths['gan'], 'GAN', 'gan_dir')
    _check_saved_config(reference_config, paths['reference'], 'reference UNet',
                        'reference_dir')

  if needs_gan and 'reference' in stages:
    if _done(paths['reference']):
      logging.info('Stage reference: done before, skipped.')
    else:
      logging.info('Stage reference: a UNet on the real pairs in %s.',
                   paths['reference'])
      unet_trainer.train_and_evaluate(reference_config, paths['reference'])

  if needs_gan and 'gan' in stages:
    if _done(paths['gan']):
      logging.info('Stage gan: done before, skipped.')
    else:
      logging.info('Stage gan: training the %s GAN in %s.', config.gan_type,
                   paths['gan'])
      trainer = (cgan_trainer if config.gan_type == 'conditional'
                 else dcgan_trainer)
      trainer.train_and_evaluate(gan_config, paths['gan'])

  if needs_gan and 'sample' in stages:
    unet_config.data.synthetic_npz = _sample_stage(
        config, gan_config, reference_config, paths)

  if 'unet' in stages:
    if _done(paths['unet']):
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


class _Generator:
  """Pairs from a trained GAN's checkpoints, whatever its type."""

  def __init__(self, config: ml_collections.ConfigDict,
               gan_config: ml_collections.ConfigDict, gan_dir: str):
    self.conditional = config.gan_type == 'conditional'
    self.config, self.dir = gan_config, gan_dir
    self.arrays = (cgan_trainer.training_arrays(gan_config)
                   if self.conditional else None)

  def steps(self) -> list[int]:
    return cgan_trainer.checkpoint_steps(self.config, self.dir)

  def pairs(self, step: int, num: int, seed: int) -> dict[str, Any]:
    if self.conditional:
      state, _ = cgan_trainer.restore(self.config, self.dir, step)
      return cgan_trainer.synthesize(self.config, state.ema, num, seed,
                                     self.arrays)
    state, _ = dcgan_trainer.restore(self.config, self.dir, step)
    key = jax.random.fold_in(jax.random.key(self.config.seed), _JOINT_NOISE)
    images = dcgan_trainer.generate(self.config, state.ema,
                                    jax.random.fold_in(key, seed), num)
    images, masks = dcgan_trainer.split_pair(self.config, images)
    return {'image': images, 'mask': masks}


def _reference_predict(reference_config: ml_collections.ConfigDict,
                       reference_dir: str):
  """`predict(images [N, S, S, C] in [0, 1]) -> labels [N, S, S]`."""
  # pylint: disable=g-import-not-at-top
  from mrseg.train import parallel as parallel_lib
  from mrseg.train import unet_trainer
  # pylint: enable=g-import-not-at-top
  state, _ = unet_trainer.restore_best(reference_config, reference_dir)
  parallel = parallel_lib.Parallel(reference_config.parallel)

  def predict(images):
    probs = unet_trainer.predict_probabilities(reference_config, state,
                                               np.asarray(images, np.float32),
                                               parallel)
    return probs.argmax(-1)
  return predict


def _sample_stage(config: ml_collections.ConfigDict,
                  gan_config: ml_collections.ConfigDict,
                  reference_config: ml_collections.ConfigDict,
                  paths: dict[str, str]) -> str:
  """Selects a checkpoint, writes the pairs, checks them; returns the npz."""
  samples = os.path.join(paths['synthetic'], 'samples.npz')
  if config.gan_type == 'manual':
    return _manual_pairs(config, gan_config, paths)
  if (workdir_lib.is_done(paths['checks']) and
      _npz_count(samples) == config.num_synthetic):
    logging.info('Stage sample: %d checked samples there, skipped.',
                 config.num_synthetic)
    checks = workdir_lib.read_json(paths['checks'])
  else:
    gen = _Generator(config, gan_config, paths['gan'])
    predict = _reference_predict(reference_config, paths['reference'])
    steps = gen.steps()
    if not config.select_checkpoint:
      steps = steps[-1:]
    selection = []
    for step in steps:
      # Other layouts and noise than the final pairs': selection is not
      # scored on the pairs it then writes.
      pairs = gen.pairs(step, config.selection_pairs, seed=config.seed + 10**6)
      score = quality.alignment(predict, pairs['image'], pairs['mask'])
      score['empty_fraction'] = quality.empty_masks(pairs['mask']) / len(
          pairs['mask'])
      selection.append({'step': step, **score})
      logging.info('GAN step %d: alignment Dice %.3f, %.0f%% empty masks.',
                   step, score['alignment_dice'], 100 * score['empty_fraction'])
    best = max(selection, key=lambda r: r['alignment_dice'])['step']
    pairs = gen.pairs(best, config.num_synthetic * config.keep_best_of,
                      seed=config.seed)
    kept = {}
    if config.keep_best_of > 1:
      pairs, kept = _keep_best(pairs, predict, config.num_synthetic)
    synthetic.write_pairs(paths['synthetic'], pairs['image'], pairs['mask'],
                          best, pairs.get('layout'), pairs.get('provenance'))
    checks = _checks(pairs, predict, reference_config)
    checks.update({'selected_step': best, 'selection': selection, **kept})
    viz.save_png(viz.image_grid(viz.overlay_masks(pairs['image'][:16],
                                                  pairs['mask'][:16])),
                 os.path.join(paths['synthetic'], 'pairs_grid.png'))
    workdir_lib.write_json(paths['checks'], checks)  # the marker, last
  failed = quality.check_gates(checks, config.gates)
  if failed:
    message = (f'The synthetic pairs in {paths["synthetic"]} fail the quality '
               f'gates: {"; ".join(failed)}.')
    if config.gates.enforce:
      raise quality.QualityGateError(
          message + ' Look at synthetic/pairs_grid.png; rerun with '
          '--config.gates.enforce=False to train the UNet on them anyway.')
    logging.warning('%s Going on (gates.enforce=False).', message)
  return samples


def _keep_best(pairs: dict[str, Any], predict, num: int
               ) -> tuple[dict[str, Any], dict[str, Any]]:
  """The `num` pairs the reference UNet agrees with most, of all drawn.

  Returns the kept pairs (provenance gains each pair's drawn index and
  score) and the drawn set's numbers for checks.json: the gates judge those.
  """
  labels = np.asarray(predict(pairs['image']))
  scores = quality.pair_scores(labels, pairs['mask'])
  keep = quality.best_pairs(scores, num)
  drawn = quality.agreement(labels, pairs['mask'])
  stats = {'keep_best_of': len(scores) // num, 'drawn_pairs': len(scores),
           'drawn_alignment_dice': drawn['alignment_dice'],
           'drawn_empty_fraction':
               quality.empty_masks(pairs['mask']) / len(scores),
           'kept_min_pair_dice': float(scores[keep].min())}
  logging.info('Kept the %d best of %d pairs (pair Dice >= %.3f; all drawn: '
               'alignment Dice %.3f).', num, len(scores),
               stats['kept_min_pair_dice'], stats['drawn_alignment_dice'])
  kept = {k: np.asarray(v)[keep] for k, v in pairs.items()
          if k != 'provenance'}
  if pairs.get('provenance'):
    kept['provenance'] = [
        {**pairs['provenance'][i], 'drawn_index': int(i),
         'reference_pair_dice': round(float(scores[i]), 4)} for i in keep]
  return kept, stats


def _checks(pairs: dict[str, Any], predict,
            reference_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Empty masks, alignment and memorisation of the pairs."""
  from mrseg.data import datasets  # pylint: disable=g-import-not-at-top
  masks = pairs['mask']
  empty = quality.empty_masks(masks)
  checks = {'num_pairs': len(masks), 'empty_masks': empty,
            'empty_fraction': empty / len(masks),
            'mask_fraction': float(np.mean(masks))}
  checks.update(quality.alignment(predict, pairs['image'], masks))
  real = datasets.load_2d_split(reference_config.data, 'train')['image']
  checks.update(quality.memorisation(real, pairs['image']))
  return checks


def _manual_pairs(config: ml_collections.ConfigDict,
                  gan_config: ml_collections.ConfigDict,
                  paths: dict[str, str]) -> str:
  """Paper 1's route: the images are annotated by hand."""
  from mrseg.data import annotated  # pylint: disable=g-import-not-at-top
  samples = os.path.join(paths['synthetic'], 'samples.npz')
  if _npz_count(samples) != config.num_synthetic:
    dcgan_trainer.sample(gan_config, paths['gan'], config.num_synthetic,
                         output_dir=paths['synthetic'])
  if not config.manual_masks_dir:
    raise RuntimeError(
        f'gan_type=manual: annotate the {config.num_synthetic} images in '
        f'{paths["synthetic"]} (one mask per image, same file stem, 0/255 or '
        '0/1), then rerun with --config.manual_masks_dir=<masks folder>.')
  pairs = annotated.load(paths['synthetic'], config.manual_masks_dir,
                         config.data.image_size)
  empty = quality.empty_masks(pairs['mask'])
  failed = quality.check_gates({'empty_fraction': empty / len(pairs['mask'])},
                               config.gates)
  if failed and config.gates.enforce:
    raise quality.QualityGateError(
        f'The annotated masks in {config.manual_masks_dir} fail the quality '
        f'gates: {"; ".join(failed)}. Rerun with --config.gates.enforce=False '
        'to train the UNet on them anyway.')
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
  workdir = config.fidelity_unet_dir or (
      paths['reference'] if _done(paths['reference']) else paths['unet'])
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
  grid = os.path.join(paths['synthetic'], 'pairs_grid.png')
  if not os.path.exists(grid):
    viz.save_png(viz.image_grid(viz.overlay_masks(fake[:16], masks[:16])), grid)
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
  if config.train_data != 'real' and _done(paths['reference']):
    ref = workdir_lib.read_json(
        os.path.join(paths['reference'], 'metrics.json'))['pooled']
    summary['reference_test_dice'] = ref.get('dice/tumor', ref['mean_dice'])
    summary['dice_ratio_to_real'] = (
        summary['test_dice'] / summary['reference_test_dice']
        if summary['reference_test_dice'] else None)
  if config.train_data != 'real' and os.path.exists(paths['checks']):
    checks = workdir_lib.read_json(paths['checks'])
    summary.update({f'synthetic_{k}': v for k, v in checks.items()
                    if k != 'selection'})
  elif config.train_data != 'real' and os.path.exists(_synthetic_npz(config, paths)):
    with np.load(_synthetic_npz(config, paths)) as npz:
      summary['synthetic_empty_masks'] = quality.empty_masks(npz['mask'])
      summary['synthetic_mask_fraction'] = float(npz['mask'].mean())
  if os.path.exists(paths['fidelity']):
    fid = workdir_lib.read_json(paths['fidelity'])
    summary.update({k: fid[k] for k in ('fid', 'kid_mean', 'kid_std',
                                        'intensity_wasserstein',
                                        'ms_ssim_diversity_fake',
                                        'ms_ssim_diversity_real',
                                        'features') if k in fid})
  return summary


def _fmt(v: Any) -> str:
  return 'n/a' if v is None else (f'{v:.4g}' if isinstance(v, float) else str(v))


def _setting_lines(config: ml_collections.ConfigDict, paths: dict[str, str],
                   summary: dict[str, Any]) -> list[str]:
  """The report's setting, its test metrics and the ratio to real data."""
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
         if needs_gan else '')
      + (' with classical augmentation' if config.augmentation == 'classical'
         else ''),
      f'- seed: {config.seed}', '',
      '## Test metrics (real test images)', '',
      '| metric | value |', '|---|---|',
      f'| Dice (tumour, pooled over pixels) | {_fmt(summary["test_dice"])} |',
      f'| IoU (tumour, pooled) | {_fmt(summary["test_iou"])} |',
      f'| pixel accuracy | {_fmt(summary["test_accuracy"])} |',
      f'| Dice per case, mean | {_fmt(summary["test_case_dice_mean"])} |',
      f'| HD95 per case, median (pixels) | {_fmt(summary["test_hd95_median"])} |',
      f'| cases with HD95 = inf (tumour missed or hallucinated) | '
      f'{_fmt(summary["test_hd95_inf_cases"])} |',
      f'| Table III: correctly / incorrectly segmented (Dice >= '
      f'{config.unet.eval.correct_threshold}) | {summary["table_iii_correct"]}'
      f' / {summary["table_iii_incorrect"]} of {summary["num_test_cases"]} |',
      '',
  ]
  if 'reference_test_dice' in summary:
    ratio = summary.get('dice_ratio_to_real')
    lines += [
        f'The same UNet budget on the real training pairs (the reference run, '
        f'`{os.path.relpath(paths["reference"], os.path.dirname(paths["report"]))}`) '
        f'reaches a pooled test Dice of {_fmt(summary["reference_test_dice"])}: '
        f'this run reaches **{_fmt(ratio)}x** of it.', '']
  return lines


def _check_lines(config: ml_collections.ConfigDict,
                 summary: dict[str, Any]) -> list[str]:
  """The checks of the synthetic pairs and their fidelity, if measured."""
  lines = []
  if 'synthetic_alignment_dice' in summary:
    lines += [
        '## Checks of the synthetic pairs (before the UNet)', '',
        '| check | value |', '|---|---|',
        f'| empty masks | {summary["synthetic_empty_masks"]} of '
        f'{summary["synthetic_num_pairs"]} (gate: <= '
        f'{config.gates.max_empty_fraction:.0%}) |',
        f'| alignment: the reference UNet\'s pooled Dice against the synthetic '
        f'masks | {_fmt(summary["synthetic_alignment_dice"])} (gate: >= '
        f'{config.gates.min_alignment_dice}) |',
        f'| alignment: share of synthetic tumours it finds | '
        f'{_fmt(summary["synthetic_alignment_detected"])} |',
        f'| memorisation: median distance to the nearest real training image,'
        f' synthetic / real-to-real (RMS, [0, 1] intensities) | '
        f'{_fmt(summary["synthetic_nn_distance_fake"])} / '
        f'{_fmt(summary["synthetic_nn_distance_real"])} (ratio '
        f'{_fmt(summary["synthetic_memorisation_ratio"])}) |',
        *_kept_lines(summary),
        f'| GAN checkpoint used (best alignment of '
        f'{config.selection_pairs} pairs per checkpoint) | step '
        f'{summary["synthetic_selected_step"]} |', '']
  elif summary.get('synthetic_empty_masks'):
    lines += [
        f'**Note:** {summary["synthetic_empty_masks"]} of '
        f'{config.num_synthetic} synthetic masks are empty: those pairs teach '
        'the UNet that their images hold no tumour.', '']
  if 'fid' in summary:
    lines += [
        '## Fidelity of the synthetic images', '',
        f'FID/KID use the {summary.get("features", "UNet bottleneck")}, '
        'standardised by the real features\' mean and spread, not Inception: '
        'compare them only between runs scored by the same network '
        '(`fidelity_unet_dir`).', '',
        '| metric | value |', '|---|---|',
        f'| intensity Wasserstein-1 (real vs synthetic) | '
        f'{_fmt(summary.get("intensity_wasserstein"))} |',
        f'| FID (UNet features) | {_fmt(summary.get("fid"))} |',
        f'| KID x 1000 (UNet features) | '
        f'{_fmt(1000 * summary["kid_mean"])} ± {_fmt(1000 * summary["kid_std"])} |',
        f'| MS-SSIM among synthetic / among real (lower = more diverse) | '
        f'{_fmt(summary.get("ms_ssim_diversity_fake"))} / '
        f'{_fmt(summary.get("ms_ssim_diversity_real"))} |', '']
  return lines


def _kept_lines(summary: dict[str, Any]) -> list[str]:
  """Rows for `keep_best_of`: what was drawn, and the cut."""
  if not summary.get('synthetic_keep_best_of'):
    return []
  return [
      f'| kept: the best {summary["synthetic_num_pairs"]} of '
      f'{summary["synthetic_drawn_pairs"]} drawn pairs by the reference UNet\'s '
      f'Dice (the rows above are of the kept pairs) | pair Dice >= '
      f'{_fmt(summary["synthetic_kept_min_pair_dice"])} |',
      f'| all drawn pairs: alignment Dice (the gate\'s number) / empty masks | '
      f'{_fmt(summary["synthetic_drawn_alignment_dice"])} / '
      f'{summary["synthetic_drawn_empty_fraction"]:.0%} |']


def _figure_lines(config: ml_collections.ConfigDict,
                  paths: dict[str, str]) -> list[str]:
  """Links to the GAN's and the UNet's figures."""
  needs_gan = config.train_data != 'real'
  lines = []
  lines += ['## Figures', '']
  if needs_gan:
    gan = os.path.relpath(paths['gan'], os.path.dirname(paths['report']))
    lines += [
        f'- GAN losses (paper Fig. 10): ![]({gan}/figures/losses.png)',
        '- Real vs generated intensities (paper Fig. 11): '
        f'![]({gan}/figures/intensity_distribution.png)',
    ]
    if os.path.exists(os.path.join(paths['synthetic'], 'pairs_grid.png')):
      lines.append('- Synthetic image/mask pairs (mask tinted red): '
                   '![](synthetic/pairs_grid.png)')
    if os.path.exists(os.path.join(paths['synthetic'], 'provenance.csv')):
      lines.append('- Where each synthetic mask came from (host slice, '
                   'source mask, transform): `synthetic/provenance.csv`')
  lines += [
      '- UNet loss (paper Fig. 13): ![](unet/figures/loss.png)',
      '- UNet accuracy (paper Fig. 14): ![](unet/figures/accuracy.png)',
      '- Test predictions, best / median / worst case: '
      '![](unet/figures/overlays.png)', '',
      'Per-case metrics: `unet/per_case.csv`; all test metrics: '
      '`unet/metrics.json`.', '']
  return lines


def write_report(config: ml_collections.ConfigDict, paths: dict[str, str],
                 summary: dict[str, Any]) -> None:
  """report.md: the setting, the metrics table and the figures."""
  lines = (_setting_lines(config, paths, summary)
           + _check_lines(config, summary) + _figure_lines(config, paths))
  workdir_lib.write_text(paths['report'], '\n'.join(lines))
