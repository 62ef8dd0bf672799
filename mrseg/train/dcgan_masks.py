"""The joint DCGAN's mask channel: paper 1's future work, `model.joint_mask`.

With `model.joint_mask` the DCGAN generates the tumour mask as one more
channel beside the image (tanh, or sigmoid with `model.mask_output`). This
module holds how that channel is counted (`num_channels`), encoded for the
discriminator (`encode_masks`), misplaced for the matching-aware
discriminator (`misplaced`) and split off generated samples (`split_pair`).
Without `model.joint_mask` each is the identity (or counts the image
channels only).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrseg.train import diffaug


def num_channels(config: ml_collections.ConfigDict) -> int:
  """Channels the generator makes and the discriminator judges.

  With `model.joint_mask` the GAN generates the tumour mask as one more
  channel beside the image (Neff et al. 2017; paper 1's future work), so the
  discriminator judges image/mask pairs and every sample comes labelled.
  """
  return config.data.channels + int(config.model.joint_mask)


def sigmoid_masks(config: ml_collections.ConfigDict) -> bool:
  return config.model.joint_mask and config.model.mask_output == 'sigmoid'


def split_pair(config: ml_collections.ConfigDict, images: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray | None]:
  """Generated [N, S, S, C(+1)] in [0, 1] -> (images, binary masks or None).

  `dcgan_trainer.generate` maps a tanh mask from [-1, 1] and leaves a
  sigmoid mask as it is, so 0.5 is the threshold for both.
  """
  c = config.data.channels
  if not config.model.joint_mask:
    return images, None
  return images[..., :c], (images[..., c:c + 1] > 0.5).astype(np.uint8)


def encode_masks(config: ml_collections.ConfigDict, pairs: jax.Array,
                 masks01: jax.Array | None = None) -> jax.Array:
  """Real pairs as D sees them: the mask channel in the generator's range.

  Args:
    config: the run's config.
    pairs: [B, S, S, C + 1], image and mask in [-1, 1] (pair_preprocess).
    masks01: [B, S, S, 1] masks in {0, 1} to put in place of the pairs' own.

  Returns:
    The pairs with a tanh mask as -1/+1, a sigmoid one smoothed to
    [mask_smoothing, 1 - mask_smoothing]: a generator that must match a
    hard 0/1 mask drives its sigmoid to saturation, where its gradient
    vanishes and the mask collapses to empty; soft targets keep it in the
    range where it still learns (label smoothing, Salimans et al. 2016).
  """
  c = config.data.channels
  if masks01 is None:
    if not sigmoid_masks(config):
      return pairs
    masks01 = (pairs[..., c:] + 1) / 2
  if sigmoid_masks(config):
    eps = config.mask_smoothing
    masks = eps + (1 - 2 * eps) * masks01
  else:
    masks = 2 * masks01 - 1
  return jnp.concatenate([pairs[..., :c], masks.astype(pairs.dtype)], -1)


def misplaced(config: ml_collections.ConfigDict, pairs: jax.Array,
              keys: jax.Array) -> jax.Array:
  """Reed et al. 2016's "real image, wrong text": the real image with its
  own mask moved off the tumour by a per-example random offset
  (config.mismatch_shift)."""
  shift_low, shift_high = config.mismatch_shift
  masks01 = (pairs[..., config.data.channels:] + 1) / 2
  moved = jax.vmap(lambda x, k: diffaug.random_shift(
      x, k, shift_low, shift_high))(masks01, keys)
  return encode_masks(config, pairs, moved)
