"""Synthetic images annotated by hand: paper 1's manual-mask route.

Paper 1 labelled its synthetic images by hand. The route here: `--mode=sample`
writes `sample_0000.png ...` for annotation; an annotation tool exports one
mask per image with the same stem (`sample_0000.png` in a masks folder, or
`sample_0000_mask.png` beside or in it), 0/255 or 0/1; this module reads the
pairs back, checking that every image has exactly one mask of the same size
and every mask an image.

  --config.data.name=annotated --config.data.manual_dir=IMAGES_DIR
  --config.data.mask_dir=MASKS_DIR   (default: IMAGES_DIR itself, *_mask.png)
"""
import pathlib

import numpy as np
from PIL import Image

from mrseg.data import io

_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
_MASK_TAG = '_mask'

LAYOUT = """\
  <manual_dir>/sample_0000.png, sample_0001.png, ...   the images
  <mask_dir>/sample_0000.png (or sample_0000_mask.png)  one mask per image,
      same stem, values 0/255 or 0/1; mask_dir may be manual_dir itself when
      the masks are named <stem>_mask.png"""


def _images(folder: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in io.list_files(folder)
          if p.suffix.lower() in _IMAGE_SUFFIXES]


def pairs(image_dir: str, mask_dir: str | None = None
          ) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """Matches images with their masks by stem.

  Raises:
    io.DataError: for a missing folder, an image without a mask, a mask
      without an image, or an image with two candidate masks; the message
      names the files.
  """
  images_root = io.require_dir(image_dir, layout=LAYOUT)
  masks_root = io.require_dir(mask_dir, layout=LAYOUT) if mask_dir else images_root
  same_folder = masks_root == images_root
  images = {p.stem: p for p in _images(images_root)
            if not p.stem.endswith(_MASK_TAG)}
  masks: dict[str, list[pathlib.Path]] = {}
  for p in _images(masks_root):
    if p.stem.endswith(_MASK_TAG):
      masks.setdefault(p.stem[:-len(_MASK_TAG)], []).append(p)
    elif not same_folder:
      masks.setdefault(p.stem, []).append(p)
  if not images:
    raise io.DataError(f'No images in {images_root}. Expected:\n{LAYOUT}')
  without_mask = sorted(set(images) - set(masks))
  if without_mask:
    raise io.DataError(
        f'{len(without_mask)} image(s) in {images_root} have no mask in '
        f'{masks_root}: {", ".join(without_mask[:10])}'
        f'{" ..." if len(without_mask) > 10 else ""}. Expected:\n{LAYOUT}')
  orphans = sorted(set(masks) - set(images))
  if orphans:
    raise io.DataError(
        f'Mask(s) without an image in {images_root}: '
        f'{", ".join(str(masks[o][0]) for o in orphans[:10])}.')
  doubles = [stem for stem, found in masks.items() if len(found) > 1]
  if doubles:
    raise io.DataError(
        f'Image {images[doubles[0]]} has several masks: '
        f'{", ".join(map(str, masks[doubles[0]]))}.')
  return [(images[s], masks[s][0]) for s in sorted(images, key=io.natural_key)]


def load(image_dir: str, mask_dir: str | None, image_size: int
         ) -> dict[str, np.ndarray]:
  """Annotated pairs as 'image' float32 [N, S, S, 1] in [0, 1], 'mask' uint8.

  Images are resized bilinearly (antialiased), masks by nearest neighbour so
  they stay binary.
  """
  images, masks = [], []
  for image_path, mask_path in pairs(image_dir, mask_dir):
    image = io.read_image(image_path)
    mask = io.read_mask(mask_path)
    io.check_same_shape(image, mask, image_path, mask_path)
    images.append(_resize(image, image_size, Image.BILINEAR) / 255.0)
    masks.append(_resize(mask, image_size, Image.NEAREST))
  return {'image': np.stack(images).astype(np.float32)[..., None],
          'mask': np.stack(masks).astype(np.uint8)[..., None]}


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """A binary mask [H, W] resized to [size, size] by nearest neighbour."""
  return _resize(mask, size, Image.NEAREST).astype(np.uint8)


def _resize(array: np.ndarray, size: int, resample: int) -> np.ndarray:
  if array.shape == (size, size):
    return array.astype(np.float32)
  return np.asarray(Image.fromarray(array).resize((size, size), resample),
                    np.float32)
