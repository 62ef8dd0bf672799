"""3D patch augmentation (mrseg.data.augment_3d): labels follow, draws per example."""
import itertools

import jax
import ml_collections
import numpy as np
import pytest

from configs import seg3d as seg3d_config
from mrseg.data import augment_3d

P = 6


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  label = rng.integers(0, 4, (n, P, P, P)).astype(np.int32)
  label[:, 0] = 0  # a background plane
  # Channel 0 encodes the label (background -1), channel 1 is noise in the
  # brain: a flipped image must still carry its flipped label.
  image = np.stack([np.where(label > 0, label / 4.0, -1.0),
                    np.where(label > 0, rng.uniform(-0.9, 1.0, label.shape),
                             -1.0)], axis=-1).astype(np.float32)
  return image, label


def _keys(n, seed=1):
  return jax.random.split(jax.random.key(seed), n)


def test_off_by_default_and_in_the_configs():
  config = seg3d_config.get_config('quick')
  aug = augment_3d.from_config(config)
  assert not aug.enabled
  image, label = _batch(2)
  out_image, out_label = augment_3d.apply(aug, _keys(2), image, label)
  assert out_image is image and out_label is label
  # Configs saved before the block existed read as off.
  assert not augment_3d.from_config(ml_collections.ConfigDict()).enabled


def test_flips_move_image_and_label_together_and_vary_per_example():
  n = 32
  image, label = _batch(n)
  aug = augment_3d.Augment3D(flip_axes=(0, 1, 2))
  out_image, out_label = map(np.asarray,
                             augment_3d.apply(aug, _keys(n), image, label))
  seen = set()
  for i in range(n):
    matches = [axes for r in range(4)
               for axes in itertools.combinations((1, 2, 3), r)
               if np.array_equal(np.flip(label[i:i + 1], axes)[0],
                                 out_label[i])]
    assert matches, i
    axes = matches[0]
    np.testing.assert_array_equal(out_image[i],
                                  np.flip(image[i:i + 1], axes)[0])
    seen.add(axes)
  assert len(seen) >= 6  # of the 8 combinations, with 32 examples


def test_intensity_keeps_labels_background_range_and_order():
  n = 8
  image, label = _batch(n)
  aug = augment_3d.Augment3D(gamma=0.4, intensity_scale=0.2,
                             intensity_shift=0.1)
  out_image, out_label = map(np.asarray,
                             augment_3d.apply(aug, _keys(n), image, label))
  np.testing.assert_array_equal(out_label, label)
  background = image == -1.0
  np.testing.assert_array_equal(out_image[background], -1.0)
  assert out_image.min() >= -1.0 and out_image.max() <= 1.0
  assert np.abs(out_image - image)[~background].mean() > 0.01
  for i, c in itertools.product(range(n), range(2)):
    x, y = image[i, ..., c], out_image[i, ..., c]
    brain = x > -1.0
    order = np.argsort(x[brain], kind='stable')
    # Monotone per patch and channel (clipping may tie neighbours).
    assert np.all(np.diff(y[brain][order]) >= -1e-6), (i, c)


def test_an_example_draws_the_same_whatever_the_batch():
  image, label = _batch(4)
  aug = augment_3d.Augment3D(flip_axes=(0, 2), gamma=0.3)
  keys = _keys(4)
  full = augment_3d.apply(aug, keys, image, label)
  part = augment_3d.apply(aug, keys[2:], image[2:], label[2:])
  for a, b in zip(full, part):
    np.testing.assert_array_equal(np.asarray(a)[2:], np.asarray(b))


@pytest.mark.parametrize('key,value,match', [
    ('flip_axes', (3,), 'flip_axes'), ('flip_axes', (0, 0), 'flip_axes'),
    ('gamma', 1.5, 'augment.gamma'),
    ('intensity_scale', -0.1, 'intensity_scale')])
def test_bad_settings_name_the_key(key, value, match):
  config = seg3d_config.get_config('test')
  config.augment[key] = value
  with pytest.raises(ValueError, match=match):
    augment_3d.from_config(config)


def test_intensity_needs_minmax_normalisation():
  config = seg3d_config.get_config('test')
  config.augment.gamma = 0.3
  config.data.normalization = 'zscore'
  with pytest.raises(ValueError, match='minmax'):
    augment_3d.from_config(config)
