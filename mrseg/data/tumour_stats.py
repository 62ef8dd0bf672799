"""Where and how large the tumours of id ranges of the tumour set are.

  .venv/bin/python -m mrseg.data.tumour_stats /path/to/brain_tumor_segmentation \
      1-300 1001-1400

For each range: slices, and the 10th / 50th / 90th percentiles of the
tumour's share of the slice (%) and of its centre's distance from the
vertical midline (fraction of the width), on masks resized to --size
(nearest neighbour). Reads masks/N.png as the dataset's loader does.
"""
import argparse
import os

import numpy as np
from PIL import Image

from mrseg.data import ids as ids_lib


def range_stats(folder: str, ids, size: int) -> dict[str, np.ndarray]:
  area, midline = [], []
  for i in ids:
    path = os.path.join(folder, 'masks', f'{i}.png')
    mask = np.asarray(Image.open(path).convert('L').resize(
        (size, size), Image.NEAREST)) > 127
    if not mask.any():
      continue
    area.append(100.0 * mask.mean())
    midline.append(abs(np.nonzero(mask)[1].mean() / size - 0.5))
  q = (10, 50, 90)
  return {'slices': len(area), 'area_percent': np.percentile(area, q),
          'midline_distance': np.percentile(midline, q)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('folder')
  parser.add_argument('ranges', nargs='+', help="id selections, e.g. 1-300")
  parser.add_argument('--size', type=int, default=64)
  args = parser.parse_args()
  for selection in args.ranges:
    s = range_stats(args.folder, ids_lib.select_ids(selection), args.size)
    print(f"{selection}: {s['slices']} slices; tumour area % (p10/50/90) "
          f"{np.round(s['area_percent'], 2)}; centre from midline "
          f"{np.round(s['midline_distance'], 3)}")


if __name__ == '__main__':
  main()
