"""MRBrainS13 and MRBrainS18: adult brain MRI (T1, T1-IR, FLAIR) with labels.

Both ship raw structure labels. Builder config `raw` (the default) stores
them as they are; config `tissue` applies the challenges' own evaluation
merge to mrseg's tissue classes:

  0 background -> 0
  1 cortical GM, 2 basal ganglia -> 2 GM
  3 WM, 4 WM lesions -> 3 WM
  5 peripheral CSF, 6 lateral ventricles -> 1 CSF
  7 cerebellum, 8 brain stem (and for MRBrainS18 9 infarction, 10 other)
    -> 255 ignore (the evaluation skips them; losses and metrics should too)
"""
from collections.abc import Iterator
import dataclasses
import pathlib
from typing import Any

import tensorflow_datasets as tfds

from mrseg.data import io
from mrseg.data.builders import base

IGNORE = io.IGNORE_LABEL
TISSUE_CLASSES = ('background', 'csf', 'gm', 'wm')  # 255 = ignore
_TISSUE_MERGE = {0: 0, 1: 2, 2: 2, 3: 3, 4: 3, 5: 1, 6: 1, 7: IGNORE, 8: IGNORE}
MRBRAINS13_TISSUE_MAP = dict(_TISSUE_MERGE)
MRBRAINS18_TISSUE_MAP = {**_TISSUE_MERGE, 9: IGNORE, 10: IGNORE}
MRBRAINS13_RAW_MAP = {v: v for v in range(9)}  # 0 bg, 1..8 structures
MRBRAINS18_RAW_MAP = {v: v for v in range(11)}  # 0 bg, 1..10 structures

_MODALITIES = ('t1', 't1_ir', 'flair')


@dataclasses.dataclass
class LabelConfig(tfds.core.BuilderConfig):
  tissue: bool = False


_CONFIGS = [
    LabelConfig(
        name='raw',
        description='The dataset\'s own structure labels, unchanged.',
        tissue=False,
    ),
    LabelConfig(
        name='tissue',
        description=(
            'Evaluation merge: 1+2 GM (2), 3+4 WM (3), 5+6 CSF (1); 7, 8 '
            '(and 9, 10 in MRBrainS18) ignored (255).'
        ),
        tissue=True,
    ),
]


def _nifti(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  """The file `stem`.nii or `stem`.nii.gz in `folder`, if any."""
  for suffix in ('.nii', '.nii.gz'):
    if (folder / (stem + suffix)).is_file():
      return folder / (stem + suffix)
  return None


class _Mrbrains(base.ManualDirBuilder, skip_registration=True):
  """Shared discovery and reading; subclasses give the layout."""

  ORDERED = True
  BUILDER_CONFIGS = _CONFIGS
  DEFAULT_CONFIG_NAME = 'raw'
  LAYOUT = ''
  TOP = ''  # The folder of labelled subjects ('TrainingData', 'training').
  RAW_MAP: dict[int, int] = {}
  TISSUE_MAP: dict[int, int] = {}

  def _features(self) -> tfds.features.FeaturesDict:
    return base.volume_features(_MODALITIES)

  def _label_map(self) -> dict[int, int]:
    return self.TISSUE_MAP if self.builder_config.tissue else self.RAW_MAP

  def _subject_files(
      self, subject_dir: pathlib.Path
  ) -> tuple[dict[str, pathlib.Path | None], pathlib.Path | None]:
    """Modality files and label file of one subject folder."""
    raise NotImplementedError

  def _subject_dirs(
      self, root: pathlib.Path
  ) -> list[tuple[pathlib.Path, bool]]:
    """Subject folders and whether they must have labels."""
    return [
        (d, True)
        for d in sorted((root / self.TOP).iterdir(), key=io.natural_key)
        if d.is_dir()
    ]

  def _subjects(
      self, manual_dir: pathlib.Path
  ) -> list[tuple[str, dict[str, pathlib.Path], pathlib.Path | None]]:
    root = io.find_layout_root(manual_dir, (self.TOP,), layout=self.LAYOUT)
    subjects = []
    for subject_dir, needs_label in self._subject_dirs(root):
      if subject_dir.name.startswith('.'):
        continue
      images, label = self._subject_files(subject_dir)
      missing = [name for name, path in images.items() if path is None]
      if needs_label and label is None:
        missing.append('label')
      if missing:
        raise io.DataError(
            f'{subject_dir}: missing {", ".join(missing)}. Expected:\n'
            + self.LAYOUT
        )
      subject_id = subject_dir.relative_to(root).as_posix()
      subjects.append((subject_id, images, label))
    if not subjects:
      raise io.DataError(
          f'No subject folders in {root / self.TOP}. Expected:\n{self.LAYOUT}'
      )
    return subjects

  def source_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
    return [
        path
        for _, images, label in self._subjects(manual_dir)
        for path in [*images.values(), label]
        if path is not None
    ]

  def _generate_examples(
      self, manual_dir: pathlib.Path
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, (subject_id, images, label) in enumerate(
        self._subjects(manual_dir)
    ):
      yield i, base.volume_example(
          subject_id, images, label, self._label_map()
      )


class Mrbrains13(_Mrbrains):
  """MRBrainS13: 5 labelled adult subjects (T1, T1-IR, T2-FLAIR; 3 T).

  `id` is the subject folder relative to the layout root
  ('TrainingData/1'); subjects under TestData/ (if present) are unlabelled
  (`labelled` False, `label` 255). Labels per config, see the module doc.
  """

  name = 'mrbrains13'
  TOP = 'TrainingData'
  RAW_MAP = MRBRAINS13_RAW_MAP
  TISSUE_MAP = MRBRAINS13_TISSUE_MAP
  LAYOUT = """\
  <manual_dir>/TrainingData/N/T1.nii, T1_IR.nii, T2_FLAIR.nii,
                              LabelsForTraining.nii      (N = 1..5)
  <manual_dir>/TestData/N/T1.nii, T1_IR.nii, T2_FLAIR.nii (optional, no labels)
(.nii or .nii.gz)."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Register at https://mrbrains13.isi.uu.nl/, download the training (and '
      'optionally test) data, unpack it and pass its folder as manual_dir:\n'
      + LAYOUT
  )

  def _subject_dirs(
      self, root: pathlib.Path
  ) -> list[tuple[pathlib.Path, bool]]:
    dirs = super()._subject_dirs(root)
    if (root / 'TestData').is_dir():
      # The test subjects come without labels: unlabelled examples.
      dirs += [
          (d, False)
          for d in sorted((root / 'TestData').iterdir(), key=io.natural_key)
          if d.is_dir()
      ]
    return dirs

  def _subject_files(
      self, subject_dir: pathlib.Path
  ) -> tuple[dict[str, pathlib.Path | None], pathlib.Path | None]:
    images = {
        't1': _nifti(subject_dir, 'T1'),
        't1_ir': _nifti(subject_dir, 'T1_IR'),
        'flair': _nifti(subject_dir, 'T2_FLAIR'),
    }
    return images, _nifti(subject_dir, 'LabelsForTraining')


class Mrbrains18(_Mrbrains):
  """MRBrainS18: 7 labelled adult subjects (T1, T1-IR, FLAIR; 3 T).

  Reads the pre-processed (registered, bias-corrected) images under `pre/`.
  `id` is the subject folder relative to the layout root ('training/070').
  Labels per config, see the module doc.
  """

  name = 'mrbrains18'
  TOP = 'training'
  RAW_MAP = MRBRAINS18_RAW_MAP
  TISSUE_MAP = MRBRAINS18_TISSUE_MAP
  LAYOUT = """\
  <manual_dir>/training/N/pre/T1.nii.gz, IR.nii.gz, FLAIR.nii.gz
  <manual_dir>/training/N/segm.nii.gz
(N in 1, 4, 5, 7, 14, 070, 148; .nii also accepted)."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Register at https://mrbrains18.isi.uu.nl/, download the training data, '
      'unpack it and pass its folder as manual_dir:\n' + LAYOUT
  )

  def _subject_files(
      self, subject_dir: pathlib.Path
  ) -> tuple[dict[str, pathlib.Path | None], pathlib.Path | None]:
    pre = subject_dir / 'pre'
    images = {
        't1': _nifti(pre, 'T1'),
        't1_ir': _nifti(pre, 'IR'),
        'flair': _nifti(pre, 'FLAIR'),
    }
    return images, _nifti(subject_dir, 'segm')
