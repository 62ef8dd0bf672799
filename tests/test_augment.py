"""Tests for the 2D augmentation (`mrseg.data.augment`).

The augmentation runs inside `pipeline.train_dataset`, as in training, so the
tests see the graph-mode numbers that training sees.
"""
import numpy as np
import pytest
from scipy import ndimage
import tensorflow as tf

from mrseg.data import augment
from mrseg.data import pipeline

ALL_ON = dict(flip=True, rotation_degrees=20.0, elastic_alpha=2.0,
              elastic_sigma=6.0, intensity_scale=0.1, intensity_shift=0.05,
              gamma=0.2)


def _blobs(num: int, size: int = 48, seed: int = 0) -> np.ndarray:
  """Binary masks [N, S, S, 1] with an off-centre rectangle and a disc."""
  rng = np.random.default_rng(seed)
  masks = np.zeros((num, size, size, 1), np.uint8)
  rows, cols = np.mgrid[:size, :size]
  for m in masks:
    r, c = rng.integers(4, size // 2, 2)
    m[r:r + size // 3, c:c + size // 5] = 1
    cr, cc = rng.integers(size // 2, size - 8, 2)
    m[(rows - cr)**2 + (cols - cc)**2 < 25, 0] = 1
  return masks


def _batches(arrays, fn, steps, batch=4, start_step=0, seed=0):
  ds = pipeline.train_dataset(arrays, batch, seed, start_step=start_step,
                              process_index=0, process_count=1,
                              preprocess=fn)
  return [b for _, b in zip(range(steps), ds.as_numpy_iterator())]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_all_off_is_identity():
  fn = augment.make_augment_2d(**augment.default_config())
  masks = _blobs(6)
  arrays = {'image': masks.astype(np.float32) * 0.7, 'mask': masks}
  plain = _batches(arrays, None, 3)
  assert _same(_batches(arrays, fn, 3), plain)
  example = {'image': tf.zeros([4, 4, 1])}  # no '_global_index' needed
  assert fn(example)['image'] is example['image']


def test_deterministic_resumable_and_varied():
  masks = _blobs(5)
  arrays = {'image': masks.astype(np.float32) * 0.8 + 0.1, 'mask': masks}
  fn = augment.make_augment_2d(seed=3, **ALL_ON)
  run = _batches(arrays, fn, 5)
  assert _same(run, _batches(arrays, fn, 5))
  # A run resumed at step 2 reads the uninterrupted run's batches 2, 3, 4.
  assert _same(run[2:], _batches(arrays, fn, 3, start_step=2))
  # 20 reads of 5 examples (4 epochs): every read is augmented afresh, so
  # no two outputs are equal although each example appears 4 times.
  images = np.concatenate([b['image'] for b in run])
  flat = images.reshape(len(images), -1)
  assert len(np.unique(flat, axis=0)) == len(images)
  # Another run seed draws other augmentations of the same examples.
  other = _batches(arrays, augment.make_augment_2d(seed=4, **ALL_ON), 5)
  assert not np.array_equal(other[0]['image'], run[0]['image'])


def test_mask_stays_binary_and_aligned_with_image():
  masks = _blobs(8)
  # The image IS the mask: geometry must move both the same way.
  arrays = {'image': masks.astype(np.float32), 'mask': masks}
  geometric = dict(flip=True, rotation_degrees=30.0, elastic_alpha=2.0,
                   elastic_sigma=6.0)
  fn = augment.make_augment_2d(seed=1, **geometric)
  changed = 0
  for batch in _batches(arrays, fn, 4, batch=4):
    assert batch['mask'].dtype == np.uint8
    assert set(np.unique(batch['mask'])) <= {0, 1}
    for image, mask in zip(batch['image'], batch['mask']):
      thresholded = image > 0.5
      mismatch = thresholded != mask.astype(bool)
      # Bilinear + threshold and nearest differ only on the boundary, and
      # only there: never in the interior of either region.
      boundary = (ndimage.binary_dilation(mask[..., 0])
                  & ~ndimage.binary_erosion(mask[..., 0]))
      assert not (mismatch[..., 0] & ~boundary).any()
      assert mismatch.sum() <= 0.1 * boundary.sum()
      # Same centre of mass (a shift or transpose between them fails this).
      np.testing.assert_allclose(ndimage.center_of_mass(thresholded[..., 0]),
                                 ndimage.center_of_mass(mask[..., 0]),
                                 atol=0.3)
    changed += sum(not np.array_equal(m, o) for m, o in
                   zip(batch['mask'], masks))
  assert changed >= 12  # the augmentation really moved the masks


def test_flip_is_exact_and_shared():
  masks = _blobs(4)
  image = masks.astype(np.float32) * 0.5 + np.linspace(0, 0.4, 48)[:, None,
                                                                   None]
  arrays = {'image': image, 'mask': masks}
  fn = augment.make_augment_2d(flip=True, seed=0)
  flipped = kept = 0
  for batch in _batches(arrays, fn, 6):
    for out_image, out_mask in zip(batch['image'], batch['mask']):
      # Which input it came from, and whether it was reversed left-right.
      matches = [(np.array_equal(out_image, image[i]), np.array_equal(
          out_image, image[i][:, ::-1])) for i in range(4)]
      i = next(i for i, m in enumerate(matches) if any(m))
      if matches[i][0]:
        kept += 1
        np.testing.assert_array_equal(out_mask, masks[i])
      else:
        flipped += 1
        np.testing.assert_array_equal(out_mask, masks[i][:, ::-1])
  assert flipped >= 4 and kept >= 4


def test_intensity_touches_image_only_and_keeps_order():
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 1, (4, 24, 24, 1)).astype(np.float32)
  masks = _blobs(4, 24)
  arrays = {'image': image, 'mask': masks}
  fn = augment.make_augment_2d(intensity_scale=0.2, intensity_shift=0.1,
                               gamma=0.3, seed=0)
  for batch in _batches(arrays, fn, 3):
    assert batch['image'].min() >= 0 and batch['image'].max() <= 1
    for out, out_mask in zip(batch['image'], batch['mask']):
      i = [np.array_equal(out_mask, m) for m in masks].index(True)
      assert not np.allclose(out, image[i])
      # Gamma, gain and offset are monotonic: the order of pixels survives
      # (up to ties made by the clip).
      ranked = out.ravel()[np.argsort(image[i].ravel())]
      assert (np.diff(ranked) >= -1e-6).all()


def test_elastic_alpha_is_displacement_in_pixels():
  size = 128
  ramp = np.tile(np.arange(size, dtype=np.float32), (size, 1))
  arrays = {'image': ramp[None, :, :, None] / size}
  fn = augment.make_augment_2d(elastic_alpha=2.0, elastic_sigma=4.0, seed=0,
                               fill_value=-1.0)
  (batch,) = _batches(arrays, fn, 1, batch=2)
  # Bilinear reading of a linear ramp gives back the source column exactly:
  # the difference is the field's column component.
  inner = (slice(12, -12), slice(12, -12))
  displacement = (batch['image'][:, :, :, 0] * size - ramp)[:, inner[0],
                                                            inner[1]]
  assert 1.6 < displacement.std() < 2.4
  assert abs(displacement.mean()) < 0.5
  # Smooth: neighbouring pixels move almost alike.
  assert np.abs(np.diff(displacement, axis=-1)).mean() < 0.5


def test_rotation_turns_about_the_centre():
  size = 33
  image = np.zeros((1, size, size, 1), np.float32)
  image[0, 16, 16] = 1  # the centre pixel stays put under any rotation
  image[0, 16, 28] = 1  # a pixel 12 to the right of it moves on a circle
  fn = augment.make_augment_2d(rotation_degrees=90.0, seed=5)
  for batch in _batches({'image': image}, fn, 3, batch=2):
    for out in batch['image'][..., 0].copy():
      assert out[16, 16] == pytest.approx(1.0, abs=1e-5)
      out[15:18, 15:18] = 0
      r, c = ndimage.center_of_mass(out)
      assert np.hypot(r - 16, c - 16) == pytest.approx(12.0, abs=0.5)
      assert out.sum() == pytest.approx(1.0, abs=0.15)


def test_bad_arguments_and_missing_index():
  with pytest.raises(ValueError, match='rotation_degrees'):
    augment.make_augment_2d(rotation_degrees=-1)
  with pytest.raises(ValueError, match='rotation_degrees'):
    augment.make_augment_2d(rotation_degrees=200)
  with pytest.raises(ValueError, match='elastic_sigma'):
    augment.make_augment_2d(elastic_alpha=1, elastic_sigma=0)
  with pytest.raises(ValueError, match='intensity_scale'):
    augment.make_augment_2d(intensity_scale=1.5)
  fn = augment.make_augment_2d(flip=True)
  with pytest.raises(ValueError, match='_global_index'):
    fn({'image': tf.zeros([4, 4, 1])})
