"""What every manual-download builder shares: layout discovery and staleness.

A builder reads the user's download in place (`manual_dir`) and never
downloads. Each subclass implements

* `source_files(manual_dir)`: find and check the layout (no decoding), so that
  a missing or misplaced download fails before TFDS starts, and
* `_generate_examples(manual_dir)`: decode, validate and yield examples.

**Staleness.** The prepared copy lives in the normal TFDS place
(`data_dir/<name>/<config>/<version>`, so `tfds.builder(name,
data_dir=...)` finds it). While preparing, a builder records in the dataset's
`metadata.json` the resolved manual directory and a fingerprint of its source
files (relative path, size and modification time of each). `prepare()` in
`__init__.py` compares that record with the manual directory it is given and
rebuilds (with a warning) when either differs, so a copy built from another
download, or from a download that changed since, is never silently reused.
Switching back and forth between two downloads therefore rebuilds each time;
give each download its own `data_dir` to keep both.
"""
import abc
from collections.abc import Iterator, Mapping, Sequence
import hashlib
import os
import pathlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mrseg.data import io

# Keys of the source record in `builder.info.metadata`.
SOURCE_DIR_KEY = 'manual_dir'
SOURCE_FINGERPRINT_KEY = 'source_fingerprint'
SOURCE_NUM_FILES_KEY = 'source_num_files'


def fingerprint(root: pathlib.Path, files: Sequence[pathlib.Path]) -> str:
  """Hashes the relative path, size and mtime of each source file.

  Stat data, not contents: hashing a few GB of volumes on every `prepare`
  would cost minutes, while any copy, edit or re-download changes the size or
  the modification time.

  Args:
    root: the manual directory; paths are hashed relative to it.
    files: the source files.

  Returns:
    A hex digest.
  """
  digest = hashlib.sha256()
  for path in sorted(files):
    stat = path.stat()
    rel = os.path.relpath(path, root)
    digest.update(f'{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()


class ManualDirBuilder(
    tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """A GeneratorBasedBuilder that reads a manual download in its own layout."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  # Subclasses describe the layout; it goes into every layout error.
  MANUAL_DOWNLOAD_INSTRUCTIONS = ''
  # Whether examples are written in `_generate_examples` order (ordered by id)
  # rather than shuffled by key hash; ordered sets make id ranges readable.
  ORDERED = False

  @abc.abstractmethod
  def source_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
    """Finds the source files of the layout, raising DataError if broken."""

  @abc.abstractmethod
  def _features(self) -> tfds.features.FeaturesDict:
    """The features of this builder (and of its config)."""

  @abc.abstractmethod
  def _generate_examples(
      self, manual_dir: pathlib.Path
  ) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yields (key, example) with fully validated arrays."""

  def _description(self) -> str:
    return (self.__class__.__doc__ or self.name).strip()

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self._description(),
        features=self._features(),
        # The source record for the staleness check lands in metadata.json.
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=self.ORDERED,
    )

  def check_manual_dir(self, manual_dir: str | os.PathLike[str]) -> str:
    """Checks the layout in `manual_dir` and fingerprints its files.

    Args:
      manual_dir: the user's download.

    Returns:
      The fingerprint of the source files.

    Raises:
      DataError: if the directory is missing or empty or its layout is
        broken.
    """
    root = io.require_dir(manual_dir, layout=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return fingerprint(root, self.source_files(root))

  def _split_generators(
      self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, Iterator[tuple[Any, dict[str, Any]]]]:
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError as e:
      # TFDS asserts that the folder exists and is non-empty; its message
      # holds our instructions. Re-raised as the error type callers catch.
      raise io.DataError(str(e)) from None
    manual_dir = io.require_dir(
        manual_dir, layout=self.MANUAL_DOWNLOAD_INSTRUCTIONS
    )
    files = self.source_files(manual_dir)
    self.info.metadata[SOURCE_DIR_KEY] = str(manual_dir)
    self.info.metadata[SOURCE_FINGERPRINT_KEY] = fingerprint(manual_dir, files)
    self.info.metadata[SOURCE_NUM_FILES_KEY] = len(files)
    # One split with everything: pipelines choose subsets by id, label or
    # fold, so the choice is a config value, not a rebuild.
    return {'train': self._generate_examples(manual_dir)}


def volume_features(
    modalities: Sequence[str],
) -> tfds.features.FeaturesDict:
  """Features of a 3D tissue dataset.

  Args:
    modalities: names of the image volumes, e.g. ('t1', 't2').

  Returns:
    Float32 volumes (zlib-compressed: the background compresses well), a
    uint8 `label` volume on the same grid (IGNORE_LABEL everywhere when the
    subject has no labels), `labelled`, the float64 `affine` and the
    subject `id`.
  """
  volume = dict(shape=(None, None, None), encoding=tfds.features.Encoding.ZLIB)
  features = {
      name: tfds.features.Tensor(dtype=np.float32, **volume)
      for name in modalities
  }
  features['label'] = tfds.features.Tensor(dtype=np.uint8, **volume)
  features['labelled'] = tfds.features.Scalar(dtype=np.bool_)
  features['affine'] = tfds.features.Tensor(shape=(4, 4), dtype=np.float64)
  features['id'] = tfds.features.Text()
  return tfds.features.FeaturesDict(features)


def volume_example(
    subject_id: str,
    images: Mapping[str, pathlib.Path],
    label: pathlib.Path | None,
    mapping: Mapping[int, int],
) -> dict[str, Any]:
  """Reads, checks and packs one subject of a 3D dataset.

  Args:
    subject_id: the subject's id in the dataset.
    images: feature name -> image file, e.g. {'t1': .../T1.nii}.
    label: the label file, or None for an unlabelled subject.
    mapping: every allowed raw label value -> stored label.

  Returns:
    An example for `volume_features(images)`.

  Raises:
    DataError: if a file is unreadable, holds NaN/inf or unexpected labels,
      or the files of the subject are not on one grid.
  """
  volumes = {path: io.read_volume(path) for path in images.values()}
  grid = dict(volumes)
  labels = None
  if label is not None:
    raw = io.read_label_volume(label)
    grid[label] = raw
    labels = io.remap_labels(raw.data, mapping, label)
  io.check_same_grid(grid)
  reference = next(iter(volumes.values()))
  if labels is None:
    labels = np.full(reference.data.shape, io.IGNORE_LABEL, np.uint8)
  example = {name: volumes[path].data for name, path in images.items()}
  example.update(
      label=labels,
      labelled=label is not None,
      affine=reference.affine,
      id=subject_id,
  )
  return example
