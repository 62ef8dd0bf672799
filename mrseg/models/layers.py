"""Layers shared by the models.

Strided up-convolutions are the slow part of a GAN step on XLA:CPU: XLA lowers
``lax.conv_transpose`` to a convolution over a zero-dilated input, and the
gradient of that (a dilated convolution again) runs 10-35x slower than
oneDNN's. ``SubpixelConvTranspose`` computes exactly the same function with a
stride-1 convolution followed by depth-to-space ("sub-pixel convolution", Shi
et al. 2016), whose forward and backward passes are plain stride-1
convolutions, and keeps ``nn.ConvTranspose``'s parameters, so checkpoints and
parameter counts do not depend on which one a config picks.
"""
from collections.abc import Callable, Sequence
import math
from typing import Any

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

PaddingLike = str | int | Sequence[int | tuple[int, int]]

# Spatial axis letters for lax's dimension numbers, by number of spatial axes.
_SPATIAL = {1: 'H', 2: 'HW', 3: 'DHW'}


def _transpose_padding(k: int, s: int, padding: str | tuple[int, int]
                       ) -> tuple[int, int]:
  """Padding of the dilated input that ``lax.conv_transpose`` uses (one axis).

  ``lax.conv_transpose`` (JAX 0.10, ``use_consistent_padding=False``, which
  flax uses) reads 'SAME' and 'VALID' as the padding of the forward
  convolution it transposes, and explicit pairs as the padding of the
  transposed convolution itself. This mirrors its ``_conv_transpose_padding``.

  Args:
    k: kernel size along the axis.
    s: stride along the axis.
    padding: 'SAME', 'VALID' or an explicit (low, high) pair.

  Returns:
    (low, high) zero padding of the stride-dilated input.
  """
  if padding == 'SAME':
    pad_len = k + s - 2
    pad_lo = k - 1 if s > k - 1 else math.ceil(pad_len / 2)
    return pad_lo, pad_len - pad_lo
  if padding == 'VALID':
    pad_len = k + s - 2 + max(k - s, 0)
    return k - 1, pad_len - (k - 1)
  return padding


class SubpixelConvTranspose(nn.Module):
  """``nn.ConvTranspose`` computed as a stride-1 convolution + depth-to-space.

  A drop-in for ``flax.linen.ConvTranspose``: same attributes, same parameter
  names and shapes (``kernel`` [*kernel_size, in, features], or
  [*kernel_size, features, in] with ``transpose_kernel``; ``bias``
  [features]) and the same outputs, for any number of spatial axes (1D, 2D,
  3D), any strides and kernel sizes, and 'SAME', 'VALID' or explicit padding.

  Why it is the same function: along one axis, with stride s, kernel W of size
  k and input padding (p, q) of the s-dilated input, the transposed
  convolution is ``y[o] = sum_t x[(o + t - p) / s] W[t]`` over the t that make
  the index an integer. Writing ``o - p = s*g - h`` with ``0 <= h < s`` gives
  ``y[o] = sum_j x[g + j] W[h + s*j]``: output phase h is a stride-1
  convolution of x with the taps ``W[h::s]``, at the same offsets for every
  phase. So one stride-1 convolution with ceil(k/s) taps and s^d * features
  output channels computes every phase, depth-to-space interleaves them, and a
  crop by ``s - 1 - p`` aligns the result. Only a border of one input row per
  axis is computed and thrown away, where a stride-1 convolution with a
  zero-padded k-tap kernel would do s^d times the work. When k is not a
  multiple of s the kernel is zero-padded to one (exact, but a little waste).

  Attributes:
    features: number of output channels.
    kernel_size: kernel size per spatial axis (an int means one axis).
    strides: up-sampling factor per spatial axis (an int is broadcast).
    padding: 'SAME' or 'VALID' (the padding of the forward convolution this
      transposes, as in ``lax.conv_transpose``), an int, or per-axis ints or
      (low, high) pairs (padding of the dilated input). 'CIRCULAR' and
      lower-case strings are rejected.
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: dtype of the parameters.
    precision: ``lax.Precision`` of the convolution.
    kernel_init: kernel initialiser.
    bias_init: bias initialiser.
    transpose_kernel: flip the kernel's spatial axes and swap its channel axes
      (Keras' Conv2DTranspose convention), as in ``nn.ConvTranspose``.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: PaddingLike = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., Any] = nn.linear.default_kernel_init
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()
  transpose_kernel: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the transposed convolution.

    Args:
      inputs: [*batch, *spatial, in_features]; any number of leading batch
        axes (none included), as ``nn.ConvTranspose`` accepts.

    Returns:
      [*batch, *out_spatial, features], equal to ``nn.ConvTranspose``'s output.

    Raises:
      ValueError: for padding that ``nn.ConvTranspose`` does not mean the same
        way here ('CIRCULAR', lower-case strings), strides or padding of the
        wrong length, or an empty output.
    """
    if isinstance(self.kernel_size, int):
      kernel_size = (self.kernel_size,)
    else:
      kernel_size = tuple(self.kernel_size)
    nd = len(kernel_size)
    if nd not in _SPATIAL:
      raise ValueError(
          f'SubpixelConvTranspose supports 1 to 3 spatial axes, got kernel '
          f'{kernel_size}.')
    if self.strides is None:
      strides = (1,) * nd
    elif isinstance(self.strides, int):
      strides = (self.strides,) * nd
    else:
      strides = tuple(self.strides)
    if len(strides) != nd or min(strides) < 1:
      raise ValueError(
          f'strides {self.strides} must be {nd} positive ints for kernel '
          f'{kernel_size}.')
    if isinstance(self.padding, str):
      if self.padding not in ('SAME', 'VALID'):
        raise ValueError(
            f'SubpixelConvTranspose supports padding SAME, VALID or explicit '
            f'pairs, not {self.padding!r}; use nn.ConvTranspose for that.')
      paddings = [self.padding] * nd
    else:
      paddings = [tuple(p) for p in
                  nn.linear.canonicalize_padding(self.padding, nd)]

    # Flatten the batch axes into one, as nn.ConvTranspose does.
    batch_shape = inputs.shape[:inputs.ndim - nd - 1]
    x = inputs.reshape((-1,) + inputs.shape[len(batch_shape):])
    in_features = x.shape[-1]

    if self.transpose_kernel:
      kernel_shape = kernel_size + (self.features, in_features)
    else:
      kernel_shape = kernel_size + (in_features, self.features)
    kernel = self.param('kernel', self.kernel_init, kernel_shape,
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.transpose_kernel:
      kernel = jnp.flip(kernel, axis=tuple(range(nd))).swapaxes(nd, nd + 1)

    # Per axis: taps per phase, output size, input padding and output crop.
    taps, out_sizes, in_pads, crops = [], [], [], []
    for n, k, s, pad in zip(x.shape[1:-1], kernel_size, strides, paddings):
      pad_lo, pad_hi = _transpose_padding(k, s, pad)
      out = (n - 1) * s + 1 + pad_lo + pad_hi - k + 1
      if out <= 0:
        raise ValueError(
            f'SubpixelConvTranspose: empty output for input size {n}, kernel '
            f'{k}, stride {s}, padding {pad}.')
      m = -(-k // s)
      # y[o] = y_full[o + shift], where y_full[s*g + r] is phase r at
      # position g of the stride-1 convolution; we need g in [g_lo, g_hi].
      shift = s - 1 - pad_lo
      g_lo = shift // s
      g_hi = (out - 1 + shift) // s
      taps.append(m)
      out_sizes.append(out)
      # Position g reads x[g : g + m]; negative padding crops the input.
      in_pads.append((-g_lo, g_hi + m - 1 - (n - 1)))
      crops.append(shift - s * g_lo)

    # Kernel [*k, I, O] -> [*m, I, (*s, O)]: tap t = s*j + h of axis i goes to
    # tap j, phase r = s - 1 - h (the phase that lands at s*g + r).
    pad_k = [(0, m * s - k) for m, s, k in zip(taps, strides, kernel_size)]
    if any(hi for _, hi in pad_k):
      kernel = jnp.pad(kernel, pad_k + [(0, 0), (0, 0)])
    split = []
    for m, s in zip(taps, strides):
      split += [m, s]
    kernel = kernel.reshape(split + [in_features, self.features])
    kernel = jnp.flip(kernel, axis=tuple(range(1, 2 * nd, 2)))
    kernel = kernel.transpose(
        tuple(range(0, 2 * nd, 2)) + (2 * nd,) + tuple(range(1, 2 * nd, 2))
        + (2 * nd + 1,))
    phases = math.prod(strides)
    kernel = kernel.reshape(tuple(taps) + (in_features, phases * self.features))

    x = lax.pad(x, jnp.zeros((), x.dtype),
                [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in in_pads] + [(0, 0, 0)])
    sp = _SPATIAL[nd]
    z = lax.conv_general_dilated(
        x, kernel, window_strides=(1,) * nd, padding='VALID',
        dimension_numbers=(f'N{sp}C', f'{sp}IO', f'N{sp}C'),
        precision=self.precision)

    # Depth-to-space: [B, *G, (*s, O)] -> [B, G1*s1, ..., O], then crop.
    b, grid = z.shape[0], z.shape[1:-1]
    z = z.reshape((b,) + grid + strides + (self.features,))
    perm = [0]
    for i in range(nd):
      perm += [1 + i, 1 + nd + i]
    z = z.transpose(perm + [1 + 2 * nd])
    z = z.reshape((b,) + tuple(g * s for g, s in zip(grid, strides))
                  + (self.features,))
    y = lax.slice(z, (0,) + tuple(crops) + (0,),
                  (b,) + tuple(c + o for c, o in zip(crops, out_sizes))
                  + (self.features,))
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(batch_shape + y.shape[1:])


# Stride-s up-convolutions with identical parameters ('kernel' [k, k, in, out],
# 'bias' [out]) and identical maths, selectable by name from a config.
UPSAMPLERS: dict[str, Callable[..., Any]] = {
    'conv_transpose': nn.ConvTranspose,
    # Same function, fast gradients on XLA:CPU (see SubpixelConvTranspose).
    'subpixel': SubpixelConvTranspose,
}


def upsampler(name: str) -> Callable[..., Any]:
  """Returns the up-convolution module class registered as `name`."""
  try:
    return UPSAMPLERS[name]
  except KeyError:
    raise ValueError(
        f'Unsupported upsample {name!r}; choose one of {sorted(UPSAMPLERS)}.'
    ) from None
