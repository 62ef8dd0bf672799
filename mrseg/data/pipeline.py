"""tf.data pipelines over in-memory 2D datasets.

The training stream is a pure function of (data, seed, step): global example
number g = step * global_batch + j reads example
`permutation_{epoch}(g mod N)` with `epoch = g // N`, where each epoch's
permutation comes from a stateless index shuffle. So there is no shuffle
buffer to warm up, every epoch sees every example once, and a run resumed at
step s reads exactly the batches the uninterrupted run would have read,
without replaying the s steps before it.
"""
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np
import tensorflow as tf

Batch = dict[str, np.ndarray]

_MAX_STEPS = 2**40  # "repeat forever" for Dataset.range


def to_model_range(image: tf.Tensor) -> tf.Tensor:
  """Maps intensities in [0, 1] to [-1, 1], the range of the generator's tanh."""
  return image * 2.0 - 1.0


def from_model_range(image: np.ndarray) -> np.ndarray:
  """Maps [-1, 1] back to [0, 1], clipping what a generator overshoots."""
  return np.clip((np.asarray(image, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def process_examples(example: Callable[[tf.Tensor], dict[str, tf.Tensor]],
                     global_batch_size: int, start_step: int,
                     process_index: int, local: int) -> tf.data.Dataset:
  """`example(g)` for this process's `local` global indices g of every
  global batch from `start_step` on, unbatched, in order."""
  ds = tf.data.Dataset.range(start_step * global_batch_size,
                             _MAX_STEPS * global_batch_size)
  ds = ds.batch(global_batch_size)
  # Each process keeps its contiguous slice of every global batch.
  ds = ds.map(lambda g: g[process_index * local:(process_index + 1) * local])
  return ds.unbatch().map(example, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)


def train_dataset(
    arrays: Mapping[str, np.ndarray],
    global_batch_size: int,
    seed: int,
    *,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    preprocess: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None = None,
    prefetch: int = 2,
) -> tf.data.Dataset:
  """An endless stream of this process's share of each global batch.

  Args:
    arrays: equally long arrays, one example per row ('image' in [0, 1],
      optionally 'mask'); held in memory.
    global_batch_size: examples per step over all processes and devices.
    seed: the shuffle seed.
    start_step: first step to produce (a resumed run's restored step).
    process_index: this host's index (default: jax.process_index()).
    process_count: number of hosts (default: jax.process_count()).
    preprocess: per-example function run after the gather (e.g. scaling,
      augmentation); stateless random ops in it should be seeded from the
      example's '_global_index' so that resumes stay exact.
    prefetch: batches prepared ahead on the host.

  Returns:
    A tf.data.Dataset of dicts with [global_batch_size // process_count, ...]
    arrays.

  Raises:
    ValueError: for empty or ragged arrays, or a batch that does not split
      over processes.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  num = _check_arrays(arrays)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} must be positive and '
                     f'divisible by the {process_count} processes.')
  local = global_batch_size // process_count
  tensors = {k: tf.constant(v) for k, v in arrays.items()}

  def example(g):
    epoch = g // num
    index = tf.random.experimental.index_shuffle(
        g % num, seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
        max_index=num - 1)
    out = {k: tf.gather(v, index) for k, v in tensors.items()}
    out['_global_index'] = g
    return out

  ds = process_examples(example, global_batch_size, start_step,
                        process_index, local)
  if preprocess is not None:
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  ds = ds.map(_drop_private_keys)
  return ds.batch(local, drop_remainder=True).prefetch(prefetch)


def scale_images(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """The default GAN preprocessing: images to [-1, 1], masks untouched."""
  example = dict(example)
  example['image'] = to_model_range(tf.cast(example['image'], tf.float32))
  return example


def pair_preprocess(channels: int) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
  """Image and mask to [-1, 1], stacked as the channels of one 'image'.

  For GANs that generate image/mask pairs: the discriminator judges both.
  """
  def fn(example):
    image = to_model_range(tf.cast(example['image'], tf.float32))
    mask = to_model_range(tf.cast(example['mask'], tf.float32))
    return {'image': tf.concat([image[..., :channels], mask], axis=-1)}
  return fn


def as_numpy(ds: tf.data.Dataset) -> Iterator[Batch]:
  return ds.as_numpy_iterator()


def _drop_private_keys(example):
  return {k: v for k, v in example.items() if not k.startswith('_')}


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> int:
  if 'image' not in arrays:
    raise ValueError(f"dataset arrays need an 'image' entry, got {sorted(arrays)}")
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f'dataset arrays differ in length: {lengths}')
  num = lengths['image']
  if num == 0:
    raise ValueError('the dataset is empty: no examples to train on.')
  return num
