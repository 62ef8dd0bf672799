"""The pipeline's synthetic pairs: drawn, kept, checked and written.

The `sample` stage restores the GAN checkpoint whose pairs the reference
UNet (trained on the real pairs only) finds best, draws
`keep_best_of x num_synthetic` pairs, keeps the `num_synthetic` best by
that UNet's per-pair Dice (all of them when keep_best_of=1), writes them
(mrseg.data.synthetic) and checks them: empty masks, alignment,
memorisation (checks.json, written last). The gates (mrseg.quality) stop
the pipeline below their thresholds. `manual_pairs` is paper 1's route:
images exported for hand annotation, masks read back.
"""
import os
from typing import Any
import zipfile

from absl import logging
import jax
import ml_collections
import numpy as np

from mrseg import quality
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import synthetic
from mrseg.train import cgan_inputs
from mrseg.train import cgan_trainer
from mrseg.train import dcgan_masks
from mrseg.train import dcgan_trainer

# Folded into a joint GAN's key for the pipeline's samples.
_JOINT_NOISE = 10**9 + 5


def npz_count(path: str, key: str = 'image') -> int:
  """How many pairs a samples.npz holds; -1 if missing or torn."""
  try:
    with np.load(path) as npz:
      return int(len(npz[key])) if key in npz else -1
  # Missing, or cut short by an interruption (before samples.npz was
  # written atomically): then the stage runs again.
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return -1


def stage_done(folder: str) -> bool:
  """A stage folder is finished when its metrics.json exists."""
  return workdir_lib.is_done(os.path.join(folder, 'metrics.json'))


def synthetic_npz(config: ml_collections.ConfigDict,
                  paths: dict[str, str]) -> str:
  """Where the UNet's synthetic pairs are (annotated.npz for gan_type=manual)."""
  name = 'annotated.npz' if config.gan_type == 'manual' else 'samples.npz'
  return os.path.join(paths['synthetic'], name)


class _Generator:
  """Pairs from a trained GAN's checkpoints, whatever its type."""

  def __init__(self, config: ml_collections.ConfigDict,
               gan_config: ml_collections.ConfigDict, gan_dir: str):
    self.conditional = config.gan_type == 'conditional'
    self.config, self.dir = gan_config, gan_dir
    self.arrays = (cgan_inputs.training_arrays(gan_config)
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
    images, masks = dcgan_masks.split_pair(self.config, images)
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


def sample_stage(config: ml_collections.ConfigDict,
                 gan_config: ml_collections.ConfigDict,
                 reference_config: ml_collections.ConfigDict,
                 paths: dict[str, str]) -> str:
  """Selects a checkpoint, writes the pairs, checks them; returns the npz."""
  samples = os.path.join(paths['synthetic'], 'samples.npz')
  if config.gan_type == 'manual':
    return manual_pairs(config, gan_config, paths)
  if (workdir_lib.is_done(paths['checks']) and
      npz_count(samples) == config.num_synthetic):
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
    best = quality.best_checkpoint(selection)
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


def manual_pairs(config: ml_collections.ConfigDict,
                 gan_config: ml_collections.ConfigDict,
                 paths: dict[str, str]) -> str:
  """Paper 1's route: the images are annotated by hand."""
  from mrseg.data import annotated  # pylint: disable=g-import-not-at-top
  samples = os.path.join(paths['synthetic'], 'samples.npz')
  if npz_count(samples) != config.num_synthetic:
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
  out = synthetic_npz(config, paths)
  with workdir_lib.atomic_open(out, 'wb') as f:
    np.savez_compressed(f, **pairs)
  return out
