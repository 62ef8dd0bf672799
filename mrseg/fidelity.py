"""How close generated images are to real ones, as numbers.

Three kinds of numbers, none of which needs downloaded weights:

* **Intensity distributions** (`intensity_wasserstein`,
  `histogram_intersection`, here): paper 1's Fig. 11 as numbers.
* **Diversity** (`similarity.ms_ssim_diversity`): mean MS-SSIM between
  random pairs of samples (Odena et al. 2017); a collapsed generator scores
  higher than the real data.
* **FID and KID** (`fid_kid.fid`, `fid_kid.kid`) on features of a network
  trained inside this project (`make_feature_fn`, here, e.g. the real-data
  UNet encoder). The maths is the literature's, the features are not: these
  scores compare runs scored with the same feature-network checkpoint and
  are not comparable with Inception-based FID/KID in papers.

`fidelity_report` bundles them. Everything is host-side numpy in float64
except the feature network, which runs jitted.
"""
from collections.abc import Callable
import math
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mrseg import fid_kid
from mrseg import similarity


def intensity_wasserstein(real: np.ndarray, generated: np.ndarray,
                          num_quantiles: int = 1000) -> float:
  """Wasserstein-1 distance between the pixel-intensity distributions.

  Paper 1's Fig. 11 compares the two histograms by eye; this is the same
  comparison as one number (in intensity units: 0 for identical
  distributions, at most 1 for intensities in [0, 1]). W1 between two 1D
  distributions is the mean absolute difference of their quantile functions,
  computed here on a fixed quantile grid, so it does not depend on how many
  images each side has.
  """
  real, generated = np.ravel(real), np.ravel(generated)
  if not real.size or not generated.size:
    raise ValueError('intensity_wasserstein needs non-empty inputs.')
  q = (np.arange(num_quantiles) + 0.5) / num_quantiles
  return float(np.mean(np.abs(np.quantile(real, q) - np.quantile(generated, q))))


def histogram_intersection(real: np.ndarray, generated: np.ndarray,
                           bins: int = 64) -> float:
  """Overlap of the normalised intensity histograms on [0, 1]: 1 = identical."""
  edges = np.linspace(0.0, 1.0, bins + 1)
  h_real, _ = np.histogram(np.clip(real, 0, 1), bins=edges)
  h_gen, _ = np.histogram(np.clip(generated, 0, 1), bins=edges)
  h_real = h_real / max(h_real.sum(), 1)
  h_gen = h_gen / max(h_gen.sum(), 1)
  return float(np.minimum(h_real, h_gen).sum())


# ----------------------------------------------------------------------------
# Features from a network trained inside the project.

POOLINGS = ('avg', 'avg_max')


def make_feature_fn(apply_fn: Callable[[Any, jax.Array], jax.Array],
                    variables: Any, batch_size: int = 64,
                    pooling: str = 'avg') -> Callable[[Any], np.ndarray]:
  """Turns a network's feature maps into [N, D] vectors for FID and KID.

  No pretrained weights are downloaded, ever: the intended network is the
  real-data UNet of this project, whose encoder's bottleneck serves as the
  feature map::

    feature_fn = fidelity.make_feature_fn(
        functools.partial(model.apply, method=unet.UNet.encode), variables)
    score = fid_kid.fid(feature_fn(real_images), feature_fn(fake_images))

  FID/KID computed on these features are NOT comparable with the
  Inception-v3 FID/KID reported in the literature (different network,
  training data and feature dimension), nor across different feature
  networks or checkpoints: compare only runs scored with the same
  checkpoint, the same preprocessing and the same sample sizes. A UNet
  trained to segment tumours also sees only what helps segmentation, so the
  score measures fidelity in those terms.

  Args:
    apply_fn: `apply_fn(variables, images) -> [B, *spatial, C]` feature maps,
      in inference mode (examples must not interact, e.g. no batch
      statistics: the last batch is padded).
    variables: the network's variables, passed to apply_fn.
    batch_size: images per jitted call; the last batch is padded to it so
      that only one shape is compiled.
    pooling: 'avg' (global average over space: D = C) or 'avg_max' (average
      and max concatenated: D = 2C).

  Returns:
    `feature_fn(images) -> np.ndarray` float64 [N, D], where images is [N,
    ...] in the layout and value range the network was trained on (for the
    UNet: [N, H, W, 1] with H, W divisible by 2**depth).

  Raises:
    ValueError: for an unknown pooling or non-positive batch_size; the
      returned function raises for an empty input, feature maps without
      spatial axes, or non-finite features.
  """
  if pooling not in POOLINGS:
    raise ValueError(f'Unsupported pooling {pooling!r}; choose one of '
                     f'{POOLINGS}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1; got {batch_size}.')

  @jax.jit
  def pooled(variables, images):
    maps = apply_fn(variables, images)
    if maps.ndim < 3:
      raise ValueError(
          'make_feature_fn: apply_fn must return [B, *spatial, C] feature '
          f'maps; got shape {maps.shape}.')
    axes = tuple(range(1, maps.ndim - 1))
    maps = maps.astype(jnp.float32)
    parts = [jnp.mean(maps, axes)]
    if pooling == 'avg_max':
      parts.append(jnp.max(maps, axes))
    return jnp.concatenate(parts, axis=-1)

  def feature_fn(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim < 1 or not len(images):
      raise ValueError('feature_fn needs a non-empty batch of images; got '
                       f'shape {images.shape}.')
    size = min(batch_size, len(images))
    outputs = []
    for start in range(0, len(images), size):
      batch = images[start:start + size]
      count = len(batch)
      if count < size:
        pad = np.zeros((size - count,) + batch.shape[1:], batch.dtype)
        batch = np.concatenate([batch, pad])
      outputs.append(np.asarray(pooled(variables, batch))[:count])
    features = np.concatenate(outputs).astype(np.float64)
    if not np.all(np.isfinite(features)):
      raise ValueError('feature_fn: the network produced NaN or inf '
                       'features.')
    return features

  return feature_fn


# ----------------------------------------------------------------------------
# Everything at once.


def fidelity_report(real_images, fake_images,
                    feature_fn: Callable[[Any], np.ndarray] | None = None,
                    num_pairs: int = 1000, kid_subsets: int = 100,
                    kid_subset_size: int = 1000,
                    seed: int = 0,
                    standardize_features: bool = True) -> dict[str, float]:
  """Fidelity and diversity of generated images against real ones.

  Intensity W1 and histogram intersection (paper 1's Fig. 11 as numbers),
  MS-SSIM diversity of the fake and, for reference, the real images, and,
  when `feature_fn` is given, FID and KID on its features. Images are in
  [0, 1] (max_val 1 for MS-SSIM). MS-SSIM uses the default 4 scales and
  7-px window; smaller images use as many of those scales as fit
  (`ms_ssim_num_scales` records how many; NaN diversity if none fits).

  Args:
    real_images: [N, H, W] or [N, H, W, 1] real images in [0, 1].
    fake_images: [M, H, W] or [M, H, W, 1] generated images in [0, 1].
    feature_fn: e.g. from `make_feature_fn`; receives the image arrays
      unchanged. The FID/KID are comparable only across runs with the same
      feature network checkpoint (see `make_feature_fn`).
    num_pairs: pairs for `similarity.ms_ssim_diversity`.
    kid_subsets: `fid_kid.kid`'s num_subsets.
    kid_subset_size: `fid_kid.kid`'s subset_size.
    seed: seed of the pair and subset draws.
    standardize_features: centre the features on the real mean and divide
      them by the real features' root mean variance (one scale for all
      dimensions) before FID/KID. A network trained inside the project has
      no fixed feature scale (a segmenter trained on poor data can have
      bottleneck activations in the thousands, where KID's cubic kernel
      overflows any meaning), so this makes the scores independent of that
      scale; FID is then in units of the mean real-feature variance.

  Returns:
    {'intensity_wasserstein', 'histogram_intersection',
    'ms_ssim_diversity_fake', 'ms_ssim_diversity_real', 'ms_ssim_num_scales',
    'num_real', 'num_fake'} plus {'fid', 'kid_mean', 'kid_std'} with a
    feature_fn.

  Raises:
    ValueError: for multi-channel images (pass the image channel of a joint
      image+mask sample), fewer than 2 images per side, or mismatched image
      sizes.
  """
  real, fake = np.asarray(real_images), np.asarray(fake_images)
  _check_image_sets(real, fake)
  report = {
      'intensity_wasserstein': intensity_wasserstein(real, fake),
      'histogram_intersection': histogram_intersection(real, fake),
      'num_real': len(real),
      'num_fake': len(fake),
  }
  report.update(_diversity(real, fake, num_pairs, seed))
  if feature_fn is not None:
    report.update(_feature_scores(feature_fn, real, fake, kid_subsets,
                                  kid_subset_size, seed,
                                  standardize_features))
  return report


def _check_image_sets(real: np.ndarray, fake: np.ndarray) -> None:
  """Raises unless both are greyscale sets of >= 2 images of one size."""
  for name, images in (('real_images', real), ('fake_images', fake)):
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1)):
      raise ValueError(
          f'fidelity_report: {name} must be greyscale [N, H, W] or '
          f'[N, H, W, 1] (for joint image+mask samples pass the image '
          f'channel); got shape {images.shape}.')
    if len(images) < 2:
      raise ValueError(f'fidelity_report needs at least 2 {name}; got '
                       f'{len(images)}.')
  if real.shape[1:3] != fake.shape[1:3]:
    raise ValueError(f'fidelity_report: image sizes differ: real '
                     f'{real.shape}, fake {fake.shape}.')


def _diversity(real: np.ndarray, fake: np.ndarray, num_pairs: int,
               seed: int) -> dict[str, float]:
  """MS-SSIM diversity of both sets at as many default scales as fit."""
  report = {}
  num_scales = similarity.fitting_scales(real.shape[1:3])
  if num_scales:
    weights = similarity.ms_ssim_weights(num_scales)
    for name, images in (('fake', fake), ('real', real)):
      report[f'ms_ssim_diversity_{name}'] = similarity.ms_ssim_diversity(
          images, num_pairs, seed, power_factors=weights)
  else:
    logging.warning('fidelity_report: images of %s px are too small for '
                    'MS-SSIM; reporting NaN.', real.shape[1:3])
    report['ms_ssim_diversity_fake'] = report['ms_ssim_diversity_real'] = (
        float('nan'))
  report['ms_ssim_num_scales'] = num_scales
  return report


def _feature_scores(feature_fn: Callable[[Any], np.ndarray],
                    real: np.ndarray, fake: np.ndarray, kid_subsets: int,
                    kid_subset_size: int, seed: int,
                    standardize_features: bool) -> dict[str, float]:
  """FID and KID on `feature_fn`'s features (see `fidelity_report`)."""
  features_real, features_fake = feature_fn(real), feature_fn(fake)
  if standardize_features:
    features_real, features_fake = _standardize(features_real, features_fake)
  scores = {'fid': fid_kid.fid(features_real, features_fake)}
  kid = fid_kid.kid(features_real, features_fake, kid_subsets,
                    kid_subset_size, seed)
  scores['kid_mean'], scores['kid_std'] = kid.mean, kid.std
  return scores


def _standardize(real: np.ndarray, fake: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Both feature sets centred on the real mean, in units of real spread.

  One scale for all dimensions (the root mean real variance), not one per
  dimension: a dimension nearly constant over the real images would
  otherwise blow the generated images' values in it up without bound.
  """
  real = np.asarray(real, np.float64)
  fake = np.asarray(fake, np.float64)
  mean = real.mean(0)
  scale = math.sqrt(float(real.var(0).mean()))
  if not scale > 1e-12 * max(float(np.abs(mean).max(initial=0.0)), 1.0):
    raise ValueError('fidelity_report: every feature is constant over the '
                     'real images; the feature network carries no '
                     'information (is the checkpoint trained?).')
  return (real - mean) / scale, (fake - mean) / scale