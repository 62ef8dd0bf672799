"""The segmenters behind --mode=predict: each input as the run saw its data.

`predict.run` drives one of two segmenters, chosen by the run's trainer:

* `Segmenter2D`, paper 1's UNet on PNG/JPG slices: `preprocess_2d` resizes
  as the test split was, and the probabilities are resized back onto the
  input (`content_box`) before the argmax;
* `Segmenter3D`, paper 2's segmenters (any model.kind) on NIfTI, MGZ or
  Analyze volumes: `preprocess_3d` takes the brain, the block means and the
  normalisation of training; `to_input_grid` maps the probabilities back.

Each has `read(path)`, `predict(items)`, `write(item, labels, dir, name)`
(the outputs and one CSV row) and `labels()` (labels.json). Outputs are
written atomically (`tmp_beside`).
"""
from collections.abc import Sequence
import math
import os
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from scipy import ndimage

from mrseg import saved_configs
from mrseg import viz
from mrseg.data import io
from mrseg.eval import io as eval_io
from mrseg.train import parallel as parallel_lib

# Multi-part suffixes first, so 'x.nii.gz' is one volume named 'x'.
VOLUME_SUFFIXES = ('.nii.gz', '.nii', '.mgz', '.mgh', '.hdr', '.img')


def volume_suffix(path: pathlib.Path) -> str:
  """The volume suffix of `path` ('.nii.gz', '.mgz', ...) or ''."""
  name = path.name.lower()
  return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), '')


def tmp_beside(path: pathlib.Path) -> pathlib.Path:
  """A temporary name beside `path` with its suffix (formats follow it)."""
  return path.with_name(f'.tmp-{os.getpid()}-{path.name}')


def save_png(image: np.ndarray, path: pathlib.Path) -> None:
  tmp = tmp_beside(path)
  viz.save_png(image, str(tmp))
  os.replace(tmp, path)


# ----------------------------------------------------------------------------
# 2D: paper 1's UNet on PNG/JPG slices.


def content_box(height: int, width: int, size: int,
                method: str) -> tuple[int, int, int, int]:
  """Where an image lies in its `datasets.resize` square: top, left, h, w.

  'stretch' fills the square; 'pad' (tf.image.resize_with_pad) scales the
  image to fit and centres it between black bands.
  """
  if method == 'stretch':
    return 0, 0, size, size
  if method != 'pad':
    raise ValueError(f"Unsupported data.resize {method!r}; choose 'stretch' "
                     "or 'pad'.")
  ratio = max(width / size, height / size)
  h, w = height / ratio, width / ratio
  top = max(0, int(math.floor((size - h) / 2)))
  left = max(0, int(math.floor((size - w) / 2)))
  return top, left, max(int(math.floor(h)), 1), max(int(math.floor(w)), 1)


def preprocess_2d(grey: np.ndarray,
                  config: ml_collections.ConfigDict) -> np.ndarray:
  """uint8 [H, W] -> the model's input at the test size, as in training.

  The test split's own steps (`datasets.load_2d_split` at
  `eval.image_size`); intensity normalisation (`model.input_norm`) happens
  inside the UNet.
  """
  from mrseg.data import datasets  # pylint: disable=g-import-not-at-top
  size = config.eval.image_size or config.data.image_size
  image = datasets.resize(grey[..., None], size, config.data.resize,
                          config.data.channels).numpy()
  return image


class Segmenter2D:
  """Paper 1's UNet (config.trainer 'unet') on 8-bit PNG/JPG slices."""

  def __init__(self, config: ml_collections.ConfigDict,
               workdir: pathlib.Path, pixel_spacing: float = 0.0):
    # pylint: disable=g-import-not-at-top
    from mrseg.eval import batched
    from mrseg.eval import segmentation
    from mrseg.train import unet_trainer
    # pylint: enable=g-import-not-at-top
    self._trainer = unet_trainer
    self.config = config
    self.state, self.step = unet_trainer.restore_best(config, str(workdir))
    self.parallel = parallel_lib.Parallel(config.parallel)
    self.eval_fn = batched.compile_eval(
        self.parallel, unet_trainer.make_eval_step(config))
    self.size = config.eval.image_size or config.data.image_size
    self.names = segmentation.class_names(config.model.num_classes)
    self.pixel_spacing = pixel_spacing
    self.batch_size = config.eval_batch_size
    self.model = 'unet'

  def read(self, path: pathlib.Path) -> dict[str, Any]:
    if volume_suffix(path):
      raise io.DataError(
          f'{path}: a 3D volume, but this run is a 2D UNet; give it PNG or '
          'JPG slices (or use a 3D segmenter run).')
    grey = io.read_image(path)
    return {'path': path, 'image': grey,
            'input': preprocess_2d(grey, self.config)}

  def predict(self, items: list[dict[str, Any]]) -> list[np.ndarray]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    probs = self._trainer.predict_probabilities(
        self.config, self.state, np.stack([i['input'] for i in items]),
        self.parallel, eval_fn=self.eval_fn)
    out = []
    for item, p in zip(items, probs):
      h, w = item['image'].shape
      top, left, ch, cw = content_box(h, w, self.size, self.config.data.resize)
      # Probabilities, not labels, are resized: the border between classes
      # is placed at the input's resolution.
      p = tf.image.resize(p[top:top + ch, left:left + cw], (h, w),
                          method='bilinear').numpy()
      out.append(p.argmax(-1).astype(np.uint8))
    return out

  def write(self, item: dict[str, Any], labels: np.ndarray,
            output_dir: pathlib.Path, name: str) -> dict[str, Any]:
    k = len(self.names)
    mask = labels * 255 if k == 2 else labels
    save_png(mask.astype(np.uint8), output_dir / f'{name}_mask.png')
    save_png(viz.label_overlay(item['image'], labels),
              output_dir / f'{name}_overlay.png')
    h, w = labels.shape
    row = {'output': f'{name}_mask.png', 'overlay': f'{name}_overlay.png',
           'height': h, 'width': w,
           'pixel_spacing_mm': self.pixel_spacing or ''}
    for c in range(1, k):
      count = int(np.count_nonzero(labels == c))
      row[f'{self.names[c]}_pixels'] = count
      row[f'{self.names[c]}_mm2'] = (
          count * self.pixel_spacing**2 if self.pixel_spacing else '')
    return row

  def labels(self) -> dict[str, Any]:
    k = len(self.names)
    return {'output': 'STEM_mask.png, at the input\'s resolution',
            'values': {n: (255 * c if k == 2 else c)
                       for c, n in enumerate(self.names)}}


# ----------------------------------------------------------------------------
# 3D: the supervised / Standard-GAN / MRI-GAN segmenters on volumes.


def model_voxel_factor(config: ml_collections.ConfigDict,
                       spacing: Sequence[float], name: str = '') -> int:
  """The block-mean factor that puts an input on the model's voxel size.

  Training coarsens its data by `data.block_downsample`. A model trained
  on the phantom saw voxels of `data.downsample` times that in mm (block
  means of the 1 mm template), so an input is block-averaged to about that
  size; other data sets' voxel sizes are the user's, taken as the input's.
  """
  d = config.data
  block = max(int(d.block_downsample), 1)
  if d.name != 'phantom3d':
    return block
  target = float(d.downsample) * block
  factor = max(1, int(round(target / float(np.mean(spacing)))))
  actual = np.asarray(spacing) * factor
  if np.any(np.abs(actual - target) > 0.25 * target):
    logging.warning('%s: voxels of %s mm become %s mm; the model was '
                    'trained on %.3g mm voxels.', name,
                    np.round(spacing, 3).tolist(),
                    np.round(actual, 3).tolist(), target)
  return factor


def preprocess_3d(data: np.ndarray, affine: np.ndarray,
                  config: ml_collections.ConfigDict,
                  path: pathlib.Path | str = 'volume'
                  ) -> tuple[np.ndarray, np.ndarray, int]:
  """A volume's channels [X, Y, Z, C] -> the model's input, as in training.

  The steps of `tissue.load_splits` for a subject without labels:
  the brain is where any channel is > 0 (skull-stripped inputs, like the
  training data), block means (`tissue.block_downsample`), then
  `volumes.normalize_subjects` with the run's normalisation.

  Returns:
    (input [x, y, z, C] float32 on the model's grid, the brain mask on the
    input's grid, the block factor).

  Raises:
    io.DataError: naming `path`, for a volume without a voxel > 0 or one
      smaller than a block.
  """
  # pylint: disable=g-import-not-at-top
  from mrseg.data import tissue
  from mrseg.data import volumes
  from mrseg.eval import segmentation
  # pylint: enable=g-import-not-at-top
  mods = tissue.modalities(config)
  affine = np.asarray(affine, np.float64)
  brain = np.any(data > 0, axis=-1)
  if not brain.any():
    raise io.DataError(f'{path}: no voxel is > 0; nothing to segment.')
  factor = model_voxel_factor(config, segmentation.voxel_spacing(affine),
                              str(path))
  if min(brain.shape) < factor:
    raise io.DataError(f'{path}: shape {brain.shape} is smaller than the '
                       f"model's {factor}-voxel blocks.")
  subject = {'id': str(path), 'affine': affine, 'brain_mask': brain,
             **{m: data[..., i] for i, m in enumerate(mods)}}
  small = tissue.block_downsample(subject, factor)
  d = config.data
  small = volumes.normalize_subjects(
      [small], mods, d.normalization,
      percentiles=tuple(d.percentiles) or None)[0]
  return volumes.stack_modalities(small, mods), brain, factor


class Segmenter3D:
  """A paper 2 segmenter (config.trainer 'mrigan', any model.kind)."""

  batch_size = 1  # volumes one at a time; windows are batched

  def __init__(self, config: ml_collections.ConfigDict,
               workdir: pathlib.Path):
    # pylint: disable=g-import-not-at-top
    from mrseg.data import tissue
    from mrseg.data import volumes
    from mrseg.eval import segmentation
    from mrseg.train import mrigan_options
    from mrseg.train import mrigan_trainer
    # pylint: enable=g-import-not-at-top
    self._segmentation = segmentation
    self.config = config
    self.parallel = parallel_lib.Parallel(config.parallel)
    mrigan_options.check_config(config, self.parallel.num_devices)
    state, self.step = mrigan_trainer.restore_best(config, str(workdir))
    self.params = jax.device_put(state.disc.params, self.parallel.replicated)
    self.predict_fn = mrigan_trainer.make_predict_fn(config, self.parallel)
    self.mods = tissue.modalities(config)
    self.names = segmentation.class_names(config.model.num_classes,
                                            volumes.TISSUE_CLASSES)
    self.model = f'mrigan/{config.model.kind}'

  def read(self, path: pathlib.Path) -> dict[str, Any]:
    if not volume_suffix(path):
      raise io.DataError(
          f'{path}: not a NIfTI, MGZ or Analyze volume, but this run is a 3D '
          f'segmenter ({self.model}); give it 3D volumes (or use a 2D UNet '
          'run for PNG/JPG slices).')
    data, image = io.read_volume_channels(path)
    if data.shape[-1] != len(self.mods):
      raise io.DataError(
          f'{path}: {data.shape[-1]} channel(s) of shape {data.shape[:3]}, '
          f'but the model takes {len(self.mods)} ({",".join(self.mods)}): a '
          '3D file for one channel, a 4D file with the channels last in '
          'that order for several.')
    x, brain, factor = preprocess_3d(data, image.affine, self.config, path)
    return {'path': path, 'image': image, 'data': data, 'brain': brain,
            'factor': factor, 'input': x}

  def predict(self, items: list[dict[str, Any]]) -> list[np.ndarray]:
    out = []
    for item in items:
      probs = self._segmentation.predict_volume(
          self.config, self.predict_fn, self.params, item['input'])
      labels = to_input_grid(probs, item['factor'], item['data'].shape[:3])
      if saved_configs.get(self.config, 'eval.restrict_to_brain'):
        labels = np.where(item['brain'], labels, 0).astype(labels.dtype)
      out.append(labels)
    return out

  def write(self, item: dict[str, Any], labels: np.ndarray,
            output_dir: pathlib.Path, name: str) -> dict[str, Any]:
    path = output_dir / f'{name}_seg.nii.gz'
    tmp = tmp_beside(path)
    eval_io.write_nifti(labels, item['image'].affine, tmp,
                        header=item['image'].header)
    os.replace(tmp, path)
    save_png(volume_overlay(item['data'][..., 0], labels, item['brain']),
              output_dir / f'{name}_overlay.png')
    spacing = self._segmentation.voxel_spacing(item['image'].affine)
    voxel_ml = abs(float(np.linalg.det(
        np.asarray(item['image'].affine)[:3, :3]))) / 1000.0
    row = {'output': path.name, 'overlay': f'{name}_overlay.png',
           'shape': 'x'.join(str(n) for n in labels.shape),
           'spacing_mm': 'x'.join(f'{s:.4g}' for s in spacing),
           'model_voxel_factor': item['factor']}
    for c in range(1, len(self.names)):
      count = int(np.count_nonzero(labels == c))
      row[f'{self.names[c]}_voxels'] = count
      row[f'{self.names[c]}_ml'] = round(count * voxel_ml, 4)
    return row

  def labels(self) -> dict[str, Any]:
    return {'output': 'STEM_seg.nii.gz, with the input\'s affine and header',
            'values': {n: c for c, n in enumerate(self.names)}}


def to_input_grid(probs: np.ndarray, factor: int,
                  shape: Sequence[int]) -> np.ndarray:
  """Labels on the input's grid from probabilities on its block-mean grid.

  Block j's centre is input voxel j * factor + (factor - 1) / 2, so input
  voxel i reads the coarse grid at (i - (factor - 1) / 2) / factor; each
  class's probability is interpolated linearly (edges held), then argmax.
  """
  shape = tuple(int(n) for n in shape)
  if factor == 1 and probs.shape[:3] == shape:
    return probs.argmax(-1).astype(np.uint8)
  best = np.full(shape, -1.0, np.float32)
  labels = np.zeros(shape, np.uint8)
  for c in range(probs.shape[-1]):
    p = ndimage.affine_transform(
        probs[..., c], np.full(3, 1.0 / factor),
        offset=np.full(3, -(factor - 1) / (2.0 * factor)),
        output_shape=shape, order=1, mode='nearest')
    better = p > best
    labels[better] = c
    best[better] = p[better]
  return labels


def volume_overlay(image: np.ndarray, labels: np.ndarray,
                   brain: np.ndarray) -> np.ndarray:
  """Three orthogonal slices through the brain's centre, labels drawn over."""
  centre = [int(round(c)) for c in ndimage.center_of_mass(brain)]
  values = image[brain]
  lo, hi = np.percentile(values, (0.5, 99.5)) if values.size else (0, 1)
  unit = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
  panels = []
  for axis in range(3):
    index = [slice(None)] * 3
    index[axis] = centre[axis]
    # Voxel axis 1 (or 2) upward, as viewers show RAS-ordered volumes.
    panels.append(viz.label_overlay(np.rot90(unit[tuple(index)]),
                                    np.rot90(labels[tuple(index)])))
  height = max(p.shape[0] for p in panels)
  # Coarse or small volumes: whole-voxel enlargement to a viewable size.
  scale = max(1, 256 // height)
  panels = [p.repeat(scale, 0).repeat(scale, 1) for p in panels]
  height *= scale
  gap = np.zeros((height, 4, 3), np.uint8)
  row = []
  for p in panels:
    pad = height - p.shape[0]
    row += [np.pad(p, ((pad // 2, pad - pad // 2), (0, 0), (0, 0))), gap]
  return np.concatenate(row[:-1], axis=1)
