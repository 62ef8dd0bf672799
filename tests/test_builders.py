"""Tests for the TFDS builders of the real datasets.

Real-data tests read ../shared/data in place and skip without it. Fixture
tests write tiny files in each dataset's exact format (PIL, h5py as MATLAB
v7.3 writes it, nibabel Analyze/NIfTI/MGZ) and read them back through
`prepare`, so a format mismatch fails here. Every bad-input case must come out
of TFDS's preparation machinery as a DataError naming the file.
"""
import os
import pathlib
import threading
import time

from conftest import other_process_holding
from conftest import shared_data
import h5py
import nibabel as nib
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from mrseg.data import builders
from mrseg.data import io
from mrseg.data.builders import freesurfer_tissue

DataError = io.DataError


def _prepare(name, manual_dir, tmp_path):
  return builders.prepare(
      name, manual_dir=manual_dir, data_dir=tmp_path / 'tfds'
  )


def _examples(builder) -> list[dict]:
  return list(tfds.as_numpy(builder.as_dataset(split='train')))


def _save_image(path: pathlib.Path, array: np.ndarray, **kwargs) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def _grey(seed: int, shape=(20, 30)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


# --- prepare() --------------------------------------------------------------


def test_prepare_rejects_unknown_names(tmp_path):
  with pytest.raises(ValueError, match='brain_tumor_detection.*iseg2017'):
    builders.prepare('nope', manual_dir=tmp_path)
  with pytest.raises(ValueError, match="'mrbrains13/bad'.*mrbrains13/tissue"):
    builders.prepare('mrbrains13/bad', manual_dir=tmp_path)


@pytest.mark.parametrize('name', sorted(builders.BUILDERS))
def test_prepare_rejects_missing_or_empty_manual_dir(tmp_path, name):
  cls = builders.BUILDERS[name]
  with pytest.raises(DataError, match='(?s)does not exist.*Expected'):
    _prepare(name, tmp_path / 'missing', tmp_path)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='(?s)is empty') as error:
    _prepare(name, tmp_path / 'empty', tmp_path)
  # The message shows the expected layout.
  assert cls.MANUAL_DOWNLOAD_INSTRUCTIONS.splitlines()[-1] in str(error.value)
  # And a folder that holds something else says what is missing.
  (tmp_path / 'other' / 'stuff').mkdir(parents=True)
  (tmp_path / 'other' / 'readme.txt').write_text('x')
  with pytest.raises(DataError, match='(?s)Expected|No '):
    _prepare(name, tmp_path / 'other', tmp_path)
  assert not (tmp_path / 'tfds' / name).exists() or not any(
      (tmp_path / 'tfds' / name).rglob('*.tfrecord*')
  )


# --- brain_tumor_detection --------------------------------------------------


def _detection_fixture(root: pathlib.Path) -> dict[str, np.ndarray]:
  """Writes the Kaggle layout; returns filename -> expected grey image."""
  expected = {}
  grey = _grey(0)
  _save_image(root / 'yes' / 'Y1.png', grey)
  expected['yes/Y1.png'] = grey
  rgb = np.stack([_grey(1), _grey(2), _grey(3)], -1)
  _save_image(root / 'yes' / 'Y10.PNG', rgb)
  expected['yes/Y10.PNG'] = np.asarray(Image.fromarray(rgb).convert('L'))
  rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], -1)
  _save_image(root / 'no' / 'no.jpg', rgba, format='png')  # As in the set.
  expected['no/no.jpg'] = expected['yes/Y10.PNG']
  _save_image(root / 'no' / '1 no.jpeg', rgb, quality=95)
  # JPEG is lossy: what PIL decodes is the reference.
  expected['no/1 no.jpeg'] = np.asarray(
      Image.open(root / 'no' / '1 no.jpeg').convert('L')
  )
  (root / 'no' / '.DS_Store').write_bytes(b'\0junk')  # Archive litter.
  return expected


def test_detection_fixture_reads_back_exactly(tmp_path):
  expected = _detection_fixture(tmp_path / 'manual')
  builder = _prepare('brain_tumor_detection', tmp_path / 'manual', tmp_path)
  names = builder.info.features['label'].names
  assert names == ['no', 'yes']
  examples = {ex['filename'].decode(): ex for ex in _examples(builder)}
  assert sorted(examples) == sorted(expected)
  for filename, ex in examples.items():
    assert ex['image'].dtype == np.uint8 and ex['image'].shape[-1] == 1
    np.testing.assert_array_equal(ex['image'][..., 0], expected[filename])
    assert names[ex['label']] == filename.split('/')[0]


def test_detection_finds_nested_archive_folder(tmp_path):
  _detection_fixture(tmp_path / 'manual' / 'brain_tumor_dataset')
  builder = _prepare('brain_tumor_detection', tmp_path / 'manual', tmp_path)
  assert builder.info.splits['train'].num_examples == 4


@pytest.mark.parametrize(
    'break_it, message',
    [
        (lambda r: (r / 'yes' / 'Y3.jpg').write_text('<html>'), r'Y3\.jpg'),
        (
            lambda r: (r / 'yes' / 'Y1.png').write_bytes(
                (r / 'yes' / 'Y1.png').read_bytes()[:100]
            ),
            r'Y1\.png.*(truncated|decode)',
        ),
        (lambda r: (r / 'yes' / 'sub').mkdir(), r'Unexpected folder .*sub'),
        (
            lambda r: [p.unlink() for p in (r / 'yes').iterdir()],
            r'yes holds no images',
        ),
        (
            lambda r: os.rename(r / 'no', r / 'nope'),
            r'No folder with no/, yes/',
        ),
    ],
    ids=['not-an-image', 'truncated', 'sub-folder', 'empty-class', 'no-class'],
)
def test_detection_bad_input(tmp_path, break_it, message):
  _detection_fixture(tmp_path / 'manual')
  break_it(tmp_path / 'manual')
  with pytest.raises(DataError, match=message):
    _prepare('brain_tumor_detection', tmp_path / 'manual', tmp_path)
  # Nothing half-built is left to be reused.
  assert not list((tmp_path / 'tfds').rglob('*.tfrecord*'))


def test_detection_error_survives_direct_tfds_preparation(tmp_path):
  """Calling TFDS directly (not via prepare) still gives our error."""
  _detection_fixture(tmp_path / 'manual')
  (tmp_path / 'manual' / 'no' / 'broken.jpg').write_bytes(b'\xff\xd8\xff')
  builder = builders.get_builder(
      'brain_tumor_detection', data_dir=tmp_path / 'tfds'
  )
  config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual'))
  with pytest.raises(DataError, match=r'no/broken\.jpg: cannot decode'):
    builder.download_and_prepare(download_config=config)


def test_prepare_reuses_and_rebuilds_on_other_or_changed_source(tmp_path):
  _detection_fixture(tmp_path / 'a')
  _detection_fixture(tmp_path / 'b')
  (tmp_path / 'b' / 'yes' / 'Y1.png').unlink()
  first = _prepare('brain_tumor_detection', tmp_path / 'a', tmp_path)
  record = pathlib.Path(os.fspath(first.data_path)) / 'dataset_info.json'
  stamp = record.stat().st_mtime_ns
  # Same source: reused, not rebuilt.
  again = _prepare('brain_tumor_detection', tmp_path / 'a', tmp_path)
  assert record.stat().st_mtime_ns == stamp
  assert again.info.splits['train'].num_examples == 4
  assert again.info.metadata['manual_dir'] == str((tmp_path / 'a').resolve())
  # Another manual_dir: rebuilt from it.
  other = _prepare('brain_tumor_detection', tmp_path / 'b', tmp_path)
  assert other.info.splits['train'].num_examples == 3
  assert other.info.metadata['manual_dir'] == str((tmp_path / 'b').resolve())
  # Same manual_dir, changed files: rebuilt too.
  _save_image(tmp_path / 'b' / 'yes' / 'Y7.png', _grey(7))
  changed = _prepare('brain_tumor_detection', tmp_path / 'b', tmp_path)
  assert changed.info.splits['train'].num_examples == 4


def test_prepare_waits_for_another_process_and_clears_killed_leftovers(
    tmp_path):
  # Two preparations of one dataset at once collided; a killed one left an
  # incomplete.* folder behind for good.
  _detection_fixture(tmp_path / 'manual')
  builder = builders.get_builder('brain_tumor_detection',
                                 data_dir=tmp_path / 'tfds')
  folder = pathlib.Path(os.fspath(builder.data_path.parent))
  leftover = folder / f'incomplete.K1LLED_{builder.data_path.name}'
  leftover.mkdir(parents=True)
  (leftover / 'part.tfrecord').write_bytes(b'half')
  done = []
  with other_process_holding(folder) as holder:
    thread = threading.Thread(target=lambda: done.append(_prepare(
        'brain_tumor_detection', tmp_path / 'manual', tmp_path)))
    thread.start()
    time.sleep(3)
    assert thread.is_alive() and not done  # waits for the other process
    assert leftover.exists()  # not its to remove while the other works
    holder.kill()
  thread.join(timeout=300)
  assert done and done[0].info.splits['train'].num_examples == 4
  assert not leftover.exists()


def test_detection_real_data(tmp_path):
  manual = shared_data('brain_tumor_detection')
  builder = _prepare('brain_tumor_detection', manual, tmp_path)
  examples = _examples(builder)
  assert len(examples) == 253
  labels = [builder.info.features['label'].names[ex['label']]
            for ex in examples]
  assert labels.count('yes') == 155 and labels.count('no') == 98
  filenames = {ex['filename'].decode() for ex in examples}
  assert len(filenames) == 253
  assert {'yes/Y1.jpg', 'no/1 no.jpeg', 'no/No11.jpg'} <= filenames
  for ex in examples:
    assert ex['image'].dtype == np.uint8
    assert ex['image'].ndim == 3 and ex['image'].shape[-1] == 1
    assert min(ex['image'].shape[:2]) > 32
  # The stored pixels are PIL's 'L' conversion of the file.
  y1 = next(ex for ex in examples if ex['filename'] == b'yes/Y1.jpg')
  np.testing.assert_array_equal(
      y1['image'][..., 0],
      np.asarray(Image.open(manual / 'yes' / 'Y1.jpg').convert('L')),
  )


# --- brain_tumor_segmentation: Kaggle PNG -----------------------------------


def _png_fixture(root: pathlib.Path, ids=(1, 2, 10)) -> dict[int, tuple]:
  expected = {}
  for n in ids:
    shape = (16, 24) if n != 10 else (8, 8)
    image = _grey(n, shape)
    mask = np.zeros(shape, np.uint8)
    mask[2:5, 3:7] = 255
    _save_image(root / 'images' / f'{n}.png', image)
    _save_image(root / 'masks' / f'{n}.png', mask)
    expected[n] = (image, mask // 255)
  return expected


def test_segmentation_png_fixture_reads_back_exactly(tmp_path):
  expected = _png_fixture(tmp_path / 'manual')
  builder = _prepare('brain_tumor_segmentation', tmp_path / 'manual', tmp_path)
  assert builder.builder_config.name == 'png'
  examples = _examples(builder)
  assert [int(ex['id']) for ex in examples] == [1, 2, 10]  # In id order.
  for ex in examples:
    image, mask = expected[int(ex['id'])]
    np.testing.assert_array_equal(ex['image'][..., 0], image)
    np.testing.assert_array_equal(ex['mask'][..., 0], mask)
    assert ex['mask'].dtype == np.uint8
  assert set(builder.info.features) == {'image', 'mask', 'id'}


@pytest.mark.parametrize(
    'break_it, message',
    [
        (lambda r: (r / 'masks' / '2.png').unlink(), r'No mask for .*2\.png'),
        (
            lambda r: (r / 'images' / '10.png').unlink(),
            r'No image for .*masks/10\.png',
        ),
        (
            lambda r: _save_image(r / 'masks' / '2.png',
                                  np.zeros((5, 5), np.uint8)),
            r'images/2\.png has shape \(16, 24\) but .*masks/2\.png',
        ),
        (
            lambda r: _save_image(r / 'masks' / '1.png',
                                  np.full((16, 24), 128, np.uint8)),
            r'masks/1\.png: mask values \[128\]',
        ),
        (
            lambda r: _save_image(r / 'images' / 'x.png', _grey(0)),
            r'x\.png: unexpected file.*N\.png',
        ),
        (
            lambda r: (r / 'images' / '2.png').write_bytes(b'\x89PNG\r\n'),
            r'images/2\.png: cannot decode',
        ),
    ],
    ids=['image-without-mask', 'mask-without-image', 'size-mismatch',
         'mask-values', 'bad-name', 'corrupt'],
)
def test_segmentation_png_bad_input(tmp_path, break_it, message):
  _png_fixture(tmp_path / 'manual')
  break_it(tmp_path / 'manual')
  with pytest.raises(DataError, match=message):
    _prepare('brain_tumor_segmentation', tmp_path / 'manual', tmp_path)


def test_segmentation_png_hints_at_figshare_layout(tmp_path):
  _figshare_fixture(tmp_path / 'manual')
  with pytest.raises(DataError, match='brain_tumor_segmentation/figshare'):
    _prepare('brain_tumor_segmentation', tmp_path / 'manual', tmp_path)


def test_segmentation_real_data(tmp_path):
  manual = shared_data('brain_tumor_segmentation')
  builder = _prepare('brain_tumor_segmentation', manual, tmp_path)
  examples = _examples(builder)
  ids = [int(ex['id']) for ex in examples]
  # The shared copy: pairs 1..400, 955..957 and the distant test range
  # 1001..1400 (slices of other patients).
  assert ids == list(builders.select_ids('1-400,955-957,1001-1400'))
  sides = {}
  for ex in examples:
    side = ex['image'].shape[0]
    assert ex['image'].shape == ex['mask'].shape == (side, side, 1)
    sides[int(ex['id'])] = side
    assert set(np.unique(ex['mask']).tolist()) == {0, 1}  # Never empty.
  assert all(sides[i] == 512 for i in range(1, 401))
  assert all(sides[i] == 256 for i in range(955, 958))
  assert sorted(set(sides.values())) == [256, 512]
  np.testing.assert_array_equal(
      examples[0]['mask'][..., 0],
      np.asarray(Image.open(manual / 'masks' / '1.png')) // 255,
  )


def test_select_ids():
  assert builders.select_ids('1-3, 955-957,7') == (1, 2, 3, 7, 955, 956, 957)
  assert builders.select_ids('5') == (5,)
  assert builders.select_ids('2-4,3-5') == (2, 3, 4, 5)
  for bad in ('', '1-', 'a-b', '5-3', '1,,2', '-3'):
    with pytest.raises(ValueError, match='Bad id selection'):
      builders.select_ids(bad)


# --- brain_tumor_segmentation: figshare MATLAB v7.3 -------------------------


def _write_mat(path: pathlib.Path, *, image, mask, label, pid) -> None:
  """Writes a cjdata struct the way MATLAB v7.3 does (HDF5, transposed)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, 'w', userblock_size=512) as f:
    group = f.create_group('cjdata')
    group.attrs['MATLAB_class'] = np.bytes_('struct')
    # Column-major MATLAB arrays appear transposed in HDF5.
    d = group.create_dataset('image', data=np.asarray(image).T)
    d.attrs['MATLAB_class'] = np.bytes_('int16')
    d = group.create_dataset('tumorMask', data=np.asarray(mask).T)
    d.attrs['MATLAB_class'] = np.bytes_('logical')
    d = group.create_dataset('label', data=np.array([[float(label)]]))
    d.attrs['MATLAB_class'] = np.bytes_('double')
    # A 1 x n MATLAB char row is an (n, 1) uint16 dataset of UTF-16 codes.
    codes = np.array([[ord(c)] for c in pid], np.uint16)
    d = group.create_dataset('PID', data=codes)
    d.attrs['MATLAB_class'] = np.bytes_('char')
    d = group.create_dataset('tumorBorder', data=np.zeros((1, 4)))
    d.attrs['MATLAB_class'] = np.bytes_('double')


def _write_cvind(path: pathlib.Path, folds) -> None:
  with h5py.File(path, 'w', userblock_size=512) as f:
    # A 3064 x 1 MATLAB column is a (1, 3064) HDF5 dataset.
    d = f.create_dataset('cvind', data=np.array([folds], np.float64))
    d.attrs['MATLAB_class'] = np.bytes_('double')


def _figshare_fixture(root: pathlib.Path, cvind=True) -> dict[int, dict]:
  expected = {}
  specs = {1: (1, '100360', 3), 2: (2, 'MR040237', 3), 3: (3, '100360', 1)}
  for n, (label, pid, fold) in specs.items():
    # Non-square on purpose: a missing transpose changes the shape.
    image = np.arange(6 * 4, dtype=np.int16).reshape(6, 4) * 37 - 100 + n
    mask = np.zeros((6, 4), np.uint8)
    mask[1:3, 0:2] = 1
    folder = 'brainTumorDataPublic_1-766' if n < 3 else 'part2'
    _write_mat(root / folder / f'{n}.mat', image=image, mask=mask,
               label=label, pid=pid)
    scaled = np.rint((image - image.min()) * 255.0 / np.ptp(image))
    expected[n] = dict(image=scaled.astype(np.uint8), mask=mask, pid=pid,
                       tumor_class=label - 1, fold=fold)
  if cvind:
    _write_cvind(root / 'cvind.mat', [3, 3, 1])
  (root / 'README.txt').write_text('figshare readme')
  return expected


def test_figshare_fixture_reads_back_exactly(tmp_path):
  expected = _figshare_fixture(tmp_path / 'manual')
  builder = _prepare('brain_tumor_segmentation/figshare', tmp_path / 'manual',
                     tmp_path)
  assert builder.info.features['tumor_class'].names == [
      'meningioma', 'glioma', 'pituitary'
  ]
  examples = _examples(builder)
  assert [int(ex['id']) for ex in examples] == [1, 2, 3]
  for ex in examples:
    want = expected[int(ex['id'])]
    assert ex['image'].shape == (6, 4, 1)
    np.testing.assert_array_equal(ex['image'][..., 0], want['image'])
    np.testing.assert_array_equal(ex['mask'][..., 0], want['mask'])
    assert ex['patient_id'].decode() == want['pid']
    assert ex['tumor_class'] == want['tumor_class']
    assert ex['fold'] == want['fold']


def test_figshare_without_cvind_has_fold_minus_one(tmp_path):
  _figshare_fixture(tmp_path / 'manual', cvind=False)
  builder = _prepare('brain_tumor_segmentation/figshare', tmp_path / 'manual',
                     tmp_path)
  assert {int(ex['fold']) for ex in _examples(builder)} == {-1}


def _rewrite_mat(root, n, **changes):
  args = dict(image=np.ones((6, 4), np.int16), mask=np.zeros((6, 4)),
              label=1, pid='7')
  args.update(changes)
  (path,) = root.rglob(f'{n}.mat')
  _write_mat(path, **args)


@pytest.mark.parametrize(
    'break_it, message',
    [
        (lambda r: _rewrite_mat(r, 2, mask=np.full((6, 4), 2, np.uint8)),
         r'2\.mat:cjdata/tumorMask: mask values \[2\]'),
        (lambda r: _rewrite_mat(r, 2, label=4), r'2\.mat: cjdata/label is'),
        (lambda r: _rewrite_mat(r, 2, mask=np.zeros((4, 6))),
         r'2\.mat:cjdata/tumorMask has shape'),
        (lambda r: _rewrite_mat(r, 2, image=np.full((6, 4), np.nan)),
         r'2\.mat: cjdata/image holds NaN'),
        (lambda r: _rewrite_mat(r, 2, pid=''), r'2\.mat: cjdata/PID is empty'),
        (lambda r: next(r.rglob('3.mat')).write_bytes(b'MATLAB 5.0 MAT-file'),
         r'3\.mat: not a MATLAB v7\.3'),
        (lambda r: _write_cvind(r / 'cvind.mat', [1, 2]),
         r'cvind\.mat lists folds for slices 1\.\.2 but .*3\.mat'),
        (lambda r: (r / 'extra.mat').write_bytes(b''),
         r'extra\.mat: unexpected'),
    ],
    ids=['mask-values', 'label', 'size-mismatch', 'nan', 'pid', 'not-hdf5',
         'cvind-short', 'bad-name'],
)
def test_figshare_bad_input(tmp_path, break_it, message):
  _figshare_fixture(tmp_path / 'manual')
  break_it(tmp_path / 'manual')
  with pytest.raises(DataError, match=message):
    _prepare('brain_tumor_segmentation/figshare', tmp_path / 'manual',
             tmp_path)


def test_figshare_missing_field(tmp_path):
  _figshare_fixture(tmp_path / 'manual')
  path = tmp_path / 'manual' / 'part2' / '3.mat'
  with h5py.File(path, 'a') as f:
    del f['cjdata/tumorMask']
  with pytest.raises(DataError, match=r'3\.mat: no cjdata/tumorMask'):
    _prepare('brain_tumor_segmentation/figshare', tmp_path / 'manual',
             tmp_path)


# --- 3D datasets -------------------------------------------------------------


def _volume(seed: int, shape=(6, 5, 4)) -> np.ndarray:
  return np.random.default_rng(seed).uniform(0, 1000, shape).astype(np.float32)


def _iseg_fixture(root: pathlib.Path) -> dict:
  root.mkdir(parents=True, exist_ok=True)
  affine = np.diag([1.0, 1.0, 1.0, 1.0])
  raw = np.random.default_rng(0).choice([0, 10, 150, 250], (6, 5, 4))
  expected = {}
  for n, folder in ((1, 'iSeg-2017-Training'), (11, 'iSeg-2017-Testing')):
    (root / folder).mkdir(exist_ok=True)
    t1, t2 = _volume(n), _volume(n + 100)
    for kind, data in (('T1', t1), ('T2', t2)):
      nib.save(nib.AnalyzeImage(data, affine),
               root / folder / f'subject-{n}-{kind}.hdr')
    expected[n] = dict(t1=t1, t2=t2)
  nib.save(nib.AnalyzeImage(raw.astype(np.uint8), affine),
           root / 'iSeg-2017-Training' / 'subject-1-label.hdr')
  expected[1]['label'] = np.select(
      [raw == 10, raw == 150, raw == 250], [1, 2, 3], 0
  )
  return expected


def test_iseg_fixture_reads_back_exactly(tmp_path):
  expected = _iseg_fixture(tmp_path / 'manual')
  builder = _prepare('iseg2017', tmp_path / 'manual', tmp_path)
  examples = _examples(builder)
  assert [ex['id'].decode() for ex in examples] == ['1', '11']
  labelled, unlabelled = examples
  for ex in examples:
    want = expected[int(ex['id'])]
    assert ex['t1'].dtype == ex['t2'].dtype == np.float32
    np.testing.assert_array_equal(ex['t1'], want['t1'])
    np.testing.assert_array_equal(ex['t2'], want['t2'])
    assert ex['label'].shape == ex['t1'].shape == (6, 5, 4)
    assert ex['affine'].dtype == np.float64 and ex['affine'].shape == (4, 4)
  assert labelled['labelled'] and not unlabelled['labelled']
  np.testing.assert_array_equal(labelled['label'], expected[1]['label'])
  assert (unlabelled['label'] == io.IGNORE_LABEL).all()


def _analyze(path, data, affine=None):
  nib.save(nib.AnalyzeImage(data, np.eye(4) if affine is None else affine),
           path)


@pytest.mark.parametrize(
    'break_it, message',
    [
        (lambda d: _analyze(d / 'subject-1-label.hdr',
                            np.full((6, 5, 4), 42, np.uint8)),
         r'subject-1-label\.hdr: unexpected label values \[42\]'),
        (lambda d: _analyze(d / 'subject-1-T2.hdr', _volume(0, (6, 5, 3))),
         r'subject-1-T2\.hdr has shape \(6, 5, 3\)'),
        (lambda d: _analyze(d / 'subject-1-T2.hdr', _volume(0),
                            np.diag([2.0, 1, 1, 1])),
         r'subject-1-T2\.hdr and .*subject-1-T1\.hdr have different affines'),
        (lambda d: _analyze(d / 'subject-1-T1.hdr',
                            np.full((6, 5, 4), np.nan, np.float32)),
         r'subject-1-T1\.hdr: 120 voxels are NaN'),
        (lambda d: (d / 'subject-1-T2.img').unlink(),
         r'subject-1-T2\.img is missing'),
        (lambda d: (d / 'subject-1-T1.img').write_bytes(b'\0' * 10),
         r'subject-1-T1\.(hdr|img): cannot read'),
        (lambda d: [(d / f'subject-1-T2.{s}').unlink() for s in ('hdr', 'img')],
         r'Subject 1 has no subject-1-T2\.hdr'),
    ],
    ids=['label-values', 'grid-shape', 'grid-affine', 'nan', 'missing-img',
         'truncated', 'missing-t2'],
)
def test_iseg_bad_input(tmp_path, break_it, message):
  _iseg_fixture(tmp_path / 'manual')
  break_it(tmp_path / 'manual' / 'iSeg-2017-Training')
  with pytest.raises(DataError, match=message):
    _prepare('iseg2017', tmp_path / 'manual', tmp_path)


def _nifti(path: pathlib.Path, data, affine=None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine),
           path)


def _mrbrains13_fixture(root: pathlib.Path, labels=range(9)) -> np.ndarray:
  raw = np.resize(np.asarray(list(labels), np.uint8), (6, 5, 4))
  for n in (1, 2):
    subject = root / 'TrainingData' / str(n)
    for i, stem in enumerate(('T1', 'T1_IR', 'T2_FLAIR')):
      _nifti(subject / f'{stem}.nii', _volume(10 * n + i))
    _nifti(subject / 'LabelsForTraining.nii', raw)
  for i, stem in enumerate(('T1', 'T1_IR', 'T2_FLAIR')):
    _nifti(root / 'TestData' / '1' / f'{stem}.nii', _volume(100 + i))
  return raw


def test_mrbrains13_raw_and_tissue(tmp_path):
  raw = _mrbrains13_fixture(tmp_path / 'manual')
  raw_builder = _prepare('mrbrains13', tmp_path / 'manual', tmp_path)
  tissue_builder = _prepare('mrbrains13/tissue', tmp_path / 'manual', tmp_path)
  assert raw_builder.builder_config.name == 'raw'
  raw_examples = _examples(raw_builder)
  assert [ex['id'].decode() for ex in raw_examples] == [
      'TrainingData/1', 'TrainingData/2', 'TestData/1'
  ]
  assert [bool(ex['labelled']) for ex in raw_examples] == [True, True, False]
  np.testing.assert_array_equal(raw_examples[0]['label'], raw)
  np.testing.assert_array_equal(raw_examples[1]['t1_ir'], _volume(21))
  np.testing.assert_array_equal(raw_examples[1]['flair'], _volume(22))
  merged = _examples(tissue_builder)[0]['label']
  lut = np.array([0, 2, 2, 3, 3, 1, 1, 255, 255])
  np.testing.assert_array_equal(merged, lut[raw])


def test_mrbrains13_bad_input(tmp_path):
  _mrbrains13_fixture(tmp_path / 'manual', labels=range(10))
  with pytest.raises(DataError, match=r'1/LabelsForTraining\.nii: unexpected '
                     r'label values \[9\]'):
    _prepare('mrbrains13', tmp_path / 'manual', tmp_path)
  _mrbrains13_fixture(tmp_path / 'manual')
  (tmp_path / 'manual' / 'TrainingData' / '2' / 'T1_IR.nii').unlink()
  with pytest.raises(DataError, match=r'TrainingData/2: missing t1_ir'):
    _prepare('mrbrains13', tmp_path / 'manual', tmp_path)


def _mrbrains18_fixture(root: pathlib.Path) -> np.ndarray:
  raw = np.resize(np.arange(11, dtype=np.uint8), (6, 5, 4))
  subject = root / 'training' / '070'
  for i, stem in enumerate(('T1', 'IR', 'FLAIR')):
    _nifti(subject / 'pre' / f'{stem}.nii.gz', _volume(i))
  _nifti(subject / 'segm.nii.gz', raw)
  return raw


def test_mrbrains18_raw_and_tissue(tmp_path):
  raw = _mrbrains18_fixture(tmp_path / 'manual')
  (ex,) = _examples(_prepare('mrbrains18', tmp_path / 'manual', tmp_path))
  assert ex['id'] == b'training/070' and ex['labelled']
  np.testing.assert_array_equal(ex['label'], raw)
  np.testing.assert_array_equal(ex['t1_ir'], _volume(1))
  (ex,) = _examples(_prepare('mrbrains18/tissue', tmp_path / 'manual',
                             tmp_path))
  lut = np.array([0, 2, 2, 3, 3, 1, 1, 255, 255, 255, 255])
  np.testing.assert_array_equal(ex['label'], lut[raw])


def test_mrbrains18_bad_input(tmp_path):
  _mrbrains18_fixture(tmp_path / 'manual')
  (tmp_path / 'manual' / 'training' / '070' / 'segm.nii.gz').unlink()
  with pytest.raises(DataError, match=r'training/070: missing label'):
    _prepare('mrbrains18', tmp_path / 'manual', tmp_path)


def test_freesurfer_fixture_flat_and_subject_dir(tmp_path):
  manual = tmp_path / 'manual'
  aseg = np.resize(np.array([0, 2, 3, 4, 16, 31, 30, 251, 85], np.int32),
                   (6, 5, 4))
  _nifti(manual / 'sub-01_T1.nii.gz', _volume(1))
  _nifti(manual / 'sub-01_aseg.nii.gz', aseg)
  mri = manual / 'bert' / 'mri'
  mri.mkdir(parents=True)
  nib.save(nib.MGHImage(_volume(2), np.eye(4)), mri / 'T1.mgz')
  nib.save(nib.MGHImage(aseg, np.eye(4)), mri / 'aseg.mgz')
  nib.save(nib.MGHImage(aseg, np.eye(4)), mri / 'aparc+aseg.mgz')  # Ignored.
  examples = _examples(_prepare('freesurfer_tissue', manual, tmp_path))
  assert [ex['id'].decode() for ex in examples] == ['bert', 'sub-01']
  expected = np.array([0, 3, 2, 1, 3, 1, 255, 3, 0])  # Documented decisions.
  for ex, t1 in zip(examples, (_volume(2), _volume(1))):
    np.testing.assert_array_equal(ex['t1'], t1)
    np.testing.assert_array_equal(
        ex['label'], np.resize(expected, (6, 5, 4)).astype(np.uint8)
    )


def test_freesurfer_bad_input(tmp_path):
  manual = tmp_path / 'manual'
  _nifti(manual / 'a_T1.nii.gz', _volume(1))
  _nifti(manual / 'a_aseg.nii.gz', np.full((6, 5, 4), 99, np.int32))
  with pytest.raises(DataError, match=r'a_aseg\.nii\.gz: unexpected label '
                     r'values \[99\]'):
    _prepare('freesurfer_tissue', manual, tmp_path)
  _nifti(manual / 'a_aseg.nii.gz', np.zeros((6, 5, 4), np.int32),
         np.diag([1.0, 1, 1.2, 1]))
  with pytest.raises(DataError, match='different affines'):
    _prepare('freesurfer_tissue', manual, tmp_path)
  _nifti(manual / 'b_T1.nii.gz', _volume(1))
  with pytest.raises(DataError, match=r'b_T1\.nii\.gz has no matching aseg'):
    _prepare('freesurfer_tissue', manual, tmp_path)


def test_freesurfer_real_data(tmp_path):
  manual = shared_data('tissue_t1')
  (ex,) = _examples(_prepare('freesurfer_tissue', manual, tmp_path))
  assert ex['id'] == b'subject01' and ex['labelled']
  t1 = nib.load(manual / 'subject01_T1.nii.gz')
  aseg = np.asarray(nib.load(manual / 'subject01_aseg.nii.gz').dataobj)
  assert ex['t1'].shape == ex['label'].shape == (160, 192, 224)
  np.testing.assert_array_equal(ex['t1'], np.asarray(t1.dataobj, np.float32))
  np.testing.assert_array_equal(ex['affine'], t1.affine)
  # Each tissue is exactly the union of its aseg labels.
  for tissue in (1, 2, 3, 255):
    sources = [k for k, v in freesurfer_tissue.ASEG_TO_TISSUE.items()
               if v == tissue]
    np.testing.assert_array_equal(ex['label'] == tissue,
                                  np.isin(aseg, sources))
  assert set(np.unique(ex['label']).tolist()) == {0, 1, 2, 3, 255}


def test_direct_tfds_preparation_with_missing_manual_dir(tmp_path):
  builder = builders.get_builder('iseg2017', data_dir=tmp_path / 'tfds')
  config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'nope'))
  with pytest.raises(DataError, match='(?s)does not exist.*subject-N-T1'):
    builder.download_and_prepare(download_config=config)
