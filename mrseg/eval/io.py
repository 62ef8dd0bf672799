"""Evaluation outputs: per-case CSV tables, and NIfTI predictions that open
in ITK-SNAP/FSLeyes over their input."""
from __future__ import annotations  # nibabel is imported where it is used

from collections.abc import Mapping, Sequence
import csv
import os
import pathlib
from typing import Any

import numpy as np

from mrseg import workdir as workdir_lib


def write_csv(rows: Sequence[Mapping[str, Any]],
              path: str | os.PathLike[str]) -> None:
  """One CSV, written atomically; columns in first-seen order.

  A row without a column leaves it empty (a failed input has no numbers);
  no rows give a table with the one column 'id'.
  """
  fields = []
  for row in rows:
    fields += [k for k in row if k not in fields]
  with workdir_lib.atomic_open(os.fspath(path), newline='') as f:
    out = csv.DictWriter(f, fieldnames=fields or ['id'], restval='')
    out.writeheader()
    out.writerows(rows)


def write_nifti(labels: np.ndarray, affine: np.ndarray,
                path: str | os.PathLike[str],
                header: nib.spatialimages.SpatialHeader | None = None
                ) -> pathlib.Path:
  """Saves a label volume with the affine of its input image.

  Args:
    labels: integer labels [X, Y, Z] (or [H, W]) in the input's voxel order.
    affine: 4x4 voxel-to-world matrix of the input image (e.g.
      ``nib.load(input_path).affine``), so the labels overlay it exactly.
    path: output file, '.nii' or '.nii.gz'; parent folders are created.
    header: the input's header (NIfTI, MGZ or Analyze), whose fields (voxel
      sizes, qform/sform codes, units, orientation) the output keeps; its
      data type and intensity scaling are replaced by the labels'.

  Returns:
    The path written.

  Raises:
    ValueError: for a non-integer label array, negative labels or a bad affine.
  """
  labels = np.asarray(labels)
  affine = np.asarray(affine, np.float64)
  if affine.shape != (4, 4):
    raise ValueError(f'affine must be 4x4; got {affine.shape} (for {path}).')
  if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
    raise ValueError(f'labels for {path} must be integers; got {labels.dtype}.')
  if labels.size and labels.min() < 0:
    raise ValueError(f'labels for {path} must be non-negative.')
  # The smallest type that holds the labels keeps files small and is what
  # viewers expect of a segmentation.
  top = int(labels.max()) if labels.size else 0
  dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Imported here: GPU hosts running benchmarks/gpu_suite.py have no nibabel.
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  if header is not None:
    header = nib.Nifti1Header.from_header(header)
    header.set_data_shape(labels.shape)
  image = nib.Nifti1Image(labels.astype(dtype), affine, header=header)
  image.set_data_dtype(dtype)
  # Labels are stored as they are: no scaling of the input's intensities.
  image.header.set_slope_inter(1.0, 0.0)
  nib.save(image, path)
  return path
