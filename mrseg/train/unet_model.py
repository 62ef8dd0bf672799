"""The UNet segmenter's network, loss and learning-rate schedule.

Built from a `configs/unet.py` config: `build_model` (paper 1's UNet,
`mrseg.models.unet`, batch-norm statistics pooled over `bn_axis_name`),
`make_loss_fn` (pixel-wise CE, optionally class-weighted, plus soft Dice
for 'dice_ce') and `make_schedule` (the optimizer's learning rate).
`unet_trainer` builds its state, steps and evaluation from them.
"""
from typing import Any

import ml_collections
import optax

from mrseg import losses
from mrseg.models import unet
from mrseg.models.layers import compute_dtype

LOSSES = ('ce', 'dice_ce')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')


def build_model(config: ml_collections.ConfigDict,
                bn_axis_name: Any = None) -> unet.UNet:
  """The UNet of `config.model`; `bn_axis_name` pools batch-norm statistics."""
  m = config.model
  return unet.UNet(
      num_classes=m.num_classes, depth=m.depth,
      base_features=m.base_features, spatial_dims=2, norm=m.norm,
      bn_momentum=m.bn_momentum, bn_axis_name=bn_axis_name,
      dropout_rate=m.dropout_rate, upsample=m.upsample,
      weight_init=m.weight_init, conv=m.conv, dtype=compute_dtype(m.dtype),
      input_norm=m.get('input_norm', 'none'))


def make_loss_fn(config: ml_collections.ConfigDict):
  """Returns `loss(logits [B, H, W, K], labels [B, H, W]) -> scalar`.

  Raises:
    ValueError: for an unknown loss name or class weights of the wrong length.
  """
  c = config.loss
  if c.name not in LOSSES:
    raise ValueError(f'Unsupported loss.name {c.name!r}; choose one of '
                     f'{LOSSES}.')
  weights = tuple(c.class_weights) or None
  if weights is not None and len(weights) != config.model.num_classes:
    raise ValueError(
        f'loss.class_weights {weights} needs one weight per class '
        f'(model.num_classes={config.model.num_classes}).')

  def loss_fn(logits, labels):
    loss = losses.softmax_cross_entropy(
        logits, labels, class_weights=weights, ignore_label=c.ignore_label,
        normalize=c.ce_normalize)
    if c.name == 'dice_ce':
      loss += c.dice_weight * losses.soft_dice_loss(
          logits, labels, ignore_label=c.ignore_label,
          include_background=c.dice_include_background)
    return loss

  return loss_fn


def make_schedule(config: ml_collections.ConfigDict,
                  num_steps: int) -> optax.Schedule:
  o = config.optim
  if o.schedule == 'constant':
    return optax.constant_schedule(o.learning_rate)
  if o.schedule == 'cosine':
    return optax.cosine_decay_schedule(o.learning_rate, max(num_steps, 1))
  if o.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, o.warmup_steps,
        max(num_steps, o.warmup_steps + 1))
  raise ValueError(f'Unsupported optim.schedule {o.schedule!r}; choose one '
                   f'of {SCHEDULES}.')
