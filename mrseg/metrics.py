"""Segmentation metrics: exact pooled counts, per-case overlap and distances.

Two kinds of numbers, which answer different questions:

* **Pooled** (dataset-level) Dice, IoU, accuracy, precision and recall come
  from one confusion matrix summed over every voxel of every case. The
  jittable `confusion_matrix` runs inside the eval step; its integer counts
  are summed exactly across batches, hosts and devices (under jit with a
  sharded batch the sum over the global batch happens inside the call; under
  pmap add ``jax.lax.psum(cm, axis_name)``), and the metrics are computed
  once at the end. Never average per-batch Dice: a batch with a tiny tumour
  would weigh as much as one with a large tumour. Accumulate on the host in
  int64 (``total += np.asarray(cm, np.int64)``): int32 overflows after 2**31
  voxels, i.e. a few hundred 3D volumes.
* **Per case** (host-side numpy) Dice/IoU, HD95 and Hausdorff distance of one
  image or volume, as papers report them (mean +- std over cases), plus the
  "correctly segmented" count of paper 1's Table III.

Conventions (chosen so that nothing undefined is silently turned into a good
or a bad score):

* Confusion matrix ``cm[t, p]``: rows are the true class, columns the
  predicted class.
* Dice, IoU, precision and recall are NaN when their denominator is zero:
  Dice/IoU of class k when k is absent from both truth and prediction,
  precision when k is never predicted, recall when k never occurs. Means
  over classes or cases use `nanmean` and report how many values were NaN.
* HD95/Hausdorff: 0.0 when truth and prediction are both empty; when exactly
  one is empty, ``inf`` by default (``empty_value='diagonal'`` uses the
  physical diagonal of the image instead, a finite worst case some challenges
  use). `summarize` reports the number of infinite values alongside the mean
  of the finite ones.
* HD95 is the larger of the two directed 95th percentiles of
  boundary-to-boundary distances (MONAI's definition, symmetric like the
  Hausdorff distance). medpy pools both directions before taking the
  percentile; ``hd95(..., pooled=True)`` gives that variant.
"""
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from mrseg.data import io as data_io

# The label of unlabelled voxels, the data's convention (255).
DEFAULT_IGNORE_LABEL = data_io.IGNORE_LABEL


# ----------------------------------------------------------------------------
# Confusion matrix (jittable) and pooled metrics.


def confusion_matrix(pred_labels: jax.Array, true_labels: jax.Array,
                     num_classes: int, mask: jax.Array | None = None,
                     ignore_label: int | None = DEFAULT_IGNORE_LABEL,
                     dtype: Any = jnp.int32) -> jax.Array:
  """Counts of (true, predicted) label pairs; jittable.

  Args:
    pred_labels: integer predicted labels, any shape (e.g. [B, H, W]).
    true_labels: integer true labels, same shape.
    num_classes: K; labels are 0..K-1.
    mask: optional boolean (or 0/1) array broadcastable to the labels' shape;
      False entries are not counted. Use it for padded examples of a last
      partial batch ([B] shaped masks are broadcast over the spatial axes)
      and for voxels outside a region of interest.
    ignore_label: voxels whose TRUE label equals this (e.g. 255 for "not
      annotated") are not counted; None disables it. True or predicted labels
      outside [0, K) are not counted either, because a traced function cannot
      raise; the data pipeline validates label values.
    dtype: count dtype. int32 is safe per batch (up to 2**31 voxels); sum
      batches on the host in int64.

  Returns:
    [K, K] counts, rows = true class, columns = predicted class.

  Raises:
    ValueError: if the label shapes differ.
  """
  pred_labels = jnp.asarray(pred_labels)
  true_labels = jnp.asarray(true_labels)
  if pred_labels.shape != true_labels.shape:
    raise ValueError(
        f'pred_labels {pred_labels.shape} and true_labels {true_labels.shape} '
        'must have the same shape.')
  pred = pred_labels.astype(jnp.int32)
  true = true_labels.astype(jnp.int32)
  valid = (true >= 0) & (true < num_classes) & (pred >= 0) & (
      pred < num_classes)
  if ignore_label is not None:
    valid &= true != ignore_label
  if mask is not None:
    mask = jnp.asarray(mask).astype(bool)
    # A per-example mask [B] broadcasts over the trailing spatial axes.
    mask = mask.reshape(mask.shape + (1,) * (true.ndim - mask.ndim))
    valid &= jnp.broadcast_to(mask, true.shape)
  index = jnp.where(valid, true * num_classes + pred, 0)
  counts = jnp.bincount(index.ravel(), weights=valid.ravel().astype(dtype),
                        length=num_classes * num_classes)
  return counts.astype(dtype).reshape(num_classes, num_classes)


def foreground_dice(cm: jax.Array) -> jax.Array:
  """Pooled Dice of all foreground classes together, in a step; 0 if undefined.

  A training-time progress number only (the loop refuses NaN metrics);
  evaluation reports undefined Dice as NaN (`pooled_metrics`).
  """
  tp = jnp.sum(jnp.diagonal(cm)[1:])
  fp = jnp.sum(cm[0, 1:])
  fn = jnp.sum(cm[1:, 0])
  return 2.0 * tp / jnp.maximum(2.0 * tp + fp + fn, 1.0)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator with NaN (no warning) where denominator is 0."""
  numerator = np.asarray(numerator, np.float64)
  denominator = np.asarray(denominator, np.float64)
  out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
  np.divide(numerator, denominator, out=out, where=denominator != 0)
  return out


def _tp_fp_fn(cm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  cm = np.asarray(cm, np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'Expected a [K, K] confusion matrix; got {cm.shape}.')
  tp = np.diag(cm)
  fp = cm.sum(axis=0) - tp
  fn = cm.sum(axis=1) - tp
  return tp, fp, fn


def dice_from_confusion(cm) -> np.ndarray:
  """Per-class Dice 2TP / (2TP + FP + FN), [K]; NaN if absent in both."""
  tp, fp, fn = _tp_fp_fn(cm)
  return _divide(2 * tp, 2 * tp + fp + fn)


def iou_from_confusion(cm) -> np.ndarray:
  """Per-class IoU (Jaccard) TP / (TP + FP + FN), [K]; NaN as for Dice."""
  tp, fp, fn = _tp_fp_fn(cm)
  return _divide(tp, tp + fp + fn)


def precision_from_confusion(cm) -> np.ndarray:
  """Per-class precision TP / (TP + FP), [K]; NaN if never predicted."""
  tp, fp, _ = _tp_fp_fn(cm)
  return _divide(tp, tp + fp)


def recall_from_confusion(cm) -> np.ndarray:
  """Per-class recall (sensitivity) TP / (TP + FN), [K]; NaN if absent."""
  tp, _, fn = _tp_fp_fn(cm)
  return _divide(tp, tp + fn)


def accuracy_from_confusion(cm) -> float:
  """Fraction of counted voxels labelled correctly; NaN when none counted."""
  cm = np.asarray(cm, np.int64)
  return float(_divide(np.trace(cm), cm.sum()))


def nanmean(values) -> float:
  """Mean of the non-NaN values; NaN (without a warning) if there are none."""
  values = np.asarray(values, np.float64)
  keep = ~np.isnan(values)
  return float(values[keep].mean()) if keep.any() else float('nan')


def pooled_metrics(cm, class_names: Sequence[str] | None = None,
                   include_background: bool = False) -> dict[str, float]:
  """All pooled metrics of a confusion matrix as a flat, loggable dict.

  Args:
    cm: [K, K] counts (rows true, columns predicted).
    class_names: K names for the keys; defaults to '0'..'K-1'.
    include_background: whether class 0 enters the class means.

  Returns:
    {'accuracy', 'mean_dice', 'mean_iou', 'dice/<name>', 'iou/<name>',
    'precision/<name>', 'recall/<name>'}; per-class values may be NaN (see
    the module docstring), class means skip NaN classes.
  """
  cm = np.asarray(cm, np.int64)
  k = cm.shape[0]
  names = list(class_names) if class_names is not None else [
      str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f'{len(names)} class names for {k} classes.')
  per_class = {
      'dice': dice_from_confusion(cm),
      'iou': iou_from_confusion(cm),
      'precision': precision_from_confusion(cm),
      'recall': recall_from_confusion(cm),
  }
  first = 0 if include_background or k == 1 else 1
  out = {
      'accuracy': accuracy_from_confusion(cm),
      'mean_dice': nanmean(per_class['dice'][first:]),
      'mean_iou': nanmean(per_class['iou'][first:]),
  }
  for metric, values in per_class.items():
    for name, value in zip(names, values):
      out[f'{metric}/{name}'] = float(value)
  return out


# ----------------------------------------------------------------------------
# Per-case metrics (host side).


def case_confusion_matrix(pred_labels, true_labels, num_classes: int,
                          ignore_label: int | None = DEFAULT_IGNORE_LABEL
                          ) -> np.ndarray:
  """numpy (int64) twin of `confusion_matrix` for one case; validates labels.

  Raises:
    ValueError: on a shape mismatch or labels outside [0, K) other than the
      ignore label (on the host a bad label is an error, not a skip).
  """
  pred = np.asarray(pred_labels)
  true = np.asarray(true_labels)
  if pred.shape != true.shape:
    raise ValueError(f'pred_labels {pred.shape} and true_labels {true.shape} '
                     'must have the same shape.')
  keep = np.ones(true.shape, bool) if ignore_label is None else (
      true != ignore_label)
  for name, labels in (('true', true[keep]), ('predicted', pred[keep])):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
      raise ValueError(f'{name} labels {bad[:10].tolist()} outside '
                       f'[0, {num_classes}).')
  index = true[keep].astype(np.int64) * num_classes + pred[keep]
  return np.bincount(index, minlength=num_classes * num_classes).reshape(
      num_classes, num_classes)


def boundary(mask: np.ndarray) -> np.ndarray:
  """Boundary voxels of a binary mask: the mask minus its erosion.

  The erosion uses face connectivity (4 in 2D, 6 in 3D) and treats outside
  the image as background, so a mask touching the image edge has a boundary
  there; a one-voxel-thick structure is all boundary.
  """
  mask = np.asarray(mask, bool)
  structure = ndimage.generate_binary_structure(mask.ndim, 1)
  return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _directed_distances(from_mask: np.ndarray, to_mask: np.ndarray,
                        spacing: np.ndarray) -> np.ndarray:
  """Distance from each boundary voxel of from_mask to to_mask's boundary."""
  to_border = boundary(to_mask)
  # The EDT gives, for every voxel, the distance to the nearest zero voxel,
  # so the boundary voxels must be the zeros.
  distance = ndimage.distance_transform_edt(~to_border, sampling=spacing)
  return distance[boundary(from_mask)]


def _surface_distances(pred: np.ndarray, true: np.ndarray, spacing,
                       empty_value: str
                       ) -> tuple[np.ndarray, np.ndarray] | float:
  """Both directed distance sets, or the edge-case value for empty masks."""
  pred = np.asarray(pred, bool)
  true = np.asarray(true, bool)
  if pred.shape != true.shape:
    raise ValueError(f'Prediction {pred.shape} and truth {true.shape} must '
                     'have the same shape.')
  if pred.ndim not in (2, 3):
    raise ValueError(f'Expected a 2D or 3D mask; got shape {pred.shape}.')
  if spacing is None:
    spacing = (1.0,) * pred.ndim
  spacing = np.asarray(spacing, np.float64)
  if spacing.shape != (pred.ndim,) or np.any(spacing <= 0):
    raise ValueError(f'spacing {spacing.tolist()} must hold {pred.ndim} '
                     'positive values.')
  if empty_value not in ('inf', 'diagonal'):
    raise ValueError(f"empty_value must be 'inf' or 'diagonal'; got "
                     f'{empty_value!r}.')
  has_pred, has_true = pred.any(), true.any()
  if not has_pred and not has_true:
    return 0.0
  if has_pred != has_true:
    if empty_value == 'inf':
      return float('inf')
    return float(np.sqrt(np.sum((np.asarray(pred.shape) * spacing) ** 2)))
  return (_directed_distances(pred, true, spacing),
          _directed_distances(true, pred, spacing))


def hd95(pred_mask, true_mask, spacing: Sequence[float] | None = None,
         empty_value: str = 'inf', pooled: bool = False) -> float:
  """95th percentile symmetric Hausdorff distance between mask boundaries.

  Args:
    pred_mask: binary prediction, 2D or 3D.
    true_mask: binary truth, same shape.
    spacing: physical voxel size per axis (e.g. mm); default 1.
    empty_value: result when exactly one mask is empty: 'inf' or 'diagonal'
      (the image's physical diagonal). Both empty gives 0.0.
    pooled: False: max of the two directed 95th percentiles (MONAI);
      True: 95th percentile of both directions pooled (medpy).

  Returns:
    The distance in the units of `spacing`.

  Raises:
    ValueError: on mismatched shapes, a rank other than 2/3 or bad spacing.
  """
  d = _surface_distances(pred_mask, true_mask, spacing, empty_value)
  if isinstance(d, float):
    return d
  pred_to_true, true_to_pred = d
  if pooled:
    return float(np.percentile(np.concatenate([pred_to_true, true_to_pred]),
                               95))
  return float(max(np.percentile(pred_to_true, 95),
                   np.percentile(true_to_pred, 95)))


def hausdorff(pred_mask, true_mask, spacing: Sequence[float] | None = None,
              empty_value: str = 'inf') -> float:
  """Hausdorff distance (max of boundary distances); empty cases as `hd95`."""
  d = _surface_distances(pred_mask, true_mask, spacing, empty_value)
  if isinstance(d, float):
    return d
  return float(max(d[0].max(), d[1].max()))


def case_metrics(pred_labels, true_labels, num_classes: int,
                 spacing: Sequence[float] | None = None,
                 classes: Iterable[int] | None = None,
                 class_names: Sequence[str] | None = None,
                 ignore_label: int | None = DEFAULT_IGNORE_LABEL,
                 distances: bool = True,
                 empty_value: str = 'inf') -> dict[str, float]:
  """Dice, IoU and (optionally) HD95 and Hausdorff of one case, per class.

  Args:
    pred_labels: predicted labels of one image/volume, [H, W] or [X, Y, Z].
    true_labels: true labels, same shape.
    num_classes: K.
    spacing: voxel size per axis for the distances.
    classes: classes to report; default all but background (1..K-1).
    class_names: K names used in the keys; default the class indices.
    ignore_label: true label excluded from Dice/IoU (distances treat it as
      background).
    distances: whether to compute HD95/Hausdorff (the slow part).
    empty_value: see `hd95`.

  Returns:
    {'dice/<name>', 'iou/<name>', 'hd95/<name>', 'hausdorff/<name>'} with the
    NaN/inf conventions of the module docstring.
  """
  cm = case_confusion_matrix(pred_labels, true_labels, num_classes,
                             ignore_label)
  dice = dice_from_confusion(cm)
  iou = iou_from_confusion(cm)
  names = list(class_names) if class_names is not None else [
      str(i) for i in range(num_classes)]
  classes = range(1, num_classes) if classes is None else classes
  pred = np.asarray(pred_labels)
  true = np.asarray(true_labels)
  out = {}
  for k in classes:
    out[f'dice/{names[k]}'] = float(dice[k])
    out[f'iou/{names[k]}'] = float(iou[k])
    if distances:
      out[f'hd95/{names[k]}'] = hd95(pred == k, true == k, spacing,
                                     empty_value)
      out[f'hausdorff/{names[k]}'] = hausdorff(pred == k, true == k, spacing,
                                               empty_value)
  return out


def summarize(cases: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """Mean, std and median over cases of each metric, with NaN/inf counts.

  Undefined values are reported, not hidden: for each key, 'mean'/'std'/
  'median' use the finite values only, and 'n_nan'/'n_inf' count the rest,
  so a model that misses whole tumours (HD = inf) cannot look good.

  Returns:
    {'<key>/mean', '<key>/std', '<key>/median', '<key>/n', '<key>/n_nan',
    '<key>/n_inf'} for every key of the case dicts.
  """
  keys = sorted({key for case in cases for key in case})
  out = {}
  for key in keys:
    values = np.asarray([case.get(key, np.nan) for case in cases], np.float64)
    finite = values[np.isfinite(values)]
    out[f'{key}/n'] = float(len(values))
    out[f'{key}/n_nan'] = float(np.isnan(values).sum())
    out[f'{key}/n_inf'] = float(np.isinf(values).sum())
    empty = finite.size == 0
    out[f'{key}/mean'] = float('nan') if empty else float(finite.mean())
    out[f'{key}/std'] = float('nan') if empty else float(finite.std())
    out[f'{key}/median'] = float('nan') if empty else float(np.median(finite))
  return out


# ----------------------------------------------------------------------------
# Paper 1, Table III.


class SegmentationCounts(NamedTuple):
  """Cases by per-case Dice of one class against a threshold.

  Attributes:
    correct: Dice >= threshold.
    incorrect: Dice < threshold (including a missed or hallucinated class,
      Dice 0).
    undefined: Dice NaN: the class is absent from both truth and prediction.
      Counted apart because the paper's test images all contain a tumour; a
      reader decides whether "no tumour, none found" is a success.
  """
  correct: int
  incorrect: int
  undefined: int


def count_correct(dice_values, threshold: float = 0.5) -> SegmentationCounts:
  """Table III of paper 1: cases correctly vs incorrectly segmented.

  Args:
    dice_values: per-case Dice of the tumour class, [N] (NaN allowed).
    threshold: a case is correct when its Dice >= threshold.

  Returns:
    SegmentationCounts.
  """
  dice = np.asarray(dice_values, np.float64).ravel()
  undefined = np.isnan(dice)
  correct = ~undefined & (dice >= threshold)
  return SegmentationCounts(int(correct.sum()),
                            int((~undefined & ~correct).sum()),
                            int(undefined.sum()))


def per_case_dice(pred_labels, true_labels, num_classes: int,
                  ignore_label: int | None = DEFAULT_IGNORE_LABEL
                  ) -> np.ndarray:
  """Dice per case and class for a batch of cases [N, ...] -> [N, K]."""
  pred = np.asarray(pred_labels)
  true = np.asarray(true_labels)
  if pred.shape != true.shape:
    raise ValueError(f'pred_labels {pred.shape} and true_labels {true.shape} '
                     'must have the same shape.')
  return np.stack([
      dice_from_confusion(case_confusion_matrix(p, t, num_classes,
                                                ignore_label))
      for p, t in zip(pred, true)
  ]) if len(pred) else np.zeros((0, num_classes))
