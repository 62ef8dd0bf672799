"""Exact batched evaluation of a 2D model over a whole split.

A split is cut into fixed-size batches (`eval_batches`: the last one is
padded with zeros and a 'valid' flag says which examples are real, so one
compilation serves every batch); a model's eval step, compiled for the run's
parallel mode (`compile_eval`), returns per-batch sums (an int32 confusion
matrix, a loss sum, a count) that `run_eval` adds up exactly in int64 on the
host, so the result does not depend on the batch size or the number of
devices (nor of processes: `eval_sums` of each process's share, summed by
`shards.gather_sum`). `predict_images` gives class probabilities of whole
images, tiling images larger than the training size with sliding windows.

No TensorFlow: inference runs where it is not installed.
"""
import functools
from typing import Any

import jax
import numpy as np

from mrseg.eval import sliding_window
from mrseg.train import parallel as parallel_lib


def compile_eval(parallel: parallel_lib.Parallel, eval_step):
  """Compiles `eval_step` for the mode: `(state, batch) -> (sums, logits)`.

  The state must be placed by `parallel.replicate`; the sums come back once,
  the logits with the batch axis of the input.
  """
  if parallel.mode == 'jit':
    return jax.jit(functools.partial(eval_step, axis_name=None),
                   in_shardings=(parallel.replicated, parallel.data_sharding),
                   out_shardings=(parallel.replicated, parallel.data_sharding))
  pmapped = jax.pmap(
      functools.partial(eval_step, axis_name=parallel_lib.DATA_AXIS),
      axis_name=parallel_lib.DATA_AXIS, devices=parallel.devices)

  def run(state, batch):
    sums, logits = pmapped(state, batch)
    return (jax.tree.map(lambda x: x[0], sums),
            logits.reshape((-1,) + logits.shape[2:]))
  return run


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int):
  """Fixed-size batches of a split with a 'valid' flag; the last is padded."""
  num = len(arrays['image'])
  for start in range(0, num, batch_size):
    batch = {k: arrays[k][start:start + batch_size]
             for k in ('image', 'mask')}
    real = len(batch['image'])
    pad = batch_size - real
    if pad:
      # Zeros (not repeats): padded examples are masked out of every sum.
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    batch['valid'] = np.arange(batch_size) < real
    yield batch


def eval_sums(eval_fn, placed_state: Any, arrays: dict[str, np.ndarray],
              batch_size: int, parallel: parallel_lib.Parallel,
              keep_logits: bool = False
              ) -> tuple[dict[str, Any], np.ndarray | None]:
  """Runs a compiled eval step over a whole split; sums exactly in int64.

  Returns:
    ({'confusion': int64 [K, K] (None for no example), 'loss_sum': float,
      'count': int}, logits [N, H, W, K] float32 if keep_logits else None).
  """
  total, loss_sum, count, kept = None, 0.0, 0, []
  for batch in eval_batches(arrays, batch_size):
    real = int(batch['valid'].sum())
    sums, logits = eval_fn(placed_state, parallel.shard_batch(batch))
    sums = jax.device_get(sums)
    cm = np.asarray(sums['confusion'], np.int64)
    total = cm if total is None else total + cm
    loss_sum += float(sums['loss_sum'])
    count += int(sums['count'])
    if keep_logits:
      kept.append(np.asarray(logits, np.float32)[:real])
  out = {'confusion': total, 'loss_sum': loss_sum, 'count': count}
  return out, (np.concatenate(kept) if keep_logits else None)


def mean_loss(sums: dict[str, Any]) -> dict[str, Any]:
  """`eval_sums`' sums with the mean per-example 'loss' for 'loss_sum'."""
  return {'confusion': sums['confusion'],
          'loss': sums['loss_sum'] / max(sums['count'], 1),
          'count': sums['count']}


def run_eval(eval_fn, placed_state: Any, arrays: dict[str, np.ndarray],
             batch_size: int, parallel: parallel_lib.Parallel,
             keep_logits: bool = False
             ) -> tuple[dict[str, Any], np.ndarray | None]:
  """`eval_sums` with the loss averaged (`mean_loss`).

  Returns:
    ({'confusion': int64 [K, K], 'loss': mean per-example loss, 'count'},
     logits [N, H, W, K] float32 if keep_logits else None).
  """
  sums, logits = eval_sums(eval_fn, placed_state, arrays, batch_size,
                           parallel, keep_logits)
  return mean_loss(sums), logits


def predict_images(eval_fn, placed_state: Any, images: np.ndarray, *,
                   size: int, batch_size: int, window_batch_size: int,
                   overlap: float, weighting: str,
                   parallel: parallel_lib.Parallel) -> np.ndarray:
  """Class probabilities [N, H, W, K] of whole images.

  Images of the training `size` go through the model in batches of
  `batch_size`; larger ones are tiled with overlapping windows of that size
  whose probabilities are averaged with the `weighting`'s weights.

  Args:
    eval_fn: from `compile_eval`.
    placed_state: the state as `parallel.replicate` placed it.
    images: [N, H, W, C].
    size: the training size.
    batch_size: images per call at the training size.
    window_batch_size: windows per call for larger images.
    overlap: of neighbouring windows, a fraction of the window.
    weighting: 'gaussian' or 'constant'.
    parallel: the run's devices.
  """
  h, w = images.shape[1:3]

  def logits_of(x: np.ndarray, batch: int) -> np.ndarray:
    arrays = {'image': x, 'mask': np.zeros(x.shape[:3] + (1,), np.uint8)}
    _, logits = run_eval(eval_fn, placed_state, arrays, batch, parallel,
                         keep_logits=True)
    return logits

  if (h, w) == (size, size):
    return np.asarray(jax.nn.softmax(logits_of(images, batch_size), axis=-1))
  return sliding_window.sliding_window_inference(
      lambda windows: logits_of(windows, window_batch_size), images,
      window=(size, size), overlap=overlap, weighting=weighting,
      batch_size=window_batch_size)
