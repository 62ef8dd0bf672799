"""The MNI152 template the phantom datasets are made from, and its tables.

Four arrays of the nilearn wheel (1 mm MNI152 2009 template, 197x233x189,
skull-stripped): the T1 template, grey and white matter probability maps,
and the brain mask (as ``load_mni152_brain_mask`` makes it: T1 > 0.2).

CSF has no map of its own in the wheel, so it is whatever the brain holds that
is neither grey nor white matter: with ``brain = max(smooth(mask), gm + wm)``
(the mask smoothed by a 0.7 mm Gaussian so that its edge has partial volume
like the tissue maps), ``csf = brain - gm - wm``. This gives the ventricles,
the sulci and the CSF rim around the cortex, and ``csf + gm + wm == brain``.

Loaded once per process (1-2 s, most of it importing nilearn.datasets) and
kept in memory, read-only: about 140 MB for the 1 mm maps, 45 MB for the 2D
slice table (`slice_table`) and a few MB per `downsample` of the 3D tables
(`volume_table`).
"""
import dataclasses
import functools

import numpy as np
from scipy import ndimage

# 2D: keep axial slices whose brain area is at least this fraction of the
# largest one (z = 43..124 of the 1 mm template: from the temporal lobes to
# the upper centrum semiovale).
_SLICE_AREA_FRACTION = 0.6
# 3D: margin (mm) around the template brain's bounding box; it absorbs the
# random zoom, shift and deformation of a subject.
_VOLUME_MARGIN_MM = 10.0


@dataclasses.dataclass(frozen=True)
class Template:
  """The 1 mm MNI152 arrays (read-only)."""
  tissue: np.ndarray  # float32 [3, X, Y, Z]: csf, gm, wm probabilities.
  t1: np.ndarray  # float32 [X, Y, Z], 0..1.
  affine: np.ndarray  # float64 [4, 4]: voxel -> MNI mm.


@dataclasses.dataclass(frozen=True)
class SliceTable:
  """Axial slices for `tumor_slices` (read-only)."""
  tissue: np.ndarray  # float32 [Z, 3, X, Y]: csf, gm, wm.
  edt: np.ndarray  # float32 [Z, X, Y]: distance (mm) to the brain's edge.
  centre: np.ndarray  # float64 [Z, 2]: brain centroid (x, y) per slice.


@dataclasses.dataclass(frozen=True)
class VolumeTable:
  """The template cropped and block-averaged for `tissue_volumes`."""
  channels: np.ndarray  # float32 [4, X, Y, Z]: csf, gm, wm, t1.
  edt: np.ndarray  # float32 [X, Y, Z]: distance (mm) to the brain's edge.
  affine: np.ndarray  # float64 [4, 4]: voxel of this grid -> MNI mm.


def _readonly(array: np.ndarray) -> np.ndarray:
  # Cached arrays are shared by every caller; a stray in-place edit would
  # silently corrupt all later examples.
  array.setflags(write=False)
  return array


@functools.lru_cache(maxsize=1)
def load() -> Template:
  """Loads the MNI152 template from the nilearn wheel (no network)."""
  # Imported here: nilearn takes ~1 s to import and only the phantom needs it.
  from nilearn import datasets  # pylint: disable=g-import-not-at-top

  def load(loader):
    return loader(resolution=1).get_fdata(dtype=np.float32)

  t1_img = datasets.load_mni152_template(resolution=1)
  t1 = t1_img.get_fdata(dtype=np.float32)
  gm = np.clip(load(datasets.load_mni152_gm_template), 0, 1)
  wm = np.clip(load(datasets.load_mni152_wm_template), 0, 1)
  # nilearn's load_mni152_brain_mask() is exactly this threshold of the T1
  # template (its default); computing it here saves loading the T1 again.
  mask = (t1 > 0.2).astype(np.float32)
  # See the module docstring: CSF is the rest of the (softened) brain mask.
  brain = np.clip(np.maximum(ndimage.gaussian_filter(mask, 0.7), gm + wm), 0, 1)
  csf = np.clip(brain - gm - wm, 0, 1)
  return Template(tissue=_readonly(np.stack([csf, gm, wm])),
                   t1=_readonly(np.clip(t1, 0, 1)),
                   affine=_readonly(np.asarray(t1_img.affine, np.float64)))


@functools.lru_cache(maxsize=1)
def slice_table() -> SliceTable:
  """Axial slices with plenty of brain, their edge distance and centroid."""
  tissue = load().tissue
  brain = tissue.sum(0) >= 0.5
  area = brain.sum(axis=(0, 1))
  zs = np.flatnonzero(area >= _SLICE_AREA_FRACTION * area.max())
  slices = np.ascontiguousarray(np.moveaxis(tissue[..., zs], -1, 0))
  edt = np.stack([ndimage.distance_transform_edt(brain[:, :, z]) for z in zs])
  centre = np.stack([np.argwhere(brain[:, :, z]).mean(0) for z in zs])
  return SliceTable(tissue=_readonly(slices),
                     edt=_readonly(edt.astype(np.float32)),
                     centre=_readonly(centre))


@functools.lru_cache(maxsize=4)
def volume_table(downsample: int) -> VolumeTable:
  """The template cropped to the brain (+ margin) and block-averaged."""
  template = load()
  d = downsample
  nz = np.argwhere(template.tissue.sum(0) >= 0.1)
  margin = int(np.ceil(_VOLUME_MARGIN_MM))
  lo = nz.min(0) - margin
  size = nz.max(0) + 1 + margin - lo
  size = -(-size // d) * d  # Round up to a multiple of d for block-averaging.
  data = np.concatenate([template.tissue, template.t1[None]])
  # The brain touches the template's lower edge (z = 0), so pad with zeros
  # rather than clip the margin away.
  pad_lo = np.maximum(-lo, 0)
  pad_hi = np.maximum(lo + size - np.array(data.shape[1:]), 0)
  data = np.pad(data, [(0, 0)] + list(zip(pad_lo, pad_hi)))
  start = lo + pad_lo
  data = data[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1],
              start[2]:start[2] + size[2]]
  x, y, z = size // d
  data = data.reshape(4, x, d, y, d, z, d).mean(axis=(2, 4, 6),
                                                dtype=np.float32)
  # Output voxel i covers template voxels lo + d*i ... lo + d*i + d - 1, so its
  # centre is template voxel lo + d*i + (d - 1) / 2.
  to_template = np.diag([d, d, d, 1.0])
  to_template[:3, 3] = lo + (d - 1) / 2
  edt = ndimage.distance_transform_edt(data[:3].sum(0) >= 0.5) * d
  return VolumeTable(channels=_readonly(np.ascontiguousarray(data)),
                      edt=_readonly(edt.astype(np.float32)),
                      affine=_readonly(template.affine @ to_template))
