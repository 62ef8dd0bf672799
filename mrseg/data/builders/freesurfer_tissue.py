"""T1 volumes with FreeSurfer `aseg` labels, mapped to CSF/GM/WM.

Stored labels: 0 background, 1 CSF, 2 GM, 3 WM, 255 ignore. The mapping
(`ASEG_TO_TISSUE`) follows the FreeSurfer lookup table; the structures whose
tissue is a judgement call go where an intensity-based tissue model would
put them, so the labels teach the model what the image shows:

* brain stem (16) -> WM: it is mostly myelinated tracts and has white-matter
  intensity on T1; calling it background would teach the model that
  WM-looking brain tissue is background.
* choroid plexus (31, 63) -> CSF: it lies inside the ventricles, and
  FreeSurfer's own ventricle mask (`mri_binarize --ventricles`) includes it;
  mapping it elsewhere would punch holes into the ventricles.
* vessels (30, 62) and non-WM hypointensities (80, 81, 82) -> 255 ignore:
  a few voxels of blood, perivascular space and partial volume with no
  tissue class; excluded from losses and metrics rather than forced into one.
* corpus callosum (251-255) and WM hypointensities (77, 78, 79) -> WM, as
  MRBrainS merges WM lesions into WM.
* cerebellar WM (7, 46) -> WM, cerebellar cortex (8, 47) -> GM.
* optic chiasm (85) and 0 -> background.

Any value not in the table fails loudly (a non-aseg file, or an aseg from a
tool with another lookup table). These labels are automatic, not manual: a
Dice against them measures agreement with FreeSurfer.
"""
from collections.abc import Iterator
import pathlib
import re
from typing import Any

import tensorflow_datasets as tfds

from mrseg.data import io
from mrseg.data.builders import base

BG, CSF, GM, WM, IGNORE = 0, 1, 2, 3, io.IGNORE_LABEL
CLASSES = ('background', 'csf', 'gm', 'wm')  # 255 = ignore

ASEG_TO_TISSUE: dict[int, int] = {
    0: BG,
    85: BG,  # optic chiasm, outside the brain parenchyma
    # CSF: lateral, inferior lateral, 3rd, 4th, 5th ventricles, CSF.
    **dict.fromkeys((4, 5, 14, 15, 24, 43, 44, 72), CSF),
    **dict.fromkeys((31, 63), CSF),  # choroid plexus
    # GM: cortex, cerebellar cortex, thalamus, caudate, putamen, pallidum,
    # hippocampus, amygdala, accumbens, ventral DC, substantia nigra.
    **dict.fromkeys((3, 42, 8, 47), GM),
    **dict.fromkeys((9, 10, 11, 12, 13, 17, 18, 26, 27, 28), GM),
    **dict.fromkeys((48, 49, 50, 51, 52, 53, 54, 58, 59, 60), GM),
    # WM: cerebral, cerebellar, brain stem, hypointensities, corpus callosum.
    **dict.fromkeys((2, 41, 7, 46, 16, 77, 78, 79), WM),
    **dict.fromkeys((251, 252, 253, 254, 255), WM),
    # Ignore: vessels and non-WM hypointensities.
    **dict.fromkeys((30, 62, 80, 81, 82), IGNORE),
}

_FLAT = re.compile(
    r'^(?P<id>.+?)[_-](?P<kind>T1|aseg)\.(?:nii|nii\.gz|mgz)$', re.IGNORECASE
)

_LAYOUT = """\
T1/aseg pairs anywhere below <manual_dir>, as either
  <dir>/<id>_T1.nii.gz  + <dir>/<id>_aseg.nii.gz   (or -T1/-aseg;
                                                   .nii, .nii.gz or .mgz)
  <id>/mri/T1.mgz       + <id>/mri/aseg.mgz       (a FreeSurfer subject)
with T1 and aseg on the same voxel grid."""


class FreesurferTissue(base.ManualDirBuilder):
  """T1 volumes with CSF/GM/WM labels from FreeSurfer's automatic aseg.

  `label` is 0 bg, 1 CSF, 2 GM, 3 WM, 255 ignore (see the module doc for
  the mapping). `id` is the pair's id (file-name prefix or FreeSurfer
  subject folder). One split, `train`, in id order.
  """

  name = 'freesurfer_tissue'
  ORDERED = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Run FreeSurfer recon-all (or collect T1 + aseg outputs) and pass '
      'their folder as manual_dir:\n' + _LAYOUT
  )

  def _features(self) -> tfds.features.FeaturesDict:
    return base.volume_features(('t1',))

  def _pairs(
      self, manual_dir: pathlib.Path
  ) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    found: dict[tuple[pathlib.Path, str], dict[str, pathlib.Path]] = {}
    for path in sorted(manual_dir.rglob('*'), key=str):
      if not path.is_file() or path.name.startswith('.'):
        continue
      if path.parent.name == 'mri' and path.name in ('T1.mgz', 'aseg.mgz'):
        # FreeSurfer subject folder: the id is the subject's folder.
        key = (path.parent.parent, path.parent.parent.name)
        kind = path.name.split('.')[0].lower()
      else:
        match = _FLAT.match(path.name)
        if not match:
          continue  # Other FreeSurfer outputs and unrelated files.
        key = (path.parent, match.group('id'))
        kind = match.group('kind').lower()
      files = found.setdefault(key, {})
      if kind in files:
        raise io.DataError(
            f'{path} and {files[kind]} both give the {kind} of one subject.'
        )
      files[kind] = path
    pairs: dict[str, tuple[pathlib.Path, pathlib.Path]] = {}
    for (_, subject_id), files in sorted(found.items(), key=lambda kv: kv[0]):
      if 't1' not in files or 'aseg' not in files:
        have, lacks = (
            ('t1', 'aseg') if 't1' in files else ('aseg', 'T1')
        )
        raise io.DataError(
            f'{files[have]} has no matching {lacks} file. '
            f'Expected:\n{_LAYOUT}'
        )
      if subject_id in pairs:
        raise io.DataError(
            f'Two subjects named {subject_id!r}: {pairs[subject_id][0]} and '
            f'{files["t1"]}.'
        )
      pairs[subject_id] = (files['t1'], files['aseg'])
    if not pairs:
      raise io.DataError(
          f'No T1/aseg pairs found in {manual_dir}. Expected:\n{_LAYOUT}'
      )
    return dict(sorted(pairs.items(), key=lambda kv: io.natural_key(kv[0])))

  def source_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
    return [p for pair in self._pairs(manual_dir).values() for p in pair]

  def _generate_examples(
      self, manual_dir: pathlib.Path
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, (subject_id, (t1, aseg)) in enumerate(
        self._pairs(manual_dir).items()
    ):
      yield i, base.volume_example(
          subject_id, {'t1': t1}, aseg, ASEG_TO_TISSUE
      )
