"""Kaggle "Brain MRI Images for Brain Tumor Detection" (navoneel)."""
from collections.abc import Iterator
import pathlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mrseg.data import io
from mrseg.data.builders import base

_LABELS = ('no', 'yes')

_LAYOUT = """\
  <manual_dir>/yes/   images with a tumour (155 in the Kaggle release)
  <manual_dir>/no/    images without (98)
JPEG or PNG files of any size, colour or grey, any file names. The Kaggle
archive (also holding a copy under brain_tumor_dataset/) can be unpacked as is:
the top-level yes/ and no/ are used, or the only sub-folder that has both."""


class BrainTumorDetection(base.ManualDirBuilder):
  """Brain MRI slices labelled by whether they show a tumour.

  Every image becomes 8-bit grey (PIL 'L'; alpha dropped, EXIF orientation
  applied) at its original size. One split, `train`, holds all 253 images;
  the DCGAN paper trains on the `yes` images only, so consumers filter by
  `label`. The ~25 exact duplicates of the original are kept.
  """

  name = 'brain_tumor_detection'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download "Brain MRI Images for Brain Tumor Detection" from Kaggle '
      '(navoneel/brain-mri-images-for-brain-tumor-detection), unpack it and '
      'pass its folder as manual_dir:\n' + _LAYOUT
  )

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'image': tfds.features.Image(
            shape=(None, None, 1), dtype=np.uint8, encoding_format='png'
        ),
        'label': tfds.features.ClassLabel(names=_LABELS),
        # Path relative to the layout root, e.g. 'yes/Y1.jpg'.
        'filename': tfds.features.Text(),
    })

  def _root(self, manual_dir: pathlib.Path) -> pathlib.Path:
    return io.find_layout_root(manual_dir, _LABELS, layout=_LAYOUT)

  def source_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
    root = self._root(manual_dir)
    files = []
    for label in _LABELS:
      found = io.list_files(root / label)
      if not found:
        raise io.DataError(
            f'{root / label} holds no images. Expected:\n{_LAYOUT}'
        )
      files.extend(found)
    return files

  def _generate_examples(
      self, manual_dir: pathlib.Path
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    root = self._root(manual_dir)
    for path in self.source_files(manual_dir):
      filename = path.relative_to(root).as_posix()
      yield filename, {
          'image': io.encode_png(io.read_image(path)),
          'label': path.parent.name,
          'filename': filename,
      }
