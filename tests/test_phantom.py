"""Tests of the built-in phantom datasets (mrseg/data/phantom.py)."""
import numpy as np
import pytest
from scipy import ndimage

from mrseg.data import phantom

# Small sizes keep each test to a second or two; the first test that touches
# the template pays ~2 s to load it (cached for the rest of the module).
SIZE = 48


@pytest.fixture(scope='module')
def slices():
  return phantom.tumor_slices(12, SIZE, seed=3)


@pytest.fixture(scope='module')
def volumes():
  # One healthy subject and one with a tumour, at 4 mm to stay fast.
  return (phantom.tissue_volumes(1, seed=0, downsample=4)[0],
          phantom.tissue_volumes(1, seed=0, downsample=4,
                                 tumor_probability=1.0)[0])


def _rim_contrast(data: dict[str, np.ndarray]) -> np.ndarray:
  """Per example: mean of the mask's outer pixels minus the pixels around it."""
  out = []
  for image, mask in zip(data['image'][..., 0],
                         data['mask'][..., 0].astype(bool)):
    rim = mask & ~ndimage.binary_erosion(mask)
    around = (ndimage.binary_dilation(mask, iterations=3)
              & ~ndimage.binary_dilation(mask) & (image > 0))
    out.append(image[rim].mean() - image[around].mean())
  return np.array(out)


# 2D tumour slices.


def test_slices_shapes_dtypes_ranges(slices):
  assert set(slices) == {'image', 'mask', 'index'}
  assert slices['image'].shape == (12, SIZE, SIZE, 1)
  assert slices['image'].dtype == np.float32
  assert slices['mask'].shape == (12, SIZE, SIZE, 1)
  assert slices['mask'].dtype == np.uint8
  assert slices['index'].dtype == np.int64
  np.testing.assert_array_equal(slices['index'], np.arange(12))
  assert np.isfinite(slices['image']).all()
  assert slices['image'].min() == 0.0  # Black background.
  assert slices['image'].max() <= 1.0
  # Each image uses the range: the brain's bright end is near 1.
  assert (slices['image'].max(axis=(1, 2, 3)) > 0.8).all()
  assert set(np.unique(slices['mask'])) <= {0, 1}


def test_slices_masks_nonempty_and_inside_brain(slices):
  mask = slices['mask'].astype(bool)
  assert mask.any(axis=(1, 2, 3)).all()
  assert (slices['image'][mask] > 0).all()
  # Tumours are a part of the brain, never all of it.
  brain_area = (slices['image'] > 0).sum(axis=(1, 2, 3))
  assert (mask.sum(axis=(1, 2, 3)) < 0.5 * brain_area).all()


def test_slices_deterministic_and_any_subset_reproducible(slices):
  again = phantom.tumor_slices(12, SIZE, seed=3)
  for key in slices:
    np.testing.assert_array_equal(slices[key], again[key])
  one = phantom.tumor_slices(1, SIZE, seed=3, first_index=5)
  np.testing.assert_array_equal(one['image'][0], slices['image'][5])
  np.testing.assert_array_equal(one['mask'][0], slices['mask'][5])
  assert one['index'][0] == 5
  tail = phantom.tumor_slices(3, SIZE, seed=3, first_index=9)
  np.testing.assert_array_equal(tail['image'], slices['image'][9:])


def test_slices_differ_across_seeds_and_examples(slices):
  other = phantom.tumor_slices(12, SIZE, seed=4)
  assert not np.array_equal(other['mask'], slices['mask'])
  assert np.abs(other['image'] - slices['image']).mean() > 0.05
  # Examples within a dataset differ from each other too.
  assert np.abs(slices['image'][0] - slices['image'][1]).mean() > 0.05


def test_slices_without_tumors_have_empty_masks():
  data = phantom.tumor_slices(6, 32, seed=1, tumor_probability=0.0)
  assert not data['mask'].any()
  assert (data['image'].max(axis=(1, 2, 3)) > 0.5).all()


def test_slices_tumor_probability_mixes():
  data = phantom.tumor_slices(24, 32, seed=2, tumor_probability=0.5)
  has_tumor = data['mask'].any(axis=(1, 2, 3))
  assert 3 <= has_tumor.sum() <= 21


def test_slices_same_geometry_for_every_contrast():
  # The contrast only changes intensities, so one seed gives paired
  # T1/T2/T1ce images with one mask.
  masks = [phantom.tumor_slices(4, 32, seed=7, contrast=c)['mask']
           for c in phantom.CONTRASTS]
  for mask in masks[1:]:
    np.testing.assert_array_equal(mask, masks[0])


def test_t1ce_tumor_rim_is_enhanced():
  t1ce = _rim_contrast(phantom.tumor_slices(24, 64, seed=0, contrast='t1ce'))
  t1 = _rim_contrast(phantom.tumor_slices(24, 64, seed=0, contrast='t1'))
  # Most tumours enhance (non-enhancing ones are the exception).
  assert t1ce.mean() > 0.1
  assert np.mean(t1ce > 0) > 0.6
  # Without contrast agent the same tumours are hypo-/isointense.
  assert t1.mean() < 0 < t1ce.mean()


def test_contrasts_order_tissues_differently():
  # One seed gives the same anatomy in every contrast. T2 inverts the tissue
  # order of T1, so inside the brain (away from its partial-volume edge) the
  # pixels of T1 and T2 are anti-correlated, those of T1 and T1ce correlated.
  images = {c: phantom.tumor_slices(8, SIZE, seed=3, contrast=c)['image']
            for c in phantom.CONTRASTS}

  def mean_correlation(a, b):
    corr = []
    for x, y in zip(images[a][..., 0], images[b][..., 0]):
      inside = ndimage.binary_erosion((x > 0) & (y > 0), iterations=2)
      corr.append(np.corrcoef(x[inside], y[inside])[0, 1])
    return np.mean(corr)

  assert mean_correlation('t1', 't2') < -0.3
  assert mean_correlation('t1ce', 't2') < -0.2
  assert mean_correlation('t1', 't1ce') > 0.3


@pytest.mark.parametrize('size', [16, 50])
def test_slices_odd_sizes(size):
  data = phantom.tumor_slices(3, size, seed=0)
  assert data['image'].shape == (3, size, size, 1)
  assert data['mask'].any(axis=(1, 2, 3)).all()


def test_slices_empty_request():
  data = phantom.tumor_slices(0, 32)
  assert data['image'].shape == (0, 32, 32, 1)
  assert data['mask'].shape == (0, 32, 32, 1)
  assert data['index'].shape == (0,)


@pytest.mark.parametrize('kwargs', [
    dict(num_examples=-1),
    dict(num_examples=2, image_size=8),
    dict(num_examples=2, image_size=32.0),
    dict(num_examples=2, seed=-1),
    dict(num_examples=2, contrast='flair'),
    dict(num_examples=2, tumor_probability=1.5),
    dict(num_examples=2, first_index=-3),
])
def test_slices_invalid_arguments(kwargs):
  with pytest.raises(ValueError):
    phantom.tumor_slices(**kwargs)


# 3D tissue volumes.


def test_volumes_shapes_dtypes(volumes):
  for subject in volumes:
    assert set(subject) == {'t1', 't2', 'label', 'brain_mask', 'affine', 'id'}
    shape = subject['t1'].shape
    assert len(shape) == 3
    for key, dtype in (('t1', np.float32), ('t2', np.float32),
                       ('label', np.uint8), ('brain_mask', np.bool_)):
      assert subject[key].shape == shape, key
      assert subject[key].dtype == dtype, key
    for key in ('t1', 't2'):
      assert np.isfinite(subject[key]).all()
      assert subject[key].min() >= 0
      assert 0.5 < subject[key].max() < 2.0  # Realistic, not normalised.
      assert subject[key][0, 0, 0] == 0  # Skull-stripped background.
    np.testing.assert_array_equal(subject['brain_mask'], subject['label'] > 0)
    assert isinstance(subject['id'], str)


def test_volume_labels(volumes):
  healthy, with_tumor = volumes
  assert set(np.unique(healthy['label'])) == {0, 1, 2, 3}
  assert set(np.unique(with_tumor['label'])) == {0, 1, 2, 3, 4}
  # The tumour is a compact part of the brain.
  tumor = with_tumor['label'] == phantom.TUMOR_LABEL
  assert 0 < tumor.sum() < 0.3 * with_tumor['brain_mask'].sum()
  assert ndimage.label(tumor)[1] <= 3
  # Tissue shares of a brain: WM and GM dominate, CSF is the smallest.
  counts = np.bincount(healthy['label'].ravel(), minlength=4)[1:]
  assert counts[0] < counts[1] and counts[0] < counts[2]
  assert counts[0] > 0.02 * counts.sum()


def test_volume_tissue_contrast(volumes):
  for subject in volumes:
    label = subject['label']
    t1 = [subject['t1'][label == k].mean() for k in (1, 2, 3)]
    t2 = [subject['t2'][label == k].mean() for k in (1, 2, 3)]
    assert t1[2] > t1[1] > t1[0]  # T1: WM > GM > CSF.
    assert t2[0] > t2[1] > t2[2]  # T2: CSF > GM > WM.


def test_volume_affine():
  for downsample in (3, 4):
    subject = phantom.tissue_volumes(1, seed=2, downsample=downsample)[0]
    affine = subject['affine']
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    np.testing.assert_allclose(np.diag(affine)[:3], downsample)
    np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])
    # Voxel (0, 0, 0) is the corner below, behind and right of the brain in
    # MNI space (the brain spans about x -70..70, y -105..70, z -70..80 mm).
    corner = affine[:3, 3]
    assert -100 < corner[0] < -70
    assert -140 < corner[1] < -105
    assert -90 < corner[2] < -60
    # The far corner lies on the other side of the brain.
    far = affine @ np.append(np.array(subject['t1'].shape) - 1, 1)
    assert far[0] > 70 and far[1] > 70 and far[2] > 75


def test_volume_shape_scales_with_downsample():
  shape3 = phantom.tissue_volumes(1, downsample=3)[0]['t1'].shape
  shape4 = phantom.tissue_volumes(1, downsample=4)[0]['t1'].shape
  for a, b in zip(shape3, shape4):
    assert abs(a * 3 - b * 4) <= 4
  # Compact: the brain (about 145x180x155 mm) plus a 10 mm margin.
  assert all(n * 3 < 210 for n in shape3)


def test_volumes_deterministic_and_any_subset_reproducible():
  both = phantom.tissue_volumes(2, seed=1, downsample=4)
  second = phantom.tissue_volumes(1, seed=1, downsample=4, first_index=1)[0]
  for key in ('t1', 't2', 'label', 'affine'):
    np.testing.assert_array_equal(second[key], both[1][key])
  assert second['id'] == both[1]['id'] != both[0]['id']
  # A different subject has different anatomy and intensities.
  assert not np.array_equal(both[0]['label'], both[1]['label'])
  other_seed = phantom.tissue_volumes(1, seed=2, downsample=4)[0]
  assert np.abs(other_seed['t1'] - both[0]['t1']).mean() > 0.01


@pytest.mark.parametrize('kwargs', [
    dict(num_subjects=-1),
    dict(num_subjects=1, downsample=0),
    dict(num_subjects=1, downsample=1.5),
    dict(num_subjects=1, seed=-2),
    dict(num_subjects=1, tumor_probability=-0.1),
    dict(num_subjects=1, first_index=-1),
])
def test_volumes_invalid_arguments(kwargs):
  with pytest.raises(ValueError):
    phantom.tissue_volumes(**kwargs)
