"""Loads a configured 2D dataset into memory, decoded, greyscale and resized.

Every 2D dataset of paper 1 is small (155 to 3,064 slices), so it is decoded
and resized once and held in memory; `pipeline.train_dataset` then shuffles,
repeats and batches it. Arrays: 'image' float32 [N, S, S, C] in [0, 1] and,
where the dataset has masks, 'mask' uint8 [N, S, S, 1] in {0, 1}.

Segmentation datasets are also split (`load_2d_split`): train, validation and
test are id selections in the config (`data.train_ids='1-300'`, ...), which
for brain_tumor_segmentation are the file numbers N of images/N.png and for
the phantom its example numbers. Contiguous ranges keep the slices of one
patient, which have consecutive numbers, in one split.
"""
from collections.abc import Sequence
import zipfile

import ml_collections
import numpy as np
import tensorflow as tf

from mrseg.data import phantom

DATASETS_2D = ('phantom2d', 'brain_tumor_detection', 'brain_tumor_segmentation',
               'brain_tumor_segmentation/figshare')
# Datasets with masks, which `load_2d_split` serves.
SEGMENTATION_DATASETS_2D = ('phantom2d', 'brain_tumor_segmentation',
                            'brain_tumor_segmentation/figshare')
SPLITS = ('train', 'val', 'test')


def load_2d(data: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Returns the training arrays of the dataset that `data.name` names."""
  if data.get('train_ids') and data.name in SEGMENTATION_DATASETS_2D:
    # The training split of a segmentation config (e.g. a GAN that feeds a
    # UNet must see exactly the UNet's real training cases).
    out = load_2d_split(data, 'train')
    return {'image': out['image'], 'mask': out['mask']}
  if data.name == 'phantom2d':
    out = phantom.tumor_slices(
        data.num_examples, data.image_size, seed=data.seed,
        contrast=data.contrast, tumor_probability=data.tumor_probability)
    return {'image': out['image'], 'mask': out['mask']}
  if data.name == 'brain_tumor_detection':
    return _load_detection(data)
  if data.name.startswith('brain_tumor_segmentation'):
    # Image/mask pairs (e.g. for joint generation) without a split: all.
    out = _load_segmentation(data, None, data.image_size)
    return {'image': out['image'], 'mask': out['mask']}
  raise ValueError(f'Unsupported data.name {data.name!r} for a 2D model; '
                   f'choose one of {DATASETS_2D}.')


def load_2d_split(data: ml_collections.ConfigDict, split: str,
                  image_size: int | None = None) -> dict[str, np.ndarray]:
  """Returns one split of a 2D segmentation dataset, in id order.

  Args:
    data: the config's data section; `data.<split>_ids` selects the split
      (see `builders.select_ids`: '1-300', '301-350,400', ...).
    split: 'train', 'val' or 'test'.
    image_size: side of the returned images; default `data.image_size`
      (evaluation may ask for larger images and predict them by windows).

  Returns:
    'image' float32 [N, S, S, C] in [0, 1] (bilinear, antialiased resize),
    'mask' uint8 [N, S, S, 1] in {0, 1} (nearest-neighbour resize, so it
    stays binary) and 'id' int64 [N].

  Raises:
    ValueError: for an unknown dataset or split, a malformed selection, or
      ids the dataset does not have (they are listed).
  """
  if split not in SPLITS:
    raise ValueError(f'Unsupported split {split!r}; choose one of {SPLITS}.')
  source = data.get('train_source', 'real')
  if split == 'train' and source != 'real':
    return _load_train_source(data, source, image_size or data.image_size)
  from mrseg.data import builders  # pylint: disable=g-import-not-at-top
  spec = data.get(f'{split}_ids')
  if not spec:
    raise ValueError(f'data.{split}_ids is empty: set it to an id selection '
                     "such as '1-300'.")
  ids = builders.select_ids(spec)
  size = image_size or data.image_size
  if data.name == 'phantom2d':
    return _load_phantom_ids(data, ids, size)
  if data.name.startswith('brain_tumor_segmentation'):
    return _load_segmentation(data, ids, size)
  raise ValueError(f'Unsupported data.name {data.name!r} for 2D segmentation; '
                   f'choose one of {SEGMENTATION_DATASETS_2D}.')


TRAIN_SOURCES = ('real', 'synthetic', 'real+synthetic')
# Ids of synthetic pairs start here, far from any real file number.
SYNTHETIC_ID_OFFSET = 10**6


def _load_train_source(data: ml_collections.ConfigDict, source: str,
                       size: int) -> dict[str, np.ndarray]:
  """The training split from synthetic pairs, alone or added to the real ones.

  `data.synthetic_npz` is a samples.npz written by a joint GAN's
  `--mode=sample` (or built from hand-annotated samples): 'image' float32
  [N, S, S, C] in [0, 1] and 'mask' {0, 1}.
  """
  if source not in TRAIN_SOURCES:
    raise ValueError(f'Unsupported data.train_source {source!r}; choose one '
                     f'of {TRAIN_SOURCES}.')
  path = data.get('synthetic_npz')
  if not path:
    raise ValueError(f'data.train_source={source!r} needs data.synthetic_npz, '
                     'the samples.npz of generated image/mask pairs.')
  try:
    with np.load(path) as npz:
      images, masks = npz['image'], npz['mask']
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'Cannot read image/mask pairs from {path}: {e}') from e
  _check_pairs(path, images, masks, data.channels)
  if images.shape[1:3] != (size, size):
    images = tf.image.resize(images, (size, size), antialias=True).numpy()
    masks = tf.image.resize(masks, (size, size), method='nearest').numpy()
  synthetic = {
      'image': np.clip(images, 0.0, 1.0).astype(np.float32),
      'mask': masks.astype(np.uint8),
      'id': SYNTHETIC_ID_OFFSET + np.arange(len(images), dtype=np.int64),
  }
  if source == 'synthetic':
    return synthetic
  real_data = ml_collections.ConfigDict(data.to_dict())
  real_data.train_source = 'real'
  real = load_2d_split(real_data, 'train', size)
  return {k: np.concatenate([real[k], synthetic[k]]) for k in synthetic}


def _check_pairs(path: str, images: np.ndarray, masks: np.ndarray,
                 channels: int) -> None:
  """Shapes, finite pixels and 0/1 masks, naming the file and sample index."""
  if (images.ndim != 4 or masks.ndim != 4 or len(images) != len(masks) or
      images.shape[1:3] != masks.shape[1:3] or images.shape[-1] != channels
      or masks.shape[-1] != 1 or not len(images)):
    raise ValueError(
        f'{path}: expected image [N, S, S, {channels}] and mask [N, S, S, 1] '
        f'with N > 0; found image {images.shape} and mask {masks.shape}.')
  for name, bad, what in (
      ('image', ~np.isfinite(images), 'NaN/inf pixels'),
      ('mask', (masks != 0) & (masks != 1), 'mask values other than 0/1')):
    rows = np.flatnonzero(bad.reshape(len(bad), -1).any(1))
    if rows.size:
      raise ValueError(f'{path}: sample {rows[0]} (of {rows.size} such) has '
                       f'{what} in {name!r}.')


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
  """Sorted ids as (first, count) runs of consecutive numbers."""
  runs = []
  for i in ids:
    if runs and runs[-1][0] + runs[-1][1] == i:
      runs[-1] = (runs[-1][0], runs[-1][1] + 1)
    else:
      runs.append((i, 1))
  return runs


def _load_phantom_ids(data: ml_collections.ConfigDict, ids: Sequence[int],
                      size: int) -> dict[str, np.ndarray]:
  # Example i of the phantom depends on (seed, i) alone, so disjoint id
  # ranges are disjoint, reproducible samples.
  parts = [phantom.tumor_slices(count, size, seed=data.seed,
                                contrast=data.contrast,
                                tumor_probability=data.tumor_probability,
                                first_index=first)
           for first, count in _runs(ids)]
  return {
      'image': np.concatenate([p['image'] for p in parts]),
      'mask': np.concatenate([p['mask'] for p in parts]),
      'id': np.concatenate([p['index'] for p in parts]).astype(np.int64),
  }


def _load_segmentation(data: ml_collections.ConfigDict,
                       ids: Sequence[int] | None,
                       size: int) -> dict[str, np.ndarray]:
  """Image/mask pairs of brain_tumor_segmentation with the given ids."""
  from mrseg.data import builders  # pylint: disable=g-import-not-at-top
  if not data.manual_dir:
    raise ValueError(
        f'data.name={data.name} reads your download: set '
        '--config.data.manual_dir to the folder that holds images/ and '
        'masks/ (or the figshare .mat files).')
  builder = builders.prepare(data.name, manual_dir=data.manual_dir,
                             data_dir=data.data_dir or None)
  ds = builder.as_dataset(split='train')
  if ids is not None:
    wanted = tf.constant(list(ids), tf.int64)
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex['id'], wanted)))

  def convert(ex):
    image = resize(ex['image'], size, data.resize, data.channels)
    mask = resize_mask(ex['mask'], size, data.resize)
    return {'image': image, 'mask': mask, 'id': ex['id']}

  out = {'image': [], 'mask': [], 'id': []}
  for ex in ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE,
                   deterministic=True).as_numpy_iterator():
    for k in out:
      out[k].append(ex[k])
  found = set(int(i) for i in out['id'])
  if ids is not None and found != set(ids):
    missing = sorted(set(ids) - found)
    shown = ', '.join(map(str, missing[:20]))
    more = f' and {len(missing) - 20} more' if len(missing) > 20 else ''
    raise ValueError(
        f'{data.manual_dir} has no image/mask pair for id(s) {shown}{more}; '
        'check the data.*_ids selections against the download.')
  if not found:
    raise ValueError(f'No image/mask pairs in {data.manual_dir}.')
  order = np.argsort(np.asarray(out['id']), kind='stable')
  return {k: np.stack(v)[order] for k, v in out.items()}


def _load_detection(data: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  from mrseg.data import builders  # pylint: disable=g-import-not-at-top
  if not data.manual_dir:
    raise ValueError(
        'data.name=brain_tumor_detection reads your Kaggle download: set '
        '--config.data.manual_dir to the folder that holds yes/ and no/.')
  builder = builders.prepare('brain_tumor_detection',
                             manual_dir=data.manual_dir,
                             data_dir=data.data_dir or None)
  names = builder.info.features['label'].names
  unknown = set(data.labels) - set(names)
  if unknown:
    raise ValueError(f'data.labels {tuple(data.labels)} has {sorted(unknown)}; '
                     f'brain_tumor_detection has {names}.')
  wanted = tf.constant([names.index(n) for n in data.labels], tf.int64)
  ds = builder.as_dataset(split='train')
  ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex['label'], wanted)))
  ds = ds.map(lambda ex: resize(ex['image'], data.image_size, data.resize,
                                data.channels),
              num_parallel_calls=tf.data.AUTOTUNE)
  images = list(ds.as_numpy_iterator())
  if not images:
    raise ValueError(f'No {tuple(data.labels)} images in {data.manual_dir}.')
  return {'image': np.stack(images)}


def resize(image: tf.Tensor, size: int, method: str = 'stretch',
           channels: int = 1) -> tf.Tensor:
  """uint8 [H, W, c] -> float32 [size, size, channels] in [0, 1].

  Args:
    image: a decoded image.
    size: the output side.
    method: 'stretch' resizes to a square as paper 1 does; 'pad' first pads
      the shorter side with black, keeping the aspect ratio.
    channels: 1 (greyscale) or 3.

  Returns:
    The resized image, antialiased bilinear.
  """
  image = tf.image.convert_image_dtype(image, tf.float32)
  if channels == 1 and image.shape[-1] == 3:
    image = tf.image.rgb_to_grayscale(image)
  elif channels == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  if method == 'stretch':
    image = tf.image.resize(image, (size, size), antialias=True)
  elif method == 'pad':
    image = tf.image.resize_with_pad(image, size, size, antialias=True)
  else:
    raise ValueError(f"Unsupported data.resize {method!r}; choose 'stretch' or 'pad'.")
  return tf.clip_by_value(image, 0.0, 1.0)


def resize_mask(mask: tf.Tensor, size: int,
                method: str = 'stretch') -> tf.Tensor:
  """uint8 label image [H, W, 1] -> uint8 [size, size, 1], nearest neighbour.

  Nearest neighbour keeps the labels exact (no blends of 0 and 1); 'pad'
  pads with background (0) as `resize` pads the image with black.
  """
  if method == 'stretch':
    mask = tf.image.resize(mask, (size, size), method='nearest')
  elif method == 'pad':
    mask = tf.image.resize_with_pad(mask, size, size, method='nearest')
  else:
    raise ValueError(
        f"Unsupported data.resize {method!r}; choose 'stretch' or 'pad'.")
  return tf.cast(mask, tf.uint8)
