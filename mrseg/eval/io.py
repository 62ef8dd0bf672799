"""NIfTI output: predictions that open in ITK-SNAP/FSLeyes over their input."""
import os
import pathlib

import numpy as np


def write_nifti(labels: np.ndarray, affine: np.ndarray,
                path: str | os.PathLike[str]) -> pathlib.Path:
  """Saves a label volume with the affine of its input image.

  Args:
    labels: integer labels [X, Y, Z] (or [H, W]) in the input's voxel order.
    affine: 4x4 voxel-to-world matrix of the input image (e.g.
      ``nib.load(input_path).affine``), so the labels overlay it exactly.
    path: output file, '.nii' or '.nii.gz'; parent folders are created.

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
  image = nib.Nifti1Image(labels.astype(dtype), affine)
  image.set_data_dtype(dtype)
  nib.save(image, path)
  return path
