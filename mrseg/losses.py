"""Losses of both papers, written on logits for numerical stability.

GAN losses take discriminator logits l (D(x) = sigmoid(l)); with
log sigmoid(l) = -softplus(-l) and log(1 - sigmoid(l)) = -softplus(l) they
never take the log of a saturated probability.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

GAN_LOSSES = ('minimax', 'non_saturating', 'wgan_gp', 'hinge')


def _check_gan_loss(kind: str) -> None:
  if kind not in GAN_LOSSES:
    raise ValueError(f'Unsupported GAN loss {kind!r}; choose one of {GAN_LOSSES}.')


def discriminator_loss(kind: str, real_logits: jax.Array,
                       fake_logits: jax.Array) -> jax.Array:
  """The discriminator's (critic's) loss, without any gradient penalty.

  'minimax' and 'non_saturating' share -E[log D(x)] - E[log(1 - D(G(z)))],
  eq. (1) of paper 1; 'wgan_gp' is the critic's E[f(G(z))] - E[f(x)]
  (Gulrajani et al. 2017), to which the trainer adds `gradient_penalty`;
  'hinge' is E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (Lim & Ye 2017,
  SAGAN, SPADE).
  """
  _check_gan_loss(kind)
  if kind == 'wgan_gp':
    return jnp.mean(fake_logits) - jnp.mean(real_logits)
  if kind == 'hinge':
    return (jnp.mean(jax.nn.relu(1.0 - real_logits)) +
            jnp.mean(jax.nn.relu(1.0 + fake_logits)))
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(
      jax.nn.softplus(fake_logits))


def generator_loss(kind: str, fake_logits: jax.Array) -> jax.Array:
  """The generator's loss on D's logits (critic scores) for generated samples.

  Args:
    kind: 'minimax' minimises E[log(1 - D(G(z)))] as eq. (1) reads, whose
      gradient vanishes while D rejects the fakes confidently;
      'non_saturating' minimises -E[log D(G(z))] (Goodfellow et al. 2014,
      Sec. 3), what the paper's Keras code does by labelling fakes as real;
      'wgan_gp' and 'hinge' minimise -E[f(G(z))].
    fake_logits: D's logits for G(z).

  Returns:
    A scalar loss.
  """
  _check_gan_loss(kind)
  if kind == 'minimax':
    return -jnp.mean(jax.nn.softplus(fake_logits))
  if kind in ('wgan_gp', 'hinge'):
    return -jnp.mean(fake_logits)
  return jnp.mean(jax.nn.softplus(-fake_logits))


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array,
                     fake: jax.Array, mix: jax.Array,
                     target_norm: float = 1.0) -> jax.Array:
  """WGAN-GP's E[(||grad_x f(x_hat)||_2 - 1)^2] on real/fake interpolates.

  Args:
    critic: maps a batch [B, ...] to scores [B]; the examples must not
      interact (no batch norm), so that the gradient of the summed scores
      holds each example's own gradient.
    real: real batch [B, ...].
    fake: generated batch, same shape.
    mix: interpolation weights in [0, 1], shape [B]; x_hat = mix * real +
      (1 - mix) * fake.
    target_norm: the norm the penalty pulls gradients towards (1 in the paper).

  Returns:
    The mean squared deviation of the per-example gradient norms.
  """
  mix = mix.reshape((-1,) + (1,) * (real.ndim - 1))
  x_hat = mix * real + (1.0 - mix) * fake
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
  sq = jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1)
  # The epsilon keeps the gradient of the norm finite where it is 0.
  norms = jnp.sqrt(sq + 1e-12)
  return jnp.mean(jnp.square(norms - target_norm))


def r1_penalty(critic: Callable[[jax.Array], jax.Array],
               real: jax.Array) -> jax.Array:
  """Mescheder et al. 2018's R1: E[||grad_x D(x)||^2] on real data.

  `critic` maps a batch to logits (any shape per example, summed); examples
  must not interact. The trainer multiplies by gamma / 2.
  """
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(real)
  return jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), -1))


# Segmentation and semi-supervised (K+1-class) losses for paper 2 and the
# UNet. Logits are [..., K] per voxel, labels integer [...]; a voxel whose
# label equals `ignore_label`, or where `mask` is 0, does not count.

# Mondal et al.'s class weights for background, CSF, GM, WM.
MONDAL_CLASS_WEIGHTS = (0.33, 1.5, 0.83, 1.33)


def median_frequency_weights(counts) -> np.ndarray:
  """Median-frequency balancing (Eigen & Fergus 2015): w_c = median(f) / f_c.

  f_c = counts[c] / sum(counts) is class c's share of the counted voxels, so
  the class of median frequency weighs 1, rarer classes more and commoner
  ones less, and every present class contributes equally to a
  frequency-weighted sum (w_c f_c = median(f)). Eigen & Fergus divide by the
  voxels of the images where c occurs; counts pooled over all images give
  the same where every image holds every class. A class that never occurs
  is left out of the median and weighs 1 (no voxel of it reaches the loss).

  Args:
    counts: [K] voxels of each class.

  Returns:
    float64 [K] weights.

  Raises:
    ValueError: if no class occurs.
  """
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  if not present.any():
    raise ValueError('No labelled voxel to compute class frequencies from.')
  freq = counts / counts.sum()
  median = np.median(freq[present])
  return np.where(present, median / np.where(present, freq, 1.0), 1.0)

CE_NORMALIZATIONS = ('voxels', 'weights')


def _valid_voxels(labels: jax.Array, ignore_label: int | None,
                  mask: jax.Array | None) -> jax.Array:
  """float32 per-voxel weight: 0 for ignored or masked voxels, else mask."""
  valid = jnp.ones(labels.shape, jnp.float32)
  if ignore_label is not None:
    valid = jnp.where(labels == ignore_label, 0.0, valid)
  if mask is not None:
    valid = valid * jnp.asarray(mask, jnp.float32)
  return valid


def _logits_and_labels(logits, labels) -> tuple[jax.Array, jax.Array]:
  """float32 logits [..., K] and labels [...], or a ValueError."""
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape} must '
                     'match except for the class axis of logits.')
  return logits, labels


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          class_weights=None, ignore_label: int | None = 255,
                          mask: jax.Array | None = None,
                          normalize: str = 'voxels') -> jax.Array:
  """Class-weighted softmax cross-entropy averaged over voxels.

  With ce_i = logsumexp_k(l_ik) - l_{i,y_i}, w_i = class_weights[y_i] (1
  without weights) and m_i the voxel's validity (0 for ignore_label, else
  mask, else 1):

    normalize='voxels':  sum_i m_i w_i ce_i / sum_i m_i
      (Mondal et al.'s ``reduce_mean(weights * ce)``: weights rescale the
      classes but the mean is over voxels, so the loss scale moves with the
      class mix of the batch);
    normalize='weights': sum_i m_i w_i ce_i / sum_i m_i w_i
      (PyTorch's ``CrossEntropyLoss(weight=...)``: a weighted mean).

  Both are 0 when no voxel is valid.

  Args:
    logits: [..., K] float logits.
    labels: [...] integer labels in [0, K) or ignore_label; any other value
      makes the loss NaN (checked nowhere else inside jit, so a bad label map
      fails loudly instead of training on garbage).
    class_weights: K per-class weights (e.g. MONDAL_CLASS_WEIGHTS) or None.
    ignore_label: label value that does not count (None: none).
    mask: optional [...] voxel weights (0/1 or soft).
    normalize: 'voxels' or 'weights', see above.

  Returns:
    A float32 scalar.
  """
  if normalize not in CE_NORMALIZATIONS:
    raise ValueError(f'Unsupported normalize {normalize!r}; choose one of '
                     f'{CE_NORMALIZATIONS}.')
  logits, labels = _logits_and_labels(logits, labels)
  num_classes = logits.shape[-1]
  valid = _valid_voxels(labels, ignore_label, mask)
  safe = jnp.where(valid > 0, labels, 0).astype(jnp.int32)
  picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  ce = jax.nn.logsumexp(logits, axis=-1) - picked
  weights = valid
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
      raise ValueError(f'class_weights {tuple(class_weights.shape)} must have '
                       f'one entry per class ({num_classes}).')
    weights = valid * class_weights[safe]
  denominator = jnp.sum(valid if normalize == 'voxels' else weights)
  return jnp.sum(weights * ce) / jnp.maximum(denominator, 1e-12)


def labelled_loss(logits: jax.Array, labels: jax.Array, class_weights=None,
                  ignore_label: int | None = 255,
                  mask: jax.Array | None = None,
                  normalize: str = 'voxels') -> jax.Array:
  """Labelled-data loss of the K+1-class discriminator (Salimans et al. 2016).

  With the fake class's logit fixed at 0, p(y | x, real) is the softmax over
  the K real logits, so the labelled loss is the (class-weighted) K-class
  cross-entropy; see ``softmax_cross_entropy`` for the normalisation.
  Mondal et al. use class_weights=MONDAL_CLASS_WEIGHTS and 'voxels'.
  """
  return softmax_cross_entropy(logits, labels, class_weights, ignore_label,
                               mask, normalize)


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return jnp.mean(values)
  mask = jnp.asarray(mask, jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1e-12)


def unlabelled_loss(logits: jax.Array,
                    mask: jax.Array | None = None) -> jax.Array:
  """-E[log D(x)] on real unlabelled voxels: D = Z / (Z + 1), Z = sum_k e^l_k.

  With lse = logsumexp_k(l_k) per voxel, -log D = -lse + softplus(lse), the
  form Mondal et al. write as -mean(lse) + mean(softplus(lse)); it equals
  softplus(-lse), which we compute because it stays exact for large lse.
  Every voxel is its own real/fake decision.

  Args:
    logits: [..., K] logits of real unlabelled patches.
    mask: optional [...] voxel weights (masked mean).

  Returns:
    A float32 scalar.
  """
  lse = jax.nn.logsumexp(jnp.asarray(logits, jnp.float32), axis=-1)
  return _masked_mean(jax.nn.softplus(-lse), mask)


def fake_loss(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """-E[log(1 - D(G(z)))] on generated voxels: mean(softplus(lse)).

  Args:
    logits: [..., K] logits of generated patches.
    mask: optional [...] voxel weights (masked mean).

  Returns:
    A float32 scalar.
  """
  lse = jax.nn.logsumexp(jnp.asarray(logits, jnp.float32), axis=-1)
  return _masked_mean(jax.nn.softplus(lse), mask)


FEATURE_MATCHING_KINDS = ('l2', 'l1')


def feature_matching_loss(real_features: jax.Array, fake_features: jax.Array,
                          kind: str = 'l2',
                          reduce_spatial: bool = True) -> jax.Array:
  """Distance between batch means of discriminator features (Salimans 2016).

  m_real and m_fake are the means of [B, *spatial, C] features over the batch
  and (reduce_spatial=True) the spatial axes, giving one value per channel;
  with reduce_spatial=False, over the batch only (Mondal et al.'s code,
  which keeps one value per voxel and channel). The loss is
  mean((m_real - m_fake)**2) for 'l2' (paper 2's squared L2) or
  mean(|m_real - m_fake|) for 'l1' (Mondal's): a mean rather than a sum over
  the entries, so that its scale does not grow with the feature count (the
  squared L2 norm is the 'l2' value times the number of entries). The real
  features are not treated as constants here; the generator's gradient
  does not reach them anyway, as they do not depend on its parameters.

  Args:
    real_features: [B, *spatial, C] features of real (unlabelled) patches.
    fake_features: [B', *spatial, C] features of generated patches.
    kind: 'l2' or 'l1'.
    reduce_spatial: average over the spatial axes as well as the batch.

  Returns:
    A float32 scalar.
  """
  if kind not in FEATURE_MATCHING_KINDS:
    raise ValueError(f'Unsupported feature matching kind {kind!r}; choose '
                     f'one of {FEATURE_MATCHING_KINDS}.')
  if real_features.shape[1:] != fake_features.shape[1:]:
    raise ValueError(f'real {real_features.shape} and fake '
                     f'{fake_features.shape} features must match after the '
                     'batch axis.')
  axes = tuple(range(real_features.ndim - 1)) if reduce_spatial else (0,)
  diff = (jnp.mean(jnp.asarray(real_features, jnp.float32), axis=axes)
          - jnp.mean(jnp.asarray(fake_features, jnp.float32), axis=axes))
  if kind == 'l2':
    return jnp.mean(jnp.square(diff))
  return jnp.mean(jnp.abs(diff))


def boundary_loss(logits: jax.Array, targets: jax.Array,
                  pos_weight: float | None = None,
                  mask: jax.Array | None = None) -> jax.Array:
  """Binary cross-entropy with logits for the boundary network.

  Per voxel: pos_weight * t * softplus(-l) + (1 - t) * softplus(l), i.e.
  -pos_weight * t log sigmoid(l) - (1 - t) log(1 - sigmoid(l)), averaged over
  voxels (masked mean with mask). pos_weight > 1 counters the rarity of
  boundary voxels (PyTorch's BCEWithLogitsLoss(pos_weight=...)).

  Args:
    logits: [...] or [..., 1] boundary logits.
    targets: [...] targets in [0, 1] (e.g. from
      ``mrseg.models.mrigan_generator.boundaries_from_labels``).
    pos_weight: weight of the positive term (None: 1).
    mask: optional [...] voxel weights.

  Returns:
    A float32 scalar.
  """
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  if logits.ndim == targets.ndim + 1 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  if logits.shape != targets.shape:
    raise ValueError(f'boundary logits {logits.shape} and targets '
                     f'{targets.shape} must match.')
  pos = jax.nn.softplus(-logits)
  if pos_weight is not None:
    pos = pos * pos_weight
  return _masked_mean(targets * pos + (1.0 - targets) * jax.nn.softplus(logits),
                      mask)


def soft_dice_terms(logits: jax.Array, labels: jax.Array,
                    ignore_label: int | None = 255,
                    mask: jax.Array | None = None,
                    per_example: bool = False
                    ) -> tuple[jax.Array, jax.Array]:
  """The per-class sums of the soft Dice of softmax(logits) and the labels.

  Sums, not ratios, so that sums over the devices of a batch give its exact
  Dice (`dice_from_terms`).

  Args:
    logits: [B, *spatial, K] logits.
    labels: [B, *spatial] integer labels.
    ignore_label: label value that does not count (None: none).
    mask: optional [B, *spatial] voxel weights.
    per_example: sums per example instead of over the whole batch.

  Returns:
    (sum_i m_i p_ic g_ic, sum_i m_i p_ic + sum_i m_i g_ic), float32 [K]
    ([B, K] per example).
  """
  logits, labels = _logits_and_labels(logits, labels)
  num_classes = logits.shape[-1]
  valid = _valid_voxels(labels, ignore_label, mask)[..., None]
  probs = jax.nn.softmax(logits, axis=-1) * valid
  truth = jax.nn.one_hot(jnp.where(valid[..., 0] > 0, labels, -1),
                         num_classes) * valid
  axes = tuple(range(1, logits.ndim - 1)) if per_example else tuple(
      range(logits.ndim - 1))
  intersection = jnp.sum(probs * truth, axis=axes)
  return intersection, jnp.sum(probs, axis=axes) + jnp.sum(truth, axis=axes)


def dice_from_terms(intersection: jax.Array, total: jax.Array,
                    include_background: bool = True,
                    smooth: float = 1e-5) -> jax.Array:
  """1 - mean over classes of (2 * intersection + smooth) / (total + smooth)."""
  dice = (2.0 * intersection + smooth) / (total + smooth)
  if not include_background:
    dice = dice[..., 1:]
  return 1.0 - jnp.mean(dice)


def soft_dice_loss(logits: jax.Array, labels: jax.Array,
                   ignore_label: int | None = 255,
                   mask: jax.Array | None = None,
                   include_background: bool = True,
                   per_example: bool = False,
                   smooth: float = 1e-5) -> jax.Array:
  """1 - mean over classes of the soft Dice of softmax(logits) and the labels.

  Per class c: (2 sum_i m_i p_ic g_ic + smooth) / (sum_i m_i p_ic +
  sum_i m_i g_ic + smooth), sums over every voxel of the batch
  (per_example=False, "batch Dice": stable when a small patch lacks a class)
  or per example and then averaged (per_example=True). A class absent from
  both prediction and truth scores ~1 through `smooth`.

  Args:
    logits: [B, *spatial, K] logits.
    labels: [B, *spatial] integer labels.
    ignore_label: label value that does not count (None: none).
    mask: optional [B, *spatial] voxel weights.
    include_background: whether class 0 enters the mean.
    per_example: Dice per example instead of over the whole batch.
    smooth: added to numerator and denominator.

  Returns:
    A float32 scalar.
  """
  return dice_from_terms(
      *soft_dice_terms(logits, labels, ignore_label, mask, per_example),
      include_background=include_background, smooth=smooth)


def dice_ce_loss(logits: jax.Array, labels: jax.Array, class_weights=None,
                 ignore_label: int | None = 255,
                 mask: jax.Array | None = None, dice_weight: float = 1.0,
                 ce_weight: float = 1.0,
                 include_background: bool = True) -> jax.Array:
  """ce_weight * softmax_cross_entropy + dice_weight * soft_dice_loss."""
  ce = softmax_cross_entropy(logits, labels, class_weights, ignore_label, mask)
  dice = soft_dice_loss(logits, labels, ignore_label, mask,
                        include_background=include_background)
  return ce_weight * ce + dice_weight * dice


def sigmoid_rampup(step, length: int) -> jax.Array:
  """Laine & Aila 2017's ramp-up weight: exp(-5 (1 - t / T)^2), 1 from T on.

  The sigmoid-shaped ramp of temporal ensembling (and Mean Teacher) for the
  weight of unsupervised terms: exp(-5) = 0.0067 at step 0, exp(-1.25) =
  0.29 half way, 1 at step T and after.

  Args:
    step: the step t (an int or a traced integer scalar).
    length: the ramp's length T in steps; <= 0 means no ramp (always 1).

  Returns:
    A float32 scalar in (0, 1].
  """
  if length <= 0:
    return jnp.ones((), jnp.float32)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / length, 0.0, 1.0)
  return jnp.exp(-5.0 * jnp.square(1.0 - t))


def _block_mean(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """[B, *S] averaged over equal blocks to [B, *shape] (S divisible)."""
  if len(shape) != x.ndim - 1 or any(n % m for n, m in zip(x.shape[1:],
                                                            shape)):
    raise ValueError(f'Cannot average {x.shape[1:]} in blocks down to '
                     f'{tuple(shape)}.')
  split = (x.shape[0],) + tuple(
      v for n, m in zip(x.shape[1:], shape) for v in (m, n // m))
  return jnp.mean(x.reshape(split), axis=tuple(range(2, 2 * len(shape) + 1,
                                                     2)))


def paper_eq7_8_loss(real_mean: jax.Array, real_features: jax.Array,
                     fake_logits: jax.Array) -> jax.Array:
  """Paper 2's generator loss read literally: eq. (7) and (8) as printed.

    (7)  C = E f(x) - log(1 - D(G(z)))
    (8)  L(G) = ||C - x||^2

  Symbols, as we make them well-defined (the trainer's
  `loss.generator_objective='paper_eq7_8'`):

  - f(x): the discriminator's features of a real patch x at the
    feature-matching layer (Salimans et al.'s f), [*s, F] per patch.
  - E f(x): their mean over the batch of real unlabelled patches
    (`real_mean`, per voxel and channel, as feature matching uses it).
  - D(G(z)): D's probability that a voxel of generated patch j is real,
    Z / (Z + 1) with Z = sum_k exp(l_k) (the K+1-class D of `fake_loss`), so
    log(1 - D(G(z))) = -softplus(logsumexp_k l_k). It is per voxel of the
    patch grid [*S]; to add it to E f(x) it is averaged over the voxels of
    each cell of f's grid (S / s per axis) and added to every channel.
  - x in (8): a real patch in the space of C, f(x_j): the features of the
    real unlabelled patch x_j whose MRI the generator encoded into G(z_j)
    (MRI-GAN pairs every generated patch with one real patch). Reading x as
    E f(x) instead would cancel f from the loss altogether.
  - ||.||^2: squared L2 as a mean over voxels, channels and generated
    patches (like 'l2' feature matching; the sum is that times the count).

  So L(G) = mean_{j,v,c} (E f(x)_vc - pool(log(1 - D(G(z_j))))_jv -
  f(x_j)_vc)^2. Only D(G(z_j)) depends on G: the loss pulls
  -log(1 - D(G(z_j))) towards mean_c (f(x_j) - E f(x)), whose batch mean is
  0, i.e. on average towards D(G(z)) = 0, patches D calls fake. That is why
  feature matching (Salimans et al., Mondal's code, what the paper's text
  describes) is the trainer's default; this reading is an ablation.

  Args:
    real_mean: E f(x), [*s, F] (or broadcastable to real_features[0]).
    real_features: f(x_j), [B, *s, F], one row per generated patch.
    fake_logits: D's logits of the generated patches, [B, *S, K].

  Returns:
    A float32 scalar.
  """
  real_features = jnp.asarray(real_features, jnp.float32)
  if fake_logits.shape[0] != real_features.shape[0]:
    raise ValueError(f'{fake_logits.shape[0]} generated patches for '
                     f'{real_features.shape[0]} real ones; eq. (8) pairs '
                     'them one to one.')
  lse = jax.nn.logsumexp(jnp.asarray(fake_logits, jnp.float32), axis=-1)
  log_not_real = _block_mean(-jax.nn.softplus(lse), real_features.shape[1:-1])
  c = jnp.asarray(real_mean, jnp.float32) - log_not_real[..., None]
  return jnp.mean(jnp.square(c - real_features))
