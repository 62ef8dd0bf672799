"""Trains paper 2's tissue segmenters: supervised, Standard-GAN and MRI-GAN.

One trainer, three models (`config.model.kind`, described as data by
`mrigan_kinds.KINDS`), all with Mondal et al.'s 3D UNet
(`mrigan.SegDiscriminator`) as the segmenter, so their Dice compare the
training signal and nothing else:

* 'supervised': the segmenter, trained on labelled patches with the
  class-weighted cross-entropy (``lambda_l * l_labelled``). In every kind
  l_labelled may add a soft Dice term (`loss.labelled_loss='dice_ce'`) and
  its class weights are by default the median-frequency weights of the
  labelled subjects (`resolve_class_weights`).
* 'fewshot_gan': Mondal's few-shot GAN ("Standard-GAN" in paper 2). The
  segmenter is the discriminator of a K+1-class GAN (the fake class is
  implicit, logit 0): ``lambda_l l_labelled + lambda_u l_unlabelled +
  lambda_f l_fake`` (Mondal's code: 1 / 0.5 / 0.5); a `NoiseGenerator`
  (z ~ U(-1, 1)) learns by feature matching (L1) at the discriminator's
  first 256-channel bottleneck layer.
* 'mrigan': paper 2. The generator (`MRIGANGenerator`) takes an MRI patch
  and a tissue-label patch and synthesises a patch with that tissue layout;
  D weights 1 / 1 / 2 (paper); G loss = feature matching (squared L2, the
  paper's; L1 optional) + ``boundary_weight`` * BCE of its boundary network
  against boundaries derived from the given labels.

The floors a run goes down through: the config's options, checked
(`mrigan_options`); the subjects and patches (`mrseg.data.tissue`); the
networks, state and step (`mrigan_step`, which explains the pairing of the
generator's inputs and why a step gives the same numbers under jit and pmap
on any number of devices); the run (`runner`); the evaluation
(`mrseg.eval.segmentation`).

**Validation and evaluation.** Every `eval_every_steps` the segmenter
predicts each validation subject by sliding windows of the patch size
(probabilities averaged with Gaussian weights; Mondal averaged integer
labels), pooled Dice per tissue is logged and the best checkpoint (mean
tissue Dice) is kept in `workdir/best`. `evaluate` restores it and writes,
for the test subjects: metrics.json (pooled Dice/IoU/precision/recall per
tissue; per-subject Dice and HD95 in mm, summarised), per_subject.csv,
predictions/<id>.nii.gz with the subject's affine, figures/segmentation.png
(T1 / truth / prediction slices) and, for the GANs,
figures/generated_patches.png (real patches next to generated ones).
"""
import functools
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrseg import metrics as metrics_lib
from mrseg import viz
from mrseg import workdir as workdir_lib
from mrseg.data import tissue
from mrseg.data import volumes
from mrseg.eval import segmentation
from mrseg.eval import shards
from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import mrigan_options as options
from mrseg.train import mrigan_step
from mrseg.train import parallel as parallel_lib
from mrseg.train import runner as runner_lib
from mrseg.train.state import GANState
# mrseg.data.pipeline (TensorFlow) and mrseg.train.logs (clu) are imported
# where they are used: inference (make_predict_fn) then runs where
# TensorFlow is not installed, e.g. benchmarks/mrigan_step.py on a GPU.

# Folded into the run's key for draws that are not training steps.
_FIGURE = 10**9 + 4

# ----------------------------------------------------------------------------
# Inference.


def make_predict_fn(config: ml_collections.ConfigDict,
                    parallel: parallel_lib.Parallel):
  """`predict(params, windows [B, p, p, p, C]) -> logits`, sharded over B.

  The windows (numpy) are placed first: with several processes JAX places
  no numpy input by a sharding (`parallel` is then this process's alone,
  `Parallel.local`).
  """
  disc = mrigan_step.build_discriminator(config)
  apply = jax.jit(lambda params, x: disc.apply({'params': params}, x),
                  in_shardings=(parallel.replicated, parallel.data_sharding),
                  out_shardings=parallel.data_sharding)

  def predict(params, windows):
    return apply(params, jax.make_array_from_process_local_data(
        parallel.data_sharding, np.asarray(windows)))

  predict.lower = apply.lower  # benchmarks/mrigan_step.py counts its FLOPs
  return predict


# ----------------------------------------------------------------------------
# Training.


# Counts a run needs above zero, checked before anything is written.
POSITIVE_KEYS = ('num_train_steps', 'log_every_steps', 'eval_every_steps',
                 'checkpoint_every_steps', 'keep_checkpoints')


@workdir_lib.locked
def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`, keeps the best checkpoint, evaluates.

  Returns:
    The test metrics written to metrics.json, or the best validation record
    if `config.eval.after_training` is off.
  """
  from mrseg.data import pipeline  # pylint: disable=g-import-not-at-top
  run = runner_lib.Runner(
      config, workdir, positive=POSITIVE_KEYS,
      check=lambda parallel: options.check_config(config, parallel.num_devices))
  splits = tissue.load_splits(config)
  if not splits['validation']:
    raise ValueError('Validation picks the best checkpoint: set '
                     'data.num_validation >= 1.')
  weights = options.resolve_class_weights(config, splits['labelled'])
  if workdir_lib.is_main_process():
    workdir_lib.write_json(os.path.join(workdir, 'class_weights.json'),
                           weights)

  def batches(start_step: int):
    return pipeline.as_numpy(tissue.train_dataset(
        config, splits, start_step, unlabelled=options.is_gan(config)))

  result = run.train(runner_lib.Task(
      num_steps=config.num_train_steps,
      init=functools.partial(mrigan_step.create_state, config),
      abstract=functools.partial(mrigan_step.abstract_state, config),
      step=mrigan_step.make_train_step(config, weights['weights']),
      batches=batches,
      validation=runner_lib.Validation(
          _make_validate(config, run.parallel, splits['validation']),
          config.eval_every_steps, 'val_mean_dice',
          # No plateau is judged while the unsupervised terms ramp up.
          plateau_after=options.loss_option(
              config, 'unsupervised_warmup_steps')
          if options.is_gan(config) else 0),
      name=config.model.kind))
  if result.best['step'] is None:
    raise RuntimeError('No validation Dice was defined: no best checkpoint '
                       'to evaluate.')
  if workdir_lib.is_main_process():
    plot_curves(workdir)
  if config.eval.after_training:
    return evaluate(config, workdir, splits=splits)
  return result.best


def _make_validate(config: ml_collections.ConfigDict,
                   parallel: parallel_lib.Parallel,
                   subjects: list[dict[str, Any]]):
  """`validate(step, host_state) -> record`: pooled Dice per tissue (each
  process its share of the subjects, the confusion summed: `shards`)."""
  local = parallel.local()
  predict = make_predict_fn(config, local)
  names = segmentation.class_names(config.model.num_classes,
                                   volumes.TISSUE_CLASSES)
  mine = shards.share(subjects)

  def validate(step: int, host_state: GANState) -> dict[str, float]:
    params = jax.device_put(host_state.disc.params, local.replicated)
    predictions = segmentation.predict_volumes(config, predict, params, mine)
    cm = shards.gather_sum(
        segmentation.pooled_confusion(config, predictions, mine))
    pooled = metrics_lib.pooled_metrics(cm, names)
    record = {'val_mean_dice': pooled['mean_dice']}
    record.update({f'val_dice/{n}': pooled[f'dice/{n}'] for n in names[1:]})
    logging.info('step %d validation: %s', step,
                 ', '.join(f'{k}={v:.4f}' for k, v in record.items()))
    return record

  return validate


# Training losses and validation Dice against step.
CURVES = {
    'losses.png': {
        'keys': ('d_loss', 'g_loss', 'loss_labelled', 'loss_unlabelled',
                 'loss_fake', 'loss_transfer', 'feature_matching',
                 'paper_eq7_8', 'boundary_loss'),
        'title': 'Training losses'},
    'val_dice.png': {
        'keys': ('val_mean_dice', 'val_dice/csf', 'val_dice/gm',
                 'val_dice/wm', 'train_dice'),
        'title': 'Dice (validation: pooled per tissue)', 'ylabel': 'Dice'},
}


def plot_curves(workdir: str) -> None:
  """workdir/figures/`CURVES` from the history."""
  from mrseg.train import logs  # pylint: disable=g-import-not-at-top
  viz.plot_curves(logs.read_history(os.path.join(workdir, 'history.jsonl')),
                  os.path.join(workdir, 'figures'), CURVES)


# ----------------------------------------------------------------------------
# Evaluation.


def restore_best(config: ml_collections.ConfigDict,
                 workdir: str) -> tuple[GANState, int]:
  """The best checkpoint (by validation Dice) and its step.

  Raises:
    FileNotFoundError: if `workdir/best` holds no checkpoint.
  """
  return checkpoint_lib.restore_best(workdir,
                                     mrigan_step.abstract_state(config))


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             splits: dict[str, list[dict[str, Any]]] | None = None
             ) -> dict[str, Any]:
  """Evaluates the best checkpoint on the test subjects; writes the report.

  Into `workdir.report_dir`: another config than the run's (e.g.
  `--mode=eval --config.data.unlabelled_in_brain=ignore`) gets a folder of
  its own, and the run's report stays as it is.

  Args:
    config: the run's config.
    workdir: the trained run's folder.
    splits: `tissue.load_splits(config)`, if already loaded.

  With several processes each predicts its share of the subjects and
  process 0 writes (`shards`).

  Returns:
    The metrics written to metrics.json (`segmentation.volume_report`,
    and the class weights).

  Raises:
    FileNotFoundError: if there is no best checkpoint yet.
  """
  state, step = restore_best(config, workdir)
  parallel = parallel_lib.Parallel(config.parallel)
  options.check_config(config, parallel.num_devices)
  splits = splits or tissue.load_splits(config)
  test = splits['test']
  if not test:
    raise ValueError('No test subjects: set data.num_test >= 1.')
  # Each process predicts its share of the subjects on its own devices.
  local = parallel.local()
  params = jax.device_put(state.disc.params, local.replicated)
  predictions = shards.gather_cases(
      segmentation.predict_volumes(config, make_predict_fn(config, local),
                                   params, shards.share(test)),
      [np.shape(s['label']) for s in test], np.uint8)
  out_dir = workdir_lib.report_dir(config, workdir)
  path = os.path.join(out_dir, 'metrics.json')

  def write() -> dict[str, Any]:
    result = segmentation.volume_report(config, workdir, step, test,
                                        predictions, out_dir)
    result['class_weights'] = options.resolve_class_weights(
        config, splits['labelled'])
    if options.is_gan(config):
      plot_generated(config, state, splits,
                     os.path.join(out_dir, 'figures', 'generated_patches.png'))
    if out_dir == workdir and os.path.exists(
        os.path.join(workdir, 'history.jsonl')):
      plot_curves(workdir)
    # Last: the marker that sweeps read as "done".
    workdir_lib.write_json(path, result)
    return result

  return shards.written_by_main(write, path)


def plot_generated(config: ml_collections.ConfigDict, state: GANState,
                   splits: dict[str, list[dict[str, Any]]], path: str) -> None:
  """Middle slices of real unlabelled patches, (tissue maps,) generated ones.

  Generated with batch statistics of the figure's own batch (training-mode
  batch norm, as the discriminator saw the fakes).
  """
  from mrseg.data import pipeline  # pylint: disable=g-import-not-at-top
  n = config.eval.num_figure_patches
  figure_config = ml_collections.ConfigDict(config.to_dict())
  figure_config.batch_size = n
  figure_config.unlabelled_batch_size = n
  ds = tissue.train_dataset(figure_config, splits, start_step=0,
                            unlabelled=True, global_batch=True)
  batch = next(iter(pipeline.as_numpy(ds)))
  real = batch['unlabelled']['image']
  labels = batch['labelled']['label']
  generator = mrigan_step.build_generator(config)
  keys = jax.random.split(
      jax.random.fold_in(runner_lib.base_key(config), _FIGURE), n)
  inputs = mrigan_step.generator_inputs(config, jnp.asarray(labels),
                                        jnp.asarray(real), keys)
  fake, _, _ = jax.jit(functools.partial(mrigan_step.apply_generator,
                                         generator))(state.gen.variables,
                                                     inputs)
  fake = np.asarray(fake)
  middle = config.data.patch_size // 2
  unit = lambda x: (np.clip(x, -1.0, 1.0) + 1.0) / 2.0
  rows = [unit(real[:, :, :, middle, :1])]
  if 'tissues' in inputs:
    tissues = np.asarray(inputs['tissues'])[:, :, :, middle]
    shown = np.where(tissues > config.model.num_classes - 1, 0, tissues)
    rows.append((shown / max(config.model.num_classes - 1, 1))[..., None])
  rows.append(unit(fake[:, :, :, middle, :1]))
  grid = viz.image_grid(np.concatenate(rows).astype(np.float32), columns=n)
  viz.save_png(grid, path)
  logging.info('Wrote %s (rows: real%s, generated).', path,
               ', tissue maps' if 'tissues' in inputs else '')
