r"""--mode=predict: a trained segmenter on your own images.

  python launch.py --workdir=RUN --mode=predict --input=PATH --output=DIR

RUN is the workdir of a trained segmenter: a UNet (configs/unet.py, or a
pipeline's workdir, whose unet/ is used) or a 3D segmenter (configs/seg3d.py,
fewshot_gan.py, mrigan.py). Its config.json and its best checkpoint (by
validation Dice) are used; no --config is needed. PATH is one file or a
folder of them: PNG/JPG slices for a 2D UNet, NIfTI (.nii, .nii.gz), MGZ or
Analyze (.hdr/.img) volumes for a 3D model.

Each input is preprocessed exactly as the run's training and test data were
(2D: greyscale, resized to the test size with the run's `data.resize`,
the model's own `input_norm` (inside the UNet), sliding windows where the test size exceeds the
training size; 3D: the brain is the nonzero voxels, `data.block_downsample`
block means, the run's `data.normalization` inside the brain, sliding
windows), and the class probabilities are mapped back onto the input's own
grid before the argmax. DIR receives, per input named STEM:

  STEM_mask.png      2D: the labels at the input's resolution; for a 2-class
                     (tumour) model 0 = background, 255 = tumour; otherwise
                     the class index 0..K-1.
  STEM_seg.nii.gz    3D: labels 0 background, 1 CSF, 2 GM, 3 WM (the class
                     index), with the input's affine and header.
  STEM_overlay.png   the labels drawn over the image (3D: three orthogonal
                     slices through the brain's centre).

and, for the run, predictions.csv (one row per input: tumour area in pixels
and, with --pixel_spacing, mm^2; or each tissue's volume in voxels and mL;
the model and checkpoint step; the error for a file that failed) and
labels.json (the label values). A file that cannot be used (unreadable, the
wrong dimensionality or channel count for the model) is reported by name and
the others are still written, unless strict.
"""
from collections.abc import Sequence
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from scipy import ndimage

from mrseg import viz
from mrseg.data import io
from mrseg.eval import io as eval_io
from mrseg.train import parallel as parallel_lib

# Multi-part suffixes first, so 'x.nii.gz' is one volume named 'x'.
VOLUME_SUFFIXES = ('.nii.gz', '.nii', '.mgz', '.mgh', '.hdr', '.img')
# config.trainer of the runs that segment, and what they take.
SEGMENTERS = {'unet': '2D', 'mrigan': '3D'}


class PredictError(ValueError):
  """The run cannot predict (no trained model) or the input is missing."""


@dataclasses.dataclass
class Summary:
  """What a prediction run did: the CSV rows and the files that failed."""
  output_dir: pathlib.Path
  rows: list[dict[str, Any]]
  failed: list[tuple[str, str]]


# ----------------------------------------------------------------------------
# The run and the inputs.


def load_run(workdir: str | os.PathLike[str]
             ) -> tuple[ml_collections.ConfigDict, pathlib.Path]:
  """The config of a trained segmenter run and the folder that holds it.

  A synth2seg pipeline's workdir stands for its UNet (`unet/`).

  Raises:
    PredictError: if `workdir` is not a run, not a segmenter's run, or has
      no best checkpoint yet.
  """
  workdir = pathlib.Path(workdir).expanduser()
  path = workdir / 'config.json'
  if not path.is_file():
    raise PredictError(
        f'{workdir} has no config.json: --workdir must be the folder of a '
        'trained run (what --mode=train or --mode=pipeline wrote).')
  try:
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise PredictError(f'{path}: cannot read the run config ({e}).') from e
  trainer = config.get('trainer')
  if trainer == 'synth2seg':
    return load_run(workdir / 'unet')
  if trainer not in SEGMENTERS:
    raise PredictError(
        f'{workdir} is a {trainer!r} run, which does not segment: '
        '--mode=predict needs a UNet run (configs/unet.py, or a pipeline '
        'workdir) or a 3D segmenter run (configs/seg3d.py, fewshot_gan.py, '
        'mrigan.py).')
  if not any((workdir / 'best').glob('*')):
    raise PredictError(
        f'{workdir} has no trained model: no best checkpoint in '
        f'{workdir / "best"} (training writes it at its first validation). '
        f'Train first: python launch.py --config=... --workdir={workdir}')
  return config, workdir


def volume_suffix(path: pathlib.Path) -> str:
  """The volume suffix of `path` ('.nii.gz', '.mgz', ...) or ''."""
  name = path.name.lower()
  return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), '')


def stem(path: pathlib.Path) -> str:
  """The file name without its image suffix ('x.nii.gz' -> 'x')."""
  suffix = volume_suffix(path) or path.suffix
  return path.name[:len(path.name) - len(suffix)] if suffix else path.name


def list_inputs(path: str | os.PathLike[str]) -> list[pathlib.Path]:
  """The files to predict: `path` itself, or the files of a folder.

  A folder's hidden files and sub-folders are left out (logged); an Analyze
  pair counts once, by its .hdr. Every other file is an input, so a file
  that is not an image is reported rather than skipped.

  Raises:
    PredictError: if `path` does not exist or the folder holds no file.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise PredictError(f'--input {path} does not exist.')
  if path.is_file():
    return [path]
  files = []
  for p in sorted(path.iterdir(), key=io.natural_key):
    if p.name.startswith('.') or p.name == 'Thumbs.db':
      continue
    if p.is_dir():
      logging.info('Not reading sub-folder %s (only the files of %s).', p,
                   path)
      continue
    if p.suffix.lower() == '.img' and p.with_suffix('.hdr').exists():
      continue
    files.append(p)
  if not files:
    raise PredictError(f'--input {path} holds no files.')
  return files


def _output_names(files: Sequence[pathlib.Path]) -> list[str]:
  """One output stem per input; 'a.png' and 'a.jpg' get 'a_png', 'a_jpg'."""
  stems = [stem(f) for f in files]
  counts = {s: stems.count(s) for s in stems}
  return [s if counts[s] == 1 else f.name.replace('.', '_')
          for s, f in zip(stems, files)]


def _tmp(path: pathlib.Path) -> pathlib.Path:
  """A temporary name beside `path` with its suffix (formats follow it)."""
  return path.with_name(f'.tmp-{os.getpid()}-{path.name}')


def _save_png(image: np.ndarray, path: pathlib.Path) -> None:
  tmp = _tmp(path)
  viz.save_png(image, str(tmp))
  os.replace(tmp, path)


class Progress:
  """files done / total, elapsed time and ETA, on one line of stderr."""

  def __init__(self, total: int, enabled: bool = True):
    self.total, self.done, self.enabled = total, 0, enabled and total > 1
    self.start = time.monotonic()
    self.tty = sys.stderr.isatty()
    self._last_logged = -1

  def update(self, count: int, name: str = '') -> None:
    self.done += count
    if not self.enabled:
      return
    elapsed = time.monotonic() - self.start
    eta = elapsed / self.done * (self.total - self.done) if self.done else 0
    width = 30
    fill = int(width * self.done / self.total)
    line = (f'predict [{"#" * fill}{"." * (width - fill)}] {self.done}/'
            f'{self.total} {100 * self.done / self.total:3.0f}% '
            f'{_clock(elapsed)} elapsed, ETA {_clock(eta)} {name}')
    if self.tty:
      end = '\n' if self.done >= self.total else ''
      print(f'\r{line[:150]:<150}', end=end, file=sys.stderr, flush=True)
    else:
      # Logs (CI, nohup): about every tenth of the way.
      decile = 10 * self.done // self.total
      if decile != self._last_logged:
        self._last_logged = decile
        print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


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
    _save_png(mask.astype(np.uint8), output_dir / f'{name}_mask.png')
    _save_png(viz.label_overlay(item['image'], labels),
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
      out.append(to_input_grid(probs, item['factor'],
                               item['data'].shape[:3]))
    return out

  def write(self, item: dict[str, Any], labels: np.ndarray,
            output_dir: pathlib.Path, name: str) -> dict[str, Any]:
    path = output_dir / f'{name}_seg.nii.gz'
    tmp = _tmp(path)
    eval_io.write_nifti(labels, item['image'].affine, tmp,
                        header=item['image'].header)
    os.replace(tmp, path)
    _save_png(volume_overlay(item['data'][..., 0], labels, item['brain']),
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


# ----------------------------------------------------------------------------
# The run.


def run(workdir: str | os.PathLike[str], input_path: str | os.PathLike[str],
        output_dir: str | os.PathLike[str], *, strict: bool = False,
        pixel_spacing: float = 0.0, progress: bool = True) -> Summary:
  """Segments every input with the run's best checkpoint; writes DIR.

  Args:
    workdir: the trained run (see `load_run`).
    input_path: one image/volume, or a folder of them.
    output_dir: where masks, overlays, predictions.csv and labels.json go
      (created; files of the same names are replaced).
    strict: stop at the first file that cannot be used, instead of
      reporting it and going on.
    pixel_spacing: 2D only: the pixel size in mm, when known, for areas in
      mm^2 (PNG/JPG files do not record it).
    progress: show a progress bar (folders only).

  Returns:
    The rows written to predictions.csv and the files that failed.

  Raises:
    PredictError: for a run without a trained model, a missing input, or an
      output folder that is the input folder.
    io.DataError: with `strict`, for the first file that cannot be used.
  """
  config, workdir = load_run(workdir)
  files = list_inputs(input_path)
  output_dir = pathlib.Path(output_dir).expanduser()
  if output_dir.resolve() in {f.parent.resolve() for f in files} and len(
      files) > 1:
    raise PredictError(f'--output {output_dir} is the input folder; choose '
                       'another, so that outputs are not read as inputs.')
  if SEGMENTERS[config.trainer] == '2D':
    segmenter = Segmenter2D(config, workdir, pixel_spacing)
  else:
    if pixel_spacing:
      logging.warning('--pixel_spacing is for 2D images; volumes carry their '
                      'own voxel size.')
    segmenter = Segmenter3D(config, workdir)
  output_dir.mkdir(parents=True, exist_ok=True)
  logging.info('Predicting %d file(s) from %s with %s (%s, best step %d) '
               'into %s.', len(files), input_path, workdir, segmenter.model,
               segmenter.step, output_dir)
  base = {'model': segmenter.model, 'checkpoint_step': segmenter.step,
          'workdir': str(workdir)}
  names = dict(zip(files, _output_names(files)))
  rows: dict[pathlib.Path, dict[str, Any]] = {}
  failed = []
  bar = Progress(len(files), progress)
  for first in range(0, len(files), segmenter.batch_size):
    chunk = files[first:first + segmenter.batch_size]
    items = []
    for path in chunk:
      try:
        items.append(segmenter.read(path))
      except io.DataError as e:
        if strict:
          raise
        message = str(e) if str(path) in str(e) else f'{path}: {e}'
        logging.error('Skipping %s', message)
        failed.append((str(path), message))
        rows[path] = {'file': str(path), 'status': 'error', 'error': message,
                      **base}
    if items:
      for item, labels in zip(items, segmenter.predict(items)):
        path = item['path']
        rows[path] = {'file': str(path), 'status': 'ok', 'error': '',
                      **base,
                      **segmenter.write(item, labels, output_dir,
                                        names[path])}
    bar.update(len(chunk), chunk[-1].name)
  ordered = [rows[f] for f in files]
  eval_io.write_csv(ordered, output_dir / 'predictions.csv')
  doc = {'model': segmenter.model, 'checkpoint_step': segmenter.step,
         'workdir': str(workdir), **segmenter.labels()}
  tmp = _tmp(output_dir / 'labels.json')
  tmp.write_text(json.dumps(doc, indent=2) + '\n')
  os.replace(tmp, output_dir / 'labels.json')
  logging.info('Wrote %d prediction(s) to %s%s.', len(files) - len(failed),
               output_dir, f'; {len(failed)} file(s) failed: '
               + '; '.join(m for _, m in failed) if failed else '')
  return Summary(output_dir, ordered, failed)
