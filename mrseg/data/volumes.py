"""3D subjects for tissue segmentation: loading, checks, normalisation, splits.

Every 3D source comes out as a list of subject dicts with one layout, the
phantom's:

  't1', 't2', ... : float32 [X, Y, Z], one per modality (only those asked for)
  'label'         : uint8 [X, Y, Z]; 0 background, 1 CSF, 2 GM, 3 WM
                    (4 tumour in the phantom), 255 ignore / unlabelled
  'brain_mask'    : bool [X, Y, Z]
  'affine'        : float64 [4, 4], voxel -> world mm
  'id'            : str
  'labelled'      : bool; False: 'label' holds no ground truth

Sources: the built-in phantom ('phantom3d', no download) and the 3D TFDS
builders ('iseg2017', 'mrbrains13/tissue', 'mrbrains18/tissue',
'freesurfer_tissue'), read from the user's download. The data flow of paper 2
is then

  subjects = load_volumes(name, ...)                  # this module
  splits = few_shot_split(subjects, num_labelled=2, ...)
  train = normalize_subjects(splits['labelled'], modalities, 'minmax')
  ds = patches.patch_dataset(train, ...)              # mrseg.data.patches
  for case in eval_volumes(splits['test'], ...): ...  # whole volumes

(`mrseg.data.tissue.load_splits` runs these steps from a config.)

Volumes are small enough to hold in memory (iSEG-2017, the largest: 23
subjects x 2 modalities x 28 MB), so everything here is numpy; tf.data only
starts at the patch streams.
"""
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mrseg.data import io
from mrseg.data import phantom

DataError = io.DataError
IGNORE_LABEL = io.IGNORE_LABEL
TISSUE_CLASSES = ('background', 'csf', 'gm', 'wm')
SOURCES = ('phantom3d', 'iseg2017', 'mrbrains13/tissue', 'mrbrains18/tissue',
           'freesurfer_tissue')
NORMALIZATIONS = ('minmax', 'zscore', 'none')
SPLITS = ('labelled', 'validation', 'test', 'unlabelled')
# Keys of a subject dict that are not modalities.
_RESERVED = frozenset({'label', 'brain_mask', 'affine', 'id', 'labelled'})


def load_volumes(
    name: str = 'phantom3d',
    *,
    modalities: Sequence[str] | None = None,
    num_subjects: int = 8,
    seed: int = 0,
    downsample: int = 2,
    tumor_probability: float = 0.0,
    ids: Sequence[str] | None = None,
    num_classes: int | None = None,
    manual_dir: str = '',
    data_dir: str = '',
) -> list[dict[str, Any]]:
  """Loads, completes and checks the subjects of a 3D source.

  Args:
    name: 'phantom3d' or a 3D TFDS builder name (see SOURCES; 'mrbrains13'
      without '/tissue' keeps the raw structure labels, which only pass the
      label check with a matching `num_classes`).
    modalities: modality keys to keep, e.g. ('t1',) or ('t1', 't2'); None
      keeps every modality of the source.
    num_subjects: phantom only: how many subjects.
    seed: phantom only: the dataset seed (independent of the training seed).
    downsample: phantom only: voxel size in mm (2: 84x102x88 voxels).
    tumor_probability: phantom only: chance of a tumour (label 4).
    ids: keep only these subject ids, in this order (TFDS sources; for the
      phantom, ids as it names them, e.g. 'phantom-s0-000003').
    num_classes: labels must lie in 0..num_classes-1 or be 255. Default: 4
      (background, CSF, GM, WM), 5 for a phantom with tumours.
    manual_dir: TFDS sources: the user's download, in the dataset's layout.
    data_dir: TFDS sources: where TFDS keeps prepared copies ('' = default).

  Returns:
    One dict per subject in the layout of the module docstring. A source
    without a brain mask gets one: label > 0 for labelled subjects (ignored
    structures such as the cerebellum count as brain), any modality > 0 for
    unlabelled ones (right for skull-stripped data such as iSEG-2017).

  Raises:
    ValueError: for an unknown source or bad arguments.
    DataError: for bad data; see `check_subject`. The message names the
      subject (and the file, where a builder reads one).
  """
  if name == 'phantom3d':
    subjects = phantom.tissue_volumes(
        num_subjects, seed, downsample=downsample,
        tumor_probability=tumor_probability)
    for subject in subjects:
      subject['labelled'] = True
    default_classes = 5 if tumor_probability > 0 else 4
  else:
    subjects = _load_tfds(name, manual_dir, data_dir)
    default_classes = 4
  if ids is not None:
    by_id = {s['id']: s for s in subjects}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
      raise ValueError(f'{name} has no subjects {unknown}; it has '
                       f'{sorted(by_id)}.')
    subjects = [by_id[i] for i in ids]
  if not subjects:
    raise DataError(f'{name}: no subjects to load.')
  available = sorted(set(subjects[0]) - _RESERVED)
  modalities = tuple(available if modalities is None else modalities)
  num_classes = default_classes if num_classes is None else num_classes
  out = []
  for subject in subjects:
    subject = _complete(subject, modalities, f'{name} subject')
    check_subject(subject, modalities, num_classes, source=name)
    out.append(subject)
  return out


def _load_tfds(name: str, manual_dir: str, data_dir: str) -> list[dict]:
  """Reads every subject of a prepared 3D TFDS builder into numpy."""
  # Imported here: TFDS and the builders take seconds to import and the
  # phantom path does not need them.
  from mrseg.data import builders  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name.partition('/')[0] not in ('iseg2017', 'mrbrains13', 'mrbrains18',
                                    'freesurfer_tissue'):
    raise ValueError(f'Unsupported 3D source {name!r}; choose one of '
                     f'{SOURCES}.')
  if not manual_dir:
    raise ValueError(f'{name} reads your download: set manual_dir to its '
                     'folder (--config.data.manual_dir=...).')
  builder = builders.prepare(name, manual_dir=manual_dir,
                             data_dir=data_dir or None)
  subjects = []
  for example in tfds.as_numpy(builder.as_dataset(split='train')):
    subject = dict(example)
    subject['id'] = subject['id'].decode()
    subject['labelled'] = bool(subject['labelled'])
    subjects.append(subject)
  return subjects


def _complete(subject: Mapping[str, Any], modalities: Sequence[str],
              what: str) -> dict[str, Any]:
  """Keeps the wanted modalities and adds a missing brain mask and flag."""
  sid = subject.get('id', '?')
  available = sorted(set(subject) - _RESERVED)
  missing = [m for m in modalities if m not in subject]
  if missing or not modalities:
    raise DataError(f'{what} {sid!r} has no modality {missing or "at all"} '
                    f'(it has {available}); choose modalities from those.')
  out = {m: np.asarray(subject[m], np.float32) for m in modalities}
  for key in ('label', 'affine', 'id'):
    if key not in subject:
      raise DataError(f'{what} {sid!r} has no {key!r}.')
    out[key] = subject[key]
  out['label'] = np.asarray(out['label'])
  out['labelled'] = bool(subject.get('labelled', True))
  if 'brain_mask' in subject:
    out['brain_mask'] = np.asarray(subject['brain_mask'], bool)
  elif out['labelled']:
    out['brain_mask'] = out['label'] > 0
  else:
    out['brain_mask'] = np.any([out[m] > 0 for m in modalities], axis=0)
  return out


def check_subject(subject: Mapping[str, Any], modalities: Sequence[str],
                  num_classes: int = 4, *, source: str = '') -> None:
  """Raises DataError, naming the subject, if a subject cannot be used.

  Checks: every requested modality present; modalities, label and brain
  mask on one grid (same 3D shape); no NaN or infinite voxels; integer
  labels in 0..num_classes-1 or 255; a non-empty brain mask.

  Args:
    subject: a subject dict.
    modalities: the modalities the caller will read.
    num_classes: number of label classes, background included.
    source: the dataset name, for the message.
  """
  what = f'{source} subject {subject.get("id", "?")!r}'.strip()
  available = sorted(set(subject) - _RESERVED)
  missing = [m for m in modalities if m not in subject]
  if missing or not modalities:
    raise DataError(f'{what} has no modality {missing or "at all"} (it has '
                    f'{available}).')
  arrays = {m: np.asarray(subject[m]) for m in modalities}
  for key in ('label', 'brain_mask'):
    if key not in subject:
      raise DataError(f'{what} has no {key!r}.')
    arrays[key] = np.asarray(subject[key])
  shapes = {k: v.shape for k, v in arrays.items()}
  if len(set(shapes.values())) != 1 or arrays['label'].ndim != 3:
    raise DataError(f'{what}: modalities, label and brain mask are on '
                    f'different grids (shapes {shapes}); resample them onto '
                    'one 3D grid first.')
  for m in modalities:
    finite = np.isfinite(arrays[m])
    if not finite.all():
      bad = np.argwhere(~finite)[0].tolist()
      raise DataError(f'{what}: modality {m!r} has {finite.size - finite.sum()}'
                      f' NaN or infinite voxels (first at {bad}).')
  label = arrays['label']
  if not np.issubdtype(label.dtype, np.integer):
    if not np.array_equal(label, np.rint(label)):
      raise DataError(f'{what}: label volume holds non-integer values.')
  allowed = set(range(num_classes)) | {IGNORE_LABEL}
  values = set(np.unique(label).tolist())
  if not values <= allowed:
    raise DataError(
        f'{what}: label values {sorted(values - allowed)} are outside '
        f'0..{num_classes - 1} and {IGNORE_LABEL} (ignore); remap them (for '
        "MRBrainS use the '/tissue' config) or set num_classes.")
  if not arrays['brain_mask'].any():
    raise DataError(f'{what}: the brain mask is empty.')


def normalize(image: np.ndarray, mask: np.ndarray, method: str = 'minmax', *,
              background: float | None = None,
              percentiles: tuple[float, float] | None = None,
              name: str = 'volume') -> np.ndarray:
  """Normalises a volume with statistics from inside `mask`.

  Args:
    image: [X, Y, Z] intensities.
    mask: [X, Y, Z] bool, the voxels whose statistics count (the brain).
    method: 'minmax': the range inside the mask goes to [-1, 1] (Mondal et
      al.); 'zscore': zero mean, unit std inside the mask; 'none': values
      kept (only the background is set).
    background: the value of every voxel outside the mask; default -1 for
      'minmax' (the bottom of the range, like the black background of the
      images a tanh generator makes) and 0 for 'zscore' / 'none'.
    percentiles: (low, high), e.g. (0.5, 99.5): intensities are first
      clipped to these percentiles of the masked voxels, so a few hot
      voxels do not squash the range; None uses the plain min and max.
    name: what the volume is, for errors.

  Returns:
    float32 [X, Y, Z].

  Raises:
    ValueError: for an unknown method.
    DataError: if the mask is empty or the masked intensities are constant.
  """
  if method not in NORMALIZATIONS:
    raise ValueError(f'Unsupported normalization {method!r}; choose one of '
                     f'{NORMALIZATIONS}.')
  mask = np.asarray(mask, bool)
  image = np.asarray(image, np.float32)
  values = image[mask]
  if values.size == 0:
    raise DataError(f'{name}: empty brain mask, nothing to normalise with.')
  if percentiles is not None:
    lo, hi = np.percentile(values, percentiles)
    image = np.clip(image, lo, hi)
    values = np.clip(values, lo, hi)
  if background is None:
    background = -1.0 if method == 'minmax' else 0.0
  if method == 'minmax':
    lo, hi = values.min(), values.max()
    if hi <= lo:
      raise DataError(f'{name}: constant intensity {lo} inside the brain '
                      'mask; min-max normalisation is undefined.')
    # Division by the same float32 difference, not by a reciprocal: the
    # extremes map to exactly -1 and 1.
    out = np.clip((image - lo) / (hi - lo) * 2 - 1, -1, 1)
  elif method == 'zscore':
    # float64 sums: a million float32 voxels lose digits otherwise.
    mean = values.mean(dtype=np.float64)
    std = values.std(dtype=np.float64)
    if std <= 0:
      raise DataError(f'{name}: constant intensity {mean} inside the brain '
                      'mask; z-score normalisation is undefined.')
    out = (image - np.float32(mean)) / np.float32(std)
  else:
    out = image
  return np.where(mask, out, np.float32(background)).astype(np.float32)


def normalize_subjects(
    subjects: Iterable[Mapping[str, Any]], modalities: Sequence[str],
    method: str = 'minmax', *, background: float | None = None,
    percentiles: tuple[float, float] | None = None) -> list[dict[str, Any]]:
  """`normalize` applied to each modality of each subject (new dicts).

  Each volume is normalised on its own (per subject, per modality), inside
  the subject's brain mask, so scanner gain and bias between subjects
  disappear; the other keys are shared with the input, not copied.
  """
  out = []
  for subject in subjects:
    subject = dict(subject)
    for m in modalities:
      if m not in subject:
        raise DataError(f'subject {subject.get("id", "?")!r} has no modality '
                        f'{m!r} (it has {sorted(set(subject) - _RESERVED)}).')
      subject[m] = normalize(subject[m], subject['brain_mask'], method,
                             background=background, percentiles=percentiles,
                             name=f'subject {subject["id"]!r} {m}')
    out.append(subject)
  return out


def background_value(method: str, background: float | None = None) -> float:
  """The value outside the brain after `normalize(method, background)`.

  Pads of patches and sliding windows should use it, so that padding looks
  like the background the model was trained on.
  """
  if background is not None:
    return float(background)
  return -1.0 if method == 'minmax' else 0.0


def few_shot_split(
    subjects: Sequence[Mapping[str, Any]],
    *,
    num_labelled: int,
    num_validation: int = 0,
    num_test: int = 0,
    num_unlabelled: int = -1,
    seed: int = 0,
    shuffle: bool = True,
    order: Sequence[str] = (),
) -> dict[str, list[Mapping[str, Any]]]:
  """Splits subjects into few-shot training, validation, test and unlabelled.

  Labelled subjects are put in order (sorted by id, then permuted by `seed`
  unless `shuffle` is False) and dealt out test first, then validation, then
  labelled training. So the test and validation sets do not change when
  `num_labelled` changes, and a run with n labelled subjects trains on a
  subset of the run with n + 1 (a clean ablation over n). Unlabelled
  training takes the subjects that have no labels, then the labelled
  subjects left over (their labels are not used).

  Args:
    subjects: subject dicts with 'id' and 'labelled'.
    num_labelled: labelled training subjects (Mondal et al.: 1 or 2).
    num_validation: labelled validation subjects.
    num_test: labelled test subjects.
    num_unlabelled: unlabelled training subjects; -1 takes all that remain.
    seed: the split's seed.
    shuffle: False keeps the id order (e.g. to reproduce a paper's split).
    order: ids of labelled subjects dealt out first, in this order (then
      the others, sorted or permuted as above): a split chosen by what the
      subjects hold, e.g. test, validation and training slabs that each
      contain every class.

  Returns:
    {'labelled': [...], 'validation': [...], 'test': [...],
     'unlabelled': [...]} holding the input dicts (not copies).

  Raises:
    ValueError: for negative counts, duplicate ids, too few subjects, or an
      id in `order` that is no labelled subject.
  """
  counts = dict(labelled=num_labelled, validation=num_validation,
                test=num_test)
  for key, value in counts.items():
    if value < 0:
      raise ValueError(f'num_{key} must be >= 0, got {value}.')
  if num_unlabelled < -1:
    raise ValueError(f'num_unlabelled must be >= 0 or -1 (all), got '
                     f'{num_unlabelled}.')
  ids = [s['id'] for s in subjects]
  if len(set(ids)) != len(ids):
    raise ValueError(f'Duplicate subject ids: '
                     f'{sorted({i for i in ids if ids.count(i) > 1})}.')
  ordered = sorted(subjects, key=lambda s: io.natural_key(str(s['id'])))
  if shuffle:
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    ordered = [ordered[i] for i in permutation]
  labelled = [s for s in ordered if s['labelled']]
  by_id = {str(s['id']): s for s in labelled}
  unknown = [i for i in order if str(i) not in by_id]
  if unknown or len(set(order)) != len(order):
    raise ValueError(f'data.split_order {list(order)}: '
                     + (f'{unknown} are no labelled subject (labelled: '
                        f'{sorted(by_id, key=io.natural_key)}).' if unknown
                        else 'an id is given twice.'))
  labelled = ([by_id[str(i)] for i in order]
              + [s for s in labelled if str(s['id']) not in set(order)])
  unlabelled = [s for s in ordered if not s['labelled']]
  wanted = num_test + num_validation + num_labelled
  if wanted > len(labelled):
    raise ValueError(
        f'The split asks for {num_test} test + {num_validation} validation + '
        f'{num_labelled} labelled training subjects, but only '
        f'{len(labelled)} of the {len(subjects)} subjects have labels.')
  out = {'test': labelled[:num_test],
         'validation': labelled[num_test:num_test + num_validation],
         'labelled': labelled[num_test + num_validation:wanted]}
  pool = unlabelled + labelled[wanted:]
  if num_unlabelled > len(pool):
    raise ValueError(f'The split asks for {num_unlabelled} unlabelled '
                     f'subjects but only {len(pool)} remain.')
  out['unlabelled'] = pool if num_unlabelled == -1 else pool[:num_unlabelled]
  return {key: out[key] for key in SPLITS}


def stack_modalities(subject: Mapping[str, Any],
                     modalities: Sequence[str]) -> np.ndarray:
  """The subject's modalities as channels: float32 [X, Y, Z, C]."""
  missing = [m for m in modalities if m not in subject]
  if missing:
    raise DataError(f'subject {subject.get("id", "?")!r} has no modality '
                    f'{missing} (it has {sorted(set(subject) - _RESERVED)}).')
  return np.stack([np.asarray(subject[m], np.float32) for m in modalities],
                  axis=-1)


def eval_volumes(
    subjects: Sequence[Mapping[str, Any]],
    modalities: Sequence[str],
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, Any]]:
  """Whole volumes for sliding-window inference, each subject exactly once.

  Args:
    subjects: normalised subject dicts.
    modalities: channels, in the order the model was trained on.
    process_index: this host's index; hosts take every process_count-th
      subject, so together they see each subject once.
    process_count: number of hosts.

  Yields:
    {'image': float32 [X, Y, Z, C], 'label': uint8 [X, Y, Z], 'brain_mask',
     'affine', 'id', 'labelled'}.
  """
  for subject in subjects[process_index::process_count]:
    yield {'image': stack_modalities(subject, modalities),
           'label': np.asarray(subject['label']),
           'brain_mask': np.asarray(subject['brain_mask'], bool),
           'affine': np.asarray(subject['affine']),
           'id': str(subject['id']),
           'labelled': bool(subject.get('labelled', True))}



def label_counts(subjects: Iterable[Mapping[str, Any]], num_classes: int,
                 ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """Voxels of each class 0..num_classes-1 over the subjects' label maps.

  Voxels of `ignore_label` are not counted; background (0) is, as in the
  labelled loss.

  Raises:
    DataError: for a label outside 0..num_classes-1 and ignore_label.
  """
  counts = np.zeros(num_classes, np.int64)
  for subject in subjects:
    label = np.asarray(subject['label']).ravel()
    found = np.bincount(label[label != ignore_label], minlength=num_classes)
    if len(found) > num_classes:
      raise DataError(f'subject {subject.get("id", "?")!r} has label '
                      f'{len(found) - 1}; expected 0..{num_classes - 1} and '
                      f'{ignore_label} (ignore).')
    counts += found
  return counts
