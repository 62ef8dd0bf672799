"""Trains paper 1's UNet segmenter, keeps the best checkpoint, evaluates it.

`train_and_evaluate` trains on the configured training split, validates every
`eval_every_steps` steps on the whole validation split, keeps the checkpoint
with the best validation Dice in `workdir/best/`, and finally (unless
`config.eval.after_training` is off) runs `evaluate`: the best checkpoint on
the test split, with sliding windows when the test images are larger than
the training size, writing metrics.json, per_case.csv, predictions.npz and
the figures.

Exactness, as reviewers measure:

* Validation and test Dice/IoU/accuracy are POOLED from one confusion matrix
  summed exactly (integer counts, int64 on the host) over every pixel of the
  split; the last, partial batch is padded and its padding masked out, so
  the result does not depend on the batch size or the number of devices.
  Per-case Dice, IoU and HD95 are reported separately (mean, std, median,
  with NaN/inf counts), plus paper 1's Table III counts.
* The step is written once for jit and pmap. Dropout masks are drawn per
  example from keys that depend on (seed, step, example index) only; batch
  norm pools its statistics over the global batch (a vmap axis over
  examples, plus the pmap axis); under pmap the loss is computed on the
  all-gathered logits, so losses with batch-level normalisers (weighted CE,
  batch Dice) are those of the global batch. So one step gives the same
  numbers under jit or pmap, on one device or several, and after a resume.
"""
import functools
import json
import math
import os
from typing import Any

from absl import logging
import flax.struct
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mrseg import metrics as metrics_lib
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import slices
from mrseg.eval import batched
from mrseg.eval import segmentation
from mrseg.eval import shards
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import parallel as parallel_lib
from mrseg.train import runner as runner_lib
from mrseg.train import state as state_lib
from mrseg.train import unet_model
from mrseg.train.state import NetState
# mrseg.data.datasets and .pipeline (TensorFlow) and mrseg.train.logs (clu)
# are imported where they are used, so that the model, the train step and
# inference run where TensorFlow is not installed (benchmarks on a GPU host).

# Folded into the run's key for draws that are not training steps.
_INIT = 10**9 + 3

# The vmap axis over the examples of a (device) batch; batch norm averages
# its statistics over it (and over the pmap axis).
_EXAMPLES = 'examples'


class SegState(flax.struct.PyTreeNode):
  """The segmenter and the step count, in one checkpointable tree."""

  step: jax.Array
  net: NetState

  @classmethod
  def create(cls, net: NetState) -> 'SegState':
    return cls(step=jnp.zeros((), jnp.int32), net=net)


# ----------------------------------------------------------------------------
# Run length and state (the model, loss and schedule: unet_model.py).


def num_train_examples(config: ml_collections.ConfigDict) -> int:
  """Size of the training split, from its id selection (no data read)."""
  # mrseg.data.ids, not builders: no TensorFlow for a train step's config.
  from mrseg.data import ids  # pylint: disable=g-import-not-at-top
  return len(ids.select_ids(config.data.train_ids))


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  if config.steps_per_epoch > 0:
    return config.steps_per_epoch
  return math.ceil(num_train_examples(config) / config.batch_size)


def num_train_steps(config: ml_collections.ConfigDict) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch(config)


def _make_init(config: ml_collections.ConfigDict):
  """`init(key) -> SegState` (not jitted) for `config`."""
  model = unet_model.build_model(config)
  s, c = config.data.image_size, config.data.channels
  o = config.optim
  tx = optax.adam(unet_model.make_schedule(config, num_train_steps(config)),
                  b1=o.b1, b2=o.b2, eps=o.eps)

  def init(key):
    variables = model.init(jax.random.fold_in(key, _INIT),
                           jnp.zeros((1, s, s, c)))
    return SegState.create(NetState.create(variables, tx))

  return init


# Compiled initialisers by what they depend on: evaluation, tests and sweeps
# in one process compile each network's initialiser once.
_INIT_CACHE: dict[str, Any] = {}


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> SegState:
  """A fresh state initialised from `key` (the schedule spans the run)."""
  cache_key = json.dumps(
      [config.model.to_dict(), config.data.image_size, config.data.channels,
       config.optim.to_dict(), num_train_steps(config), str(key.dtype)],
      sort_keys=True, default=str)
  init = _INIT_CACHE.get(cache_key)
  if init is None:
    init = state_lib.compile_init(_make_init(config), key)
    _INIT_CACHE[cache_key] = init
  return init(key)


def abstract_state(config: ml_collections.ConfigDict) -> SegState:
  """The state's structure, shapes and dtypes (on one device), to restore into.

  Restoring into it skips initialising (and compiling the initialiser of) a
  network whose values the checkpoint replaces anyway.
  """
  shapes = jax.eval_shape(_make_init(config), runner_lib.base_key(config))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)


# ----------------------------------------------------------------------------
# Steps.


def _labels(batch: dict[str, jax.Array]) -> jax.Array:
  return batch['mask'][..., 0].astype(jnp.int32)


def make_train_step(config: ml_collections.ConfigDict):
  """Returns `step(state, batch, key, *, axis_name=None) -> (state, metrics)`.

  `batch` holds 'image' float32 [B, H, W, C] in [0, 1] and 'mask' uint8
  [B, H, W, 1]; metrics are the loss, pixel accuracy and foreground Dice of
  the (global) batch.
  """
  loss_fn = unet_model.make_loss_fn(config)
  num_classes = config.model.num_classes
  ignore_label = config.loss.ignore_label
  use_bn = config.model.norm == 'batch'
  augment = slices.make_device_augment(config)

  def step(state: SegState, batch: dict[str, jax.Array], key: jax.Array, *,
           axis_name: str | None = None):
    if augment is not None:
      batch = augment(batch, _global_indices(state.step, batch, axis_name))
    images, labels = batch['image'], _labels(batch)
    n = images.shape[0]
    key = jax.random.fold_in(key, state.step)
    drop_keys = parallel_lib.example_keys(key, n, axis_name)
    bn_axes = _EXAMPLES if axis_name is None else (_EXAMPLES, axis_name)
    model = unet_model.build_model(config,
                                   bn_axis_name=bn_axes if use_bn else None)

    def forward(params):
      # One example per call, so that dropout is keyed per example; batch
      # norm still sees the whole batch through the vmap axis.
      def one(x, k):
        variables = {'params': params}
        if use_bn:
          variables['batch_stats'] = state.net.batch_stats
          logits, updates = model.apply(variables, x[None], train=True,
                                        rngs={'dropout': k},
                                        mutable=['batch_stats'])
          return logits[0], updates['batch_stats']
        return model.apply(variables, x[None], train=True,
                           rngs={'dropout': k})[0], {}
      logits, stats = jax.vmap(one, axis_name=_EXAMPLES)(images, drop_keys)
      # Identical across examples after the pooled statistics.
      return logits, jax.tree.map(lambda s: s[0], stats)

    def loss_of(params):
      logits, stats = forward(params)
      all_logits, all_labels = logits, labels
      if axis_name is not None:
        # The loss of the global batch. Every device computes it; the
        # gradient that reaches each device's logits is then num_devices
        # times the true one, which the pmean of gradients undoes exactly.
        all_logits = lax.all_gather(logits, axis_name, tiled=True)
        all_labels = lax.all_gather(labels, axis_name, tiled=True)
      return loss_fn(all_logits, all_labels), (logits, stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.net.params)
    grads = parallel_lib.mean_over_devices(grads, axis_name)
    net = state.net.apply_gradients(
        grads, batch_stats=stats if use_bn else state.net.batch_stats)

    cm = metrics_lib.confusion_matrix(jnp.argmax(logits, -1), labels,
                                      num_classes, ignore_label=ignore_label)
    if axis_name is not None:
      cm = lax.psum(cm, axis_name)
    metrics = {
        'loss': loss,
        'accuracy': jnp.trace(cm) / jnp.maximum(jnp.sum(cm), 1),
        'dice': metrics_lib.foreground_dice(cm),
    }
    return state.replace(step=state.step + 1, net=net), metrics

  return step


def make_eval_step(config: ml_collections.ConfigDict):
  """Returns `eval_step(state, batch, *, axis_name=None) -> (sums, logits)`.

  `batch` adds 'valid' bool [B] to the training batch: padded examples of a
  last partial batch are False and count nowhere. `sums` holds the exact
  'confusion' matrix (int32 per batch), 'loss_sum' (per-example losses
  summed) and 'count' (valid examples), summed over devices; `logits` keeps
  the batch axis.
  """
  loss_fn = unet_model.make_loss_fn(config)
  num_classes = config.model.num_classes
  ignore_label = config.loss.ignore_label
  model = unet_model.build_model(config)

  def eval_step(state: SegState, batch: dict[str, jax.Array], *,
                axis_name: str | None = None):
    images, labels, valid = batch['image'], _labels(batch), batch['valid']
    logits = model.apply(state.net.variables, images, train=False)
    cm = metrics_lib.confusion_matrix(
        jnp.argmax(logits, -1), labels, num_classes,
        mask=valid[:, None, None], ignore_label=ignore_label)
    # Per example, so the validation loss is a mean over cases that does not
    # depend on how the split is batched.
    per_example = jax.vmap(lambda l, y: loss_fn(l[None], y[None]))(logits,
                                                                     labels)
    sums = {
        'confusion': cm,
        'loss_sum': jnp.sum(jnp.where(valid, per_example, 0.0)),
        'count': jnp.sum(valid.astype(jnp.int32)),
    }
    if axis_name is not None:
      sums = lax.psum(sums, axis_name)
    return sums, logits

  return eval_step


def _global_indices(step: jax.Array, batch: dict[str, jax.Array],
                    axis_name: str | None) -> jax.Array:
  """Global example indices of the batch at `step`, as tf.data numbers them.

  pipeline.train_dataset gives step s the examples s*B ... s*B + B - 1 of
  its stream (B the global batch), each process (and, under pmap, each
  device) a contiguous slice in order.
  """
  n = batch['image'].shape[0]
  if axis_name is None:
    start, total = 0, n
  else:
    start, total = lax.axis_index(axis_name) * n, n * lax.axis_size(axis_name)
  return (step * total + start + jnp.arange(n)).astype(jnp.int32)


# ----------------------------------------------------------------------------
# Training.


def _check_batch(parallel: parallel_lib.Parallel, name: str, size: int) -> None:
  if size % parallel.num_devices:
    raise ValueError(f'config.{name}={size} must be divisible by the number '
                     f'of devices ({parallel.num_devices}).')


# Counts a run needs above zero, checked before anything is written.
POSITIVE_KEYS = ('batch_size', 'eval_batch_size', 'log_every_steps',
                 'checkpoint_every_steps', 'keep_checkpoints',
                 'eval.window_batch_size')


@workdir_lib.locked
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`, keeps the best checkpoint, evaluates it.

  Returns:
    The test metrics written to metrics.json, or the best validation record
    if `config.eval.after_training` is off.
  """
  from mrseg.data import pipeline  # pylint: disable=g-import-not-at-top
  total = num_train_steps(config)
  if total <= 0:
    raise ValueError(
        f'The run would train {total} steps (num_train_steps='
        f'{config.num_train_steps}, num_epochs={config.num_epochs}, '
        f'steps_per_epoch={config.steps_per_epoch}): give it at least one.')
  slices.check_splits(config)

  def check(parallel: parallel_lib.Parallel) -> None:
    parallel.check_batch_size(config.batch_size)
    _check_batch(parallel, 'eval_batch_size', config.eval_batch_size)

  run = runner_lib.Runner(config, workdir, positive=POSITIVE_KEYS,
                          check=check)
  train = slices.load_split(config, 'train')
  val = slices.load_split(config, 'val')
  if config.eval.after_training and config.data.name != 'phantom2d':
    # The test ids must exist in the download before training starts (the
    # phantom has every id).
    slices.load_split(config, 'test', config.eval.image_size or None)

  def batches(start_step: int):
    return pipeline.as_numpy(pipeline.train_dataset(
        {'image': train['image'], 'mask': train['mask']}, config.batch_size,
        config.seed, start_step=start_step,
        preprocess=slices.make_preprocess(config)))

  result = run.train(runner_lib.Task(
      num_steps=total, init=functools.partial(create_state, config),
      abstract=functools.partial(abstract_state, config),
      step=make_train_step(config), batches=batches,
      validation=runner_lib.Validation(
          _make_validate(config, run.parallel, val),
          config.eval_every_steps or steps_per_epoch(config), 'val_dice'),
      name='the UNet'))
  if result.best['step'] is None:
    raise RuntimeError(
        'No validation Dice was defined (no foreground in data.val_ids='
        f'{config.data.val_ids} nor predicted): no best checkpoint to '
        'evaluate.')
  if workdir_lib.is_main_process():
    plot_curves(workdir)
  if config.eval.after_training:
    return evaluate(config, workdir)
  return result.best


def _make_validate(config: ml_collections.ConfigDict,
                   parallel: parallel_lib.Parallel,
                   val: dict[str, np.ndarray]):
  """`validate(step, host_state) -> record` on the whole validation split
  (each process its share of the cases, summed exactly: `shards`)."""
  local = parallel.local()
  eval_fn = batched.compile_eval(local, make_eval_step(config))
  mine = {k: shards.share(v) for k, v in val.items()}
  batch_size = shards.per_process(config.eval_batch_size, 'eval_batch_size')
  k = config.model.num_classes

  def validate(step: int, host_state: SegState) -> dict[str, float]:
    sums, _ = batched.eval_sums(eval_fn, local.replicate(host_state), mine,
                                batch_size, local)
    if sums['confusion'] is None:  # no case on this process
      sums['confusion'] = np.zeros((k, k), np.int64)
    result = batched.mean_loss(shards.gather_sum(sums))
    pooled = metrics_lib.pooled_metrics(
        result['confusion'], segmentation.class_names(config.model.num_classes))
    record = {'val_loss': result['loss'], 'val_accuracy': pooled['accuracy'],
              'val_dice': pooled['mean_dice'], 'val_iou': pooled['mean_iou']}
    logging.info('step %d validation (%d cases): %s', step, result['count'],
                 ', '.join(f'{k}={v:.4g}' for k, v in record.items()))
    return record

  return validate


# Paper 1's Fig. 13 (loss) and Fig. 14 (accuracy): training, validation.
CURVES = {
    'loss.png': {'keys': ('loss', 'val_loss'), 'title': 'UNet loss'},
    'accuracy.png': {'keys': ('accuracy', 'val_accuracy'),
                     'title': 'UNet pixel accuracy', 'ylabel': 'accuracy'},
}


def plot_curves(workdir: str) -> None:
  """workdir/figures/`CURVES` from the history."""
  from mrseg.train import logs  # pylint: disable=g-import-not-at-top
  viz.plot_curves(logs.read_history(os.path.join(workdir, 'history.jsonl')),
                  os.path.join(workdir, 'figures'), CURVES)


# ----------------------------------------------------------------------------
# Evaluation.


def restore_best(config: ml_collections.ConfigDict, workdir: str
                 ) -> tuple[SegState, int]:
  """The best checkpoint (by validation Dice) and its step.

  Raises:
    FileNotFoundError: if `workdir/best` holds no checkpoint.
  """
  return checkpoint_lib.restore_best(workdir, abstract_state(config))


def predict_probabilities(config: ml_collections.ConfigDict, state: SegState,
                          images: np.ndarray,
                          parallel: parallel_lib.Parallel,
                          eval_fn=None) -> np.ndarray:
  """Class probabilities [N, H, W, K] of whole images (`batched`).

  Images larger than the training size are tiled with sliding windows.
  `eval_fn`, from `batched.compile_eval`, lets repeated calls share one
  compilation.
  """
  if not len(images):  # a process whose share of the split is empty
    return np.zeros(images.shape[:3] + (config.model.num_classes,),
                    np.float32)
  eval_fn = eval_fn or batched.compile_eval(parallel, make_eval_step(config))
  window_batch_size = shards.per_process(config.eval.window_batch_size,
                                         'eval.window_batch_size')
  if images.shape[1:3] != (config.data.image_size,) * 2:
    _check_batch(parallel, 'eval.window_batch_size', window_batch_size)
  return batched.predict_images(
      eval_fn, parallel.replicate(state), images,
      size=config.data.image_size,
      batch_size=shards.per_process(config.eval_batch_size,
                                    'eval_batch_size'),
      window_batch_size=window_batch_size,
      overlap=config.eval.overlap, weighting=config.eval.weighting,
      parallel=parallel)


def evaluate(config: ml_collections.ConfigDict, workdir: str
             ) -> dict[str, Any]:
  """Evaluates the best checkpoint on the test split; writes the report.

  Writes metrics.json (pooled and per-case summaries, Table III counts),
  per_case.csv, predictions.npz, figures/overlays.png (best, median and
  worst cases by Dice) and, from the history, figures/loss.png and
  figures/accuracy.png (`segmentation.slice_report`), into
  `workdir.report_dir`: another config than the run's (e.g. another test
  split) gets a folder of its own. With several
  processes each predicts its share of the images and process 0 writes
  (`shards`).

  Returns:
    The metrics written to metrics.json.

  Raises:
    FileNotFoundError: if there is no best checkpoint yet.
  """
  state, step = restore_best(config, workdir)
  parallel = parallel_lib.Parallel(config.parallel)
  _check_batch(parallel, 'eval_batch_size', config.eval_batch_size)
  size = config.eval.image_size or config.data.image_size
  test = slices.load_split(config, 'test', size)
  # Each process predicts its share of the images on its own devices.
  probs = predict_probabilities(config, state, shards.share(test['image']),
                                parallel.local())
  pred = np.stack(shards.gather_cases(probs.argmax(-1).astype(np.uint8),
                                      [x.shape[:2] for x in test['image']],
                                      np.uint8))
  out_dir = workdir_lib.report_dir(config, workdir)
  path = os.path.join(out_dir, 'metrics.json')

  def write() -> dict[str, Any]:
    result = segmentation.slice_report(config, workdir, step, test, pred,
                                       size, out_dir)
    if out_dir == workdir:
      plot_curves(workdir)
    # Last: the marker that the pipeline and sweeps read as "done".
    workdir_lib.write_json(path, result)
    return result

  return shards.written_by_main(write, path)
