"""Robust reading of the files that the real datasets ship.

Every reader here turns a bad file into a `DataError` whose message names the
file and says what was expected, so that a user with a broken download learns
which file to fix instead of reading a traceback from deep inside PIL, nibabel
or TFDS. The TFDS builders in `mrseg.data.builders` call these readers before
they hand an example to TFDS, so every check here runs before encoding (TFDS
would otherwise wrap an encoding failure in a message that prints the whole
example array).
"""
from __future__ import annotations  # nibabel is imported where it is used

from collections.abc import Iterable, Mapping, Sequence
import io
import pathlib
import re
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from PIL import ImageOps

# Label written where a voxel has no usable ground truth: structures that an
# evaluation protocol ignores, and whole volumes that ship without labels.
# Losses and metrics should mask it out.
IGNORE_LABEL = 255

# Grids that differ by less than this (mm in the affine) are the same grid;
# headers written by different tools round spacings differently.
_AFFINE_ATOL = 1e-3

# PIL modes we can turn into 8-bit grey without losing meaning. 16-bit and
# float images would need a windowing choice, so they fail loudly instead.
_GREY_CONVERTIBLE_MODES = frozenset(
    {'1', 'L', 'LA', 'P', 'PA', 'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr'}
)


class DataError(ValueError):
  """A file of a dataset is missing, unreadable or holds unexpected values."""


class Volume(NamedTuple):
  """A 3D image and the voxel-to-world affine of its grid."""
  data: np.ndarray  # (X, Y, Z)
  affine: np.ndarray  # (4, 4) float64


def natural_key(path: pathlib.Path | str) -> tuple[object, ...]:
  """Sort key that orders 'Y2.jpg' before 'Y10.jpg' (numbers by value)."""
  name = pathlib.Path(path).name
  return tuple(
      (0, int(part), '') if part.isdigit() else (1, 0, part.lower())
      for part in re.split(r'(\d+)', name)
      if part
  )


def require_dir(path: pathlib.Path | str, *, layout: str) -> pathlib.Path:
  """Checks that `path` is a non-empty directory.

  Args:
    path: the directory a user pointed us at.
    layout: a description of the layout expected inside it; it goes into the
      error so that the user knows what to put there.

  Returns:
    The resolved path.

  Raises:
    DataError: if `path` is missing, not a directory or empty.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise DataError(f'Directory {path} does not exist. Expected:\n{layout}')
  if not path.is_dir():
    raise DataError(f'{path} is not a directory. Expected:\n{layout}')
  if not any(p for p in path.iterdir() if not p.name.startswith('.')):
    raise DataError(f'Directory {path} is empty. Expected:\n{layout}')
  return path.resolve()


def list_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """Lists the regular files of `directory`, naturally sorted.

  Hidden files ('.DS_Store', '._Y1.jpg' from macOS archives) are skipped:
  they are archive litter, never data.

  Args:
    directory: the folder to list.

  Returns:
    The files, sorted by `natural_key`.

  Raises:
    DataError: if the folder holds a sub-folder, which no supported layout
      has (it usually means the archive was unpacked one level too deep).
  """
  files = []
  for path in directory.iterdir():
    if path.name.startswith('.') or path.name == 'Thumbs.db':
      continue
    if path.is_dir():
      raise DataError(
          f'Unexpected folder {path}: {directory} should only hold files.'
      )
    files.append(path)
  return sorted(files, key=natural_key)


def find_layout_root(
    root: pathlib.Path, required: Sequence[str], *, layout: str
) -> pathlib.Path:
  """Finds the folder that holds all `required` sub-folders.

  Archives are often unpacked with one extra level ('archive/brain_tumor_
  dataset/yes'), so the root itself is tried first and then its immediate
  sub-folders.

  Args:
    root: the manual directory.
    required: names of sub-folders that must all be present.
    layout: description of the expected layout, for the error.

  Returns:
    `root` if it holds every required folder, else its only sub-folder that
    does.

  Raises:
    DataError: if no folder, or more than one sub-folder, qualifies.
  """
  def qualifies(path: pathlib.Path) -> bool:
    return all((path / name).is_dir() for name in required)

  if qualifies(root):
    return root
  candidates = sorted(
      p for p in root.iterdir() if p.is_dir() and qualifies(p)
  )
  if len(candidates) == 1:
    return candidates[0]
  wanted = ', '.join(f'{name}/' for name in required)
  if not candidates:
    raise DataError(
        f'No folder with {wanted} found in {root} (nor one level below). '
        f'Expected:\n{layout}'
    )
  raise DataError(
      f'Several folders with {wanted} found in {root}: '
      f'{[str(p) for p in candidates]}; point manual_dir at one of them.'
  )


def read_image(path: pathlib.Path) -> np.ndarray:
  """Reads a JPEG/PNG/... file as 8-bit greyscale.

  Colour images become grey with PIL's 'L' conversion (ITU-R 601-2 luma); an
  alpha channel is dropped, as OpenCV's `imread` does, which is how the
  papers' own code read these files. The EXIF orientation is applied, so the
  array is what an image viewer shows.

  Args:
    path: the image file.

  Returns:
    A (height, width) uint8 array.

  Raises:
    DataError: if the file is not a decodable image (wrong format, truncated,
      corrupt) or has a bit depth that 8-bit grey cannot hold.
  """
  try:
    with Image.open(path) as image:
      image.load()  # Decodes now, so truncation is caught here.
      if image.mode not in _GREY_CONVERTIBLE_MODES:
        raise DataError(
            f'{path}: unsupported image mode {image.mode!r} (expected 8-bit '
            'greyscale or colour, not 16-bit or float).'
        )
      image = ImageOps.exif_transpose(image)
      grey = np.asarray(image.convert('L'), dtype=np.uint8)
  except DataError:
    raise
  except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    # PIL reports truncation as OSError and bad headers as SyntaxError.
    raise DataError(f'{path}: cannot decode image ({e}).') from e
  if grey.ndim != 2 or min(grey.shape) == 0:
    raise DataError(f'{path}: decoded to shape {grey.shape}, not a 2D image.')
  return grey


def encode_png(image: np.ndarray) -> bytes:
  """Encodes a (H, W) or (H, W, 1) uint8 array as PNG bytes.

  tfds.features.Image stores bytes as given; encoding here with PIL at low
  zlib effort is about 6x faster than TFDS's own TensorFlow encoder, which
  made preparing the 403 real segmentation pairs take most of a minute.

  Args:
    image: 8-bit grey image.

  Returns:
    The PNG file contents.
  """
  if image.dtype != np.uint8:
    raise TypeError(f'encode_png needs uint8, got {image.dtype}.')
  buffer = io.BytesIO()
  Image.fromarray(image.reshape(image.shape[:2])).save(
      buffer, format='png', compress_level=1
  )
  return buffer.getvalue()


def binarize_mask(mask: np.ndarray, path: pathlib.Path | str) -> np.ndarray:
  """Maps a mask stored as {0, 255} or as {0, 1} to uint8 {0, 1}.

  Args:
    mask: the mask as read.
    path: its file, for the error.

  Returns:
    The mask with values in {0, 1}, uint8.

  Raises:
    DataError: if the values fit neither convention (for instance 128, from
      JPEG compression or resampling, or a mix of 1 and 255).
  """
  values = set(np.unique(mask).tolist())
  if values <= {0, 255}:
    return (mask == 255).astype(np.uint8)
  if values <= {0, 1}:
    return mask.astype(np.uint8)
  raise DataError(
      f'{path}: mask values {_short_sorted(values)} are outside {{0, 255}} '
      'and {0, 1}; a mask must be binary.'
  )


def read_mask(path: pathlib.Path) -> np.ndarray:
  """Reads a binary mask image ({0, 255} or {0, 1}) as uint8 {0, 1}."""
  return binarize_mask(read_image(path), path)


def check_same_shape(
    a: np.ndarray,
    b: np.ndarray,
    path_a: pathlib.Path | str,
    path_b: pathlib.Path | str,
) -> None:
  """Raises DataError naming both files if `a` and `b` differ in shape."""
  if a.shape != b.shape:
    raise DataError(
        f'{path_a} has shape {a.shape} but {path_b} has shape {b.shape}; '
        'a pair must be on the same pixel grid.'
    )


def _load_nifti_like(path: pathlib.Path) -> 'nib.spatialimages.SpatialImage':
  # Imported here: the train steps import this module, and an accelerator
  # host running benchmarks/gpu_suite.py has no nibabel.
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  if not path.is_file():
    raise DataError(f'{path}: file not found.')
  if path.suffix.lower() in ('.hdr', '.img'):
    # Analyze/NIfTI pairs need both halves; nibabel's own error would not say
    # which dataset file was incomplete.
    for suffix in ('.hdr', '.img'):
      partner = path.with_suffix(suffix)
      if not partner.is_file():
        raise DataError(
            f'{partner} is missing: an Analyze image needs both the .hdr '
            f'header and the .img data ({path}).'
        )
  try:
    return nib.load(path)
  except Exception as e:  # pylint: disable=broad-except
    # nibabel raises ImageFileError, OSError, EOFError, zlib.error, ...
    raise DataError(f'{path}: cannot read image header ({e}).') from e


def _as_3d(data: np.ndarray, path: pathlib.Path) -> np.ndarray:
  # Some tools write (X, Y, Z, 1); a real 4th dimension is not a volume.
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise DataError(f'{path}: expected a 3D volume, got shape {data.shape}.')
  return data


def _read_3d(path: pathlib.Path, dtype: Any
             ) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
  """(the nibabel image, its 3D voxels as `dtype`), or a DataError."""
  image = _load_nifti_like(path)
  try:
    data = np.asarray(image.get_fdata(dtype=dtype))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{path}: cannot read voxel data ({e}).') from e
  return image, _as_3d(data, path)


def read_volume(path: pathlib.Path) -> Volume:
  """Reads a NIfTI, MGZ or Analyze volume as float32.

  Args:
    path: the image file (for Analyze, the .hdr or the .img).

  Returns:
    The volume (header scaling applied) and its affine.

  Raises:
    DataError: if the file is missing, truncated or corrupt, is not 3D, or
      holds NaN or infinite voxels.
  """
  image, data = _read_3d(path, np.float32)
  finite = np.isfinite(data)
  if not finite.all():
    raise DataError(
        f'{path}: {int(data.size - finite.sum())} voxels are NaN or '
        'infinite.'
    )
  return Volume(data, np.asarray(image.affine, dtype=np.float64))


def read_volume_channels(
    path: pathlib.Path,
) -> tuple[np.ndarray, nib.spatialimages.SpatialImage]:
  """Reads a NIfTI, MGZ or Analyze image as float32 channels [X, Y, Z, C].

  A 3D file is one channel; a 4D file holds its channels on the last axis
  (e.g. T1 and T2 of one subject, on one grid).

  Args:
    path: the image file (for Analyze, the .hdr or the .img).

  Returns:
    The voxels (header scaling applied) and the nibabel image, whose affine
    and header a prediction written for this file should carry.

  Raises:
    DataError: if the file is missing, truncated or corrupt, is not 3D or
      4D, or holds NaN or infinite voxels.
  """
  image = _load_nifti_like(path)
  try:
    data = np.asarray(image.get_fdata(dtype=np.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{path}: cannot read voxel data ({e}).') from e
  while data.ndim > 4 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim == 3:
    data = data[..., None]
  if data.ndim != 4:
    raise DataError(f'{path}: expected a 3D volume (or 4D with channels '
                    f'last), got shape {data.shape}.')
  finite = np.isfinite(data)
  if not finite.all():
    raise DataError(f'{path}: {int(data.size - finite.sum())} voxels are NaN '
                    'or infinite.')
  return data, image


def read_label_volume(path: pathlib.Path) -> Volume:
  """Reads a label volume as int64, checking that every voxel is integral.

  Args:
    path: the label file.

  Returns:
    The labels as int64 and the affine.

  Raises:
    DataError: as `read_volume`, and if a voxel holds a fractional value
      (labels that were resampled with interpolation).
  """
  # float64 holds every label a uint8/int16/int32 file can store exactly.
  image, data = _read_3d(path, np.float64)
  if not np.isfinite(data).all():
    raise DataError(f'{path}: label volume holds NaN or infinite voxels.')
  rounded = np.rint(data)
  if not np.array_equal(rounded, data):
    bad = np.unique(data[rounded != data])
    raise DataError(
        f'{path}: label volume holds non-integer values '
        f'{_short_sorted(bad.tolist())} (interpolated labels?).'
    )
  return Volume(rounded.astype(np.int64), np.asarray(image.affine, np.float64))


def remap_labels(
    labels: np.ndarray,
    mapping: Mapping[int, int],
    path: pathlib.Path | str,
) -> np.ndarray:
  """Maps each label value through `mapping`.

  Args:
    labels: integer label array.
    mapping: every allowed source value to its target value (0..255).
    path: the label file, for the error.

  Returns:
    The remapped labels as uint8.

  Raises:
    DataError: if `labels` holds a value that `mapping` does not list.
  """
  values, inverse = np.unique(labels, return_inverse=True)
  unknown = [v for v in values.tolist() if v not in mapping]
  if unknown:
    raise DataError(
        f'{path}: unexpected label values {_short_sorted(unknown)}; '
        f'expected only {_short_sorted(mapping)}.'
    )
  targets = np.asarray([mapping[v] for v in values.tolist()], dtype=np.uint8)
  return targets[inverse].reshape(labels.shape)


def check_same_grid(volumes: Mapping[pathlib.Path, Volume]) -> None:
  """Checks that volumes share one voxel grid (shape and affine).

  Args:
    volumes: each file and what was read from it; the first is the
      reference.

  Raises:
    DataError: naming the reference and the first file on another grid.
  """
  items = list(volumes.items())
  ref_path, ref = items[0]
  for path, volume in items[1:]:
    if volume.data.shape != ref.data.shape:
      raise DataError(
          f'{path} has shape {volume.data.shape} but {ref_path} has shape '
          f'{ref.data.shape}; the images of a subject must share one grid.'
      )
    if not np.allclose(volume.affine, ref.affine, rtol=0, atol=_AFFINE_ATOL):
      raise DataError(
          f'{path} and {ref_path} have different affines (voxel-to-world '
          'maps); the images of a subject must share one grid (register and '
          f'resample them first).\n{path}:\n{volume.affine}\n'
          f'{ref_path}:\n{ref.affine}'
      )


def _short_sorted(values: Iterable[object], limit: int = 20) -> str:
  """Formats a value set for an error message without flooding it."""
  values = sorted(values)
  text = ', '.join(str(v) for v in values[:limit])
  if len(values) > limit:
    text += f', ... ({len(values)} values)'
  return '[' + text + ']'
