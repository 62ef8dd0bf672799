"""Tests for 3D subjects (`mrseg.data.volumes`) and patch/eval pipelines
(`mrseg.data.patches`).

Most tests use small synthetic volumes whose contents are known voxel by
voxel; a few use the phantom at downsample 3 (56x68x59), a format-exact
iSEG-2017 fixture, and the real FreeSurfer subject where ../shared has it.
"""
import itertools

from conftest import shared_data
import nibabel as nib
import numpy as np
import pytest

from mrseg.data import patches
from mrseg.data import volumes

DataError = volumes.DataError


def _subject(sid='s1', shape=(20, 18, 16), seed=0, labelled=True,
             modalities=('t1', 't2')):
  """A cube of tissue in a random volume; voxel values identify positions."""
  rng = np.random.default_rng(seed)
  label = np.zeros(shape, np.uint8)
  label[3:-3, 4:-2, 2:-4] = rng.integers(1, 4, (shape[0] - 6, shape[1] - 6,
                                                  shape[2] - 6))
  subject = {m: rng.uniform(0.1, 1.0, shape).astype(np.float32) * (label > 0)
             for m in modalities}
  subject.update(label=label if labelled else
                 np.full(shape, 255, np.uint8),
                 brain_mask=label > 0, affine=np.eye(4), id=sid,
                 labelled=labelled)
  return subject


def _batches(ds, steps):
  return [b for _, b in zip(range(steps), ds.as_numpy_iterator())]


def _equal(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.fixture(scope='module')
def phantom_subjects():
  return volumes.load_volumes('phantom3d', num_subjects=3, downsample=3)


# --- loading and bad input ------------------------------------------------


def test_load_phantom_layout_and_modalities(phantom_subjects):
  subject = phantom_subjects[0]
  assert set(subject) == {'t1', 't2', 'label', 'brain_mask', 'affine', 'id',
                          'labelled'}
  assert subject['t1'].shape == subject['label'].shape == (56, 68, 59)
  assert subject['labelled'] and subject['brain_mask'].dtype == bool
  t1_only = volumes.load_volumes('phantom3d', num_subjects=1, downsample=3,
                                 modalities=('t1',))[0]
  assert 't2' not in t1_only
  np.testing.assert_array_equal(t1_only['t1'], subject['t1'])
  with pytest.raises(DataError, match="phantom-s0-000000.*'flair'.*t1"):
    volumes.load_volumes('phantom3d', num_subjects=1, downsample=3,
                         modalities=('t1', 'flair'))
  with pytest.raises(ValueError, match='Unsupported 3D source'):
    volumes.load_volumes('brats', manual_dir='/nowhere')


@pytest.mark.parametrize('break_it, message', [
    (lambda s: s['t2'].__setitem__((5, 5, 5), np.nan),
     r"'s1'.*'t2'.*1 NaN or infinite voxels.*\[5, 5, 5\]"),
    (lambda s: s['t1'].__setitem__((0, 0, 0), np.inf), r"'s1'.*'t1'.*NaN"),
    (lambda s: s.__setitem__('t2', s['t2'][:-1]), r"'s1'.*different grids"),
    (lambda s: s['label'].__setitem__((4, 5, 6), 7),
     r"'s1'.*label values \[7\].*0..3 and 255"),
    (lambda s: s.pop('t2'), r"'s1'.*no modality \['t2'\].*\['t1'\]"),
    (lambda s: s['brain_mask'].fill(False), r"'s1'.*brain mask is empty"),
])
def test_bad_subjects_fail_naming_the_subject(break_it, message):
  subject = _subject()
  break_it(subject)
  with pytest.raises(DataError, match=message):
    volumes.check_subject(subject, ('t1', 't2'))
  with pytest.raises(DataError, match=message):
    patches.patch_dataset([_subject('s0'), subject], ('t1', 't2'), 2, 0,
                          patch_size=8)


def test_tumour_label_needs_five_classes():
  subject = _subject()
  subject['label'][5, 5, 5] = 4
  with pytest.raises(DataError, match=r'\[4\]'):
    volumes.check_subject(subject, ('t1',))
  volumes.check_subject(subject, ('t1',), num_classes=5)


def _write_analyze(path, data):
  nib.save(nib.AnalyzeImage(data, np.diag([1.0, 1.0, 1.0, 1.0])), path)


def test_load_iseg_layout_derives_masks_and_flags(tmp_path):
  manual = tmp_path / 'iseg'
  manual.mkdir()
  shape = (12, 10, 8)
  rng = np.random.default_rng(0)
  raw = np.zeros(shape, np.uint8)
  raw[2:10, 2:8, 2:6] = rng.choice([10, 150, 250], (8, 6, 4))
  for n in (1, 2, 11):
    for kind in ('T1', 'T2'):
      _write_analyze(manual / f'subject-{n}-{kind}.hdr',
                     (raw > 0).astype(np.float32) * rng.uniform(1, 2, shape)
                     .astype(np.float32))
    if n <= 2:
      _write_analyze(manual / f'subject-{n}-label.hdr', raw)
  subjects = volumes.load_volumes('iseg2017', manual_dir=str(manual),
                                  data_dir=str(tmp_path / 'tfds'),
                                  modalities=('t1',))
  assert [s['id'] for s in subjects] == ['1', '2', '11']
  assert [s['labelled'] for s in subjects] == [True, True, False]
  assert all(set(s) == {'t1', 'label', 'brain_mask', 'affine', 'id',
                        'labelled'} for s in subjects)
  # Labelled: the mask is the labelled tissue; unlabelled: intensity > 0.
  for s in subjects:
    np.testing.assert_array_equal(s['brain_mask'], raw > 0)
  np.testing.assert_array_equal(subjects[0]['label'][raw == 150], 2)
  assert (subjects[2]['label'] == 255).all()
  with pytest.raises(DataError,
                     match=r"iseg2017 subject '1' has no modality \['flair'\]"):
    volumes.load_volumes('iseg2017', manual_dir=str(manual),
                         data_dir=str(tmp_path / 'tfds'),
                         modalities=('t1', 'flair'))
  with pytest.raises(ValueError, match='manual_dir'):
    volumes.load_volumes('iseg2017')


def test_real_freesurfer_subject_mondal_patches(tmp_path):
  manual = shared_data('tissue_t1')
  (subject,) = volumes.load_volumes('freesurfer_tissue',
                                    manual_dir=str(manual),
                                    data_dir=str(tmp_path / 'tfds'))
  assert subject['t1'].shape == (160, 192, 224) and subject['labelled']
  assert set(np.unique(subject['label'])) <= {0, 1, 2, 3, 255}
  (subject,) = volumes.normalize_subjects([subject], ('t1',), 'minmax')
  # Mondal et al.: 32^3 patches, > 6000 labelled voxels (stride 16 here to
  # keep the test fast; the threshold is what is checked).
  table = patches.grid_table([subject], 32, 16, min_foreground=6000)
  counts = patches.patch_counts(patches.foreground_mask(subject, True),
                                table[:, 1:], 32)
  assert len(table) > 100 and (counts > 6000).all()
  ds = patches.patch_dataset([subject], ('t1',), 4, 0, patch_size=32,
                             sampling='grid', stride=16, min_foreground=6000,
                             with_positions=True)
  (batch,) = _batches(ds, 1)
  for image, label, start in zip(batch['image'], batch['label'],
                                 batch['start']):
    window = tuple(slice(a, a + 32) for a in start)
    np.testing.assert_array_equal(image[..., 0], subject['t1'][window])
    np.testing.assert_array_equal(label, subject['label'][window])
    assert ((label > 0) & (label < 255)).sum() > 6000


# --- normalisation ----------------------------------------------------------


def test_minmax_and_zscore_statistics_inside_the_mask():
  rng = np.random.default_rng(0)
  image = rng.gamma(2.0, 100.0, (10, 11, 12)).astype(np.float32) + 50
  mask = rng.random(image.shape) < 0.6
  out = volumes.normalize(image, mask, 'minmax')
  assert out[mask].min() == pytest.approx(-1) and out[mask].max() == 1
  assert (out[~mask] == -1).all()
  z = volumes.normalize(image, mask, 'zscore')
  assert z[mask].mean() == pytest.approx(0, abs=1e-5)
  assert z[mask].std() == pytest.approx(1, abs=1e-4)
  assert (z[~mask] == 0).all()
  # Background voxels do not leak into the statistics.
  hot = image.copy()
  hot[~mask] = 1e6
  np.testing.assert_allclose(volumes.normalize(hot, mask, 'zscore'), z,
                             atol=1e-5)
  # Both are invariant to a scanner's gain and offset.
  np.testing.assert_allclose(
      volumes.normalize(image * 3 + 7, mask, 'minmax'), out, atol=1e-5)
  np.testing.assert_allclose(
      volumes.normalize(image * 3 + 7, mask, 'zscore'), z, atol=1e-4)
  # Percentiles: a few hot voxels no longer squash the range.
  spiked = image.copy()
  spiked[np.argwhere(mask)[0][0], np.argwhere(mask)[0][1],
         np.argwhere(mask)[0][2]] = 1e5
  robust = volumes.normalize(spiked, mask, 'minmax', percentiles=(1, 99))
  assert (robust[mask] >= -1).all() and (robust[mask] <= 1).all()
  assert np.median(robust[mask]) > -0.9
  assert volumes.normalize(image, mask, 'zscore', background=-3)[~mask][0] == -3


def test_normalize_errors_name_the_volume():
  mask = np.ones((4, 4, 4), bool)
  with pytest.raises(DataError, match='subj-7 t1.*constant'):
    volumes.normalize(np.ones((4, 4, 4)), mask, name='subj-7 t1')
  with pytest.raises(DataError, match='empty'):
    volumes.normalize(np.ones((4, 4, 4)), ~mask, 'zscore')
  with pytest.raises(ValueError, match='Unsupported normalization'):
    volumes.normalize(np.ones((4, 4, 4)), mask, 'max')


def test_normalize_subjects_per_subject_and_modality(phantom_subjects):
  out = volumes.normalize_subjects(phantom_subjects, ('t1', 't2'), 'minmax')
  for raw, norm in zip(phantom_subjects, out):
    for m in ('t1', 't2'):
      inside = norm[m][raw['brain_mask']]
      assert inside.min() == pytest.approx(-1) and inside.max() == 1
    assert norm['label'] is raw['label']
  assert not np.shares_memory(out[0]['t1'], phantom_subjects[0]['t1'])


# --- few-shot splits ----------------------------------------------------------


def _ids(split):
  return {k: [s['id'] for s in v] for k, v in split.items()}


def test_label_counts_skip_the_ignore_label():
  a = {'id': 'a', 'label': np.array([[0, 1, 255], [3, 3, 2]], np.uint8)}
  b = {'id': 'b', 'label': np.array([0, 0, 255], np.uint8)}
  np.testing.assert_array_equal(volumes.label_counts([a, b], 4), [3, 1, 1, 2])
  with pytest.raises(volumes.DataError, match="'a' has label 3"):
    volumes.label_counts([a, b], 3)


def test_few_shot_split_is_deterministic_disjoint_and_nested():
  subjects = ([{'id': f'L{i}', 'labelled': True} for i in range(10)] +
              [{'id': f'U{i}', 'labelled': False} for i in range(5)])
  kwargs = dict(num_validation=1, num_test=3, seed=4)
  split = _ids(volumes.few_shot_split(subjects, num_labelled=2, **kwargs))
  assert split == _ids(volumes.few_shot_split(subjects[::-1], num_labelled=2,
                                              **kwargs))
  assert [len(split[k]) for k in volumes.SPLITS] == [2, 1, 3, 9]
  all_ids = sum(split.values(), [])
  assert sorted(all_ids) == sorted(s['id'] for s in subjects)
  # Subjects without labels are only ever unlabelled, and come first there.
  assert all(i.startswith('L') for k in ('labelled', 'validation', 'test')
             for i in split[k])
  assert sorted(split['unlabelled'][:5]) == [f'U{i}' for i in range(5)]
  # More labelled subjects: same test/validation, a superset for training.
  more = _ids(volumes.few_shot_split(subjects, num_labelled=4, **kwargs))
  assert more['test'] == split['test']
  assert more['validation'] == split['validation']
  assert more['labelled'][:2] == split['labelled']
  # Another seed, another split; no shuffle keeps the id order.
  assert _ids(volumes.few_shot_split(subjects, num_labelled=2, num_test=3,
                                     num_validation=1, seed=5)) != split
  plain = _ids(volumes.few_shot_split(subjects, num_labelled=1, num_test=1,
                                      shuffle=False, num_unlabelled=2))
  assert plain == {'labelled': ['L1'], 'validation': [], 'test': ['L0'],
                   'unlabelled': ['U0', 'U1']}
  with pytest.raises(ValueError, match='only 10 of the 15 subjects'):
    volumes.few_shot_split(subjects, num_labelled=8, num_test=3)
  with pytest.raises(ValueError, match='Duplicate'):
    volumes.few_shot_split(subjects + subjects[:1], num_labelled=1)


def test_few_shot_split_deals_the_given_order_first():
  subjects = ([{'id': f'L{i}', 'labelled': True} for i in range(5)] +
              [{'id': 'U0', 'labelled': False}])
  split = _ids(volumes.few_shot_split(
      subjects, num_labelled=1, num_validation=1, num_test=1, seed=3,
      order=['L3', 'L0', 'L4']))
  assert (split['test'], split['validation'], split['labelled']) == (
      ['L3'], ['L0'], ['L4'])
  assert split['unlabelled'][0] == 'U0'
  assert sorted(split['unlabelled'][1:]) == ['L1', 'L2']
  with pytest.raises(ValueError, match=r"split_order.*\['U0'\] are no labelled"):
    volumes.few_shot_split(subjects, num_labelled=1, order=['U0'])
  with pytest.raises(ValueError, match='given twice'):
    volumes.few_shot_split(subjects, num_labelled=1, order=['L1', 'L1'])


# --- patch geometry -------------------------------------------------------


@pytest.mark.parametrize('shape, patch, stride', [
    ((20, 18, 16), 8, 4), ((20, 18, 16), (8, 6, 16), (5, 6, 3)),
    ((5, 40, 9), 8, 8)])
def test_grid_starts_cover_the_volume(shape, patch, stride):
  starts = patches.grid_starts(shape, patch, stride)
  patch = patches.as_triple(patch)
  covered = np.zeros(np.maximum(shape, patch), int)
  for s in starts:
    covered[tuple(slice(a, a + p) for a, p in zip(s, patch))] += 1
  assert (covered[:shape[0], :shape[1], :shape[2]] > 0).all()
  # No patch leaves the (padded) volume, and the first one is at 0.
  assert covered.shape == tuple(np.maximum(shape, patch))
  assert (starts.min(0) == 0).all()
  assert len(np.unique(starts, axis=0)) == len(starts)


def test_patch_counts_match_brute_force():
  rng = np.random.default_rng(1)
  mask = rng.random((13, 11, 9)) < 0.3
  starts = np.array(list(itertools.product(range(0, 13, 3), range(0, 11, 4),
                                           range(0, 9, 2))))
  counts = patches.patch_counts(mask, starts, (5, 4, 6))
  brute = [mask[x:x + 5, y:y + 4, z:z + 6].sum() for x, y, z in starts]
  np.testing.assert_array_equal(counts, brute)


def test_grid_table_threshold_is_exact():
  subjects = [_subject('a', seed=1), _subject('b', seed=2, shape=(16, 20, 18))]
  everything = patches.grid_table(subjects, 8, 4, min_foreground=-1)
  kept = patches.grid_table(subjects, 8, 4, min_foreground=300)
  for rows, threshold in ((everything, -1), (kept, 300)):
    for i, subject in enumerate(subjects):
      mask = patches.foreground_mask(subject, True)
      starts = patches.grid_starts(mask.shape, 8, 4)
      counts = patches.patch_counts(mask, starts, 8)
      mine = rows[rows[:, 0] == i, 1:]
      # Exactly the grid patches above the threshold.
      np.testing.assert_array_equal(mine, starts[counts > threshold])
  assert 0 < len(kept) < len(everything)
  with pytest.raises(DataError, match='more than 5000 foreground'):
    patches.grid_table(subjects, 8, 4, min_foreground=5000)


# --- training streams ---------------------------------------------------------


def _check_patches(batch, subjects, modalities, patch):
  """Every patch is the exact window of its subject (image and label)."""
  for i in range(len(batch['image'])):
    subject = subjects[batch['subject'][i]]
    start = batch['start'][i]
    window = tuple(slice(a, a + p) for a, p in zip(start, patch))
    for c, m in enumerate(modalities):
      np.testing.assert_array_equal(batch['image'][i, ..., c],
                                    subject[m][window])
    if 'label' in batch:
      np.testing.assert_array_equal(batch['label'][i], subject['label'][window])


def test_grid_stream_aligned_and_one_epoch_visits_each_patch_once():
  subjects = [_subject('a', seed=1), _subject('b', seed=2)]
  table = patches.grid_table(subjects, 8, 4, min_foreground=100)
  ds = patches.patch_dataset(subjects, ('t1', 't2'), 4, 0, patch_size=8,
                             sampling='grid', stride=4, min_foreground=100,
                             with_positions=True)
  steps = -(-len(table) // 4)
  batches = _batches(ds, steps)
  seen = []
  for batch in batches:
    assert batch['image'].shape == (4, 8, 8, 8, 2)
    assert batch['label'].dtype == np.uint8
    _check_patches(batch, subjects, ('t1', 't2'), (8, 8, 8))
    fg = ((batch['label'] > 0) & (batch['label'] < 255)).sum((1, 2, 3))
    assert (fg > 100).all()
    seen += [(s, *p) for s, p in zip(batch['subject'], batch['start'])]
  epoch = sorted(seen[:len(table)])
  assert epoch == sorted(map(tuple, table.tolist()))


def test_random_stream_oversamples_foreground_and_balances_subjects():
  subjects = [_subject('a', seed=1, shape=(30, 30, 30)),
              _subject('b', seed=2, shape=(24, 28, 32))]
  for subject in subjects:  # a small tissue cube in a large background
    subject['label'][:] = 0
    subject['label'][20:24, 5:9, 10:14] = 2
  ds = patches.patch_dataset(subjects, ('t1',), 8, 3, patch_size=8,
                             foreground_fraction=1.0, with_positions=True)
  batches = _batches(ds, 3)
  for batch in batches:
    _check_patches(batch, subjects, ('t1',), (8, 8, 8))
    assert (batch['label'] == 2).any(axis=(1, 2, 3)).all()
    # Each subject once per round of two examples.
    assert sorted(batch['subject'][:2]) == [0, 1]
    assert sorted(batch['subject'][2:4]) == [0, 1]
  uniform = _batches(patches.patch_dataset(
      subjects, ('t1',), 64, 3, patch_size=8, foreground_fraction=0.0,
      with_positions=True), 1)[0]
  _check_patches(uniform, subjects, ('t1',), (8, 8, 8))
  # Uniform starts spread over the whole range 0..size-8 of each axis.
  starts = uniform['start'][uniform['subject'] == 0]
  assert starts.min() <= 2 and starts.max() >= 20
  assert (starts <= 22).all()
  assert (uniform['label'] == 2).any(axis=(1, 2, 3)).mean() < 0.5


@pytest.mark.parametrize('sampling', [*patches.SAMPLINGS, 'class_balanced'])
def test_resume_equals_tail_and_shards_partition_the_batch(sampling):
  subjects = [_subject('a', seed=1), _subject('b', seed=2)]
  kwargs = dict(patch_size=8, stride=4, min_foreground=50)
  if sampling == 'class_balanced':
    kwargs['class_balanced'] = True
  else:
    kwargs['sampling'] = sampling
  full = _batches(patches.patch_dataset(subjects, ('t1', 't2'), 4, 7,
                                        **kwargs), 5)
  resumed = _batches(patches.patch_dataset(subjects, ('t1', 't2'), 4, 7,
                                           start_step=3, **kwargs), 2)
  assert _equal(full[3:], resumed)
  shards = [_batches(patches.patch_dataset(
      subjects, ('t1', 't2'), 4, 7, process_index=p, process_count=2,
      **kwargs), 5) for p in range(2)]
  for step in range(5):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]),
          full[step][key])
  other_seed = _batches(patches.patch_dataset(subjects, ('t1', 't2'), 4, 8,
                                              **kwargs), 1)
  assert not np.array_equal(other_seed[0]['image'], full[0]['image'])
  with pytest.raises(ValueError, match='divisible by the 3 processes'):
    patches.patch_dataset(subjects, ('t1',), 4, 0, process_count=3,
                          process_index=0)


def test_class_balanced_stream_holds_every_class_in_every_batch():
  subjects = [_subject('a', seed=1, shape=(30, 30, 30)),
              _subject('b', seed=2, shape=(24, 28, 32))]
  for subject in subjects:  # GM with a WM core, in a large background
    subject['label'][:] = 0
    subject['label'][4:22, 5:20, 5:20] = 2
    subject['label'][10:16, 9:15, 9:15] = 3
  # One CSF voxel in all the data, at a corner: patches clip to the volume.
  subjects[1]['label'][1, 2, 30] = 1
  rows, offsets, classes = patches.class_voxels(subjects, (1, 2, 3, 4))
  assert classes == [1, 2, 3] and offsets[1] == 1  # no class-4 voxel
  np.testing.assert_array_equal(rows[0], [1, 1, 2, 30])
  ds = patches.patch_dataset(subjects, ('t1',), 4, 5, patch_size=8,
                             class_balanced=True, with_positions=True)
  for batch in _batches(ds, 6):
    _check_patches(batch, subjects, ('t1',), (8, 8, 8))
    for c in (1, 2, 3):
      assert (batch['label'] == c).any(), (c, batch['start'])
    # A patch is centred on its voxel unless the volume's border is near.
    centres = batch['label'][:, 4, 4, 4]
    top = np.array([subjects[i]['label'].shape for i in batch['subject']]) - 8
    inside = ((batch['start'] > 0) & (batch['start'] < top)).all(1)
    assert inside.any()
    assert (centres[inside] > 0).all()
  with pytest.raises(ValueError, match='needs a labelled stream'):
    patches.patch_dataset(subjects, ('t1',), 4, 0, labelled=False,
                          class_balanced=True)
  with pytest.raises(DataError, match='No voxel of the classes'):
    patches.class_voxels(subjects, (4,))


def test_small_volumes_are_padded_with_the_background():
  subject = _subject('tiny', shape=(6, 7, 8))
  subject['label'][1:5, 1:6, 1:7] = 2
  subject['brain_mask'] = subject['label'] > 0
  subject['t1'] = np.random.default_rng(0).random((6, 7, 8), np.float32)
  (norm,) = volumes.normalize_subjects([subject], ('t1',), 'minmax')
  ds = patches.patch_dataset([norm], ('t1',), 2, 0, patch_size=10,
                             pad_value=volumes.background_value('minmax'),
                             with_positions=True)
  (batch,) = _batches(ds, 1)
  assert (batch['start'] == 0).all()
  image = batch['image'][0, ..., 0]
  np.testing.assert_array_equal(image[:6, :7, :8], norm['t1'])
  assert (image[6:] == -1).all() and (image[:, 7:] == -1).all()
  assert (batch['label'][0][6:] == 0).all()


def test_semi_supervised_streams_on_the_phantom(phantom_subjects):
  split = volumes.few_shot_split(phantom_subjects, num_labelled=1)
  labelled = volumes.normalize_subjects(split['labelled'], ('t1',), 'zscore')
  unlabelled = volumes.normalize_subjects(split['unlabelled'], ('t1',),
                                          'zscore')
  ds = patches.semi_supervised_dataset(labelled, unlabelled, ('t1',), 2, 4,
                                       0, patch_size=16,
                                       foreground_fraction=1.0)
  batches = _batches(ds, 2)
  for batch in batches:
    assert batch['labelled']['image'].shape == (2, 16, 16, 16, 1)
    assert batch['labelled']['label'].shape == (2, 16, 16, 16)
    assert set(batch['unlabelled']) == {'image'}
    assert batch['unlabelled']['image'].shape == (4, 16, 16, 16, 1)
    # Foreground oversampling: labelled patches hold tissue, unlabelled
    # ones hold brain (z-score background is 0).
    assert ((batch['labelled']['label'] > 0).sum((1, 2, 3)) > 0).all()
    assert (np.abs(batch['unlabelled']['image']).sum((1, 2, 3, 4)) > 0).all()
  again = _batches(patches.semi_supervised_dataset(
      labelled, unlabelled, ('t1',), 2, 4, 0, patch_size=16,
      foreground_fraction=1.0, start_step=1), 1)
  for key in ('labelled', 'unlabelled'):
    assert _equal([batches[1][key]], [again[0][key]])


# --- eval pipelines -----------------------------------------------------------


def test_eval_volumes_each_subject_once_across_processes(phantom_subjects):
  seen = []
  for p in range(2):
    for case in volumes.eval_volumes(phantom_subjects, ('t2', 't1'),
                                     process_index=p, process_count=2):
      assert case['image'].shape == (56, 68, 59, 2)
      subject = next(s for s in phantom_subjects if s['id'] == case['id'])
      np.testing.assert_array_equal(case['image'][..., 0], subject['t2'])
      np.testing.assert_array_equal(case['label'], subject['label'])
      seen.append(case['id'])
  assert sorted(seen) == sorted(s['id'] for s in phantom_subjects)
