"""Layouts of real slices and the tumour masks placed in them."""
import numpy as np
import pytest

from mrseg.data import layouts
from mrseg.data import phantom

SPEC = layouts.LayoutSpec()


@pytest.fixture(scope='module')
def slices():
  return phantom.tumor_slices(12, 64, seed=0)


def test_host_layout_hides_the_tumour_and_keeps_the_brain(slices):
  image, mask = slices['image'][0], slices['mask'][0]
  classes, brain = layouts.host_layout(image, mask, SPEC)
  assert classes.dtype == np.uint8 and classes.shape == (64, 64)
  # Outside the head: 0; inside: the K classes, all used; no tumour label.
  assert set(np.unique(classes)) == {0, 1, 2, 3}
  assert (classes[~brain] == 0).all() and (classes[brain] > 0).all()
  # Under the tumour the nearest non-tumour classes, not a blank.
  assert (classes[mask[..., 0] > 0] > 0).all()
  layout = layouts.with_tumour(classes, mask, SPEC)
  np.testing.assert_array_equal(layout == SPEC.num_classes + 1,
                                mask[..., 0] > 0)


def test_layouts_are_one_hot_encodable(slices):
  lay = layouts.layouts_of(slices['image'][:3], slices['mask'][:3], SPEC)
  onehot = layouts.one_hot(lay, SPEC.num_labels)
  assert onehot.shape == (3, 64, 64, 5)
  np.testing.assert_array_equal(onehot.sum(-1), 1.0)


def test_deform_mask_scales_area_and_centres_it(slices):
  mask = slices['mask'][1, ..., 0]
  t = layouts.MaskTransform(rotation_degrees=0, scale=(1.5, 1.5),
                            elastic_alpha=0, flip=False)
  out, params = layouts.deform_mask(mask, np.random.default_rng(0), t)
  assert params['scale'] == pytest.approx(1.5)
  assert out.sum() == pytest.approx(2.25 * mask.sum(), rel=0.2)
  cy, cx = np.argwhere(out).mean(0)
  assert abs(cy - 31.5) < 1.5 and abs(cx - 31.5) < 1.5


def test_synthesis_layouts_place_new_tumours_inside_host_brains(slices):
  ids = slices['index'] + 100
  lay, masks, records = layouts.synthesis_layouts(
      slices['image'], slices['mask'], ids, 20, seed=3)
  assert lay.shape == (20, 64, 64) and masks.shape == (20, 64, 64, 1)
  assert len(records) == 20
  for k, (l, m, r) in enumerate(zip(lay, masks, records)):
    assert m.sum() >= 4 and r['pixels'] == m.sum() and r['index'] == k
    np.testing.assert_array_equal(l == SPEC.num_classes + 1, m[..., 0] > 0)
    # Inside the host's brain, and the host/source ids are the given ones.
    _, brain = layouts.host_layout(slices['image'][r['host_index']],
                                   slices['mask'][r['host_index']], SPEC)
    assert (brain[m[..., 0] > 0]).all()
    assert r['host_id'] == ids[r['host_index']]
    assert r['source_id'] == ids[r['source_index']]
  # New tumours: not a copy of any real mask.
  real = slices['mask'].reshape(12, -1)
  same = (masks.reshape(20, 1, -1) == real[None]).all(-1)
  assert not same.any()
  # The same seed draws the same layouts.
  again, _, _ = layouts.synthesis_layouts(
      slices['image'], slices['mask'], ids, 20, seed=3)
  np.testing.assert_array_equal(again, lay)


def test_synthesis_layouts_fail_clearly():
  images = np.zeros((2, 32, 32, 1), np.float32)
  masks = np.zeros((2, 32, 32, 1), np.uint8)
  with pytest.raises(ValueError, match='No training mask holds a tumour'):
    layouts.synthesis_layouts(images, masks, [1, 2], 3, 0)
  masks[0, 10:14, 10:14] = 1
  with pytest.raises(ValueError, match='placement'):
    layouts.synthesis_layouts(images, masks, [1, 2], 3, 0,
                              transform=layouts.MaskTransform(placement='x'))
  # Blank images: no brain but the tumour itself, too small for the
  # tumour grown threefold.
  with pytest.raises(ValueError, match='Could not place'):
    layouts.synthesis_layouts(images, masks, [1, 2], 1, 0,
                              transform=layouts.MaskTransform(scale=(3, 3)))


def test_tumour_labels_tell_a_dark_core_from_a_bright_rim():
  spec = layouts.LayoutSpec(tumour_classes=3)
  yy, xx = np.mgrid[:64, :64]
  image = np.where(np.hypot(yy - 32, xx - 32) < 28,
                   0.3 + 0.4 * xx / 64, 0).astype(np.float32)
  r = np.hypot(yy - 26, xx - 30)
  mask = r <= 8
  image[mask] = np.where(r[mask] <= 4, 0.02, 1.0)
  labels = layouts.tumour_labels(image, mask, spec)
  assert labels.dtype == np.uint8 and (labels[~mask] == 0).all()
  assert labels[26, 30] == 1  # the dark core
  assert (labels[(r > 6.5) & mask] == 3).all()  # the bright rim
  layout = layouts.with_tumour(layouts.host_layout(image, mask, spec)[0],
                               labels, spec)
  np.testing.assert_array_equal(layout[mask], 3 + labels[mask])
  assert (layout[~mask] <= 3).all()
  assert spec.num_labels == 7
  # T = 1: the mask itself.
  np.testing.assert_array_equal(
      layouts.tumour_labels(image, mask, SPEC), mask.astype(np.uint8))


def test_synthesis_carries_each_tumour_s_classes_with_its_mask(slices):
  ids = slices['index']
  spec = layouts.LayoutSpec(tumour_classes=3)
  lay, masks, records = layouts.synthesis_layouts(
      slices['image'], slices['mask'], ids, 20, seed=3, spec=spec)
  lay1, masks1, records1 = layouts.synthesis_layouts(
      slices['image'], slices['mask'], ids, 20, seed=3)
  # The same draws and masks as with the mask alone.
  assert records == records1
  np.testing.assert_array_equal(masks, masks1)
  tumour = lay > spec.num_classes
  np.testing.assert_array_equal(tumour, masks[..., 0] > 0)
  np.testing.assert_array_equal(lay[~tumour], lay1[~tumour])
  # Each placed tumour holds its source's classes in about its shares.
  for l, r in zip(lay, records):
    src = layouts.tumour_labels(slices['image'][r['source_index']],
                                slices['mask'][r['source_index']], spec)
    want = np.bincount(src[src > 0], minlength=4)[1:] / (src > 0).sum()
    got = l[l > spec.num_classes] - spec.num_classes
    share = np.bincount(got, minlength=4)[1:] / len(got)
    np.testing.assert_allclose(share, want, atol=0.2)
