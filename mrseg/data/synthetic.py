"""Writes synthetic image/mask pairs in the layout every consumer reads.

  <dir>/sample_NNNN.png          the image (8-bit greyscale)
  <dir>/sample_NNNN_mask.png     its tumour mask, 0/255 (annotation tools'
                                 convention; mrseg.data.annotated reads it)
  <dir>/sample_NNNN_layout.png   the layout it was generated from, if any
                                 (labels spread over 0..255)
  <dir>/provenance.csv           where each mask came from, if known
  <dir>/samples.npz              'image' float32 [N, S, S, C] in [0, 1],
                                 'mask' uint8 {0, 1} (and 'layout', 'step'):
                                 what the UNet trains on; written last
"""
import csv
import os
from typing import Any

import numpy as np

from mrseg import viz
from mrseg import workdir


def write_pairs(output_dir: str, images: np.ndarray,
                masks: np.ndarray | None, step: int,
                layouts: np.ndarray | None = None,
                provenance: list[dict[str, Any]] | None = None) -> str:
  """Writes the pairs; returns the samples.npz path."""
  os.makedirs(output_dir, exist_ok=True)
  as_uint8 = (np.clip(images, 0, 1) * 255.0 + 0.5).astype(np.uint8)
  levels = max(int(layouts.max()), 1) if layouts is not None else 1
  for i, image in enumerate(as_uint8):
    stem = os.path.join(output_dir, f'sample_{i:04d}')
    viz.save_png(image, stem + '.png')
    if masks is not None:
      viz.save_png((masks[i] > 0).astype(np.uint8) * 255, stem + '_mask.png')
    if layouts is not None:
      viz.save_png((layouts[i][..., None] * (255 // levels)).astype(np.uint8),
                   stem + '_layout.png')
  if provenance:
    with workdir.atomic_open(os.path.join(output_dir, 'provenance.csv'), 'w',
                             newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(provenance[0]))
      writer.writeheader()
      writer.writerows(provenance)
  extra = {}
  if masks is not None:
    extra['mask'] = (np.asarray(masks) > 0).astype(np.uint8)
  if layouts is not None:
    extra['layout'] = layouts
  path = os.path.join(output_dir, 'samples.npz')
  # Last and atomically: consumers count the pairs in this file, and a kill
  # mid-write must not leave a torn zip.
  with workdir.atomic_open(path, 'wb') as f:
    np.savez_compressed(f, image=np.asarray(images, np.float32), step=step,
                        **extra)
  return path
