"""Metric tests against hand computations and brute-force numpy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrseg import metrics


def _numpy_per_class(pred, true, k):
  """Dice, IoU, precision, recall of class k from boolean masks."""
  p, t = pred == k, true == k
  tp = np.sum(p & t)
  fp = np.sum(p & ~t)
  fn = np.sum(~p & t)
  nan = float('nan')
  return (2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else nan,
          tp / (tp + fp + fn) if tp + fp + fn else nan,
          tp / (tp + fp) if tp + fp else nan,
          tp / (tp + fn) if tp + fn else nan)


# ----------------------------------------------------------------------------
# Confusion matrix and pooled metrics.


def test_confusion_matrix_by_hand():
  true = np.array([[0, 1, 1, 2], [2, 2, 0, 1]])
  pred = np.array([[0, 1, 0, 2], [1, 2, 0, 1]])
  cm = np.asarray(metrics.confusion_matrix(pred, true, 3))
  #            predicted 0  1  2
  expected = np.array([[2, 0, 0],   # true 0
                       [1, 2, 0],   # true 1
                       [0, 1, 2]])  # true 2
  np.testing.assert_array_equal(cm, expected)
  # Class 1: TP 2, FP 1, FN 1 -> Dice 4/6, IoU 2/4, precision 2/3, recall 2/3.
  np.testing.assert_allclose(metrics.dice_from_confusion(cm)[1], 4 / 6)
  np.testing.assert_allclose(metrics.iou_from_confusion(cm)[1], 2 / 4)
  np.testing.assert_allclose(metrics.precision_from_confusion(cm)[1], 2 / 3)
  np.testing.assert_allclose(metrics.recall_from_confusion(cm)[1], 2 / 3)
  assert metrics.accuracy_from_confusion(cm) == 6 / 8


def test_pooled_metrics_match_numpy_on_random_labels():
  rng = np.random.default_rng(0)
  true = rng.integers(0, 4, (3, 9, 7))
  pred = np.where(rng.random(true.shape) < 0.6, true,
                  rng.integers(0, 4, true.shape))
  cm = jax.jit(metrics.confusion_matrix, static_argnums=2)(pred, true, 4)
  assert cm.dtype == jnp.int32
  assert int(cm.sum()) == true.size
  for k in range(4):
    expected = _numpy_per_class(pred, true, k)
    got = (metrics.dice_from_confusion(cm)[k],
           metrics.iou_from_confusion(cm)[k],
           metrics.precision_from_confusion(cm)[k],
           metrics.recall_from_confusion(cm)[k])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
  np.testing.assert_allclose(metrics.accuracy_from_confusion(cm),
                             np.mean(pred == true))


def test_empty_class_is_nan_and_all_background_prediction():
  true = np.array([0, 0, 1, 1, 0])
  pred = np.zeros_like(true)  # predicts background everywhere
  cm = metrics.confusion_matrix(pred, true, 3)  # class 2 absent everywhere
  dice = metrics.dice_from_confusion(cm)
  assert dice[1] == 0.0  # missed tumour: a real 0, not NaN
  assert math.isnan(dice[2])  # absent in truth and prediction: undefined
  assert math.isnan(metrics.iou_from_confusion(cm)[2])
  assert math.isnan(metrics.precision_from_confusion(cm)[1])  # never predicted
  assert metrics.recall_from_confusion(cm)[1] == 0.0
  summary = metrics.pooled_metrics(cm, ['bg', 'tumour', 'edema'])
  assert summary['dice/tumour'] == 0.0
  assert math.isnan(summary['dice/edema'])
  # The class mean skips the undefined class and the background.
  assert summary['mean_dice'] == 0.0
  assert summary['accuracy'] == 3 / 5
  empty = metrics.pooled_metrics(np.zeros((2, 2), np.int64))
  assert math.isnan(empty['accuracy']) and math.isnan(empty['mean_dice'])


def test_ignore_label_and_padding_mask():
  true = np.array([[0, 1, 255, 1], [1, 1, 0, 0]])
  pred = np.array([[0, 1, 1, 0], [0, 0, 0, 1]])
  # Pairs (true, pred): row 0: (0,0) (1,1) ignored (1,0);
  #                     row 1: (1,0) (1,0) (0,0) (0,1).
  cm = metrics.confusion_matrix(pred, true, 2)  # default ignore_label 255
  np.testing.assert_array_equal(cm, [[2, 1], [3, 1]])
  # With the ignore label disabled, 255 is out of range and still not counted.
  np.testing.assert_array_equal(
      metrics.confusion_matrix(pred, true, 2, ignore_label=None), cm)
  # Example 1 of the batch is padding.
  cm = metrics.confusion_matrix(pred, true, 2, mask=np.array([True, False]))
  np.testing.assert_array_equal(cm, [[1, 0], [1, 1]])
  cm = metrics.confusion_matrix(pred, true, 2, mask=np.array([False, True]))
  np.testing.assert_array_equal(cm, [[1, 1], [2, 0]])
  # A voxel-wise mask works too.
  voxel_mask = np.ones_like(true, bool)
  voxel_mask[0, 0] = False
  cm = metrics.confusion_matrix(pred, true, 2, mask=voxel_mask)
  np.testing.assert_array_equal(cm, [[1, 1], [3, 1]])
  # The host-side twin agrees and honours the ignore label.
  np.testing.assert_array_equal(
      metrics.case_confusion_matrix(pred, true, 2), [[2, 1], [3, 1]])
  # Out-of-range labels are not counted (cannot raise under jit) ...
  cm = metrics.confusion_matrix(np.array([0, 5]), np.array([0, 1]), 2)
  assert int(cm.sum()) == 1
  # ... but the host-side per-case version raises.
  with pytest.raises(ValueError, match='outside'):
    metrics.case_confusion_matrix(np.array([0, 5]), np.array([0, 1]), 2)


def test_accumulation_over_split_batches_is_exact():
  rng = np.random.default_rng(1)
  true = rng.integers(0, 3, (10, 8, 8))
  # Tumour sizes vary a lot between cases, so per-batch means would be wrong.
  pred = np.where(rng.random(true.shape) < 0.7, true, 0)
  whole = np.asarray(metrics.confusion_matrix(pred, true, 3), np.int64)
  step = jax.jit(metrics.confusion_matrix, static_argnums=2)
  total = np.zeros((3, 3), np.int64)
  batch = 4
  batch_dice = []
  for start in range(0, 10, batch):
    p, t = pred[start:start + batch], true[start:start + batch]
    valid = np.arange(batch) < len(p)
    # The last batch is padded with copies to a fixed shape and masked out.
    pad = batch - len(p)
    p = np.concatenate([p, p[:pad]]) if pad else p
    t = np.concatenate([t, t[:pad]]) if pad else t
    cm = step(p, t, 3, mask=valid)
    total += np.asarray(cm, np.int64)
    batch_dice.append(metrics.dice_from_confusion(cm))
  np.testing.assert_array_equal(total, whole)
  np.testing.assert_allclose(metrics.dice_from_confusion(total),
                             metrics.dice_from_confusion(whole))
  # And on a data-parallel mesh the jitted count over a sharded batch is the
  # same global sum.
  mesh = jax.make_mesh((4,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh,
                                       jax.sharding.PartitionSpec('data'))
  p = jax.device_put(pred[:8], sharding)
  t = jax.device_put(true[:8], sharding)
  np.testing.assert_array_equal(
      step(p, t, 3), metrics.confusion_matrix(pred[:8], true[:8], 3))


# ----------------------------------------------------------------------------
# Surface distances.


def _brute_boundary(mask):
  """A voxel is on the boundary if a face neighbour (or the outside) is 0."""
  padded = np.pad(mask, 1)
  out = np.zeros_like(mask)
  for idx in zip(*np.nonzero(mask)):
    for axis in range(mask.ndim):
      for delta in (-1, 1):
        n = list(i + 1 for i in idx)
        n[axis] += delta
        if not padded[tuple(n)]:
          out[idx] = True
  return out


def _brute_hd(pred, true, spacing, percentile):
  a = np.argwhere(_brute_boundary(pred)) * spacing
  b = np.argwhere(_brute_boundary(true)) * spacing
  d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  a_to_b, b_to_a = d.min(1), d.min(0)
  if percentile is None:
    return max(a_to_b.max(), b_to_a.max())
  return (max(np.percentile(a_to_b, percentile),
              np.percentile(b_to_a, percentile)),
          np.percentile(np.concatenate([a_to_b, b_to_a]), percentile))


def _random_blob(rng, shape):
  """A random union of boxes: irregular, sometimes touching the border."""
  mask = np.zeros(shape, bool)
  for _ in range(3):
    lo = [rng.integers(0, s - 1) for s in shape]
    hi = [rng.integers(l + 1, s + 1) for l, s in zip(lo, shape)]
    mask[tuple(slice(l, h) for l, h in zip(lo, hi))] = True
  return mask


def test_boundary_by_hand():
  mask = np.zeros((6, 6), bool)
  mask[1:5, 1:5] = True
  ring = mask.copy()
  ring[2:4, 2:4] = False
  np.testing.assert_array_equal(metrics.boundary(mask), ring)
  # At the image edge the outside counts as background.
  assert metrics.boundary(np.ones((3, 3), bool)).sum() == 8


def test_hausdorff_by_hand_with_spacing():
  a = np.zeros((6, 5), bool)
  b = np.zeros((6, 5), bool)
  a[1, 1] = True
  b[4, 1] = True
  assert metrics.hausdorff(a, b) == 3.0
  assert metrics.hausdorff(a, b, spacing=(2.0, 1.0)) == 6.0
  assert metrics.hd95(a, b, spacing=(2.0, 1.0)) == 6.0
  assert metrics.hd95(a, a) == 0.0


@pytest.mark.parametrize('shape,spacing', [((12, 10), (1.0, 1.0)),
                                           ((12, 10), (0.5, 2.0)),
                                           ((7, 8, 6), (1.0, 1.0, 1.0)),
                                           ((7, 8, 6), (1.5, 0.7, 3.0))])
def test_hd95_matches_brute_force(shape, spacing):
  rng = np.random.default_rng(hash(shape + spacing) % 2**32)
  for _ in range(3):
    pred, true = _random_blob(rng, shape), _random_blob(rng, shape)
    directed, pooled = _brute_hd(pred, true, np.asarray(spacing), 95)
    np.testing.assert_allclose(metrics.hd95(pred, true, spacing), directed,
                               rtol=1e-9)
    np.testing.assert_allclose(
        metrics.hd95(pred, true, spacing, pooled=True), pooled, rtol=1e-9)
    np.testing.assert_allclose(metrics.hausdorff(pred, true, spacing),
                               _brute_hd(pred, true, np.asarray(spacing), None),
                               rtol=1e-9)
    # Symmetric.
    assert metrics.hd95(pred, true, spacing) == metrics.hd95(true, pred,
                                                             spacing)


def test_distance_edge_cases():
  empty = np.zeros((4, 6), bool)
  some = empty.copy()
  some[1, 2] = True
  assert metrics.hd95(empty, empty) == 0.0
  assert metrics.hausdorff(empty, empty) == 0.0
  assert metrics.hd95(some, empty) == float('inf')
  assert metrics.hd95(empty, some) == float('inf')
  assert metrics.hausdorff(empty, some) == float('inf')
  np.testing.assert_allclose(
      metrics.hd95(empty, some, spacing=(2.0, 0.5), empty_value='diagonal'),
      math.hypot(4 * 2.0, 6 * 0.5))
  with pytest.raises(ValueError, match='same shape'):
    metrics.hd95(empty, empty.T)
  with pytest.raises(ValueError, match='spacing'):
    metrics.hd95(some, some, spacing=(1.0,))
  with pytest.raises(ValueError, match='empty_value'):
    metrics.hd95(some, some, empty_value='zero')


# ----------------------------------------------------------------------------
# Per-case metrics, summaries and Table III.


def test_case_metrics_and_summary_report_undefined_values():
  true = np.zeros((8, 8), int)
  true[2:5, 2:5] = 1
  pred = np.zeros_like(true)
  pred[2:5, 3:6] = 1
  case = metrics.case_metrics(pred, true, num_classes=3, spacing=(1.0, 1.0))
  # Class 1: TP 6, FP 3, FN 3.
  assert case['dice/1'] == 12 / 18
  assert case['iou/1'] == 6 / 12
  assert case['hd95/1'] == 1.0 and case['hausdorff/1'] == 1.0
  assert math.isnan(case['dice/2']) and case['hd95/2'] == 0.0
  missed = metrics.case_metrics(np.zeros_like(true), true, num_classes=3,
                                classes=[1], class_names=['bg', 'tumour', 'x'])
  assert missed == {'dice/tumour': 0.0, 'iou/tumour': 0.0,
                    'hd95/tumour': float('inf'),
                    'hausdorff/tumour': float('inf')}
  summary = metrics.summarize([{'hd95/1': 1.0, 'dice/1': 0.5},
                               {'hd95/1': 3.0, 'dice/1': float('nan')},
                               {'hd95/1': float('inf'), 'dice/1': 0.0}])
  assert summary['hd95/1/mean'] == 2.0 and summary['hd95/1/n_inf'] == 1
  assert summary['dice/1/mean'] == 0.25 and summary['dice/1/n_nan'] == 1
  assert summary['dice/1/n'] == 3


def test_table_iii_counts():
  counts = metrics.count_correct([0.9, 0.5, 0.49, 0.0, float('nan')])
  assert counts == metrics.SegmentationCounts(correct=2, incorrect=2,
                                              undefined=1)
  assert metrics.count_correct([0.6, 0.7], threshold=0.65).correct == 1
  # From label maps: case 0 perfect, case 1 half the tumour, case 2 missed,
  # case 3 no tumour anywhere.
  true = np.zeros((4, 4, 4), int)
  true[:3, 1:3, 1:3] = 1
  pred = true.copy()
  pred[1, 1, 1:3] = 0
  pred[2] = 0
  dice = metrics.per_case_dice(pred, true, num_classes=2)[:, 1]
  np.testing.assert_allclose(dice[:3], [1.0, 2 * 2 / (2 * 2 + 2), 0.0])
  assert math.isnan(dice[3])
  assert tuple(metrics.count_correct(dice)) == (2, 1, 1)
