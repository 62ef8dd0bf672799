"""Sliding-window inference for images and volumes larger than the model input.

A UNet trained on patches is applied to a whole case by tiling it with
overlapping windows, predicting each, and averaging the per-class
PROBABILITIES of overlapping windows with an importance weight that trusts
window centres more than their edges (nnU-Net: a Gaussian with sigma = 1/8 of
the window). Averaging labels instead would make the result depend on the
tiling, and averaging logits would weigh confident windows more than the
weights say.

Windows are laid out as in nnU-Net: along each axis, the first window starts
at 0 and the last ends exactly at the border, with evenly spaced windows in
between whose step is at most ``window * (1 - overlap)``; so every voxel is
covered and no window reads outside the image. Axes smaller than the window
are padded (centred) and the result is cropped back.

The windows are sent to ``predict_fn`` in batches of exactly ``batch_size``
(the last batch is filled up with repeats), so a jitted model apply compiles
once per window shape, whatever the case size. Accumulation happens on the
host in float32 numpy, which keeps device memory at one batch of windows.

Example::

  predict = jax.jit(lambda x: model.apply(variables, x))
  probs = sliding_window_inference(predict, volume, window=(96, 96, 96))
  labels = probs.argmax(-1)
"""
from collections.abc import Callable, Sequence
import itertools
import math

import jax
import numpy as np

WEIGHTINGS = ('gaussian', 'constant')


def window_starts(size: int, window: int, overlap: float) -> list[int]:
  """Start offsets of the windows along one axis of length `size` >= window.

  Args:
    size: axis length (already padded to at least `window`).
    window: window length.
    overlap: fraction of the window shared by neighbours, in [0, 1).

  Returns:
    Increasing offsets; the first is 0 and the last is size - window.
  """
  if size <= window:
    return [0]
  # At least one voxel, or a high overlap on a small window would round
  # several windows onto the same start.
  step = max(window * (1.0 - overlap), 1.0)
  count = math.ceil((size - window) / step) + 1
  actual = (size - window) / (count - 1)
  return [int(round(actual * i)) for i in range(count)]


def importance_weights(window: Sequence[int], weighting: str = 'gaussian',
                       sigma_scale: float = 1.0 / 8) -> np.ndarray:
  """Per-voxel weight of a window's prediction, maximum 1, shape `window`.

  Args:
    window: window shape.
    weighting: 'gaussian' (centred, sigma = sigma_scale * window per axis)
      or 'constant' (plain average).
    sigma_scale: Gaussian sigma as a fraction of the window size.

  Returns:
    float32 weights, strictly positive (floored at 1e-6 so a border voxel
    covered only by window corners still gets a well-defined average).

  Raises:
    ValueError: for an unknown weighting.
  """
  if weighting == 'constant':
    return np.ones(tuple(window), np.float32)
  if weighting != 'gaussian':
    raise ValueError(
        f'Unsupported weighting {weighting!r}; choose one of {WEIGHTINGS}.')
  weights = np.ones((), np.float64)
  for w in window:
    i = np.arange(w, dtype=np.float64)
    sigma = sigma_scale * w
    g = np.exp(-0.5 * ((i - (w - 1) / 2) / sigma) ** 2)
    weights = np.multiply.outer(weights, g)
  weights /= weights.max()
  return np.maximum(weights, 1e-6).astype(np.float32)


def sliding_window_inference(
    predict_fn: Callable[[np.ndarray], jax.Array | np.ndarray],
    image: jax.Array | np.ndarray,
    window: Sequence[int],
    overlap: float = 0.5,
    weighting: str = 'gaussian',
    batch_size: int = 4,
    apply_softmax: bool = True,
    sigma_scale: float = 1.0 / 8,
    pad_value: float = 0.0,
) -> np.ndarray:
  """Per-class probabilities of a whole case from windowed predictions.

  Args:
    predict_fn: maps windows [B, *window, C] (B = batch_size) to per-class
      scores [B, *window, K]: logits if apply_softmax (the default; a UNet's
      output), probabilities otherwise. Usually a jitted model apply.
    image: one case [*spatial, C] (2D: [H, W, C]; 3D: [X, Y, Z, C]), or a
      batch of cases [N, *spatial, C], processed one after another.
    window: window shape, len(window) = number of spatial axes. For a UNet
      each entry must be divisible by 2**depth.
    overlap: fraction of a window shared with its neighbour along each axis,
      in [0, 1); 0.5 as in nnU-Net.
    weighting: 'gaussian' or 'constant' importance of a window's voxels.
    batch_size: windows per predict_fn call (fixed, so one compilation).
    apply_softmax: apply a softmax over the last axis of predict_fn's output
      before averaging. Set False when predict_fn returns probabilities.
    sigma_scale: Gaussian sigma as a fraction of the window.
    pad_value: value of the padding for axes smaller than the window (0 is
      the background after the usual z-score normalisation).

  Returns:
    float32 probabilities [*spatial, K] (or [N, *spatial, K]), summing to 1
    over K wherever the per-window outputs do.

  Raises:
    ValueError: on inconsistent ranks, a bad overlap/batch_size, or a
      predict_fn output of the wrong shape.
  """
  image = np.asarray(image)
  window = tuple(int(w) for w in window)
  dims = len(window)
  if image.ndim == dims + 2:
    return np.stack([
        sliding_window_inference(predict_fn, case, window, overlap, weighting,
                                 batch_size, apply_softmax, sigma_scale,
                                 pad_value) for case in image
    ])
  if image.ndim != dims + 1:
    raise ValueError(
        f'image of shape {image.shape} does not match a {dims}D window '
        f'{window}: expected [*spatial, C] or [N, *spatial, C].')
  _check_args(window, overlap, batch_size)
  weights = importance_weights(window, weighting, sigma_scale)

  spatial = image.shape[:-1]
  # Centre the image in the window along axes that are too small.
  pad = [((max(w - s, 0)) // 2, max(w - s, 0) - (max(w - s, 0)) // 2)
         for s, w in zip(spatial, window)]
  padded = np.pad(image, pad + [(0, 0)], constant_values=pad_value)
  probs = _accumulate(predict_fn, padded, window, overlap, weights,
                      batch_size, apply_softmax)
  crop = tuple(slice(before, before + s)
               for (before, _), s in zip(pad, spatial))
  return probs[crop]


def _check_args(window: tuple[int, ...], overlap: float,
                batch_size: int) -> None:
  if any(w < 1 for w in window):
    raise ValueError(f'window {window} must be positive.')
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f'overlap must be in [0, 1); got {overlap}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1; got {batch_size}.')


def _accumulate(predict_fn: Callable[[np.ndarray], jax.Array | np.ndarray],
                padded: np.ndarray, window: tuple[int, ...], overlap: float,
                weights: np.ndarray, batch_size: int, apply_softmax: bool
                ) -> np.ndarray:
  """The weighted mean of the windows' probabilities over `padded`, a case
  at least as large as the window along every axis."""
  dims = len(window)
  padded_spatial = padded.shape[:-1]
  starts = list(itertools.product(*(
      window_starts(s, w, overlap) for s, w in zip(padded_spatial, window))))
  slices = [tuple(slice(o, o + w) for o, w in zip(start, window))
            for start in starts]

  probs = None
  norm = np.zeros(padded_spatial, np.float32)
  for first in range(0, len(slices), batch_size):
    chunk = slices[first:first + batch_size]
    # Repeat the last window to fill the batch: a constant shape for jit.
    batch = np.stack([padded[s] for s in chunk] +
                     [padded[chunk[-1]]] * (batch_size - len(chunk)))
    out = predict_fn(batch)
    if out.ndim != dims + 2 or tuple(out.shape[:-1]) != batch.shape[:-1]:
      raise ValueError(
          f'predict_fn returned shape {tuple(out.shape)} for windows of shape '
          f'{batch.shape}; expected [{batch_size}, *{window}, K].')
    if apply_softmax:
      out = jax.nn.softmax(out.astype(np.float32), axis=-1)
    out = np.asarray(out, np.float32)
    if probs is None:
      probs = np.zeros(padded_spatial + (out.shape[-1],), np.float32)
    for s, window_probs in zip(chunk, out):
      probs[s] += window_probs * weights[..., None]
      norm[s] += weights
  probs /= norm[..., None]
  return probs
