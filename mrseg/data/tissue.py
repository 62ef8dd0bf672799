"""Tissue subjects for the 3D segmenters: load, coarsen, split, patch.

The preparation `configs/tissue_base.py`'s `data` block describes, in the
order it runs (`load_splits`): load the subjects (`volumes.load_volumes`),
optionally redefine the brain as the nonzero voxels, block-average onto a
coarser grid (`block_downsample`), normalise intensities inside the brain,
cut each brain into slabs (`slab_subjects`), and split into labelled,
validation, test and unlabelled subjects. `train_dataset` then draws the
training step's patches from the split (`mrseg.data.patches`, tf.data).

TensorFlow is imported only by `train_dataset`: loading and preparing
subjects (and --mode=predict's preprocessing) run without it.
"""
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from mrseg import saved_configs
from mrseg.data import volumes

# config.data.brain_mask: the labels' brain mask, or the nonzero voxels.
BRAIN_MASKS = ('source', 'nonzero')
UNLABELLED_IN_BRAIN = ('background', 'ignore')


def modalities(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.data.modalities ('t1,t2') as a tuple."""
  out = tuple(m.strip() for m in str(config.data.modalities).split(',')
              if m.strip())
  if not out:
    raise ValueError('config.data.modalities is empty; e.g. t1 or t1,t2.')
  return out


def slab_subjects(subjects: list[dict[str, Any]], slabs: int,
                  axis: int = 0) -> list[dict[str, Any]]:
  """Cuts each subject's brain into `slabs` equal slabs along `axis`.

  The brain's extent along the axis (from the brain mask) is split evenly;
  slab k keeps that range of every volume, gets id '<id>-slab<k>' and an
  affine shifted by its offset, so a prediction written with it overlays
  the original image.
  """
  if slabs <= 1:
    return subjects
  if axis not in (0, 1, 2):
    raise ValueError(f'data.slab_axis must be 0, 1 or 2; got {axis}.')
  out = []
  for subject in subjects:
    mask = np.asarray(subject['brain_mask'], bool)
    others = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(mask.any(axis=others))
    lo, hi = int(present[0]), int(present[-1]) + 1
    if hi - lo < slabs:
      raise volumes.DataError(
          f'subject {subject["id"]!r}: its brain spans {hi - lo} voxels '
          f'along axis {axis}, too few for {slabs} slabs.')
    edges = np.round(np.linspace(lo, hi, slabs + 1)).astype(int)
    shape = mask.shape
    for i in range(slabs):
      index = [slice(None)] * 3
      index[axis] = slice(edges[i], edges[i + 1])
      index = tuple(index)
      slab = {}
      for name, value in subject.items():
        if isinstance(value, np.ndarray) and value.shape == shape:
          slab[name] = value[index]
        else:
          slab[name] = value
      affine = np.array(subject['affine'], np.float64)
      affine[:3, 3] += affine[:3, axis] * edges[i]
      slab['affine'] = affine
      slab['id'] = f'{subject["id"]}-slab{i}'
      out.append(slab)
  return out


def ignore_unlabelled_brain(subject: dict[str, Any]) -> dict[str, Any]:
  """The subject with label 0 inside its brain mask set to ignore (255).

  For labels that leave brain tissue unlabelled rather than call it
  background (FreeSurfer's aseg: sulcal CSF is 0), so that no loss or
  metric counts those voxels as background. Before block_downsample: a
  coarse voxel takes its blocks' majority label.
  """
  label = np.asarray(subject['label'])
  out = dict(subject)
  out['label'] = np.where(np.asarray(subject['brain_mask']) & (label == 0),
                          np.asarray(volumes.IGNORE_LABEL, label.dtype), label)
  return out


def block_downsample(subject: dict[str, Any], factor: int
                     ) -> dict[str, Any]:
  """A subject on a grid `factor` times coarser (for CPU-sized runs).

  Images are block means; labels the most frequent label of each block
  (ties to the lower label; 255 counts like any label); the brain mask a
  majority vote. The affine maps the new voxel centres (block centres) to
  the same world positions. Trailing voxels that do not fill a block are
  dropped.
  """
  if factor <= 1:
    return subject
  # An unlabelled image (--mode=predict) has its brain mask's grid.
  shape = np.asarray(subject['label' if 'label' in subject
                             else 'brain_mask']).shape
  crop = tuple(slice(0, (n // factor) * factor) for n in shape)
  new_shape = tuple(n // factor for n in shape)

  def blocks(x):
    x = np.asarray(x)[crop]
    x = x.reshape(new_shape[0], factor, new_shape[1], factor, new_shape[2],
                  factor)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(new_shape + (-1,))

  out = {}
  for name, value in subject.items():
    if not (isinstance(value, np.ndarray) and value.shape == shape):
      out[name] = value
    elif name == 'label':
      b = blocks(value)
      values = np.unique(b)
      counts = np.stack([(b == v).sum(-1) for v in values], axis=-1)
      out[name] = values[counts.argmax(-1)].astype(value.dtype)
    elif value.dtype == bool:
      out[name] = blocks(value).mean(-1) >= 0.5
    else:
      out[name] = blocks(value).mean(-1).astype(value.dtype)
  affine = np.array(subject['affine'], np.float64)
  centre = affine @ np.r_[(factor - 1) / 2.0, (factor - 1) / 2.0,
                          (factor - 1) / 2.0, 1.0]
  affine[:3, :3] *= factor
  affine[:3, 3] = centre[:3]
  out['affine'] = affine
  return out


def load_splits(config: ml_collections.ConfigDict
                ) -> dict[str, list[dict[str, Any]]]:
  """Loads, splits and normalises the subjects of `config.data`.

  Returns:
    {'labelled', 'validation', 'test', 'unlabelled'}: normalised subject
    dicts (see mrseg.data.volumes).
  """
  d = config.data
  mods = modalities(config)
  subjects = volumes.load_volumes(
      d.name, modalities=mods, num_subjects=d.num_subjects, seed=d.seed,
      downsample=d.downsample, num_classes=config.model.num_classes,
      manual_dir=d.manual_dir, data_dir=d.data_dir)
  if d.brain_mask == 'nonzero':
    # Skull-stripped scans: the brain is where the image is, not where the
    # labels are (FreeSurfer leaves sulcal CSF unlabelled; a label-derived
    # mask would paint the label border into the normalised image).
    for s in subjects:
      s['brain_mask'] = np.any([np.asarray(s[m]) > 0 for m in mods], axis=0)
  if saved_configs.get(config, 'data.unlabelled_in_brain') == 'ignore':
    subjects = [ignore_unlabelled_brain(s) if 'label' in s else s
                for s in subjects]
  subjects = [block_downsample(s, d.block_downsample) for s in subjects]
  # Normalised before cutting slabs, so that all slabs of a subject share
  # one intensity scale (a lateral slab has no ventricles to set its min).
  subjects = volumes.normalize_subjects(
      subjects, mods, d.normalization,
      percentiles=tuple(d.percentiles) or None)
  subjects = slab_subjects(subjects, d.slabs, d.slab_axis)
  out = volumes.few_shot_split(
      subjects, num_labelled=d.num_labelled, num_validation=d.num_validation,
      num_test=d.num_test, num_unlabelled=d.num_unlabelled,
      seed=d.split_seed, shuffle=d.shuffle,
      order=[i.strip() for i in d.split_order.split(',') if i.strip()])
  for name, group in out.items():
    logging.info('%s subjects (%d): %s', name, len(group),
                 [s['id'] for s in group])
  return out


def pad_value(config: ml_collections.ConfigDict) -> float:
  """The normalised intensity of background, which pads patches and windows."""
  return volumes.background_value(config.data.normalization)


def train_dataset(config: ml_collections.ConfigDict,
                  splits: dict[str, list[dict[str, Any]]], start_step: int,
                  unlabelled: bool, global_batch: bool = False):
  """The step's batches as a tf.data.Dataset of nested dicts.

  Args:
    config: the run's config.
    splits: from `load_splits`.
    start_step: the first step to produce (a resumed run's step).
    unlabelled: also read unlabelled patches (the kind is adversarial:
      `mrigan_kinds.KindSpec.adversarial`).
    global_batch: read whole global batches (figures) instead of this
      process's share.
  """
  from mrseg.data import patches  # pylint: disable=g-import-not-at-top
  d = config.data
  kwargs = dict(patch_size=d.patch_size, sampling=d.sampling,
                stride=d.stride, min_foreground=d.min_foreground,
                foreground_fraction=d.foreground_fraction,
                start_step=start_step, pad_value=pad_value(config),
                num_classes=config.model.num_classes)
  if global_batch:
    kwargs.update(process_index=0, process_count=1)
  mods = modalities(config)
  if not splits['labelled']:
    raise ValueError('The split has no labelled training subject; set '
                     'data.num_labelled >= 1.')
  if unlabelled:
    if not splits['unlabelled']:
      raise ValueError(
          f'model.kind={config.model.kind!r} needs unlabelled subjects, but '
          'the split leaves none: load more (data.num_subjects) or lower '
          'data.num_test / num_validation / num_labelled.')
    return patches.semi_supervised_dataset(
        splits['labelled'], splits['unlabelled'], mods, config.batch_size,
        config.unlabelled_batch_size, config.seed,
        class_balanced=d.class_balanced, **kwargs)
  ds = patches.patch_dataset(splits['labelled'], mods, config.batch_size,
                             config.seed, labelled=True,
                             class_balanced=d.class_balanced, **kwargs)
  return ds.map(lambda b: {'labelled': b})
