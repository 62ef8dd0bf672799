"""The 2D UNet's data: its splits, checked and loaded, and its augmentation.

`configs/unet.py`'s `data` and `augment` blocks, read in the order a run
uses them: `check_splits` (every id selection parses, no id in two splits)
before anything is trained, `load_split` (`datasets.load_2d_split`, then
`check_masks`: labels the model can have, finite pixels) for each split,
and the training augmentation, on the host in tf.data (`make_preprocess`)
or inside the train step (`make_device_augment`).

TensorFlow is imported where it is used: `make_device_augment` (called by
the train step) runs without it.
"""
from typing import Any

from absl import logging
import ml_collections
import numpy as np


def check_splits(config: ml_collections.ConfigDict) -> None:
  """Every split's id selection parses, and no id is in two splits.

  Run before training, so that a bad test selection fails at once rather
  than after the training it would have wasted.

  Raises:
    ValueError: naming the selection and the shared ids.
  """
  from mrseg.data import builders  # pylint: disable=g-import-not-at-top
  ids = {}
  for split in ('train', 'val', 'test'):
    spec = config.data.get(f'{split}_ids')
    if not spec:
      raise ValueError(f'data.{split}_ids is empty: set it to an id '
                       "selection such as '1-300'.")
    try:
      ids[split] = set(builders.select_ids(spec))
    except ValueError as e:
      raise ValueError(f'data.{split}_ids: {e}') from e
  for a, b in (('train', 'val'), ('train', 'test'), ('val', 'test')):
    common = sorted(ids[a] & ids[b])
    if common:
      raise ValueError(
          f'data.{a}_ids={config.data[a + "_ids"]!r} and data.{b}_ids='
          f'{config.data[b + "_ids"]!r} share {len(common)} id(s) '
          f'{common[:10]}: a case must be in one split only.')


def check_masks(arrays: dict[str, np.ndarray], split: str,
                config: ml_collections.ConfigDict) -> None:
  """Fails on labels the model cannot have, naming the cases."""
  allowed = list(range(config.model.num_classes)) + [config.loss.ignore_label]
  ok = np.isin(arrays['mask'], allowed)
  bad = ~ok.reshape(len(ok), -1).all(1)
  if bad.any():
    ids = arrays['id'][bad][:10].tolist()
    values = np.unique(arrays['mask'][bad])[:10].tolist()
    raise ValueError(
        f'The {split} split has mask values {values} outside 0..'
        f'{config.model.num_classes - 1} (and ignore_label '
        f'{config.loss.ignore_label}) in case(s) {ids}.')
  if not np.all(np.isfinite(arrays['image'])):
    bad = ~np.isfinite(arrays['image']).reshape(len(arrays['image']), -1).all(1)
    raise ValueError(f'The {split} split has NaN/inf pixels in case(s) '
                     f'{arrays["id"][bad][:10].tolist()}.')


def load_split(config: ml_collections.ConfigDict, split: str,
               image_size: int | None = None) -> dict[str, np.ndarray]:
  """The split's arrays ('image', 'mask', 'id'), checked (`check_masks`).

  Args:
    config: the run's config.
    split: 'train', 'val' or 'test'.
    image_size: the size to resize to; None: `data.image_size`.
  """
  from mrseg.data import datasets  # pylint: disable=g-import-not-at-top
  arrays = datasets.load_2d_split(config.data, split, image_size)
  check_masks(arrays, split, config)
  logging.info('%s split: %d cases of shape %s (ids %d..%d).', split,
               len(arrays['id']), arrays['image'].shape[1:],
               arrays['id'].min(), arrays['id'].max())
  return arrays


def _augment_options(config: ml_collections.ConfigDict
                     ) -> dict[str, Any] | None:
  """make_augment_2d's arguments, or None when every augmentation is off."""
  options = config.augment.to_dict()
  options.pop('on_device', None)
  if not any(v for k, v in options.items() if k != 'elastic_sigma'):
    return None
  return options


def make_preprocess(config: ml_collections.ConfigDict):
  """The training preprocess: augmentation if any is configured on the host
  (tf.data), else None."""
  options = _augment_options(config)
  if options is None or config.augment.get('on_device', False):
    return None
  from mrseg.data import augment  # pylint: disable=g-import-not-at-top
  return augment.make_augment_2d(**options, seed=config.seed)


def make_device_augment(config: ml_collections.ConfigDict):
  """`augment(batch, indices)` run inside the train step, or None.

  Set by `config.augment.on_device`: the same draws as `make_preprocess`'s
  tf.data version, seeded by (seed, global example index).
  """
  options = _augment_options(config)
  if options is None or not config.augment.get('on_device', False):
    return None
  from mrseg.data import augment_jax  # pylint: disable=g-import-not-at-top
  return augment_jax.make_augment_2d(**options, seed=config.seed)
