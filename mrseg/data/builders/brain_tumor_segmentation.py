"""Brain tumour segmentation slices (Cheng et al., figshare / Kaggle PNGs).

Two layouts of the same T1-weighted contrast-enhanced set, as builder
configs:

* `png` (default): the Kaggle "Brain Tumor Segmentation" conversion
  (nikhilroxtomar), `images/N.png` and `masks/N.png`.
* `figshare`: the original, MATLAB v7.3 files `N.mat` plus `cvind.mat`.

MATLAB v7.3 files are HDF5. MATLAB writes arrays column-major and HDF5
row-major, so h5py sees every array transposed: an H x W image arrives as
(W, H) and is transposed back here. MATLAB char arrays are stored as uint16
UTF-16 code units with the attribute MATLAB_class = 'char'; `cjdata/PID`
(a 1 x n char row, so an (n, 1) dataset) decodes as
`''.join(map(chr, codes.ravel()))`. `cvind.mat` holds `cvind`, the patient-wise
fold (1..5) of every slice, in slice-number order.
"""
from collections.abc import Iterator
import dataclasses
import pathlib
from typing import Any

from absl import logging
import h5py
import numpy as np
import tensorflow_datasets as tfds

from mrseg.data import ids as ids_lib
from mrseg.data import io
from mrseg.data.builders import base

TUMOR_CLASSES = ('meningioma', 'glioma', 'pituitary')  # figshare labels 1..3

# Figshare slices whose fold is unknown because cvind.mat is absent.
NO_FOLD = -1

_PNG_LAYOUT = """\
  <manual_dir>/images/N.png   8-bit grey slices, N = 1, 2, ...
  <manual_dir>/masks/N.png    the tumour mask of slice N (0 and 255)
(or the only sub-folder holding images/ and masks/)."""

_FIGSHARE_LAYOUT = """\
  <manual_dir>/**/N.mat      MATLAB v7.3 files with cjdata/image, tumorMask,
                             label, PID (any sub-folders, e.g. the four
                             brainTumorDataPublic_* archives unpacked as is)
  <manual_dir>/**/cvind.mat  patient-wise folds (optional; fold -1 without)"""

# Parsed in mrseg.data.ids (pure Python: the train steps' configs need it
# on hosts without TensorFlow).
select_ids = ids_lib.select_ids


def _numbered(path: pathlib.Path, what: str) -> int:
  """The N of 'N.png' / 'N.mat', or a DataError naming the file."""
  if not path.stem.isdigit():
    raise io.DataError(
        f'{path}: unexpected file; {what} must be named N{path.suffix} with '
        'N a slice number.'
    )
  return int(path.stem)


@dataclasses.dataclass
class SegmentationConfig(tfds.core.BuilderConfig):
  layout: str = 'png'


class BrainTumorSegmentation(base.ManualDirBuilder):
  """T1-CE brain MRI slices with tumour masks (Cheng et al. 2015).

  Images are 8-bit grey (figshare int16 images are min-max scaled per slice
  to 0..255, as the Kaggle conversion does); masks are uint8 {0, 1}. One
  split, `train`, holds every slice in id order; a pipeline selects
  contiguous id ranges (`select_ids`) or, for `figshare`, folds by patient.
  """

  name = 'brain_tumor_segmentation'
  ORDERED = True
  BUILDER_CONFIGS = [
      SegmentationConfig(
          name='png',
          description='Kaggle PNG conversion: images/N.png + masks/N.png.',
          layout='png',
      ),
      SegmentationConfig(
          name='figshare',
          description='figshare original: MATLAB v7.3 N.mat + cvind.mat.',
          layout='figshare',
      ),
  ]
  DEFAULT_CONFIG_NAME = 'png'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Config "png": download "Brain Tumor Segmentation" from Kaggle '
      '(nikhilroxtomar/brain-tumor-segmentation), unpack it and pass its '
      'folder as manual_dir:\n' + _PNG_LAYOUT + '\n\nConfig "figshare": '
      'download "brain tumor dataset" (figshare 1512427, Cheng et al.), unpack '
      'the archives and pass their folder as manual_dir:\n' + _FIGSHARE_LAYOUT
  )

  @property
  def _figshare(self) -> bool:
    return self.builder_config.layout == 'figshare'

  def _features(self) -> tfds.features.FeaturesDict:
    image = dict(shape=(None, None, 1), dtype=np.uint8, encoding_format='png')
    features = {
        'image': tfds.features.Image(**image),
        'mask': tfds.features.Image(**image),  # {0, 1}
        'id': tfds.features.Scalar(dtype=np.int64),  # N of N.png / N.mat
    }
    if self._figshare:
      features['patient_id'] = tfds.features.Text()
      features['tumor_class'] = tfds.features.ClassLabel(names=TUMOR_CLASSES)
      features['fold'] = tfds.features.Scalar(dtype=np.int64)  # 1..5 or -1
    return tfds.features.FeaturesDict(features)

  def source_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
    if self._figshare:
      mats, cvind = self._figshare_files(manual_dir)
      return sorted(mats.values()) + ([cvind] if cvind else [])
    images, masks = self._png_pairs(manual_dir)
    return sorted(images.values()) + sorted(masks.values())

  def _generate_examples(
      self, manual_dir: pathlib.Path
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    if self._figshare:
      yield from self._figshare_examples(manual_dir)
      return
    images, masks = self._png_pairs(manual_dir)
    for n in sorted(images):
      image = io.read_image(images[n])
      mask = io.read_mask(masks[n])
      io.check_same_shape(image, mask, images[n], masks[n])
      yield n, {
          'image': io.encode_png(image),
          'mask': io.encode_png(mask),
          'id': n,
      }

  # --- Kaggle PNG layout -----------------------------------------------------

  def _png_pairs(
      self, manual_dir: pathlib.Path
  ) -> tuple[dict[int, pathlib.Path], dict[int, pathlib.Path]]:
    """Matches images/N.* with masks/N.* by N."""
    try:
      root = io.find_layout_root(
          manual_dir, ('images', 'masks'), layout=_PNG_LAYOUT
      )
    except io.DataError as e:
      if next(manual_dir.rglob('*.mat'), None) is not None:
        raise io.DataError(
            f'{e}\n{manual_dir} holds .mat files: this looks like the '
            "figshare layout; use 'brain_tumor_segmentation/figshare'."
        ) from None
      raise
    found = {}
    for folder in ('images', 'masks'):
      by_id = {}
      for path in io.list_files(root / folder):
        n = _numbered(path, folder)
        if n in by_id:
          raise io.DataError(f'{path} and {by_id[n]} have the same number.')
        by_id[n] = path
      found[folder] = by_id
    images, masks = found['images'], found['masks']
    if not images:
      raise io.DataError(
          f'{root / "images"} is empty. Expected:\n{_PNG_LAYOUT}'
      )
    _check_paired(images, masks, 'mask')
    _check_paired(masks, images, 'image')
    return images, masks

  # --- figshare MATLAB layout ------------------------------------------------

  def _figshare_files(
      self, manual_dir: pathlib.Path
  ) -> tuple[dict[int, pathlib.Path], pathlib.Path | None]:
    mats, cvinds = {}, []
    for path in sorted(manual_dir.rglob('*'), key=io.natural_key):
      if path.name.startswith('.') or not path.is_file():
        continue
      if path.suffix.lower() != '.mat':
        continue  # README.txt and the .zip archives sit beside the .mat files.
      if path.name.lower() == 'cvind.mat':
        cvinds.append(path)
        continue
      n = _numbered(path, 'slice files')
      if n in mats:
        raise io.DataError(f'{path} and {mats[n]} have the same number.')
      mats[n] = path
    if not mats:
      raise io.DataError(
          f'No N.mat slice files found in {manual_dir}. '
          f'Expected:\n{_FIGSHARE_LAYOUT}'
      )
    if len(cvinds) > 1:
      raise io.DataError(f'Several cvind.mat files: {cvinds}; keep one.')
    return mats, (cvinds[0] if cvinds else None)

  def _figshare_examples(
      self, manual_dir: pathlib.Path
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    mats, cvind_path = self._figshare_files(manual_dir)
    if cvind_path is None:
      logging.warning(
          'No cvind.mat in %s: every slice gets fold %d.', manual_dir, NO_FOLD
      )
      folds = None
    else:
      folds = read_cvind(cvind_path)
    for n in sorted(mats):
      fold = NO_FOLD
      if folds is not None:
        if n > len(folds):
          raise io.DataError(
              f'{cvind_path} lists folds for slices 1..{len(folds)} but '
              f'{mats[n]} is slice {n}.'
          )
        fold = int(folds[n - 1])
      slice_ = read_figshare_mat(mats[n])
      yield n, dict(slice_, id=n, fold=fold)


def _check_paired(
    have: dict[int, pathlib.Path], other: dict[int, pathlib.Path], what: str
) -> None:
  missing = sorted(set(have) - set(other))
  if missing:
    files = [str(have[n]) for n in missing[:10]]
    more = f' and {len(missing) - 10} more' if len(missing) > 10 else ''
    raise io.DataError(f'No {what} for {files}{more}.')


def _mat_dataset(
    f: h5py.File, key: str, path: pathlib.Path
) -> np.ndarray:
  if key not in f or not isinstance(f[key], h5py.Dataset):
    raise io.DataError(f'{path}: no {key} in this MATLAB file.')
  return np.asarray(f[key][()])


def read_figshare_mat(path: pathlib.Path) -> dict[str, Any]:
  """Reads one figshare slice (MATLAB v7.3) into example fields.

  Args:
    path: an N.mat file with the `cjdata` struct.

  Returns:
    'image' (uint8, scaled per slice) and 'mask' (uint8 {0, 1}) as PNG bytes,
    'patient_id' str and 'tumor_class' (0-based index into TUMOR_CLASSES).

  Raises:
    DataError: if the file is not HDF5, lacks a field, or holds unexpected
      values (mask not binary, label not 1..3, sizes that differ).
  """
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise io.DataError(
        f'{path}: not a MATLAB v7.3 (HDF5) file ({e}); the figshare set ships '
        'v7.3 files.'
    ) from e
  with f:
    try:
      # Transposed back from HDF5's row-major view of MATLAB's column-major.
      image = _mat_dataset(f, 'cjdata/image', path).T
      mask = _mat_dataset(f, 'cjdata/tumorMask', path).T
      label = _mat_dataset(f, 'cjdata/label', path)
      pid_codes = _mat_dataset(f, 'cjdata/PID', path)
    except io.DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Truncated files fail here, inside HDF5's chunk reader.
      raise io.DataError(f'{path}: cannot read MATLAB data ({e}).') from e
  if image.ndim != 2 or min(image.shape) == 0:
    raise io.DataError(f'{path}: cjdata/image has shape {image.shape}.')
  if not np.isfinite(image).all():
    raise io.DataError(f'{path}: cjdata/image holds NaN or infinite pixels.')
  io.check_same_shape(image, mask, f'{path}:cjdata/image',
                      f'{path}:cjdata/tumorMask')
  mask = io.binarize_mask(mask, f'{path}:cjdata/tumorMask')
  if label.size != 1 or float(label.ravel()[0]) not in (1.0, 2.0, 3.0):
    raise io.DataError(
        f'{path}: cjdata/label is {label.ravel().tolist()}, expected 1 '
        '(meningioma), 2 (glioma) or 3 (pituitary).'
    )
  try:
    patient_id = ''.join(chr(int(c)) for c in pid_codes.ravel()).strip()
  except (ValueError, OverflowError) as e:
    raise io.DataError(f'{path}: cjdata/PID is not a MATLAB char array.') from e
  if not patient_id:
    raise io.DataError(f'{path}: cjdata/PID is empty.')
  return {
      'image': io.encode_png(_to_uint8(image)),
      'mask': io.encode_png(mask),
      'patient_id': patient_id,
      'tumor_class': int(label.ravel()[0]) - 1,
  }


def _to_uint8(image: np.ndarray) -> np.ndarray:
  """Min-max scales one slice to 0..255 (a constant slice becomes 0)."""
  image = image.astype(np.float64)
  low, high = image.min(), image.max()
  if high <= low:
    return np.zeros(image.shape, np.uint8)
  return np.rint((image - low) * (255.0 / (high - low))).astype(np.uint8)


def read_cvind(path: pathlib.Path) -> np.ndarray:
  """Reads the per-slice folds (1..5) from figshare's cvind.mat.

  Raises:
    DataError: if the file is unreadable or holds no integer folds >= 1.
  """
  try:
    with h5py.File(path, 'r') as f:
      folds = _mat_dataset(f, 'cvind', path)
  except OSError as e:
    raise io.DataError(f'{path}: not a MATLAB v7.3 (HDF5) file ({e}).') from e
  folds = folds.ravel()
  if (
      folds.size == 0
      or not np.isfinite(folds).all()
      or not np.array_equal(folds, np.rint(folds))
      or folds.min() < 1
  ):
    raise io.DataError(
        f'{path}: cvind must hold one integer fold >= 1 per slice.'
    )
  return folds.astype(np.int64)
