"""Paper 1's manual-mask route: annotated PNG masks read back and validated."""
import numpy as np
from PIL import Image
import pytest

from mrseg.data import annotated
from mrseg.data import io


def _write(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _sample(i, size=20):
  rng = np.random.default_rng(i)
  image = rng.integers(0, 256, (size, size))
  mask = np.zeros((size, size))
  mask[5:5 + i + 2, 4:12] = 255
  return image, mask


def test_masks_in_their_own_folder_pair_by_stem(tmp_path):
  for i in range(3):
    image, mask = _sample(i)
    _write(tmp_path / 'images' / f'sample_{i:04d}.png', image)
    _write(tmp_path / 'masks' / f'sample_{i:04d}.png', mask / 255)  # 0/1 export
  out = annotated.load(str(tmp_path / 'images'), str(tmp_path / 'masks'), 20)
  assert out['image'].shape == (3, 20, 20, 1) and out['mask'].shape == (3, 20, 20, 1)
  for i in range(3):
    image, mask = _sample(i)
    np.testing.assert_allclose(out['image'][i, ..., 0], image / 255, atol=1e-6)
    np.testing.assert_array_equal(out['mask'][i, ..., 0], mask / 255)


def test_mask_suffix_beside_images_and_resize_keeps_masks_binary(tmp_path):
  for i in range(2):
    image, mask = _sample(i, size=40)
    _write(tmp_path / f'sample_{i:04d}.png', image)
    _write(tmp_path / f'sample_{i:04d}_mask.png', mask)
  out = annotated.load(str(tmp_path), None, 16)
  assert out['image'].shape == (2, 16, 16, 1)
  assert set(np.unique(out['mask'])) == {0, 1}


@pytest.mark.parametrize('case, match', [
    ('missing', 'have no mask'),
    ('orphan', 'without an image'),
    ('size', 'same pixel grid'),
    ('values', 'sample_0000'),
])
def test_bad_annotations_name_the_files(tmp_path, case, match):
  for i in range(2):
    image, mask = _sample(i)
    _write(tmp_path / 'images' / f'sample_{i:04d}.png', image)
    if case == 'missing' and i == 1:
      continue
    if case == 'size' and i == 1:
      mask = np.zeros((10, 10))
    if case == 'values' and i == 0:
      mask[0, 0] = 128
    _write(tmp_path / 'masks' / f'sample_{i:04d}.png', mask)
  if case == 'orphan':
    _write(tmp_path / 'masks' / 'sample_0009.png', np.zeros((20, 20)))
  with pytest.raises(io.DataError, match=match):
    annotated.load(str(tmp_path / 'images'), str(tmp_path / 'masks'), 20)
