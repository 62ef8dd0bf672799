"""Built-in phantom datasets made from the MNI152 template that nilearn ships.

They are the default data of every command, so a fresh machine trains and
evaluates with no download. Everything is derived from four arrays of the
nilearn wheel (1 mm MNI152 2009 template, 197x233x189, skull-stripped):

* the T1 template (``load_mni152_template``);
* grey and white matter probability maps (``load_mni152_gm_template``,
  ``load_mni152_wm_template``);
* the brain mask (as ``load_mni152_brain_mask`` makes it: T1 > 0.2).

CSF has no map of its own in the wheel, so it is whatever the brain holds that
is neither grey nor white matter: with ``brain = max(smooth(mask), gm + wm)``
(the mask smoothed by a 0.7 mm Gaussian so that its edge has partial volume
like the tissue maps), ``csf = brain - gm - wm``. This gives the ventricles,
the sulci and the CSF rim around the cortex, and ``csf + gm + wm == brain``.

Two datasets, both pure functions of ``(seed, index)``: example ``i`` is drawn
from ``np.random.default_rng([seed, first_index + i])`` alone, so any subset can
be regenerated without the rest and sharding by index is trivial.

* ``tumor_slices``: 2D axial slices with a synthetic tumour and its exact mask
  (paper 1: DCGAN + UNet on 128x128 tumour slices). Random affine and elastic
  deformation, tissue contrast per MR sequence (T1, T2, contrast-enhanced T1),
  tumours with enhancing rim / necrotic core / oedema / mass effect, bias
  field, gamma, Rician noise.
* ``tissue_volumes``: 3D T1 + T2 volumes with CSF/GM/WM labels (paper 2:
  semi-supervised tissue segmentation), optionally with a tumour (label 4).

The template is loaded once per process (1-2 s, most of it importing
nilearn.datasets) and kept in memory: about 140 MB for the 1 mm maps, 45 MB
for the 2D slice table and a few MB per `downsample` of the 3D tables.
"""
from collections.abc import Callable, Sequence
import dataclasses
import functools
import itertools

import numpy as np
from scipy import ndimage

# MR sequences that `tumor_slices` can synthesise.
CONTRASTS = ('t1', 't2', 't1ce')
# Label values of `tissue_volumes`.
LABEL_NAMES = ('background', 'csf', 'gm', 'wm', 'tumor')
TUMOR_LABEL = 4

# Tumour appearances: rim-enhancing with a necrotic core (glioblastoma-like),
# solid enhancing (meningioma/metastasis-like), non-enhancing (low grade).
TUMOR_KINDS = ('necrotic', 'solid', 'nonenhancing')
_TUMOR_KIND_P = (0.5, 0.3, 0.2)

# Per-sequence intensity ranges (relative units, WM on T1 ~ 0.85). Each
# example draws its own value uniformly from each range; the ranges of the
# three tissues never overlap, so the tissue order of each contrast holds in
# every example. Tumour parts: 'rim' is the solid/enhancing tumour, 'core' the
# necrosis, 'nonenh' a non-enhancing tumour, 'oedema' the surrounding
# vasogenic oedema (hypointense on T1, hyperintense on T2).
_INTENSITIES = {
    't1': {
        'csf': (0.15, 0.28), 'gm': (0.50, 0.62), 'wm': (0.78, 0.90),
        'rim': (0.42, 0.55), 'core': (0.15, 0.28), 'nonenh': (0.36, 0.48),
        'oedema': (0.45, 0.58),
    },
    't1ce': {
        'csf': (0.10, 0.24), 'gm': (0.46, 0.58), 'wm': (0.72, 0.84),
        'rim': (0.98, 1.20), 'core': (0.10, 0.24), 'nonenh': (0.32, 0.44),
        'oedema': (0.42, 0.55),
    },
    't2': {
        'csf': (0.85, 1.00), 'gm': (0.50, 0.62), 'wm': (0.30, 0.42),
        'rim': (0.62, 0.78), 'core': (0.85, 1.00), 'nonenh': (0.68, 0.84),
        'oedema': (0.70, 0.85),
    },
}

# 2D: field of view (mm) of an output slice before the random zoom; the brain
# (~175 mm front to back) then fills 70-90 % of the image, as in the
# Kaggle/figshare tumour slices.
_FOV_MM = 210.0
# 2D: internal canvas is an integer multiple k of the output size with
# k * size >= this, so that the final block-average is an antialiased resize
# and the mask is the exact area fraction >= 0.5 of the high-res mask.
_MIN_CANVAS = 192
# 2D: keep axial slices whose brain area is at least this fraction of the
# largest one (z = 43..124 of the 1 mm template: from the temporal lobes to
# the upper centrum semiovale).
_SLICE_AREA_FRACTION = 0.6
# 3D: margin (mm) around the template brain's bounding box; it absorbs the
# random zoom, shift and deformation of a subject.
_VOLUME_MARGIN_MM = 10.0


@dataclasses.dataclass(frozen=True)
class _Template:
  """The 1 mm MNI152 arrays (read-only)."""
  tissue: np.ndarray  # float32 [3, X, Y, Z]: csf, gm, wm probabilities.
  t1: np.ndarray  # float32 [X, Y, Z], 0..1.
  affine: np.ndarray  # float64 [4, 4]: voxel -> MNI mm.


@dataclasses.dataclass(frozen=True)
class _SliceTable:
  """Axial slices for `tumor_slices` (read-only)."""
  tissue: np.ndarray  # float32 [Z, 3, X, Y]: csf, gm, wm.
  edt: np.ndarray  # float32 [Z, X, Y]: distance (mm) to the brain's edge.
  centre: np.ndarray  # float64 [Z, 2]: brain centroid (x, y) per slice.


@dataclasses.dataclass(frozen=True)
class _VolumeTable:
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
def _template() -> _Template:
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
  return _Template(tissue=_readonly(np.stack([csf, gm, wm])),
                   t1=_readonly(np.clip(t1, 0, 1)),
                   affine=_readonly(np.asarray(t1_img.affine, np.float64)))


@functools.lru_cache(maxsize=1)
def _slice_table() -> _SliceTable:
  """Axial slices with plenty of brain, their edge distance and centroid."""
  tissue = _template().tissue
  brain = tissue.sum(0) >= 0.5
  area = brain.sum(axis=(0, 1))
  zs = np.flatnonzero(area >= _SLICE_AREA_FRACTION * area.max())
  slices = np.ascontiguousarray(np.moveaxis(tissue[..., zs], -1, 0))
  edt = np.stack([ndimage.distance_transform_edt(brain[:, :, z]) for z in zs])
  centre = np.stack([np.argwhere(brain[:, :, z]).mean(0) for z in zs])
  return _SliceTable(tissue=_readonly(slices),
                     edt=_readonly(edt.astype(np.float32)),
                     centre=_readonly(centre))


@functools.lru_cache(maxsize=4)
def _volume_table(downsample: int) -> _VolumeTable:
  """The template cropped to the brain (+ margin) and block-averaged."""
  template = _template()
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
  return _VolumeTable(channels=_readonly(np.ascontiguousarray(data)),
                      edt=_readonly(edt.astype(np.float32)),
                      affine=_readonly(template.affine @ to_template))


# ---------------------------------------------------------------------------
# Small numerical helpers.


def _linear_sample(table: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """Multilinear interpolation of a channels-first grid.

  Corner indices and weights are computed once for all channels, which makes
  this several times faster than `ndimage.map_coordinates` per channel.

  Args:
    table: [C, *spatial] values on a grid.
    coords: [D, *out] fractional voxel coordinates, D = len(spatial). Points
      outside the grid read its border, which is background for every table
      used here.

  Returns:
    [C, *out] float32 interpolated values.
  """
  spatial = table.shape[1:]
  flat = table.reshape(table.shape[0], -1)
  strides = [int(np.prod(spatial[a + 1:])) for a in range(len(spatial))]
  base = 0
  fracs = []
  for axis, n in enumerate(spatial):
    x = np.clip(coords[axis], 0, n - 1)
    i0 = np.minimum(x.astype(np.intp), n - 2)  # x >= 0, so trunc == floor.
    fracs.append((x - i0).astype(np.float32))
    base = base + i0 * strides[axis]
  out = np.zeros((table.shape[0],) + coords.shape[1:], np.float32)
  for corner in itertools.product((0, 1), repeat=len(spatial)):
    weight = 1
    for f, c in zip(fracs, corner):
      weight = weight * (f if c else 1 - f)
    index = base + sum(s * c for s, c in zip(strides, corner))
    for channel in range(table.shape[0]):
      out[channel] += flat[channel][index] * weight
  return out


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...],
                  terms: int = 5) -> np.ndarray:
  """A smooth random field with zero mean and unit standard deviation.

  A random cosine series (a DCT with `terms` low frequencies per axis,
  amplitudes decaying with frequency): a few small matrix products instead of
  a Gaussian filter of white noise, and the random draws do not depend on
  `shape`, so a seed gives the same field at any resolution.

  Args:
    rng: the example's generator.
    shape: grid shape (2D or 3D).
    terms: cosine frequencies per axis (k / 2 periods across it, k < terms).

  Returns:
    float32 array of `shape`.
  """
  k = np.arange(terms)
  grid = np.meshgrid(*([k] * len(shape)), indexing='ij')
  decay = np.exp(-sum(g**2 for g in grid) / (0.5 * terms**2))
  coef = rng.standard_normal((terms,) * len(shape)) * decay
  coef.flat[0] = 0.0  # No constant term: the mean is set by the caller.
  field = coef
  for n in reversed(shape):
    basis = np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, k))
    # Contract the last coefficient axis; the new axis goes to the front.
    field = np.moveaxis(np.tensordot(field, basis, axes=([-1], [1])), -1, 0)
  field = field - field.mean()
  return (field / max(field.std(), 1e-6)).astype(np.float32)


def _fine_texture(rng: np.random.Generator, shape: tuple[int, ...],
                  amplitude: float) -> np.ndarray:
  """Multiplicative tissue texture on a ~1 pixel scale: 1 + N(0, amplitude)."""
  texture = ndimage.gaussian_filter(
      rng.standard_normal(shape, np.float32), 0.8)
  return 1 + texture * (amplitude / max(float(texture.std()), 1e-6))


def _soft_inside(rho: np.ndarray, width: float) -> np.ndarray:
  """1 inside the level set rho < 1, 0 outside, linear over `width`."""
  return np.clip((1 - rho) * np.float32(1 / width) + np.float32(0.5), 0, 1)


def _rotation(rng: np.random.Generator, ndim: int,
              max_degrees: float) -> np.ndarray:
  """A random rotation; each plane's angle is uniform in +-max_degrees."""
  rot = np.eye(ndim)
  for i, j in itertools.combinations(range(ndim), 2):
    a = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    plane = np.eye(ndim)
    plane[[i, i, j, j], [i, j, i, j]] = [np.cos(a), -np.sin(a), np.sin(a),
                                         np.cos(a)]
    rot = rot @ plane
  return rot


def _apply_affine(matrix: np.ndarray, coords: np.ndarray,
                  offset: np.ndarray) -> np.ndarray:
  """matrix @ coords + offset for channels-first coordinates [D, *grid]."""
  return np.stack([
      sum(np.float32(matrix[i, j]) * coords[j] for j in range(len(coords)))
      + np.float32(offset[i]) for i in range(len(matrix))])


def _block_mean(image: np.ndarray, k: int) -> np.ndarray:
  """Area-averaging downsample of a 2D array by an integer factor."""
  if k == 1:
    return image
  # Sums of strided views: several times faster than reshape(...).mean(),
  # whose reduction over short inner axes is slow in numpy.
  total = sum(image[i::k, j::k] for i in range(k) for j in range(k))
  return total * np.float32(1 / k**2)


def _rician(rng: np.random.Generator, signal: np.ndarray,
            sigma: float) -> np.ndarray:
  """Magnitude of signal + complex Gaussian noise, as an MR scanner measures."""
  sigma = np.float32(sigma)
  real = signal + sigma * rng.standard_normal(signal.shape, np.float32)
  imag = sigma * rng.standard_normal(signal.shape, np.float32)
  return np.sqrt(real * real + imag * imag)


def _draw_intensities(rng: np.random.Generator,
                      contrast: str) -> dict[str, float]:
  return {name: float(rng.uniform(lo, hi))
          for name, (lo, hi) in _INTENSITIES[contrast].items()}


def _tissue_image(tissue: np.ndarray, values: dict[str, float]) -> np.ndarray:
  """Partial-volume intensity: sum over tissues of probability * intensity."""
  return (tissue[0] * np.float32(values['csf'])
          + tissue[1] * np.float32(values['gm'])
          + tissue[2] * np.float32(values['wm']))


def _check_common(num: int, seed: int, tumor_probability: float,
                  first_index: int, what: str) -> None:
  """Raises ValueError for arguments that both datasets share."""
  for name, value in ((what, num), ('seed', seed),
                      ('first_index', first_index)):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < 0):
      raise ValueError(f'{name} must be an integer >= 0, got {value!r}.')
  if not 0.0 <= tumor_probability <= 1.0:
    raise ValueError(f'tumor_probability must be in [0, 1], got '
                     f'{tumor_probability!r}.')


# ---------------------------------------------------------------------------
# Synthetic tumours (shared by 2D and 3D).

_Waves = tuple[np.ndarray, np.ndarray, np.ndarray]  # freqs, phases, amps.


@dataclasses.dataclass(frozen=True)
class _Tumor:
  """A random tumour; lengths are in pixels/voxels of its grid."""
  kind: str  # One of TUMOR_KINDS.
  centre: np.ndarray  # [D]
  radius: float  # Mean radius.
  # Maps an offset from the centre to unit-sphere coordinates (a random
  # rotation and axis lengths: an ellipsoid of mean radius `radius`).
  to_unit: np.ndarray  # [D, D]
  # Random Fourier features that make the outline irregular: lobes as a
  # function of direction, bumps as a function of position.
  lobes: _Waves
  bumps: _Waves
  core_fraction: float  # Necrotic core radius / tumour radius; 0 = none.
  core_bumps: _Waves
  oedema_extent: float  # Oedema radius / tumour radius; 0 = no oedema.
  oedema_bumps: _Waves
  texture: _Waves  # Heterogeneity of the solid/enhancing part.
  mass_effect: float  # Peak fraction by which nearby tissue is pushed out.


def _waves(rng: np.random.Generator, ndim: int, count: int,
           freq: tuple[float, float], total_amp: float) -> _Waves:
  direction = rng.standard_normal((count, ndim))
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  freqs = direction * rng.uniform(*freq, size=(count, 1))
  phases = rng.uniform(0, 2 * np.pi, count)
  amps = rng.dirichlet(np.ones(count)) * total_amp  # sum(amps) = total_amp.
  return freqs, phases, amps


def _eval_waves(waves: _Waves, x: np.ndarray) -> np.ndarray:
  """sum_j amp_j cos(freq_j . x + phase_j) for channels-first x [D, ...]."""
  out = np.zeros(x.shape[1:], np.float32)
  for freq, phase, amp in zip(*waves):
    arg = sum(np.float32(f) * xd for f, xd in zip(freq, x)) + np.float32(phase)
    out += np.float32(amp) * np.cos(arg)
  return out


def _sample_tumor(rng: np.random.Generator, ndim: int, centre: np.ndarray,
                  radius: float, min_rim: float) -> _Tumor:
  """Draws the shape and appearance of a tumour at `centre`.

  Args:
    rng: the example's generator.
    ndim: 2 or 3.
    centre: [D] centre on the grid.
    radius: mean radius (grid units).
    min_rim: thinnest enhancing rim (grid units) worth drawing; a necrotic
      core that would leave a thinner rim is dropped (the tumour becomes
      solid), since a sub-pixel rim vanishes on resizing.

  Returns:
    The tumour.
  """
  kind = TUMOR_KINDS[rng.choice(len(TUMOR_KINDS), p=_TUMOR_KIND_P)]
  axes = np.exp(rng.uniform(-0.3, 0.3, ndim))
  axes /= np.prod(axes) ** (1 / ndim)
  to_unit = np.diag(1 / axes) @ _rotation(rng, ndim, 180).T
  core_fraction = 0.0
  if kind == 'necrotic':
    core_fraction = min(rng.uniform(0.4, 0.8), 1 - min_rim / radius)
    if core_fraction < 0.3:
      kind, core_fraction = 'solid', 0.0
  oedema = rng.random() < 0.6
  return _Tumor(
      kind=kind,
      centre=np.asarray(centre, np.float64),
      radius=float(radius),
      to_unit=to_unit,
      lobes=_waves(rng, ndim, 3, (1.5, 6.0), rng.uniform(0.05, 0.35)),
      bumps=_waves(rng, ndim, 3, (3.0, 8.0), rng.uniform(0.0, 0.25)),
      core_fraction=core_fraction,
      core_bumps=_waves(rng, ndim, 2, (2.0, 5.0), 0.2),
      oedema_extent=rng.uniform(1.3, 2.3) if oedema else 0.0,
      oedema_bumps=_waves(rng, ndim, 3, (1.5, 5.0), 0.35),
      texture=_waves(rng, ndim, 3, (4.0, 10.0), 1.0),
      mass_effect=rng.uniform(0.0, 0.3),
  )


def _tumor_fields(tumor: _Tumor, shape: tuple[int, ...]
                  ) -> tuple[tuple[slice, ...], np.ndarray]:
  """Level-set fields of a tumour inside its bounding box on a grid.

  The fields vary on the scale of the radius, so they are evaluated on a
  lattice with ~6 points per radius and interpolated linearly; the painted
  image and the mask are thresholds of the same interpolated field, so they
  agree exactly.

  Args:
    tumor: the tumour.
    shape: grid shape.

  Returns:
    The box (slices into the grid) and float32 [4, *box] fields: 'rho'
    (tumour where < 1), 'core' (necrosis where < 1), 'oedema' (oedema where
    < 1) and 'texture' (zero-mean, unit-variance rim heterogeneity).
  """
  # Lobes and bumps scale the radius by 0.4-1.6, oedema bumps by 0.65-1.35
  # and the soft oedema edge reaches rho = 1.3; the longest ellipsoid axis is
  # exp(0.3) times the mean. So nothing is drawn beyond 2.4 tumour radii or
  # 3.8 oedema radii.
  reach = tumor.radius * max(2.4, 3.8 * tumor.oedema_extent)
  lo = np.clip(np.floor(tumor.centre - reach).astype(int), 0, shape)
  hi = np.clip(np.ceil(tumor.centre + reach).astype(int) + 1, lo, shape)
  box = tuple(slice(a, b) for a, b in zip(lo, hi))
  step = max(1, int(tumor.radius / 6))
  # Lattice points lo + step * j, enough of them to cover the box.
  count = (hi - lo - 1) // step + 2
  offset = np.stack(np.meshgrid(
      *[np.arange(n, dtype=np.float32) * step + a - c
        for n, a, c in zip(count, lo, tumor.centre)], indexing='ij'))
  unit = _apply_affine(tumor.to_unit / tumor.radius, offset,
                       np.zeros(len(shape)))
  q = np.sqrt(np.sum(unit * unit, axis=0))
  direction = unit / np.maximum(q, 1e-6)
  rho = q / (1 + _eval_waves(tumor.lobes, direction)
             + _eval_waves(tumor.bumps, unit))
  big = np.full_like(rho, 1e3)
  core = (rho / np.float32(tumor.core_fraction)
          * (1 + _eval_waves(tumor.core_bumps, unit))
          if tumor.core_fraction > 0 else big)
  oedema = (rho / np.float32(tumor.oedema_extent)
            / (1 + _eval_waves(tumor.oedema_bumps, unit))
            if tumor.oedema_extent > 0 else big)
  texture = _eval_waves(tumor.texture, unit) / np.float32(
      np.sqrt(0.5 * np.sum(tumor.texture[2]**2)))
  fields = np.stack([rho, core, oedema, texture])
  box_shape = hi - lo
  if step > 1:
    fine = np.meshgrid(*[np.arange(n, dtype=np.float32) / step
                         for n in box_shape], indexing='ij')
    fields = _linear_sample(fields, np.stack(fine))
  else:
    fields = fields[(slice(None),) + tuple(slice(0, n) for n in box_shape)]
  return box, fields


def _mass_effect(tumor: _Tumor, coords: np.ndarray) -> np.ndarray:
  """Displacement that pushes tissue radially away from the tumour.

  Sampling the tissue at p - d(p), with d(p) = a (p - c) exp(-|p - c|^2 /
  (2 s^2)), moves what was near c outwards; the radial map r -> r (1 - a
  exp(...)) stays monotonic for a < 1, so nothing folds.

  Args:
    tumor: the tumour.
    coords: [D, *grid] grid coordinates.

  Returns:
    [D, *grid] displacement d(p).
  """
  offset = np.stack([x - np.float32(c) for x, c in zip(coords, tumor.centre)])
  spread = 1.5 * tumor.radius
  gauss = np.exp(np.sum(offset * offset, axis=0) * np.float32(
      -0.5 / spread**2))
  return np.float32(tumor.mass_effect) * offset * gauss


def _paint_tumor(values: dict[str, float], image: np.ndarray,
                 tissue: np.ndarray, fields: np.ndarray, kind: str,
                 edge: float) -> tuple[np.ndarray, np.ndarray]:
  """Oedema and tumour intensities over a tissue-contrast image (in a box).

  Args:
    values: intensities drawn by `_draw_intensities`.
    image: tissue-contrast image in the tumour's box.
    tissue: [3, *box] csf, gm, wm probabilities.
    fields: [4, *box] from `_tumor_fields`.
    kind: one of TUMOR_KINDS.
    edge: width of the tumour's edge in rho units (one grid step / radius),
      so that the outline is antialiased like the tissue boundaries.

  Returns:
    The new image and the hard tumour mask (rho < 1 inside the brain).
  """
  rho, core, oedema, texture = fields
  brain = tissue[0] + tissue[1] + tissue[2]
  tumor = _soft_inside(rho, edge) * np.clip((brain - 0.25) * 2, 0, 1)
  # Vasogenic oedema spreads along white matter and spares CSF.
  wm_share = (tissue[2] + 0.5 * tissue[1]) / np.maximum(brain, 1e-3)
  oedema = _soft_inside(oedema, 0.6) * wm_share * (1 - tumor)
  image = image * (1 - oedema) + oedema * brain * np.float32(values['oedema'])
  solid = values['nonenh' if kind == 'nonenhancing' else 'rim']
  solid = np.float32(solid) * (1 + np.float32(0.08) * texture)
  core = _soft_inside(core, 2 * edge)
  tumor_value = core * np.float32(values['core']) + (1 - core) * solid
  image = image * (1 - tumor) + tumor * tumor_value
  return image, (rho < 1) & (brain >= 0.5)


def _paint_visible_tumor(
    tumor: _Tumor, contrasts: Sequence[tuple[dict[str, float], np.ndarray]],
    tissue: np.ndarray, visible: Callable[[np.ndarray], bool]
) -> tuple[list[np.ndarray], np.ndarray]:
  """Paints one tumour into images, growing it until its mask is `visible`.

  The centre is always well inside the brain, so the first try nearly always
  succeeds; growing covers a tumour cut down by the brain's edge.

  Args:
    tumor: the tumour.
    contrasts: (intensities from `_draw_intensities`, tissue-contrast image)
      per image to paint; the images are not modified.
    tissue: [3, *grid] probabilities.
    visible: whether a full-grid mask survives the output resizing.

  Returns:
    The painted images and the full-grid mask.

  Raises:
    RuntimeError: if no visible tumour results (a bug, not bad input).
  """
  grid_shape = tissue.shape[1:]
  for _ in range(6):
    box, fields = _tumor_fields(tumor, grid_shape)
    mask = np.zeros(grid_shape, bool)
    painted = []
    for values, image in contrasts:
      image = image.copy()
      image[box], mask[box] = _paint_tumor(
          values, image[box], tissue[(slice(None),) + box], fields,
          tumor.kind, edge=1.0 / tumor.radius)
      painted.append(image)
    if visible(mask):
      return painted, mask
    tumor = dataclasses.replace(tumor, radius=tumor.radius * 1.5)
  raise RuntimeError(f'No visible tumour at {tumor.centre}; this is a bug.')


def _tumor_radius(rng: np.random.Generator) -> float:
  # Log-uniform 5-30 mm mean radius: small metastases to large gliomas.
  return float(np.exp(rng.uniform(np.log(5.0), np.log(30.0))))


def _pick_centre(rng: np.random.Generator, edt: np.ndarray, radius_mm: float,
                 min_mm: float) -> tuple[np.ndarray, float]:
  """Picks a tumour centre deep enough in the brain; shrinks huge tumours.

  The centre lies at least max(min_mm, radius / 2) mm from the brain's edge
  (a big tumour may still reach the surface, where the brain cuts it).

  Args:
    rng: the example's generator.
    edt: distance (mm) to the brain's edge on the grid.
    radius_mm: wanted radius.
    min_mm: smallest radius that stays visible at the output resolution.

  Returns:
    The centre (grid coordinates) and the radius (mm, >= min_mm).
  """
  deepest = float(edt.max())
  radius_mm = max(min(radius_mm, 2 * deepest), min_mm)
  depth = min(max(min_mm, radius_mm / 2), deepest)
  candidates = np.flatnonzero(edt.ravel() >= depth)
  flat = candidates[rng.integers(len(candidates))]
  centre = np.array(np.unravel_index(flat, edt.shape), np.float64)
  return centre + rng.uniform(-0.5, 0.5, edt.ndim), radius_mm


# ---------------------------------------------------------------------------
# 2D tumour slices.


def tumor_slices(num_examples: int, image_size: int = 128, seed: int = 0, *,
                 contrast: str = 't1ce', tumor_probability: float = 1.0,
                 first_index: int = 0) -> dict[str, np.ndarray]:
  """Synthetic axial brain MRI slices with tumours and their exact masks.

  Each example takes a random axial slice from the central part of the
  template (slices with at least 60 % of the largest brain area), deforms it
  (rotation +-15 deg, zoom 0.85-1.1, shift +-8 mm, left-right flip, smooth
  elastic displacement of 1-3 mm, and the tumour's mass effect), turns
  sharpened tissue probabilities into the intensities of `contrast`, paints
  the tumour and its oedema, then applies fine tissue texture, a smooth
  multiplicative bias field, Rician noise, a random gain and a gamma. It is
  drawn on a canvas of k * image_size pixels (k * image_size >= 192) and
  block-averaged, so the image is antialiased and the mask is exactly the
  pixels that are at least half tumour. Outside the brain the image is 0.

  Only intensities depend on `contrast` (acquisition noise is drawn
  separately per contrast), so one seed gives paired T1/T2/T1ce slices of
  the same anatomy, tumour and mask.

  Args:
    num_examples: how many examples.
    image_size: side S of the square output images, >= 16.
    seed: non-negative dataset seed.
    contrast: 't1' (WM > GM > CSF), 't2' (CSF > GM > WM) or 't1ce'
      (contrast-enhanced T1: T1-like, with a bright enhancing tumour rim).
    tumor_probability: chance that an example has a tumour; the others have
      an empty mask and no tumour.
    first_index: index of the first example; example i is generated from
      `np.random.default_rng([seed, first_index + i])` alone.

  Returns:
    'image': float32 [N, S, S, 1] in [0, 1];
    'mask': uint8 [N, S, S, 1] in {0, 1}: the tumour (enhancing rim or solid
      part, plus the necrotic core; oedema is not tumour), non-empty
      whenever a tumour was drawn;
    'index': int64 [N], first_index + i.

  Raises:
    ValueError: for a negative count, seed or index, image_size < 16, an
      unknown contrast or a probability outside [0, 1].
  """
  _check_common(num_examples, seed, tumor_probability, first_index,
                'num_examples')
  if (isinstance(image_size, bool) or
      not isinstance(image_size, (int, np.integer)) or image_size < 16):
    raise ValueError(f'image_size must be an integer >= 16, got '
                     f'{image_size!r}.')
  if contrast not in CONTRASTS:
    raise ValueError(f'Unsupported contrast {contrast!r}; choose one of '
                     f'{CONTRASTS}.')
  images = np.zeros((num_examples, image_size, image_size, 1), np.float32)
  masks = np.zeros((num_examples, image_size, image_size, 1), np.uint8)
  indices = first_index + np.arange(num_examples, dtype=np.int64)
  for n, index in enumerate(indices):
    rng = np.random.default_rng([seed, int(index)])
    images[n, ..., 0], masks[n, ..., 0] = _tumor_slice(
        rng, int(image_size), contrast, tumor_probability)
  return {'image': images, 'mask': masks, 'index': indices}


def _tumor_slice(rng: np.random.Generator, size: int, contrast: str,
                 tumor_probability: float) -> tuple[np.ndarray, np.ndarray]:
  """One example of `tumor_slices`: (image [S, S] float32, mask [S, S] bool)."""
  table = _slice_table()
  k = -(-_MIN_CANVAS // size)
  canvas = k * size
  has_tumor = rng.random() < tumor_probability
  z = rng.integers(len(table.tissue))
  values = _draw_intensities(rng, contrast)

  # Canvas (row, col) -> template (x, y) mm: anterior at the top and the
  # patient's right on the image's left (radiological convention), then a
  # random rotation, zoom and left-right flip about the slice's centre.
  zoom = rng.uniform(0.85, 1.1)
  pixel_mm = _FOV_MM / canvas
  to_src = np.array([[0.0, -1.0], [-1.0, 0.0]]) * pixel_mm / zoom
  flip = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0])
  to_src = flip @ _rotation(rng, 2, 15.0) @ to_src
  centre_src = table.centre[z] + rng.uniform(-8, 8, 2)
  half = np.full(2, (canvas - 1) / 2)

  grid = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
  coords = grid
  tumor = None
  if has_tumor:
    # At least ~2.5 output pixels of radius, so it survives the resizing.
    min_mm = max(4.0, 2.5 * k * pixel_mm / zoom)
    centre, radius_mm = _pick_centre(rng, table.edt[z], _tumor_radius(rng),
                                     min_mm)
    # The centre's canvas position, ignoring the small elastic displacement.
    centre_out = half + np.linalg.solve(to_src, centre - centre_src)
    tumor = _sample_tumor(rng, 2, centre_out, radius_mm * zoom / pixel_mm,
                          min_rim=1.5 * k)
    coords = grid - _mass_effect(tumor, grid)
  src = _apply_affine(to_src, coords, centre_src - to_src @ half)
  elastic_mm = np.float32(rng.uniform(1.0, 3.0))
  src[0] += elastic_mm * _smooth_field(rng, (canvas, canvas))
  src[1] += elastic_mm * _smooth_field(rng, (canvas, canvas))
  tissue = _linear_sample(table.tissue[z], src)

  # Sharpen the template's smooth probabilities (an average of 152 brains)
  # so that tissue boundaries look like one brain's; the brain sum is kept.
  brain = tissue[0] + tissue[1] + tissue[2]
  sharp = tissue * tissue
  tissue = sharp * (brain / np.maximum(sharp[0] + sharp[1] + sharp[2], 1e-6))
  image = _tissue_image(tissue, values)
  mask = np.zeros((canvas, canvas), bool)
  if tumor is not None:
    (image,), mask = _paint_visible_tumor(
        tumor, [(values, image)], tissue,
        lambda m: _block_mean(m.astype(np.float32), k).max() >= 0.5)

  image = _block_mean(image, k)
  brain = _block_mean(brain, k)
  out_mask = _block_mean(mask.astype(np.float32), k) >= 0.5
  # Acquisition effects at the output resolution. Every draw so far is the
  # same for each contrast (a seed gives paired T1/T2/T1ce slices of one
  # anatomy); bias, texture and noise are drawn from a generator of their
  # own per contrast, as separate acquisitions have independent noise.
  rng = np.random.default_rng([rng.integers(2**63), CONTRASTS.index(contrast)])
  bias = np.exp(np.float32(rng.uniform(0.0, 0.25))
                * _smooth_field(rng, (size, size), 3))
  image = image * _fine_texture(rng, (size, size), 0.04) * bias
  image = _rician(rng, image, rng.uniform(0.01, 0.05))
  # Skull-stripped look: black outside the brain.
  image = image * np.clip(brain * 20, 0, 1)
  # Random gain and gamma; the bright end is a high percentile so that a few
  # hot pixels do not darken the image.
  top = float(np.percentile(image[brain > 0.5], 99.5))
  image = image * np.float32(rng.uniform(0.85, 1.0) / max(top, 1e-6))
  image = np.clip(image, 0, 1) ** np.float32(rng.uniform(0.8, 1.25))
  return image.astype(np.float32), out_mask


# ---------------------------------------------------------------------------
# 3D tissue volumes.


def tissue_volumes(num_subjects: int, seed: int = 0, *, downsample: int = 2,
                   tumor_probability: float = 0.0,
                   first_index: int = 0) -> list[dict]:
  """Synthetic 3D T1 + T2 brain volumes with CSF/GM/WM labels.

  Each subject is the template deformed by a random affine (rotation +-6 deg
  per plane, zoom 0.93-1.05, shift +-3 mm) and a smooth elastic displacement
  (1-3 mm), applied identically to images and labels. T1 is the warped
  template T1 with per-tissue contrast jitter; T2 is synthesised from the
  tissue probabilities (CSF bright, WM dark). Each image gets its own bias
  field, fine texture and Rician noise, and a random gain; intensities are
  positive and roughly in [0, 1.3], not normalised (that is the pipeline's
  job), and 0 outside the brain (skull-stripped). An optional tumour is drawn
  as in `tumor_slices` (T1 and T2 appearance, oedema that keeps its tissue
  label, mass effect) and labelled 4.

  The grid is the template's brain bounding box plus a 10 mm margin,
  block-averaged by `downsample`: the same shape for every subject of a
  given `downsample` (2: 84x102x88, 3: 56x68x59 voxels).

  Args:
    num_subjects: how many subjects.
    seed: non-negative dataset seed.
    downsample: integer voxel size in mm (1 to 8).
    tumor_probability: chance that a subject has a tumour.
    first_index: index of the first subject; subject i is generated from
      `np.random.default_rng([seed, first_index + i])` alone.

  Returns:
    One dict per subject: 't1', 't2': float32 [X, Y, Z]; 'label': uint8
    [X, Y, Z] (0 background, 1 CSF, 2 GM, 3 WM, 4 tumour): the most probable
    tissue of the warped maps where the brain probability is >= 0.5;
    'brain_mask': bool [X, Y, Z] (label > 0); 'affine': float64 [4, 4], voxel
    to MNI world mm of the grid; 'id': str, e.g. 'phantom-s0-000003'.

  Raises:
    ValueError: for a negative count, seed or index, a downsample outside
      1..8 or a probability outside [0, 1].
  """
  _check_common(num_subjects, seed, tumor_probability, first_index,
                'num_subjects')
  if (isinstance(downsample, bool) or
      not isinstance(downsample, (int, np.integer)) or
      not 1 <= downsample <= 8):
    raise ValueError(f'downsample must be an integer in 1..8, got '
                     f'{downsample!r}.')
  table = _volume_table(int(downsample))
  subjects = []
  for index in range(first_index, first_index + num_subjects):
    rng = np.random.default_rng([seed, index])
    subject = _tissue_volume(rng, table, int(downsample), tumor_probability)
    subject['affine'] = np.array(table.affine)
    subject['id'] = f'phantom-s{seed}-{index:06d}'
    subjects.append(subject)
  return subjects


def _tissue_volume(rng: np.random.Generator, table: _VolumeTable, d: int,
                   tumor_probability: float) -> dict[str, np.ndarray]:
  """One subject of `tissue_volumes` (without 'affine' and 'id')."""
  shape = table.channels.shape[1:]
  has_tumor = rng.random() < tumor_probability
  t1_values = _draw_intensities(rng, 't1')
  t2_values = _draw_intensities(rng, 't2')
  # Per-tissue T1 jitter on top of the template's own contrast.
  t1_jitter = {name: rng.uniform(-0.04, 0.04) for name in ('csf', 'gm', 'wm')}

  zoom = rng.uniform(0.93, 1.05)
  to_src = _rotation(rng, 3, 6.0) / zoom
  half = (np.array(shape) - 1) / 2
  shift = rng.uniform(-3, 3, 3) / d
  grid = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(np.float32)
  coords = grid
  tumor = None
  if has_tumor:
    min_mm = max(4.0, 2.5 * d)
    centre, radius_mm = _pick_centre(rng, table.edt, _tumor_radius(rng),
                                     min_mm)
    centre_out = half + np.linalg.solve(to_src, centre - half - shift)
    tumor = _sample_tumor(rng, 3, centre_out, radius_mm * zoom / d,
                          min_rim=1.5)
    coords = grid - _mass_effect(tumor, grid)
  src = _apply_affine(to_src, coords, half + shift - to_src @ half)
  elastic = np.float32(rng.uniform(1.0, 3.0) / d)
  for axis in range(3):
    src[axis] += elastic * _smooth_field(rng, shape, 4)
  channels = _linear_sample(table.channels, src)
  tissue, t1 = channels[:3], channels[3]
  brain = tissue[0] + tissue[1] + tissue[2]

  label = (np.argmax(tissue, axis=0) + 1).astype(np.uint8)
  label[brain < 0.5] = 0
  t1 = t1 + _tissue_image(tissue, t1_jitter)
  t2 = _tissue_image(tissue, t2_values)
  if tumor is not None:
    # A few voxels at least, so that label 4 is really there.
    (t1, t2), mask = _paint_visible_tumor(
        tumor, [(t1_values, t1), (t2_values, t2)], tissue,
        lambda m: m.sum() >= 8)
    label[mask] = TUMOR_LABEL

  foreground = np.clip(brain * 20, 0, 1)
  images = {}
  for name, image in (('t1', t1), ('t2', t2)):
    bias = np.exp(np.float32(rng.uniform(0.0, 0.2))
                  * _smooth_field(rng, shape, 3))
    image = image * _fine_texture(rng, shape, 0.03) * bias
    image = _rician(rng, image, rng.uniform(0.01, 0.03))
    images[name] = (image * foreground
                    * np.float32(rng.uniform(0.85, 1.15))).astype(np.float32)
  return {'t1': images['t1'], 't2': images['t2'], 'label': label,
          'brain_mask': label > 0}
