"""Layouts for label-conditioned synthesis, and tumour masks placed in them.

A *layout* is a label map that a conditional generator turns into an image
(pix2pix / SPADE; Shin et al. 2018 for brain tumours). It is computed from a
real image alone, with no pretrained network:

  0            outside the head/brain (a smoothed threshold, holes filled,
               the largest connected component)
  1 .. K       intensity classes inside it: quantiles of the smoothed image
               (for a T1 slice roughly CSF / grey / white matter)
  K + 1 .. K + T   the tumour: with T = `tumour_classes` > 1, the tumour's
               own intensity classes on its brain's scale (dark core, rim,
               bright enhancing parts: the sub-regions brainSPADE and
               BraTS-conditioned generators are given), so the generator is
               told which kind of lesion to paint instead of averaging the
               kinds; T = 1 is the mask alone

The real tumour's surroundings (the mask dilated by `inpaint_dilation`
pixels) are relabelled with the nearest non-tumour class, so a layout holds
no trace of a tumour except its mask. That lets a synthesis layout take a
host slice's anatomy and *another* tumour: `synthesis_layouts` deforms real
training masks (affine, elastic, flip) and places them inside a host brain,
so the synthetic set holds tumours, positions and tumour/anatomy pairs that
the real set does not. Image and mask of a synthetic pair are aligned by
construction: the mask is part of the generator's input.
"""
from collections.abc import Sequence
import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class LayoutSpec:
  """How layouts are computed (the config's `layout` section).

  Attributes:
    num_classes: K intensity classes inside the brain.
    smooth: sigma (pixels) of the Gaussian applied before classing, so the
      classes follow tissue, not noise.
    threshold: the brain/head mask is the smoothed image above this fraction
      of its 99th percentile.
    inpaint_dilation: pixels around the real tumour relabelled as the
      nearest non-tumour class (its rim and oedema).
    tumour_classes: T labels for the tumour: its pixels classed by the
      brain's intensity quantiles (1 = the mask alone).
  """

  num_classes: int = 3
  smooth: float = 1.0
  threshold: float = 0.1
  inpaint_dilation: int = 2
  tumour_classes: int = 1

  @property
  def num_labels(self) -> int:
    """Labels of a layout: outside, K classes, T tumour classes."""
    return self.num_classes + 1 + self.tumour_classes

  @classmethod
  def from_config(cls, layout: Any) -> 'LayoutSpec':
    return cls(num_classes=int(layout.num_classes), smooth=float(layout.smooth),
               threshold=float(layout.threshold),
               inpaint_dilation=int(layout.inpaint_dilation),
               tumour_classes=int(layout.tumour_classes))


def brain_mask(image: np.ndarray, spec: LayoutSpec = LayoutSpec()) -> np.ndarray:
  """bool [H, W]: the largest bright connected region, holes filled."""
  smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), spec.smooth)
  top = float(np.percentile(smooth, 99))
  if top <= 0:
    return np.zeros(smooth.shape, bool)
  mask = smooth > spec.threshold * top
  labels, count = ndimage.label(mask)
  if count > 1:
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    mask = labels == 1 + int(np.argmax(sizes))
  return ndimage.binary_fill_holes(mask)


def _quantile_classes(smooth: np.ndarray, visible: np.ndarray,
                      num: int) -> np.ndarray:
  """int [H, W] in 1..num: `smooth` binned at quantiles of its `visible`
  pixels."""
  edges = np.quantile(smooth[visible], np.linspace(0, 1, num + 1)[1:-1])
  return 1 + np.digitize(smooth, edges)


def _visible_brain(image: np.ndarray, brain: np.ndarray, hidden: np.ndarray,
                   spec: LayoutSpec) -> tuple[np.ndarray, np.ndarray]:
  """(smoothed image, brain pixels not hidden; all of it if all are)."""
  smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), spec.smooth)
  visible = brain & ~hidden
  return smooth, visible if visible.any() else brain


def _hidden(tumour: np.ndarray, spec: LayoutSpec) -> np.ndarray:
  """The tumour and its rim (`inpaint_dilation` pixels)."""
  if spec.inpaint_dilation > 0:
    return ndimage.binary_dilation(tumour, iterations=spec.inpaint_dilation)
  return tumour


def _tissue_classes(image: np.ndarray, brain: np.ndarray, hidden: np.ndarray,
                    spec: LayoutSpec) -> np.ndarray:
  """uint8 [H, W]: 0 outside `brain`, 1..K inside; `hidden` pixels inpainted."""
  smooth, visible = _visible_brain(image, brain, hidden, spec)
  if not visible.any():
    return np.zeros(image.shape, np.uint8)
  classes = _quantile_classes(smooth, visible, spec.num_classes).astype(
      np.uint8)
  fill = brain & ~visible
  if fill.any():
    # Each hidden pixel takes the class of the nearest visible brain pixel.
    _, (iy, ix) = ndimage.distance_transform_edt(~visible, return_indices=True)
    classes[fill] = classes[iy[fill], ix[fill]]
  return np.where(brain, classes, 0).astype(np.uint8)


def host_layout(image: np.ndarray, mask: np.ndarray | None,
                spec: LayoutSpec = LayoutSpec()) -> tuple[np.ndarray, np.ndarray]:
  """A slice's anatomy without its tumour.

  Args:
    image: [H, W] or [H, W, 1] intensities.
    mask: the slice's tumour mask (same size, {0, 1}) or None.
    spec: how to compute the layout.

  Returns:
    (classes uint8 [H, W] in 0..K, brain bool [H, W]); the tumour and its
    surroundings carry the nearest non-tumour class.
  """
  image = np.asarray(image, np.float32).reshape(np.shape(image)[:2])
  brain = brain_mask(image, spec)
  hidden = np.zeros(image.shape, bool)
  if mask is not None:
    tumour = np.asarray(mask).reshape(image.shape) > 0
    hidden = _hidden(tumour, spec)
    brain = brain | tumour
  return _tissue_classes(image, brain, hidden, spec), brain


def tumour_labels(image: np.ndarray, mask: np.ndarray,
                  spec: LayoutSpec = LayoutSpec()) -> np.ndarray:
  """uint8 [H, W]: 0 outside the tumour, 1..T inside it.

  With T = spec.tumour_classes > 1 each tumour pixel is classed by the
  smoothed image against T quantiles of the slice's visible brain (the
  brain without the tumour and its rim): 1 darker than most of the brain
  (necrosis, cyst), T brighter than most of it (enhancement). T = 1: the
  mask itself.
  """
  image = np.asarray(image, np.float32).reshape(np.shape(image)[:2])
  tumour = np.asarray(mask).reshape(image.shape) > 0
  if spec.tumour_classes == 1 or not tumour.any():
    return tumour.astype(np.uint8)
  brain = brain_mask(image, spec) | tumour
  smooth, visible = _visible_brain(image, brain, _hidden(tumour, spec), spec)
  classes = _quantile_classes(smooth, visible, spec.tumour_classes)
  return np.where(tumour, classes, 0).astype(np.uint8)


def with_tumour(classes: np.ndarray, tumour: np.ndarray,
                spec: LayoutSpec = LayoutSpec()) -> np.ndarray:
  """uint8 [H, W] layout: the tumour painted over `classes`.

  `tumour` holds 0 outside the tumour and its class 1..T inside (a binary
  mask is class 1 everywhere); class t is label K + t.
  """
  tumour = np.asarray(tumour).reshape(classes.shape).astype(np.int64)
  label = spec.num_classes + np.clip(tumour, 1, spec.tumour_classes)
  return np.where(tumour > 0, label, classes).astype(np.uint8)


def layouts_of(images: np.ndarray, masks: np.ndarray,
               spec: LayoutSpec = LayoutSpec()) -> np.ndarray:
  """The layouts of real pairs: uint8 [N, H, W] (the GAN's training input)."""
  return np.stack([with_tumour(host_layout(i, m, spec)[0],
                               tumour_labels(i, m, spec), spec)
                   for i, m in zip(images, masks)])


def one_hot(layouts: np.ndarray, num_labels: int) -> np.ndarray:
  """uint8 [..., H, W] label maps -> float32 [..., H, W, num_labels]."""
  return np.eye(num_labels, dtype=np.float32)[np.asarray(layouts, np.int64)]


# ---------------------------------------------------------------------------
# Tumour masks for synthesis.


@dataclasses.dataclass(frozen=True)
class MaskTransform:
  """Random deformation of a real mask (the config's `masks` section).

  Attributes:
    rotation_degrees: rotation uniform in +-this.
    scale: (low, high) isotropic scale, log-uniform.
    flip: left-right flip with probability 1/2.
    elastic_alpha: std (pixels) of a smooth random displacement; 0 = none.
    elastic_sigma: smoothness (pixels) of that displacement.
    min_inside: the placed tumour must lie at least this fraction inside
      the host brain (positions are redrawn until it does).
    min_pixels: placed masks smaller than this are redrawn.
    placement: 'random' (anywhere in the host brain) or 'host' (near where
      the host slice's own tumour was).
  """

  rotation_degrees: float = 180.0
  scale: tuple[float, float] = (0.7, 1.3)
  flip: bool = True
  elastic_alpha: float = 1.5
  elastic_sigma: float = 3.0
  min_inside: float = 0.95
  min_pixels: int = 4
  placement: str = 'random'

  @classmethod
  def from_config(cls, masks: Any) -> 'MaskTransform':
    return cls(rotation_degrees=float(masks.rotation_degrees),
               scale=tuple(float(s) for s in masks.scale),
               flip=bool(masks.flip), elastic_alpha=float(masks.elastic_alpha),
               elastic_sigma=float(masks.elastic_sigma),
               min_inside=float(masks.min_inside),
               min_pixels=int(masks.min_pixels), placement=str(masks.placement))


PLACEMENTS = ('random', 'host')


def deform_mask(mask: np.ndarray, rng: np.random.Generator,
                t: MaskTransform, labels: np.ndarray | None = None,
                ) -> tuple[np.ndarray, dict[str, float]]:
  """A real mask, centred, randomly rotated/scaled/flipped/deformed.

  Args:
    mask: [H, W] in {0, 1}.
    rng: the draws.
    t: how to deform.
    labels: optional [H, W] tumour classes (`tumour_labels`), carried along
      by the same deformation (nearest class); the draws do not depend on it.

  Returns:
    (bool [H, W] with the tumour's centroid at the centre, or with `labels`
    uint8 [H, W] holding the tumour's classes there; the parameters drawn).
  """
  mask = np.asarray(mask, np.float32)
  h, w = mask.shape
  cy, cx = ndimage.center_of_mass(mask)
  angle = float(rng.uniform(-t.rotation_degrees, t.rotation_degrees))
  scale = float(np.exp(rng.uniform(np.log(t.scale[0]), np.log(t.scale[1]))))
  flip = bool(t.flip and rng.random() < 0.5)
  theta = np.deg2rad(angle)
  # Output pixel p reads input pixel R^-1 (p - c_out) / scale + c_in.
  rot = np.array([[np.cos(theta), -np.sin(theta)],
                  [np.sin(theta), np.cos(theta)]]) / scale
  if flip:
    rot = rot @ np.diag([1.0, -1.0])
  yy, xx = np.meshgrid(np.arange(h, dtype=np.float64),
                       np.arange(w, dtype=np.float64), indexing='ij')
  coords = np.stack([yy - (h - 1) / 2, xx - (w - 1) / 2])
  src = np.einsum('ij,jhw->ihw', rot, coords)
  src[0] += cy
  src[1] += cx
  if t.elastic_alpha > 0:
    for axis in range(2):
      field = ndimage.gaussian_filter(rng.standard_normal((h, w)),
                                      t.elastic_sigma)
      field *= t.elastic_alpha / max(float(field.std()), 1e-8)
      src[axis] += field
  out = ndimage.map_coordinates(mask, src, order=1, mode='constant') > 0.5
  params = {'angle': angle, 'scale': scale, 'flip': float(flip)}
  if labels is None:
    return out, params
  # Every pixel takes its nearest tumour pixel's class, so the deformed
  # mask's rim (which may map just outside the source tumour) has one.
  labels = np.asarray(labels).reshape(mask.shape)
  _, (iy, ix) = ndimage.distance_transform_edt(labels == 0,
                                               return_indices=True)
  nearest = labels[iy, ix].astype(np.float32)
  moved = ndimage.map_coordinates(nearest, src, order=0, mode='nearest')
  return np.where(out, moved, 0).astype(np.uint8), params


def place_mask(centred: np.ndarray, brain: np.ndarray, rng: np.random.Generator,
               t: MaskTransform, host_mask: np.ndarray | None = None,
               tries: int = 50) -> tuple[np.ndarray, tuple[int, int]] | None:
  """Shifts a centred mask (or tumour classes) to a position inside `brain`;
  None if none fits."""
  h, w = centred.shape
  area = int(np.count_nonzero(centred))
  if area == 0:
    return None
  candidates = np.argwhere(brain)
  if t.placement == 'host' and host_mask is not None and host_mask.any():
    cy, cx = ndimage.center_of_mass(host_mask)
    near = np.hypot(candidates[:, 0] - cy, candidates[:, 1] - cx) < 0.1 * h
    candidates = candidates[near] if near.any() else candidates
  if not len(candidates):
    return None
  for _ in range(tries):
    y, x = candidates[rng.integers(len(candidates))]
    dy, dx = int(y - (h - 1) // 2), int(x - (w - 1) // 2)
    moved = ndimage.shift(centred.astype(np.uint8), (dy, dx), order=0,
                          mode='constant')
    placed = moved > 0
    inside = int((placed & brain).sum())
    if (inside >= t.min_pixels and inside >= t.min_inside * area and
        placed.sum() >= t.min_inside * area):
      kept = np.where(brain, moved, 0)
      return (kept > 0 if centred.dtype == bool else kept), (int(y), int(x))
  return None


def synthesis_layouts(images: np.ndarray, masks: np.ndarray, ids: Sequence[int],
                      num: int, seed: int, spec: LayoutSpec = LayoutSpec(),
                      transform: MaskTransform = MaskTransform(),
                      ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """`num` layouts: a host slice's anatomy with a deformed real tumour.

  Args:
    images: real training images [N, H, W, 1].
    masks: their masks [N, H, W, 1] in {0, 1}.
    ids: their ids (file numbers), for the provenance records.
    num: layouts to make.
    seed: the draws depend on (seed, layout index) only.
    spec: how layouts are computed.
    transform: how masks are deformed and placed.

  Returns:
    (layouts uint8 [num, H, W], masks uint8 [num, H, W, 1], one provenance
    record per layout: host and tumour-source index and id, the transform
    drawn and where the tumour's centre was placed).

  Raises:
    ValueError: for an unknown placement or a training set without tumours.
  """
  if transform.placement not in PLACEMENTS:
    raise ValueError(f'Unsupported masks.placement {transform.placement!r}; '
                     f'choose one of {PLACEMENTS}.')
  n = len(images)
  with_tumours = [i for i in range(n) if np.asarray(masks[i]).any()]
  if not with_tumours:
    raise ValueError('No training mask holds a tumour: nothing to place.')
  hosts = [host_layout(images[i], masks[i], spec) for i in range(n)]
  sources = {i: tumour_labels(images[i], masks[i], spec) for i in with_tumours}
  out_layouts, out_masks, records = [], [], []
  for k in range(num):
    rng = np.random.default_rng([seed, k])
    for attempt in range(100):
      host = int(rng.integers(n))
      source = with_tumours[int(rng.integers(len(with_tumours)))]
      centred, params = deform_mask(np.asarray(masks[source])[..., 0], rng,
                                    transform, labels=sources[source])
      placed = place_mask(centred, hosts[host][1], rng, transform,
                          np.asarray(masks[host])[..., 0] > 0)
      if placed is not None:
        break
    else:
      raise ValueError(
          f'Could not place a tumour inside a host brain in 100 draws '
          f'(layout {k}); lower masks.min_inside or masks.scale.')
    tumour, (y, x) = placed
    mask = tumour > 0
    out_layouts.append(with_tumour(hosts[host][0], tumour, spec))
    out_masks.append(mask.astype(np.uint8)[..., None])
    records.append({'index': k, 'host_index': host, 'host_id': int(ids[host]),
                    'source_index': source, 'source_id': int(ids[source]),
                    **params, 'center_y': y, 'center_x': x,
                    'pixels': int(mask.sum()), 'attempts': attempt + 1})
  return np.stack(out_layouts), np.stack(out_masks), records


def layouts_for_masks(images: np.ndarray, masks: np.ndarray, ids: Sequence[int],
                      given: np.ndarray, seed: int,
                      spec: LayoutSpec = LayoutSpec(), min_inside: float = 0.95,
                      tumour_class: int = 1,
                      ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """Layouts for tumour masks a user gives, each in a real host brain.

  Each mask keeps its shape and position; its host is the first training
  slice (in a random order drawn from (seed, mask index)) whose brain holds
  at least `min_inside` of it, else the one that holds most of it. The
  tumour is clipped to the host's brain.

  Args:
    images: real training images [N, H, W, 1] (the hosts).
    masks: their masks [N, H, W, 1] (hidden from the host layouts).
    ids: their ids, for the provenance records.
    given: the user's masks [M, H, W] or [M, H, W, 1] in {0, 1}.
    seed: the host draws depend on (seed, mask index) only.
    spec: how layouts are computed.
    min_inside: see above.
    tumour_class: the class 1..T (`tumour_labels`) painted under each mask
      (a mask holds no intensities to class).

  Returns:
    (layouts uint8 [M, H, W], masks uint8 [M, H, W, 1], one record per mask:
    host index and id, pixels given and kept).
  """
  hosts = [host_layout(i, m, spec) for i, m in zip(images, masks)]
  out_layouts, out_masks, records = [], [], []
  for k, mask in enumerate(np.asarray(given)):
    mask = mask.reshape(mask.shape[:2]) > 0
    order = np.random.default_rng([seed, k]).permutation(len(hosts))
    inside = [int((mask & hosts[h][1]).sum()) for h in order]
    fits = [h for h, n in zip(order, inside) if n >= min_inside * mask.sum()]
    host = int(fits[0] if fits else order[int(np.argmax(inside))])
    kept = mask & hosts[host][1]
    out_layouts.append(with_tumour(hosts[host][0], kept * tumour_class,
                                   spec))
    out_masks.append(kept.astype(np.uint8)[..., None])
    records.append({'index': k, 'host_index': host, 'host_id': int(ids[host]),
                    'pixels_given': int(mask.sum()),
                    'pixels': int(kept.sum())})
  return np.stack(out_layouts), np.stack(out_masks), records
