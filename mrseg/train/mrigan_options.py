"""What a tissue segmenter's config asks for, checked: kind, losses, weights.

`mrigan_trainer` trains three kinds (`config.model.kind`): 'supervised',
'fewshot_gan' (Mondal et al.'s few-shot GAN, "Standard-GAN" in paper 2) and
'mrigan' (paper 2), each described by a `mrigan_kinds.KindSpec`.
`check_config` fails early, naming the key to change,
on settings they cannot run; the labelled loss's class weights are by
default the median-frequency weights of the labelled subjects
(`resolve_class_weights`).

Options of the GANs' losses, all off by default (`configs/tissue_base.py`):
`loss.generator_objective='paper_eq7_8'` (paper 2's eq. (7)-(8) read
literally, `losses.paper_eq7_8_loss`, instead of feature matching);
`loss.unsupervised_warmup_steps` (lambda_u and lambda_f ramped up by
`losses.sigmoid_rampup`); and, for 'mrigan', `loss.transfer_weight`: the
generated patches with the tissue maps that conditioned them, (G(x_u, y),
y), join D's labelled term from `loss.transfer_start_step` on.
"""
from typing import Any

from absl import logging
import ml_collections

from mrseg import losses
from mrseg import saved_configs
from mrseg.data import tissue
from mrseg.data import volumes
from mrseg.eval import segmentation
from mrseg.train import mrigan_kinds

# Named values of config.loss.class_weights (else K numbers; () = none).
CLASS_WEIGHTS = ('frequency', 'mondal')
LABELLED_LOSSES = ('ce', 'dice_ce')
GENERATOR_OBJECTIVES = ('feature_matching', 'paper_eq7_8')


def is_gan(config: ml_collections.ConfigDict) -> bool:
  """Whether config.model.kind trains a generator against the segmenter."""
  return mrigan_kinds.spec(config).adversarial


def check_config(config: ml_collections.ConfigDict,
                 num_devices: int = 1) -> None:
  """Fails early, with the key to change, on an inconsistent config."""
  kind = mrigan_kinds.spec(config)
  class_weight_spec(config)
  _check_loss_options(config)
  if labelled_loss(config) not in LABELLED_LOSSES:
    raise ValueError(f'Unsupported loss.labelled_loss '
                     f'{labelled_loss(config)!r}; choose one of '
                     f'{LABELLED_LOSSES}.')
  patch = config.data.patch_size
  factor = 2**(len(config.model.discriminator.features) - 1)
  if patch % factor:
    raise ValueError(f'data.patch_size={patch} must be divisible by {factor} '
                     '(2**(levels - 1) of model.discriminator.features).')
  window = config.eval.window_size
  if window and window % factor:
    raise ValueError(f'eval.window_size={window} must be divisible by '
                     f'{factor}, like data.patch_size.')
  sizes = {'batch_size': config.batch_size,
           'eval.window_batch_size': config.eval.window_batch_size}
  if kind.adversarial:
    sizes['unlabelled_batch_size'] = config.unlabelled_batch_size
  for name, size in sizes.items():
    if size <= 0 or size % num_devices:
      raise ValueError(f'config.{name}={size} must be positive and divisible '
                       f'by the number of devices ({num_devices}).')
  if kind.conditioned and (config.unlabelled_batch_size %
                           config.batch_size):
    raise ValueError(
        f'config.unlabelled_batch_size={config.unlabelled_batch_size} must be '
        f'a multiple of config.batch_size={config.batch_size}: each labelled '
        "patch's tissue map conditions the same number of generated patches.")
  if kind.generator == 'noise':
    noise_base_size(config)
  unlabelled = saved_configs.get(config, 'data.unlabelled_in_brain')
  if unlabelled not in tissue.UNLABELLED_IN_BRAIN:
    raise ValueError(f'Unsupported data.unlabelled_in_brain {unlabelled!r}; '
                     f'choose one of {tissue.UNLABELLED_IN_BRAIN}.')
  if config.data.brain_mask not in tissue.BRAIN_MASKS:
    raise ValueError(f'Unsupported data.brain_mask '
                     f'{config.data.brain_mask!r}; choose one of '
                     f'{tissue.BRAIN_MASKS}.')


def loss_option(config: ml_collections.ConfigDict, name: str) -> Any:
  """config.loss.<name>; for runs saved before it existed, the value that
  reproduces them (mrseg.saved_configs)."""
  return saved_configs.get(config, f'loss.{name}')


def labelled_loss(config: ml_collections.ConfigDict) -> str:
  """config.loss.labelled_loss; 'ce' in runs saved before the key existed."""
  return loss_option(config, 'labelled_loss')


def _check_loss_options(config: ml_collections.ConfigDict) -> None:
  """Fails on an unknown generator objective or a bad warm-up / transfer."""
  objective = loss_option(config, 'generator_objective')
  if objective not in GENERATOR_OBJECTIVES:
    raise ValueError(f'Unsupported loss.generator_objective {objective!r}; '
                     f'choose one of {GENERATOR_OBJECTIVES}.')
  for name in ('unsupervised_warmup_steps', 'transfer_weight',
               'transfer_start_step'):
    if loss_option(config, name) < 0:
      raise ValueError(f'config.loss.{name} must be >= 0.')
  g = config.model.generator
  if loss_option(config, 'transfer_weight') > 0 and not (
      mrigan_kinds.spec(config).conditioned and g.use_tissue_encoder):
    raise ValueError(
        'loss.transfer_weight > 0 labels generated patches with the tissue '
        'maps that made them: it needs model.kind in '
        f"{mrigan_kinds.kinds_with('conditioned')} with "
        'model.generator.use_tissue_encoder=True.')


def class_weight_spec(config: ml_collections.ConfigDict
                      ) -> str | tuple[float, ...]:
  """config.loss.class_weights: a name of CLASS_WEIGHTS or K floats.

  K numbers may also come as a string, '1,10,1,1' (a sweep override, whose
  copied config holds the default's type, str).

  Raises:
    ValueError: for an unknown name or not one weight per class.
  """
  value = config.loss.class_weights
  if value in CLASS_WEIGHTS:
    return value
  if isinstance(value, str):
    value = [v for v in value.strip('() ').split(',') if v.strip()]
  k = config.model.num_classes
  try:
    weights = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    weights = None
  if weights is None or (weights and len(weights) != k):
    raise ValueError(
        f'loss.class_weights={config.loss.class_weights!r}: choose one of '
        f'{CLASS_WEIGHTS} or give one weight per class '
        f'(model.num_classes={k}); () for none.')
  return weights


def explicit_class_weights(config: ml_collections.ConfigDict
                           ) -> tuple[float, ...] | None:
  """The weights config.loss.class_weights gives without data (None: none).

  Raises:
    ValueError: for 'frequency', which needs the labelled subjects
      (`resolve_class_weights`).
  """
  spec = class_weight_spec(config)
  if spec == 'frequency':
    raise ValueError(
        "loss.class_weights='frequency' is computed from the labelled "
        'subjects: pass make_train_step(config, resolve_class_weights('
        "config, labelled)['weights']), as train_and_evaluate does, or "
        "set loss.class_weights to 'mondal' or K numbers.")
  if spec == 'mondal':
    return tuple(losses.MONDAL_CLASS_WEIGHTS)
  return spec or None


def resolve_class_weights(config: ml_collections.ConfigDict,
                          labelled: list[dict[str, Any]]) -> dict[str, Any]:
  """The labelled loss's class weights, with the label counts behind them.

  Args:
    config: the run's config.
    labelled: the labelled training subjects (anything with a 'label').

  Returns:
    {'scheme': 'frequency', 'mondal' or 'given', 'classes', 'counts' and
    'frequencies' (voxels per class; ignore_label not counted, background
    counted, as in the loss), 'weights' (K floats, or None: unweighted)}.
    'frequency' weights are `losses.median_frequency_weights(counts)`.
  """
  k = config.model.num_classes
  spec = class_weight_spec(config)
  counts = volumes.label_counts(labelled, k, config.loss.ignore_label)
  if spec == 'frequency':
    weights = tuple(losses.median_frequency_weights(counts).tolist())
  else:
    weights = explicit_class_weights(config)
  frequencies = counts / max(int(counts.sum()), 1)
  names = segmentation.class_names(k, volumes.TISSUE_CLASSES)
  scheme = spec if isinstance(spec, str) else 'given'
  logging.info('Labelled voxels per class: %s.', ', '.join(
      f'{n} {c} ({f:.2%})' for n, c, f in zip(names, counts, frequencies)))
  logging.info('Class weights (%s): %s.', scheme, weights and ', '.join(
      f'{n} {w:.3f}' for n, w in zip(names, weights)))
  return {'scheme': scheme, 'classes': names, 'counts': counts.tolist(),
          'frequencies': frequencies.tolist(),
          'weights': list(weights) if weights else None}


def noise_base_size(config: ml_collections.ConfigDict) -> int:
  """The NoiseGenerator's starting size, so that it makes whole patches."""
  ups = len(config.model.noise_generator.up_features) + 1
  patch = config.data.patch_size
  if patch % 2**ups:
    raise ValueError(
        f'The noise generator doubles its size {ups} times '
        f'(model.noise_generator.up_features + the output layer), so '
        f'data.patch_size={patch} must be divisible by {2**ups}.')
  return patch // 2**ups

