"""iSEG-2017: 6-month infant brain MRI (T1, T2) with CSF/GM/WM labels."""
from collections.abc import Iterator
import pathlib
import re
from typing import Any

import tensorflow_datasets as tfds

from mrseg.data import io
from mrseg.data.builders import base

# iSEG-2017 stores tissue as grey values; stored labels are 0 bg, 1 CSF,
# 2 GM, 3 WM, as in every tissue dataset of mrseg.
LABEL_MAP = {0: 0, 10: 1, 150: 2, 250: 3}
CLASSES = ('background', 'csf', 'gm', 'wm')

_FILE = re.compile(r'^subject-(\d+)-(T1|T2|label)\.hdr$', re.IGNORECASE)

_LAYOUT = """\
  <manual_dir>/**/subject-N-T1.hdr + .img     Analyze 7.5, N = 1..23
  <manual_dir>/**/subject-N-T2.hdr + .img
  <manual_dir>/**/subject-N-label.hdr + .img  (N = 1..10, training only)
in any sub-folders (e.g. iSeg-2017-Training/ and iSeg-2017-Testing/)."""


class Iseg2017(base.ManualDirBuilder):
  """iSEG-2017 infant brain T1/T2 volumes (144x192x256) with tissue labels.

  `label` is 0 bg, 1 CSF, 2 GM, 3 WM (from the file values 0/10/150/250);
  subjects without a label file (11..23) have `labelled` False and
  `label` IGNORE_LABEL (255) everywhere. One split, `train`, with every
  subject in id order; the few-shot pipeline picks labelled/unlabelled sets.
  """

  name = 'iseg2017'
  ORDERED = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Register at https://iseg2017.web.unc.edu/, download the training and '
      'testing archives, unpack them and pass their folder as manual_dir:\n'
      + _LAYOUT
  )

  def _features(self) -> tfds.features.FeaturesDict:
    return base.volume_features(('t1', 't2'))

  def _subjects(
      self, manual_dir: pathlib.Path
  ) -> dict[int, dict[str, pathlib.Path]]:
    subjects: dict[int, dict[str, pathlib.Path]] = {}
    for path in sorted(manual_dir.rglob('*.hdr'), key=io.natural_key):
      match = _FILE.match(path.name)
      if not match:
        continue  # Not an iSEG file (the archives hold nothing else).
      n, kind = int(match.group(1)), match.group(2).lower()
      files = subjects.setdefault(n, {})
      if kind in files:
        raise io.DataError(f'{path} and {files[kind]} are the same file kind.')
      files[kind] = path
    if not subjects:
      raise io.DataError(
          f'No subject-N-T1.hdr files found in {manual_dir}. '
          f'Expected:\n{_LAYOUT}'
      )
    for n, files in sorted(subjects.items()):
      for kind in ('t1', 't2'):
        if kind not in files:
          have = ', '.join(str(p) for p in files.values())
          raise io.DataError(
              f'Subject {n} has no subject-{n}-{kind.upper()}.hdr '
              f'(found {have}).'
          )
      for path in files.values():
        if not path.with_suffix('.img').is_file():
          raise io.DataError(
              f'{path.with_suffix(".img")} is missing: an Analyze image '
              f'needs both the .hdr header and the .img data ({path}).'
          )
    return subjects

  def source_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
    return [
        path.with_suffix(suffix)
        for files in self._subjects(manual_dir).values()
        for path in files.values()
        for suffix in ('.hdr', '.img')
    ]

  def _generate_examples(
      self, manual_dir: pathlib.Path
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, files in sorted(self._subjects(manual_dir).items()):
      yield n, base.volume_example(
          str(n),
          {'t1': files['t1'], 't2': files['t2']},
          files.get('label'),
          LABEL_MAP,
      )
