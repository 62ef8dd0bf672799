"""3D patch streams for semi-supervised training.

Training streams are pure functions of (subjects, seed, step), like the 2D
stream of `pipeline.train_dataset`: global example g = step * global_batch + j
is computed from g alone with stateless random ops, so a run resumed at step s
reads exactly the batches the uninterrupted run would have read, without
replaying the steps before it, and each process keeps its contiguous slice of
every global batch.

Two ways to pick patches:

* 'grid': every patch of a dense grid (Mondal et al.: 32^3 patches with
  stride 8) that holds more than `min_foreground` foreground voxels (Mondal:
  6000 labelled voxels), visited in a fresh stateless permutation each epoch.
* 'random': a subject (each equally often, a fresh permutation per round),
  then with probability `foreground_fraction` a patch that contains a random
  foreground voxel (nnU-Net's foreground oversampling) and otherwise a
  uniformly random patch.

Labelled streams may instead be class-balanced (`class_balanced=True`;
`data.class_balanced` of configs/tissue_base.py): example j of each global
batch takes tissue class j mod C in a fresh order per step (C classes
present), and its patch is centred on a random voxel of that class (of any
subject). Every batch of at least C patches then holds every tissue class,
however rare: CSF is 1% of the 3 mm phantom.

Foreground is a tissue label (not background, not 255) for labelled streams
and the brain mask for unlabelled ones. Subjects are normalised beforehand
(`volumes.normalize_subjects`); volumes are stacked into one in-memory tensor
[S, X, Y, Z, C], padded to the largest subject (and at least to the patch)
with the normalisation's background value, and a patch is one `tf.slice`.

Evaluation reads whole volumes instead (`volumes.eval_volumes`,
`mrseg.eval.segmentation`).
"""
from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any

import jax
import numpy as np
import tensorflow as tf

from mrseg.data import pipeline
from mrseg.data import volumes

DataError = volumes.DataError
SAMPLINGS = ('grid', 'random')
# Stream tags folded into the seed: the labelled and unlabelled streams of
# one run draw independent patches from one config seed.
_LABELLED_STREAM, _UNLABELLED_STREAM = 0, 1


def as_triple(size: int | Sequence[int]) -> tuple[int, int, int]:
  """7 -> (7, 7, 7); a 3-sequence stays as it is."""
  out = (size,) * 3 if isinstance(size, (int, np.integer)) else tuple(size)
  if len(out) != 3 or any(int(s) < 1 for s in out):
    raise ValueError(f'Expected one or three positive sizes, got {size!r}.')
  return tuple(int(s) for s in out)


def grid_starts(shape: Sequence[int], patch_size: int | Sequence[int],
                stride: int | Sequence[int]) -> np.ndarray:
  """Start corners of a dense grid of patches that covers a volume.

  Along each axis the starts are 0, stride, 2 * stride, ... and, if that
  leaves a strip at the far border uncovered, one more at size - patch; so
  no patch leaves the volume and, if stride <= patch, every voxel is in some
  patch. An axis shorter than the patch has the single start 0 (the volume
  is padded).

  Args:
    shape: the volume's (X, Y, Z).
    patch_size: patch side(s).
    stride: step(s) between neighbouring starts.

  Returns:
    int32 [N, 3] starts, in raster order.
  """
  patch = as_triple(patch_size)
  stride = as_triple(stride)
  axes = []
  for n, p, s in zip(shape, patch, stride):
    last = max(int(n) - p, 0)
    starts = list(range(0, last + 1, s))
    if starts[-1] != last:
      starts.append(last)
    axes.append(np.asarray(starts, np.int32))
  grid = np.meshgrid(*axes, indexing='ij')
  return np.stack([g.ravel() for g in grid], axis=-1).astype(np.int32)


def patch_counts(mask: np.ndarray, starts: np.ndarray,
                 patch_size: int | Sequence[int]) -> np.ndarray:
  """Number of True voxels of `mask` in each patch, by a summed-volume table.

  O(volume + patches) instead of O(patches * patch volume): the 3D prefix
  sum answers each patch with 8 lookups (inclusion-exclusion).

  Args:
    mask: bool [X, Y, Z].
    starts: int [N, 3] patch corners (patches may reach past the volume;
      the part outside counts as False).
    patch_size: patch side(s).

  Returns:
    int64 [N].
  """
  patch = np.asarray(as_triple(patch_size))
  table = np.zeros(np.asarray(mask.shape) + 1, np.int64)
  table[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
  lo = np.minimum(np.asarray(starts), mask.shape)
  hi = np.minimum(np.asarray(starts) + patch, mask.shape)
  total = np.zeros(len(lo), np.int64)
  for corner in np.ndindex(2, 2, 2):
    idx = np.where(np.asarray(corner, bool), hi, lo)
    sign = (-1)**(3 - sum(corner))
    total += sign * table[idx[:, 0], idx[:, 1], idx[:, 2]]
  return total


def foreground_mask(subject: Mapping[str, Any], labelled: bool) -> np.ndarray:
  """Tissue voxels (label not 0, not 255) or, unlabelled, the brain mask."""
  if labelled:
    label = np.asarray(subject['label'])
    return (label > 0) & (label != volumes.IGNORE_LABEL)
  return np.asarray(subject['brain_mask'], bool)


def grid_table(subjects: Sequence[Mapping[str, Any]],
               patch_size: int | Sequence[int], stride: int | Sequence[int],
               *, min_foreground: int = 0, labelled: bool = True
               ) -> np.ndarray:
  """Every grid patch of every subject that passes the foreground threshold.

  Args:
    subjects: subject dicts.
    patch_size: patch side(s).
    stride: grid step(s).
    min_foreground: keep patches with MORE than this many foreground voxels
      (Mondal et al. keep 32^3 patches with > 6000 labelled voxels); 0
      keeps every patch that touches the foreground, -1 every patch.
    labelled: foreground from labels (True) or the brain mask (False).

  Returns:
    int32 [N, 4] rows (subject index, x, y, z).

  Raises:
    DataError: if no patch passes, naming the threshold.
  """
  rows = []
  for i, subject in enumerate(subjects):
    mask = foreground_mask(subject, labelled)
    starts = grid_starts(mask.shape, patch_size, stride)
    keep = patch_counts(mask, starts, patch_size) > min_foreground
    rows.append(np.concatenate(
        [np.full((keep.sum(), 1), i, np.int32), starts[keep]], axis=1))
  table = np.concatenate(rows) if rows else np.zeros((0, 4), np.int32)
  if not len(table):
    raise DataError(
        f'No {as_triple(patch_size)} patch (stride {stride}) of the '
        f'{len(subjects)} subjects has more than {min_foreground} foreground '
        'voxels; lower min_foreground.')
  return table


@dataclasses.dataclass(frozen=True)
class VolumeStack:
  """Subjects stacked for patch extraction in tf.data (numpy, host memory)."""
  images: np.ndarray  # float32 [S, X, Y, Z, C], padded with pad_value.
  labels: np.ndarray  # uint8 [S, X, Y, Z], padded with 0.
  shapes: np.ndarray  # int32 [S, 3], each subject's own (unpadded) shape.
  ids: tuple[str, ...]
  modalities: tuple[str, ...]


def stack_subjects(subjects: Sequence[Mapping[str, Any]],
                   modalities: Sequence[str],
                   patch_size: int | Sequence[int] = 1, *,
                   pad_value: float = 0.0, num_classes: int = 4,
                   check: bool = True) -> VolumeStack:
  """Checks subjects and stacks them into one padded array.

  Args:
    subjects: normalised subject dicts.
    modalities: channels, in order.
    patch_size: every axis is padded to at least this.
    pad_value: image value of the padding (`volumes.background_value`).
    num_classes: for the label check.
    check: run `volumes.check_subject` on each subject first.

  Returns:
    The stack.

  Raises:
    DataError: if a subject fails the checks (named in the message).
  """
  if not subjects:
    raise ValueError('No subjects to stack.')
  modalities = tuple(modalities)
  if check:
    for subject in subjects:
      volumes.check_subject(subject, modalities, num_classes)
  shapes = np.array([np.shape(s['label']) for s in subjects], np.int32)
  full = np.maximum(shapes.max(0), as_triple(patch_size))
  images = np.full((len(subjects), *full, len(modalities)), pad_value,
                   np.float32)
  labels = np.zeros((len(subjects), *full), np.uint8)
  for i, subject in enumerate(subjects):
    x, y, z = shapes[i]
    images[i, :x, :y, :z] = volumes.stack_modalities(subject, modalities)
    labels[i, :x, :y, :z] = subject['label']
  return VolumeStack(images, labels, shapes,
                     tuple(str(s['id']) for s in subjects), modalities)


def _spread(voxels: np.ndarray, most: int) -> np.ndarray:
  """At most `most` rows of `voxels`, evenly spaced (all if fewer)."""
  if len(voxels) <= most:
    return voxels
  return voxels[np.linspace(0, len(voxels) - 1, most).astype(np.int64)]


def foreground_voxels(subjects: Sequence[Mapping[str, Any]], labelled: bool,
                      max_per_subject: int = 20000
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Foreground voxel coordinates of each subject, for oversampling.

  At most `max_per_subject` per subject, evenly spaced in raster order
  (deterministic, and spread over the whole brain), which keeps the table
  small for large volumes (nnU-Net keeps 10,000 per class).

  Returns:
    int32 [M + 1, 3] coordinates of all subjects, concatenated (plus a
    spare row of zeros), and int64 [S + 1] offsets: subject i's voxels are
    rows offsets[i]:offsets[i+1].
  """
  coords, offsets = [], [0]
  for subject in subjects:
    voxels = np.argwhere(foreground_mask(subject, labelled)).astype(np.int32)
    voxels = _spread(voxels, max_per_subject)
    coords.append(voxels)
    offsets.append(offsets[-1] + len(voxels))
  # One spare row, never chosen: a subject without foreground still indexes
  # inside the table (a graph gathers before it selects).
  coords.append(np.zeros((1, 3), np.int32))
  return np.concatenate(coords), np.asarray(offsets, np.int64)


def class_voxels(subjects: Sequence[Mapping[str, Any]],
                 classes: Sequence[int], max_per_subject: int = 20000
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
  """Voxels of each class, for class-balanced sampling.

  At most `max_per_subject` per subject and class, evenly spaced in raster
  order (like `foreground_voxels`).

  Returns:
    int32 [M, 4] rows (subject index, x, y, z), class by class; int64
    offsets: the i-th present class's rows are offsets[i]:offsets[i+1]; and
    the present classes (those of `classes` with a voxel in some subject).

  Raises:
    DataError: if no subject has a voxel of any of `classes`.
  """
  rows, offsets, present = [], [0], []
  for c in classes:
    found = [_spread(np.argwhere(np.asarray(s['label']) == c), max_per_subject)
             for s in subjects]
    found = [np.concatenate([np.full((len(v), 1), i), v], axis=1)
             for i, v in enumerate(found)]
    count = sum(len(v) for v in found)
    if count:
      rows += found
      offsets.append(offsets[-1] + count)
      present.append(int(c))
  if not present:
    raise DataError(f'No voxel of the classes {list(classes)} in the '
                    f'{len(subjects)} labelled subjects.')
  return (np.concatenate(rows).astype(np.int32),
          np.asarray(offsets, np.int64), present)


def patch_dataset(
    subjects: Sequence[Mapping[str, Any]],
    modalities: Sequence[str],
    global_batch_size: int,
    seed: int,
    *,
    patch_size: int | Sequence[int] = 32,
    sampling: str = 'random',
    stride: int | Sequence[int] = 8,
    min_foreground: int = 0,
    foreground_fraction: float = 0.5,
    labelled: bool = True,
    class_balanced: bool = False,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    pad_value: float = 0.0,
    num_classes: int = 4,
    with_positions: bool = False,
    prefetch: int = 2,
) -> tf.data.Dataset:
  """An endless stream of this process's share of each global patch batch.

  Args:
    subjects: normalised subject dicts (`volumes.normalize_subjects`).
    modalities: channels, e.g. ('t1',) or ('t1', 't2').
    global_batch_size: patches per step over all processes and devices.
    seed: the run's seed.
    patch_size: patch side(s); Mondal et al.: 32.
    sampling: 'grid' or 'random' (see the module docstring).
    stride: 'grid': the grid step (Mondal et al.: 8).
    min_foreground: 'grid': keep patches with more than this many foreground
      voxels (Mondal et al.: 6000 at 32^3); -1 keeps all.
    foreground_fraction: 'random': chance that a patch is centred near a
      random foreground voxel rather than anywhere.
    labelled: True: a labelled stream ('image', 'label'; foreground =
      tissue labels); False: an unlabelled stream ('image' only; foreground
      = brain mask). The two draw independently from one seed.
    class_balanced: labelled streams only: patches centred on voxels of the
      tissue classes 1..num_classes-1 in turn (module docstring); sampling,
      stride, min_foreground and foreground_fraction then do not apply.
    start_step: first step to produce (a resumed run's restored step).
    process_index: this host's index (default: jax.process_index()).
    process_count: number of hosts (default: jax.process_count()).
    pad_value: image value where a subject is padded
      (`volumes.background_value(method)`).
    num_classes: for the label check.
    with_positions: also emit 'subject' (int32, index into `subjects`) and
      'start' (int32 [3]) of each patch, for tests and debugging.
    prefetch: batches prepared ahead on the host.

  Returns:
    A tf.data.Dataset of dicts: 'image' float32 [B, px, py, pz, C] and, if
    labelled, 'label' uint8 [B, px, py, pz] (255 = ignore), with
    B = global_batch_size // process_count.

  Raises:
    ValueError: for bad arguments or a batch that does not split over the
      processes.
    DataError: for bad subjects or no patch passing the threshold.
  """
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  process_count = (jax.process_count() if process_count is None
                   else process_count)
  _check_stream_args(global_batch_size, process_count, sampling,
                     foreground_fraction, class_balanced, labelled)
  local = global_batch_size // process_count
  patch = as_triple(patch_size)
  stack = stack_subjects(subjects, modalities, patch, pad_value=pad_value,
                         num_classes=num_classes)
  if class_balanced:
    sampling = 'class_balanced'
  position = _position_fn(
      sampling, subjects, stack, patch, global_batch_size, seed, labelled,
      stride=stride, min_foreground=min_foreground,
      foreground_fraction=foreground_fraction, num_classes=num_classes)
  example = _example_fn(stack, patch, position, labelled, with_positions)
  ds = pipeline.process_examples(example, global_batch_size, start_step,
                                 process_index, local)
  return ds.batch(local, drop_remainder=True).prefetch(prefetch)


def _check_stream_args(global_batch_size: int, process_count: int,
                       sampling: str, foreground_fraction: float,
                       class_balanced: bool, labelled: bool) -> None:
  """Raises ValueError for `patch_dataset` arguments that cannot work."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} must be positive and '
                     f'divisible by the {process_count} processes.')
  if sampling not in SAMPLINGS:
    raise ValueError(f'Unsupported sampling {sampling!r}; choose one of '
                     f'{SAMPLINGS}.')
  if not 0.0 <= foreground_fraction <= 1.0:
    raise ValueError(f'foreground_fraction must be in [0, 1], got '
                     f'{foreground_fraction!r}.')
  if class_balanced and not labelled:
    raise ValueError('class_balanced sampling needs a labelled stream.')


def _position_fn(sampling: str, subjects: Sequence[Mapping[str, Any]],
                 stack: VolumeStack, patch: tuple[int, int, int],
                 global_batch_size: int, seed: int, labelled: bool, *,
                 stride: int | Sequence[int], min_foreground: int,
                 foreground_fraction: float, num_classes: int):
  """`position(g) -> (subject, start)` of the stream's sampling."""
  stream = _LABELLED_STREAM if labelled else _UNLABELLED_STREAM
  if sampling == 'class_balanced':
    rows, offsets, _ = class_voxels(subjects, range(1, num_classes))
    return _balanced_positions(stack.shapes, rows, offsets, patch,
                               global_batch_size, seed, stream)
  if sampling == 'grid':
    return _grid_positions(
        grid_table(subjects, patch, stride, min_foreground=min_foreground,
                   labelled=labelled), seed, stream)
  coords, offsets = foreground_voxels(subjects, labelled)
  return _random_positions(stack.shapes, coords, offsets, patch,
                           foreground_fraction, seed, stream)


def _example_fn(stack: VolumeStack, patch: tuple[int, int, int], position,
                labelled: bool, with_positions: bool):
  """`example(g)`: the patch (image, label) of global example index g."""
  images = tf.constant(stack.images)
  labels = tf.constant(stack.labels) if labelled else None
  channels = len(stack.modalities)

  def example(g):
    subject, start = position(g)
    begin = tf.concat([[subject], start], 0)
    out = {'image': tf.reshape(
        tf.slice(images, tf.concat([begin, [0]], 0), [1, *patch, channels]),
        [*patch, channels])}
    if labelled:
      out['label'] = tf.reshape(tf.slice(labels, begin, [1, *patch]), patch)
    if with_positions:
      out['subject'] = subject
      out['start'] = start
    return out

  return example


def _grid_positions(table: np.ndarray, seed: int, stream: int
                    ) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """g -> (subject, start): a fresh permutation of the table per epoch."""
  rows = tf.constant(table)
  num = len(table)

  def position(g):
    epoch = g // num
    index = tf.random.experimental.index_shuffle(
        g % num, seed=tf.stack([tf.constant(seed, tf.int64),
                                epoch * 2 + stream]),
        max_index=num - 1)
    row = tf.gather(rows, index)
    return row[0], row[1:]

  return position


def _uniform_int(seed: tf.Tensor, upper: tf.Tensor, shape=()) -> tf.Tensor:
  """Integers uniform in 0..upper-1 (upper > 0; broadcasts), stateless."""
  u = tf.random.stateless_uniform(shape, seed, dtype=tf.float64)
  return tf.minimum(tf.cast(u * tf.cast(upper, tf.float64), tf.int64),
                    upper - 1)


def _random_positions(shapes: np.ndarray, coords: np.ndarray,
                      offsets: np.ndarray, patch: tuple[int, int, int],
                      foreground_fraction: float, seed: int, stream: int
                      ) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """g -> (subject, start) with foreground oversampling (stateless)."""
  num = len(shapes)
  # The highest start of each axis (0 where the axis is padded up to the
  # patch); a start is uniform in 0..highest.
  highest = tf.constant(np.maximum(shapes - np.asarray(patch), 0), tf.int64)
  coords_t = tf.constant(coords, tf.int64)
  offsets_t = tf.constant(offsets, tf.int64)
  patch_t = tf.constant(patch, tf.int64)

  def position(g):
    base = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, stream], tf.int64), g)
    fold = lambda k: tf.random.experimental.stateless_fold_in(base, k)
    # Each subject once per round of `num` examples, in a fresh order.
    subject = tf.random.experimental.index_shuffle(
        g % num, seed=tf.stack([tf.constant(seed, tf.int64),
                                (g // num) * 2 + stream]),
        max_index=num - 1)
    top = highest[subject]
    anywhere = _uniform_int(fold(0), top + 1, [3])
    count = offsets_t[subject + 1] - offsets_t[subject]
    voxel = coords_t[offsets_t[subject] + _uniform_int(
        fold(1), tf.maximum(count, 1))]
    # The voxel lands anywhere inside the patch, not always at its centre.
    around = tf.clip_by_value(voxel - _uniform_int(fold(2), patch_t, [3]),
                              0, top)
    use_foreground = ((tf.random.stateless_uniform([], fold(3))
                       < foreground_fraction) & (count > 0))
    start = tf.where(use_foreground, around, anywhere)
    return tf.cast(subject, tf.int32), tf.cast(start, tf.int32)

  return position


def _balanced_positions(shapes: np.ndarray, rows: np.ndarray,
                        offsets: np.ndarray, patch: tuple[int, int, int],
                        global_batch_size: int, seed: int, stream: int
                        ) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """g -> (subject, start): a patch centred on a voxel of a class in turn.

  Example j of global batch b takes class perm_b[j mod C] (`class_voxels`'s
  C classes, perm_b a stateless permutation per batch), then a uniformly
  random voxel of that class; the patch is centred on it, shifted only to
  stay inside the volume (the voxel stays inside the patch).
  """
  num = len(offsets) - 1
  highest = tf.constant(np.maximum(shapes - np.asarray(patch), 0), tf.int64)
  rows_t = tf.constant(rows, tf.int64)
  offsets_t = tf.constant(offsets, tf.int64)
  half = tf.constant(np.asarray(patch) // 2, tf.int64)

  def position(g):
    batch, j = g // global_batch_size, g % global_batch_size
    c = tf.random.experimental.index_shuffle(
        j % num, seed=tf.stack([tf.constant(seed, tf.int64),
                                batch * 2 + stream]), max_index=num - 1)
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, stream], tf.int64), g)
    row = rows_t[offsets_t[c] + _uniform_int(key, offsets_t[c + 1] -
                                             offsets_t[c])]
    subject = row[0]
    start = tf.clip_by_value(row[1:] - half, 0, highest[subject])
    return tf.cast(subject, tf.int32), tf.cast(start, tf.int32)

  return position


def semi_supervised_dataset(
    labelled: Sequence[Mapping[str, Any]],
    unlabelled: Sequence[Mapping[str, Any]],
    modalities: Sequence[str],
    labelled_batch_size: int,
    unlabelled_batch_size: int,
    seed: int,
    class_balanced: bool = False,
    **kwargs: Any,
) -> tf.data.Dataset:
  """Labelled and unlabelled patch streams, zipped step by step.

  Args:
    labelled: normalised labelled training subjects.
    unlabelled: normalised unlabelled training subjects.
    modalities: channels.
    labelled_batch_size: global labelled patches per step.
    unlabelled_batch_size: global unlabelled patches per step.
    seed: the run's seed (the streams fold in different tags).
    class_balanced: class-balanced labelled patches (`patch_dataset`).
    **kwargs: passed to both `patch_dataset` calls (patch_size, sampling,
      start_step, process_index, ...). `min_foreground` applies to the
      labelled stream; the unlabelled one counts brain voxels instead.

  Returns:
    A dataset of {'labelled': {'image', 'label'}, 'unlabelled': {'image'}}.
  """
  return tf.data.Dataset.zip({
      'labelled': patch_dataset(labelled, modalities, labelled_batch_size,
                                seed, labelled=True,
                                class_balanced=class_balanced, **kwargs),
      'unlabelled': patch_dataset(unlabelled, modalities,
                                  unlabelled_batch_size, seed,
                                  labelled=False, **kwargs),
  })
