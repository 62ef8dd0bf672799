"""How close generated images are to real ones, as numbers."""
import numpy as np


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
