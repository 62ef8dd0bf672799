import numpy as np
from PIL import Image

from mrseg.data import tumour_stats


def test_area_and_midline_distance_of_hand_made_masks(tmp_path):
  (tmp_path / 'masks').mkdir()
  for i, (y, x) in {1: (10, 32), 2: (40, 48), 3: (20, 16)}.items():
    mask = np.zeros((64, 64), np.uint8)
    mask[y:y + 4, x:x + 4] = 255  # 16 px = 0.390625 % of the slice
    Image.fromarray(mask).save(tmp_path / 'masks' / f'{i}.png')
  Image.fromarray(np.zeros((64, 64), np.uint8)).save(
      tmp_path / 'masks' / '4.png')  # no tumour: not counted
  s = tumour_stats.range_stats(str(tmp_path), [1, 2, 3, 4], size=64)
  assert s['slices'] == 3
  np.testing.assert_allclose(s['area_percent'], 100 * 16 / 64**2)
  # Centres at x = 33.5, 49.5, 17.5 of 64: |x/64 - 0.5| = 0.0234, 0.2734,
  # 0.2266, whose median is the last.
  np.testing.assert_allclose(s['midline_distance'][1], abs(17.5 / 64 - 0.5))
