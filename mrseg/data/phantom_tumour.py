"""Synthetic tumours of the phantom datasets, shared by 2D and 3D.

A tumour (`sample_tumor`) is an irregular ellipsoid with an optional
necrotic core, vasogenic oedema, a textured solid part and a mass effect
that pushes the tissue around it outwards; `paint_visible_tumor` paints it
over tissue-contrast images and returns its exact mask.
"""
from collections.abc import Callable, Sequence
import dataclasses

import numpy as np

from mrseg.data import phantom_fields

# Tumour appearances: rim-enhancing with a necrotic core (glioblastoma-like),
# solid enhancing (meningioma/metastasis-like), non-enhancing (low grade).
TUMOR_KINDS = ('necrotic', 'solid', 'nonenhancing')
_TUMOR_KIND_P = (0.5, 0.3, 0.2)


Waves = tuple[np.ndarray, np.ndarray, np.ndarray]  # freqs, phases, amps.


@dataclasses.dataclass(frozen=True)
class Tumor:
  """A random tumour; lengths are in pixels/voxels of its grid."""
  kind: str  # One of TUMOR_KINDS.
  centre: np.ndarray  # [D]
  radius: float  # Mean radius.
  # Maps an offset from the centre to unit-sphere coordinates (a random
  # rotation and axis lengths: an ellipsoid of mean radius `radius`).
  to_unit: np.ndarray  # [D, D]
  # Random Fourier features that make the outline irregular: lobes as a
  # function of direction, bumps as a function of position.
  lobes: Waves
  bumps: Waves
  core_fraction: float  # Necrotic core radius / tumour radius; 0 = none.
  core_bumps: Waves
  oedema_extent: float  # Oedema radius / tumour radius; 0 = no oedema.
  oedema_bumps: Waves
  texture: Waves  # Heterogeneity of the solid/enhancing part.
  mass_effect: float  # Peak fraction by which nearby tissue is pushed out.


def _waves(rng: np.random.Generator, ndim: int, count: int,
           freq: tuple[float, float], total_amp: float) -> Waves:
  direction = rng.standard_normal((count, ndim))
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  freqs = direction * rng.uniform(*freq, size=(count, 1))
  phases = rng.uniform(0, 2 * np.pi, count)
  amps = rng.dirichlet(np.ones(count)) * total_amp  # sum(amps) = total_amp.
  return freqs, phases, amps


def _eval_waves(waves: Waves, x: np.ndarray) -> np.ndarray:
  """sum_j amp_j cos(freq_j . x + phase_j) for channels-first x [D, ...]."""
  out = np.zeros(x.shape[1:], np.float32)
  for freq, phase, amp in zip(*waves):
    arg = sum(np.float32(f) * xd for f, xd in zip(freq, x)) + np.float32(phase)
    out += np.float32(amp) * np.cos(arg)
  return out


def sample_tumor(rng: np.random.Generator, ndim: int, centre: np.ndarray,
                  radius: float, min_rim: float) -> Tumor:
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
  to_unit = np.diag(1 / axes) @ phantom_fields.rotation(rng, ndim, 180).T
  core_fraction = 0.0
  if kind == 'necrotic':
    core_fraction = min(rng.uniform(0.4, 0.8), 1 - min_rim / radius)
    if core_fraction < 0.3:
      kind, core_fraction = 'solid', 0.0
  oedema = rng.random() < 0.6
  return Tumor(
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


def tumor_fields(tumor: Tumor, shape: tuple[int, ...]
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
  unit = phantom_fields.apply_affine(tumor.to_unit / tumor.radius, offset,
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
    fields = phantom_fields.linear_sample(fields, np.stack(fine))
  else:
    fields = fields[(slice(None),) + tuple(slice(0, n) for n in box_shape)]
  return box, fields


def mass_effect(tumor: Tumor, coords: np.ndarray) -> np.ndarray:
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


def paint_tumor(values: dict[str, float], image: np.ndarray,
                 tissue: np.ndarray, fields: np.ndarray, kind: str,
                 edge: float) -> tuple[np.ndarray, np.ndarray]:
  """Oedema and tumour intensities over a tissue-contrast image (in a box).

  Args:
    values: intensities drawn by `phantom._draw_intensities`.
    image: tissue-contrast image in the tumour's box.
    tissue: [3, *box] csf, gm, wm probabilities.
    fields: [4, *box] from `tumor_fields`.
    kind: one of TUMOR_KINDS.
    edge: width of the tumour's edge in rho units (one grid step / radius),
      so that the outline is antialiased like the tissue boundaries.

  Returns:
    The new image and the hard tumour mask (rho < 1 inside the brain).
  """
  rho, core, oedema, texture = fields
  brain = tissue[0] + tissue[1] + tissue[2]
  tumor = (phantom_fields.soft_inside(rho, edge)
           * np.clip((brain - 0.25) * 2, 0, 1))
  # Vasogenic oedema spreads along white matter and spares CSF.
  wm_share = (tissue[2] + 0.5 * tissue[1]) / np.maximum(brain, 1e-3)
  oedema = phantom_fields.soft_inside(oedema, 0.6) * wm_share * (1 - tumor)
  image = image * (1 - oedema) + oedema * brain * np.float32(values['oedema'])
  solid = values['nonenh' if kind == 'nonenhancing' else 'rim']
  solid = np.float32(solid) * (1 + np.float32(0.08) * texture)
  core = phantom_fields.soft_inside(core, 2 * edge)
  tumor_value = core * np.float32(values['core']) + (1 - core) * solid
  image = image * (1 - tumor) + tumor * tumor_value
  return image, (rho < 1) & (brain >= 0.5)


def paint_visible_tumor(
    tumor: Tumor, contrasts: Sequence[tuple[dict[str, float], np.ndarray]],
    tissue: np.ndarray, visible: Callable[[np.ndarray], bool]
) -> tuple[list[np.ndarray], np.ndarray]:
  """Paints one tumour into images, growing it until its mask is `visible`.

  The centre is always well inside the brain, so the first try nearly always
  succeeds; growing covers a tumour cut down by the brain's edge.

  Args:
    tumor: the tumour.
    contrasts: (intensities from `phantom._draw_intensities`,
      tissue-contrast image) per image to paint; the images are not
      modified.
    tissue: [3, *grid] probabilities.
    visible: whether a full-grid mask survives the output resizing.

  Returns:
    The painted images and the full-grid mask.

  Raises:
    RuntimeError: if no visible tumour results (a bug, not bad input).
  """
  grid_shape = tissue.shape[1:]
  for _ in range(6):
    box, fields = tumor_fields(tumor, grid_shape)
    mask = np.zeros(grid_shape, bool)
    painted = []
    for values, image in contrasts:
      image = image.copy()
      image[box], mask[box] = paint_tumor(
          values, image[box], tissue[(slice(None),) + box], fields,
          tumor.kind, edge=1.0 / tumor.radius)
      painted.append(image)
    if visible(mask):
      return painted, mask
    tumor = dataclasses.replace(tumor, radius=tumor.radius * 1.5)
  raise RuntimeError(f'No visible tumour at {tumor.centre}; this is a bug.')


def tumor_radius(rng: np.random.Generator) -> float:
  # Log-uniform 5-30 mm mean radius: small metastases to large gliomas.
  return float(np.exp(rng.uniform(np.log(5.0), np.log(30.0))))


def pick_centre(rng: np.random.Generator, edt: np.ndarray, radius_mm: float,
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
