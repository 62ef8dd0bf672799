"""Segmentation evaluation shared by the 2D UNet and the 3D segmenters.

Both trainers validate and test the same way, on cases (2D slices or 3D
subjects) that are scored one at a time:

* `score_case` gives a case's row (per-class Dice, IoU, HD95 and Hausdorff,
  and for slices pixel accuracy, precision, recall and pixel counts) and its
  exact int64 confusion matrix. `pool` sums the matrices; pooled Dice and
  IoU come from that sum (`metrics.pooled_metrics`), never as a mean of
  per-case numbers. With several processes each predicts its share of a
  split's cases (`shards.share`); a validation sums the shares' matrices
  (`shards.gather_sum`), a test gathers the predictions
  (`shards.gather_cases`) for process 0 to score and report: the result is
  the same as on one process.
* 3D subjects are predicted whole by sliding windows of the training patch
  size (`predict_volume`, `predict_volumes`).
* `slice_report` (paper 1: pooled metrics, per-case summaries and Table III
  counts; per_case.csv, predictions.npz, figures/overlays.png) and
  `volume_report` (paper 2: pooled Dice per tissue, per-subject Dice and
  HD95 in mm; per_subject.csv, NIfTI predictions,
  figures/segmentation.png) build the test report a trainer then completes
  and writes as metrics.json, last (the run's "done" marker).

Nothing here imports TensorFlow: inference runs where it is not installed.
"""
from collections.abc import Callable, Sequence
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from mrseg import metrics as metrics_lib
from mrseg import saved_configs
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import tissue
from mrseg.data import volumes
from mrseg.eval import io as eval_io
from mrseg.eval import shards
from mrseg.eval import sliding_window

# Class names of paper 1's two-class tumour masks.
TUMOUR_CLASSES = ('background', 'tumor')


def class_names(num_classes: int,
                names: Sequence[str] = TUMOUR_CLASSES) -> list[str]:
  """Names used in metric keys: `names` if one per class, else indices."""
  if num_classes == len(names):
    return list(names)
  return ['background'] + [f'class{k}' for k in range(1, num_classes)]


def score_case(pred: np.ndarray, true: np.ndarray, case_id: Any, *,
               num_classes: int, names: Sequence[str], ignore_label: int,
               empty_value: str, spacing: Sequence[float] | None = None,
               details: bool = False) -> tuple[dict[str, Any], np.ndarray]:
  """One case's row of per-class metrics and its confusion matrix.

  Args:
    pred: predicted labels [H, W] or [X, Y, Z].
    true: true labels, same shape (`ignore_label` counts nowhere).
    case_id: the row's 'id'.
    num_classes: K.
    names: K class names for the metric keys.
    ignore_label: the unlabelled value of `true`.
    empty_value: HD95 when a class is absent from one side
      (`metrics.case_metrics`).
    spacing: voxel sizes (HD95 in mm), or None (in pixels).
    details: also pixel accuracy, per-class precision, recall and pixel
      counts (paper 1's report).

  Returns:
    ({'id', 'dice/<name>', ...}, int64 [K, K] confusion matrix).
  """
  cm = metrics_lib.case_confusion_matrix(pred, true, num_classes, ignore_label)
  row = {'id': case_id}
  row.update(metrics_lib.case_metrics(
      pred, true, num_classes, spacing=spacing, class_names=names,
      ignore_label=ignore_label, empty_value=empty_value))
  if details:
    row['accuracy'] = metrics_lib.accuracy_from_confusion(cm)
    precision = metrics_lib.precision_from_confusion(cm)
    recall = metrics_lib.recall_from_confusion(cm)
    for c in range(1, num_classes):
      row[f'precision/{names[c]}'] = float(precision[c])
      row[f'recall/{names[c]}'] = float(recall[c])
      row[f'true_pixels/{names[c]}'] = int(cm[c].sum())
      row[f'predicted_pixels/{names[c]}'] = int(cm[:, c].sum())
  return row, cm


def pool(confusions: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
  """The exact int64 sum of per-case confusion matrices."""
  total = np.zeros((num_classes, num_classes), np.int64)
  for cm in confusions:
    total += cm
  return total


def validation_record(workdir: str) -> dict[str, Any]:
  """The best checkpoint's validation scalars (best.json less 'step')."""
  path = os.path.join(workdir, 'best.json')
  if not os.path.exists(path):
    return {}
  return {k: v for k, v in workdir_lib.read_json(path).items() if k != 'step'}


def stopped_early_at(workdir: str) -> dict[str, int]:
  """{'stopped_early_at': step} if the run stopped at a plateau of its
  validation metric (early_stop.json, `runner.Plateau`), else {}."""
  path = os.path.join(workdir, 'early_stop.json')
  if not os.path.exists(path):
    return {}
  return {'stopped_early_at': workdir_lib.read_json(path)['stopped_early_at']}


# ----------------------------------------------------------------------------
# 2D slices.


def slice_report(config: ml_collections.ConfigDict, workdir: str, step: int,
                 test: dict[str, np.ndarray], pred: np.ndarray,
                 size: int, out_dir: str | None = None) -> dict[str, Any]:
  """Paper 1's test report of predicted labels `pred` [N, H, W] of `test`.

  Writes per_case.csv, predictions.npz and figures/overlays.png (best,
  median and worst cases by Dice) into `out_dir` (default: the run's
  `workdir`, whose best.json gives the validation record).

  Returns:
    metrics.json's content: pooled and per-case summaries, Table III
    counts (one Dice per case: the tumour's, or the mean foreground Dice
    for K > 2), the confusion matrix.
  """
  k = config.model.num_classes
  names = class_names(k)
  true = test['mask'][..., 0]
  scored = [score_case(pred[i], true[i], int(case_id), num_classes=k,
                       names=names, ignore_label=config.loss.ignore_label,
                       empty_value=config.eval.hd95_empty_value, details=True)
            for i, case_id in enumerate(test['id'])]
  cases = [row for row, _ in scored]
  total = pool([cm for _, cm in scored], k)
  fg_dice = np.asarray([
      metrics_lib.nanmean([c[f'dice/{names[j]}'] for j in range(1, k)])
      for c in cases])
  threshold = config.eval.correct_threshold
  counts = metrics_lib.count_correct(fg_dice, threshold)
  for case, d in zip(cases, fg_dice):
    case['correct'] = bool(d >= threshold)
  result = {
      'checkpoint_step': step,
      **stopped_early_at(workdir),
      'validation': validation_record(workdir),
      'test_ids': config.data.test_ids,
      'num_cases': len(cases),
      'image_size': size,
      'sliding_window': size != config.data.image_size,
      # HD95/Hausdorff are in pixels of the evaluated images.
      'distance_unit': f'pixel at {size}x{size}',
      'pooled': metrics_lib.pooled_metrics(total, names),
      'per_case': metrics_lib.summarize(
          [{k_: v for k_, v in c.items() if k_ not in ('id', 'correct')}
           for c in cases]),
      'table_iii': {'threshold': threshold, 'correct': counts.correct,
                    'incorrect': counts.incorrect,
                    'undefined': counts.undefined},
      'confusion_matrix': total.tolist(),
  }
  out_dir = out_dir or workdir
  eval_io.write_csv(cases, os.path.join(out_dir, 'per_case.csv'))
  with workdir_lib.atomic_open(os.path.join(out_dir, 'predictions.npz'),
                               'wb') as f:
    np.savez_compressed(f, id=test['id'], prediction=pred, truth=true)
  viz.plot_ranked_cases(test['image'], true, pred, test['id'], fg_dice,
                        os.path.join(out_dir, 'figures', 'overlays.png'))
  logging.info('Test (%d cases, best step %d): pooled Dice %.4f, IoU %.4f, '
               'accuracy %.4f; per-case Dice %.4f +- %.4f; Table III %d '
               'correct / %d incorrect at Dice >= %.2f.', len(cases), step,
               result['pooled']['mean_dice'], result['pooled']['mean_iou'],
               result['pooled']['accuracy'], np.nanmean(fg_dice),
               np.nanstd(fg_dice), counts.correct, counts.incorrect,
               threshold)
  return result


# ----------------------------------------------------------------------------
# 3D volumes.


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
  """Voxel sizes in mm: the lengths of the affine's first three columns."""
  a = np.asarray(affine, np.float64)[:3, :3]
  return tuple(float(v) for v in np.linalg.norm(a, axis=0))


def predict_volume(config: ml_collections.ConfigDict,
                   predict: Callable[[Any, np.ndarray], Any], params: Any,
                   image: np.ndarray) -> np.ndarray:
  """Class probabilities [X, Y, Z, K] of a whole volume [X, Y, Z, C].

  `predict(params, windows [B, p, p, p, C]) -> logits`; windows of
  `eval.window_size` (default the patch size), averaged with the config's
  weighting, padded with the normalisation's background value. With
  several processes each predicts its own volumes, `eval.window_batch_size`
  / num_processes windows at a time: each device then sees what it sees in
  a one-process run (`shards.per_process`), and gives the same numbers.
  """
  p = config.eval.window_size or config.data.patch_size
  return sliding_window.sliding_window_inference(
      lambda windows: predict(params, windows), image, window=(p, p, p),
      overlap=config.eval.overlap, weighting=config.eval.weighting,
      batch_size=shards.per_process(config.eval.window_batch_size,
                                    'eval.window_batch_size'),
      pad_value=tissue.pad_value(config))


def predict_volumes(config: ml_collections.ConfigDict,
                    predict: Callable[[Any, np.ndarray], Any], params: Any,
                    subjects: Sequence[dict[str, Any]]) -> list[np.ndarray]:
  """Labels uint8 [X, Y, Z] of each subject, in order; background outside
  the brain mask if `eval.restrict_to_brain`."""
  restrict = saved_configs.get(config, 'eval.restrict_to_brain')
  out = []
  for case in volumes.eval_volumes(subjects, tissue.modalities(config)):
    labels = predict_volume(config, predict, params, case['image']).argmax(-1)
    if restrict:
      labels = np.where(case['brain_mask'], labels, 0)
    out.append(labels.astype(np.uint8))
  return out


def pooled_confusion(config: ml_collections.ConfigDict,
                     predictions: Sequence[np.ndarray],
                     subjects: Sequence[dict[str, Any]]) -> np.ndarray:
  """The exact int64 confusion matrix of the subjects' predictions."""
  k = config.model.num_classes
  return pool([metrics_lib.case_confusion_matrix(
      pred, s['label'], k, config.loss.ignore_label)
               for pred, s in zip(predictions, subjects)], k)


def volume_report(config: ml_collections.ConfigDict, workdir: str, step: int,
                  test: Sequence[dict[str, Any]],
                  predictions: Sequence[np.ndarray],
                  out_dir: str | None = None) -> dict[str, Any]:
  """Paper 2's test report of the test subjects' predicted labels.

  Writes per_subject.csv, predictions/<id>.nii.gz (with the subject's
  affine, if `eval.write_nifti`) and figures/segmentation.png into
  `out_dir` (default: the run's `workdir`, whose best.json gives the
  validation record).

  Returns:
    metrics.json's content less the trainer's own keys. Top-level numbers
    (for sweep tables): pooled test Dice per tissue and their mean, and the
    mean per-subject HD95 per tissue in mm.
  """
  out_dir = out_dir or workdir
  k = config.model.num_classes
  names = class_names(k, volumes.TISSUE_CLASSES)
  cases, confusions = [], []
  for s, pred in zip(test, predictions):
    row, cm = score_case(
        pred, s['label'], s['id'], num_classes=k, names=names,
        ignore_label=config.loss.ignore_label,
        empty_value=config.eval.hd95_empty_value,
        spacing=voxel_spacing(s['affine']))
    cases.append(row)
    confusions.append(cm)
    if config.eval.write_nifti:
      eval_io.write_nifti(pred, s['affine'], os.path.join(
          out_dir, 'predictions', f'{s["id"]}.nii.gz'))
  total = pool(confusions, k)
  pooled = metrics_lib.pooled_metrics(total, names)
  per_subject = metrics_lib.summarize(
      [{m: v for m, v in c.items() if m != 'id'} for c in cases])
  eval_io.write_csv(cases, os.path.join(out_dir, 'per_subject.csv'))
  viz.plot_volume_slices(
      test, predictions, tissue.modalities(config)[0],
      config.loss.ignore_label,
      os.path.join(out_dir, 'figures', 'segmentation.png'),
      title=config.model.kind)
  logging.info('Test (%d subjects, best step %d): pooled Dice %s; mean %.4f.',
               len(test), step,
               ', '.join(f'{n}={pooled[f"dice/{n}"]:.4f}' for n in names[1:]),
               pooled['mean_dice'])
  return {
      'kind': config.model.kind,
      'checkpoint_step': step,
      **stopped_early_at(workdir),
      'mean_dice': pooled['mean_dice'],
      **{f'dice/{n}': pooled[f'dice/{n}'] for n in names[1:]},
      **{f'hd95/{n}': per_subject[f'hd95/{n}/mean'] for n in names[1:]},
      'data': config.data.name,
      'test_ids': [s['id'] for s in test],
      'validation': validation_record(workdir),
      'distance_unit': 'mm',
      'pooled': pooled,
      'per_subject': per_subject,
      'confusion_matrix': total.tolist(),
  }
