"""Checks of synthetic image/mask pairs before a segmenter learns from them.

A synthetic set can look fine and teach nothing. Three numbers say why:

* **empty masks**: the share of pairs whose mask has no tumour pixel; such
  pairs teach that their image holds no tumour.
* **alignment**: a UNet trained on *real* pairs segments the synthetic
  images; the pooled Dice against the synthetic masks says whether each
  mask sits on a tumour the image shows. Label noise scores low.
* **memorisation**: each synthetic image's distance to its nearest real
  training image, relative to the same distance between real images (each
  to its nearest other real image). A ratio well below 1 means synthetic
  images are closer to training images than real images are to each other:
  copies, not new data.

`pair_scores` / `best_pairs` keep the pairs the real-trained segmenter
agrees with most (the pipeline's `keep_best_of`): a filter of the GAN's
output that uses nothing but the real training pairs.

`check_gates` turns the first two into a pass/fail with a message that
names the numbers and the override.
"""
from collections.abc import Callable
from typing import Any

import numpy as np


class QualityGateError(RuntimeError):
  """The synthetic pairs failed a configured quality gate."""


def empty_masks(masks: np.ndarray) -> int:
  """Number of masks [N, H, W, 1] without a foreground pixel."""
  masks = np.asarray(masks)
  return int((masks.reshape(len(masks), -1).max(1) == 0).sum())


def pooled_dice(pred: np.ndarray, true: np.ndarray) -> float:
  """Foreground Dice pooled over all pixels; 1 when both are empty."""
  pred, true = np.asarray(pred) > 0, np.asarray(true) > 0
  tp = float(np.sum(pred & true))
  denom = float(np.sum(pred) + np.sum(true))
  return 1.0 if denom == 0 else 2.0 * tp / denom


def alignment(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
              masks: np.ndarray) -> dict[str, float]:
  """How well a real-trained segmenter's predictions agree with the masks.

  Args:
    predict: images [N, H, W, C] in [0, 1] -> label maps [N, H, W].
    images: synthetic images.
    masks: their masks [N, H, W, 1].

  Returns:
    'alignment_dice' (pooled), 'alignment_case_dice' (mean per pair with a
    non-empty mask) and 'alignment_detected' (share of non-empty masks the
    segmenter finds at all).
  """
  return agreement(np.asarray(predict(images)), masks)


def agreement(labels: np.ndarray, masks: np.ndarray) -> dict[str, float]:
  """`alignment` of given predictions: label maps [N, H, W] vs masks."""
  pred = np.asarray(labels) > 0
  true = np.asarray(masks)[..., 0] > 0
  cases = [pooled_dice(p, t) for p, t in zip(pred, true) if t.any()]
  detected = [bool((p & t).any()) for p, t in zip(pred, true) if t.any()]
  return {'alignment_dice': pooled_dice(pred, true),
          'alignment_case_dice': float(np.mean(cases)) if cases else 0.0,
          'alignment_detected': float(np.mean(detected)) if detected else 0.0}


def pair_scores(labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """Per-pair Dice of predictions [N, H, W] against masks [N, H, W, 1].

  A pair with an empty mask scores 0 (not the 1 of "both empty"): a set
  kept for teaching tumours should hold tumours.
  """
  pred = np.asarray(labels).reshape(len(labels), -1) > 0
  true = np.asarray(masks).reshape(len(masks), -1) > 0
  inter = np.sum(pred & true, 1)
  total = np.sum(pred, 1) + np.sum(true, 1)
  return np.where(true.any(1), 2.0 * inter / np.maximum(total, 1), 0.0)


def best_pairs(scores: np.ndarray, num: int) -> np.ndarray:
  """Indices of the `num` highest scores (ties: first drawn), in drawn order."""
  if num > len(scores):
    raise ValueError(f'Cannot keep {num} of {len(scores)} pairs.')
  return np.sort(np.argsort(-np.asarray(scores), kind='stable')[:num])


def best_checkpoint(selection: list[dict[str, Any]]) -> int:
  """The step whose pairs the reference segmenter agrees with most.

  Args:
    selection: one row per GAN checkpoint: 'step', 'alignment_dice',
      'empty_fraction'.

  Ties (every checkpoint at alignment 0, as when a joint GAN's masks sit
  nowhere near its tumours) go to the fewer empty masks, then to the later
  step: the earliest checkpoint is not a better guess than the last.
  """
  if not selection:
    raise ValueError('No GAN checkpoint to select from.')
  return max(selection, key=lambda r: (r['alignment_dice'],
                                       -r['empty_fraction'], r['step']))['step']


def _nearest_distances(queries: np.ndarray, references: np.ndarray,
                       exclude_self: bool = False) -> np.ndarray:
  """Root-mean-square pixel distance of each query to its nearest reference."""
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  r = np.asarray(references, np.float64).reshape(len(references), -1)
  d2 = (np.sum(q**2, 1)[:, None] + np.sum(r**2, 1)[None, :] - 2 * q @ r.T)
  d2 = np.maximum(d2, 0.0) / q.shape[1]
  if exclude_self:
    np.fill_diagonal(d2, np.inf)
  return np.sqrt(d2.min(1))


def memorisation(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
  """Nearest-real-neighbour distances of synthetic vs real images.

  Returns:
    'nn_distance_fake' (median over synthetic images of the RMS pixel
    distance to the nearest real training image), 'nn_distance_real' (the
    same for each real image to its nearest other real image), their ratio
    'memorisation_ratio', and 'nn_closer_than_real' (share of synthetic
    images nearer to a training image than the closest real pair is).
  """
  fake_d = _nearest_distances(fake, real)
  real_d = _nearest_distances(real, real, exclude_self=True)
  return {'nn_distance_fake': float(np.median(fake_d)),
          'nn_distance_real': float(np.median(real_d)),
          'memorisation_ratio': float(np.median(fake_d) /
                                      max(np.median(real_d), 1e-12)),
          'nn_closer_than_real': float(np.mean(fake_d < real_d.min()))}


def check_gates(checks: dict[str, Any], gates: Any) -> list[str]:
  """Failed gates as sentences (empty when all pass).

  Args:
    checks: 'empty_fraction' and, if measured, 'alignment_dice' (or
      'drawn_alignment_dice', of all pairs drawn before the best were kept).
    gates: the config's `gates` section: max_empty_fraction,
      min_alignment_dice.
  """
  failed = []
  if checks['empty_fraction'] > gates.max_empty_fraction:
    failed.append(
        f'{100 * checks["empty_fraction"]:.0f}% of the synthetic masks are '
        f'empty (gates.max_empty_fraction={gates.max_empty_fraction})')
  # Of every pair drawn, when the best were kept (`keep_best_of`): the gate
  # judges the GAN, not the filter.
  align = checks.get('drawn_alignment_dice', checks.get('alignment_dice'))
  if align is not None and align < gates.min_alignment_dice:
    failed.append(
        f'a UNet trained on real pairs finds the synthetic masks with Dice '
        f'{align:.3f} only (gates.min_alignment_dice='
        f'{gates.min_alignment_dice}): the masks do not sit on what the '
        'images show')
  return failed
