"""Built-in phantom datasets made from the MNI152 template that nilearn ships.

They are the default data of every command, so a fresh machine trains and
evaluates with no download. Everything is derived from four arrays of the
nilearn wheel (1 mm MNI152 2009 template, 197x233x189, skull-stripped):

* the T1 template (``load_mni152_template``);
* grey and white matter probability maps (``load_mni152_gm_template``,
  ``load_mni152_wm_template``);
* the brain mask (as ``load_mni152_brain_mask`` makes it: T1 > 0.2).

CSF is the rest of the brain (``mrseg.data.mni_template``). Tumours come
from ``mrseg.data.phantom_tumour``, the numerical helpers from
``mrseg.data.phantom_fields``.

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
import numpy as np

from mrseg.data import mni_template
from mrseg.data import phantom_fields
from mrseg.data import phantom_tumour

# MR sequences that `tumor_slices` can synthesise.
CONTRASTS = ('t1', 't2', 't1ce')
# Label values of `tissue_volumes`.
LABEL_NAMES = ('background', 'csf', 'gm', 'wm', 'tumor')
TUMOR_LABEL = 4

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
  table = mni_template.slice_table()
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
  to_src = flip @ phantom_fields.rotation(rng, 2, 15.0) @ to_src
  centre_src = table.centre[z] + rng.uniform(-8, 8, 2)
  half = np.full(2, (canvas - 1) / 2)

  grid = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
  coords = grid
  tumor = None
  if has_tumor:
    # At least ~2.5 output pixels of radius, so it survives the resizing.
    min_mm = max(4.0, 2.5 * k * pixel_mm / zoom)
    centre, radius_mm = phantom_tumour.pick_centre(
        rng, table.edt[z], phantom_tumour.tumor_radius(rng), min_mm)
    # The centre's canvas position, ignoring the small elastic displacement.
    centre_out = half + np.linalg.solve(to_src, centre - centre_src)
    tumor = phantom_tumour.sample_tumor(
        rng, 2, centre_out, radius_mm * zoom / pixel_mm, min_rim=1.5 * k)
    coords = grid - phantom_tumour.mass_effect(tumor, grid)
  src = phantom_fields.apply_affine(to_src, coords, centre_src - to_src @ half)
  elastic_mm = np.float32(rng.uniform(1.0, 3.0))
  src[0] += elastic_mm * phantom_fields.smooth_field(rng, (canvas, canvas))
  src[1] += elastic_mm * phantom_fields.smooth_field(rng, (canvas, canvas))
  tissue = phantom_fields.linear_sample(table.tissue[z], src)

  # Sharpen the template's smooth probabilities (an average of 152 brains)
  # so that tissue boundaries look like one brain's; the brain sum is kept.
  brain = tissue[0] + tissue[1] + tissue[2]
  sharp = tissue * tissue
  tissue = sharp * (brain / np.maximum(sharp[0] + sharp[1] + sharp[2], 1e-6))
  image = _tissue_image(tissue, values)
  mask = np.zeros((canvas, canvas), bool)
  if tumor is not None:
    (image,), mask = phantom_tumour.paint_visible_tumor(
        tumor, [(values, image)], tissue,
        lambda m: (phantom_fields.block_mean(m.astype(np.float32), k).max()
                   >= 0.5))

  image = phantom_fields.block_mean(image, k)
  brain = phantom_fields.block_mean(brain, k)
  out_mask = phantom_fields.block_mean(mask.astype(np.float32), k) >= 0.5
  # Acquisition effects at the output resolution. Every draw so far is the
  # same for each contrast (a seed gives paired T1/T2/T1ce slices of one
  # anatomy); bias, texture and noise are drawn from a generator of their
  # own per contrast, as separate acquisitions have independent noise.
  rng = np.random.default_rng([rng.integers(2**63), CONTRASTS.index(contrast)])
  bias = np.exp(np.float32(rng.uniform(0.0, 0.25))
                * phantom_fields.smooth_field(rng, (size, size), 3))
  image = image * phantom_fields.fine_texture(rng, (size, size), 0.04) * bias
  image = phantom_fields.rician(rng, image, rng.uniform(0.01, 0.05))
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
  table = mni_template.volume_table(int(downsample))
  subjects = []
  for index in range(first_index, first_index + num_subjects):
    rng = np.random.default_rng([seed, index])
    subject = _tissue_volume(rng, table, int(downsample), tumor_probability)
    subject['affine'] = np.array(table.affine)
    subject['id'] = f'phantom-s{seed}-{index:06d}'
    subjects.append(subject)
  return subjects


def _tissue_volume(rng: np.random.Generator, table: mni_template.VolumeTable,
                   d: int, tumor_probability: float) -> dict[str, np.ndarray]:
  """One subject of `tissue_volumes` (without 'affine' and 'id')."""
  shape = table.channels.shape[1:]
  has_tumor = rng.random() < tumor_probability
  t1_values = _draw_intensities(rng, 't1')
  t2_values = _draw_intensities(rng, 't2')
  # Per-tissue T1 jitter on top of the template's own contrast.
  t1_jitter = {name: rng.uniform(-0.04, 0.04) for name in ('csf', 'gm', 'wm')}

  zoom = rng.uniform(0.93, 1.05)
  to_src = phantom_fields.rotation(rng, 3, 6.0) / zoom
  half = (np.array(shape) - 1) / 2
  shift = rng.uniform(-3, 3, 3) / d
  grid = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(np.float32)
  coords = grid
  tumor = None
  if has_tumor:
    min_mm = max(4.0, 2.5 * d)
    centre, radius_mm = phantom_tumour.pick_centre(
        rng, table.edt, phantom_tumour.tumor_radius(rng), min_mm)
    centre_out = half + np.linalg.solve(to_src, centre - half - shift)
    tumor = phantom_tumour.sample_tumor(
        rng, 3, centre_out, radius_mm * zoom / d, min_rim=1.5)
    coords = grid - phantom_tumour.mass_effect(tumor, grid)
  src = phantom_fields.apply_affine(to_src, coords,
                                    half + shift - to_src @ half)
  elastic = np.float32(rng.uniform(1.0, 3.0) / d)
  for axis in range(3):
    src[axis] += elastic * phantom_fields.smooth_field(rng, shape, 4)
  channels = phantom_fields.linear_sample(table.channels, src)
  tissue, t1 = channels[:3], channels[3]
  brain = tissue[0] + tissue[1] + tissue[2]

  label = (np.argmax(tissue, axis=0) + 1).astype(np.uint8)
  label[brain < 0.5] = 0
  t1 = t1 + _tissue_image(tissue, t1_jitter)
  t2 = _tissue_image(tissue, t2_values)
  if tumor is not None:
    # A few voxels at least, so that label 4 is really there.
    (t1, t2), mask = phantom_tumour.paint_visible_tumor(
        tumor, [(t1_values, t1), (t2_values, t2)], tissue,
        lambda m: m.sum() >= 8)
    label[mask] = TUMOR_LABEL

  foreground = np.clip(brain * 20, 0, 1)
  images = {}
  for name, image in (('t1', t1), ('t2', t2)):
    bias = np.exp(np.float32(rng.uniform(0.0, 0.2))
                  * phantom_fields.smooth_field(rng, shape, 3))
    image = image * phantom_fields.fine_texture(rng, shape, 0.03) * bias
    image = phantom_fields.rician(rng, image, rng.uniform(0.01, 0.03))
    images[name] = (image * foreground
                    * np.float32(rng.uniform(0.85, 1.15))).astype(np.float32)
  return {'t1': images['t1'], 't2': images['t2'], 'label': label,
          'brain_mask': label > 0}
