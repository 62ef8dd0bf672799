"""Loads a configured 2D dataset into memory, decoded, greyscale and resized.

Every 2D dataset of paper 1 is small (155 to 3,064 slices), so it is decoded
and resized once and held in memory; `pipeline.train_dataset` then shuffles,
repeats and batches it. Arrays: 'image' float32 [N, S, S, C] in [0, 1] and,
where the dataset has masks, 'mask' uint8 [N, S, S, 1] in {0, 1}.
"""
import ml_collections
import numpy as np
import tensorflow as tf

from mrseg.data import phantom

DATASETS_2D = ('phantom2d', 'brain_tumor_detection')


def load_2d(data: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Returns the training arrays of the dataset that `data.name` names."""
  if data.name == 'phantom2d':
    out = phantom.tumor_slices(
        data.num_examples, data.image_size, seed=data.seed,
        contrast=data.contrast, tumor_probability=data.tumor_probability)
    return {'image': out['image'], 'mask': out['mask']}
  if data.name == 'brain_tumor_detection':
    return _load_detection(data)
  raise ValueError(f'Unsupported data.name {data.name!r} for a 2D model; '
                   f'choose one of {DATASETS_2D}.')


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
