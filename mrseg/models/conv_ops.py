"""Functional convolutions that XLA:CPU runs fast, forward and backward.

Each computes what ``lax.conv_general_dilated`` or ``lax.conv_transpose``
computes (channels last), by another route:

* `subpixel_conv_transpose`: a strided transposed convolution as a stride-1
  convolution followed by depth-to-space ("sub-pixel convolution", Shi et
  al. 2016). XLA lowers ``lax.conv_transpose`` to a convolution over a
  zero-dilated input whose gradient runs 10-35x slower than oneDNN's.
* `conv_fast_grad`: XLA's convolution, with a kernel gradient computed as
  one matmul of im2col patches and a strided input gradient computed by
  `subpixel_conv_transpose` (the two call each other).
* `conv_depth_to_channels`: a 3D convolution as one 2D convolution, which
  XLA:CPU sends to its fast library.

The modules that use them (`convs`, `upsample`) keep flax's parameters.
"""
from collections.abc import Sequence
import functools
import itertools
import math
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp

PaddingLike = str | int | Sequence[int | tuple[int, int]]

# Spatial axis letters for lax's dimension numbers, by number of spatial axes.
SPATIAL = {1: 'H', 2: 'HW', 3: 'DHW'}


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array,
                            strides: Sequence[int],
                            pads: Sequence[tuple[int, int]],
                            precision: Any = None) -> jax.Array:
  """``lax.conv_transpose(x, kernel, strides, pads)`` by sub-pixel convolution.

  Args:
    x: [B, *spatial, in] (channels last, one batch axis).
    kernel: [*k, in, out], not flipped (``transpose_kernel=False``).
    strides: up-sampling factor per spatial axis.
    pads: explicit (low, high) padding of the stride-dilated input per axis,
      as ``lax.conv_transpose`` takes it (may be negative).
    precision: ``lax.Precision`` of the convolution.

  Returns:
    [B, *out_spatial, out]; see SubpixelConvTranspose for why it is exact.

  Raises:
    ValueError: if the output would be empty.
  """
  nd = x.ndim - 2
  kernel_size = kernel.shape[:nd]
  in_features, features = kernel.shape[nd], kernel.shape[nd + 1]
  strides = tuple(strides)
  # Per axis: taps per phase, output size, input padding and output crop.
  taps, out_sizes, in_pads, crops = [], [], [], []
  for n, k, s, (pad_lo, pad_hi) in zip(x.shape[1:-1], kernel_size, strides,
                                       pads):
    out = (n - 1) * s + 1 + pad_lo + pad_hi - k + 1
    if out <= 0:
      raise ValueError(
          f'SubpixelConvTranspose: empty output for input size {n}, kernel '
          f'{k}, stride {s}, padding {(pad_lo, pad_hi)}.')
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
  kernel = kernel.reshape(split + [in_features, features])
  kernel = jnp.flip(kernel, axis=tuple(range(1, 2 * nd, 2)))
  kernel = kernel.transpose(
      tuple(range(0, 2 * nd, 2)) + (2 * nd,) + tuple(range(1, 2 * nd, 2))
      + (2 * nd + 1,))
  phases = math.prod(strides)
  kernel = kernel.reshape(tuple(taps) + (in_features, phases * features))

  x = lax.pad(x, jnp.zeros((), x.dtype),
              [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in in_pads] + [(0, 0, 0)])
  # Its kernel gradient is a matmul too (see conv_fast_grad).
  z = conv_fast_grad(x, kernel, (1,) * nd, ((0, 0),) * nd, precision)

  # Depth-to-space: [B, *G, (*s, O)] -> [B, G1*s1, ..., O], then crop.
  b, grid = z.shape[0], z.shape[1:-1]
  z = z.reshape((b,) + grid + strides + (features,))
  perm = [0]
  for i in range(nd):
    perm += [1 + i, 1 + nd + i]
  z = z.transpose(perm + [1 + 2 * nd])
  z = z.reshape((b,) + tuple(g * s for g, s in zip(grid, strides))
                + (features,))
  y = lax.slice(z, (0,) + tuple(crops) + (0,),
                (b,) + tuple(c + o for c, o in zip(crops, out_sizes))
                + (features,))
  return y


def _dimension_numbers(nd: int) -> tuple[str, str, str]:
  sp = SPATIAL[nd]
  return f'N{sp}C', f'{sp}IO', f'N{sp}C'


def _conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(
      x, w, window_strides=strides, padding=pads,
      dimension_numbers=_dimension_numbers(x.ndim - 2), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_fast_grad(x: jax.Array, w: jax.Array, strides: tuple[int, ...],
                   pads: tuple[tuple[int, int], ...], precision: Any = None
                   ) -> jax.Array:
  """``lax.conv_general_dilated`` (channels last) with matmul-based gradients.

  The forward pass is XLA's convolution. The backward pass avoids the two
  convolutions that XLA:CPU runs slowly, or very slowly when a surrounding
  change (a `lax.scan`, a layout) moves them off its fast path: the kernel
  gradient, a convolution whose window is the whole image, becomes one matmul
  of im2col patches with the output gradient; the input gradient of a strided
  convolution, a convolution over a stride-dilated input, becomes a sub-pixel
  transposed convolution (`subpixel_conv_transpose`). The maths are unchanged
  and the backward pass is plain JAX, so it can be differentiated again (as
  WGAN-GP's gradient penalty does).

  Args:
    x: [B, *spatial, in].
    w: [*k, in, out].
    strides: stride per spatial axis.
    pads: explicit (low, high) padding per spatial axis.
    precision: ``lax.Precision`` of the convolutions and matmuls.

  Returns:
    [B, *out_spatial, out].
  """
  return _conv(x, w, strides, pads, precision)


def _conv_fast_grad_fwd(x, w, strides, pads, precision):
  return _conv(x, w, strides, pads, precision), (x, w)


def _conv_fast_grad_bwd(strides, pads, precision, res, g):
  x, w = res
  nd = x.ndim - 2
  k = w.shape[:nd]
  out = g.shape[1:-1]
  if all(s == 1 for s in strides):
    # Stride 1: XLA's input gradient is a plain stride-1 convolution.
    _, vjp = jax.vjp(lambda x: _conv(x, w, strides, pads, precision), x)
    dx = vjp(g)[0]
  else:
    # dx = conv_transpose(g, w flipped with in/out swapped), with the padding
    # that gives back the input size (JAX's own _conv_general_vjp_lhs_padding).
    t_pads = [(kk - 1 - lo, n - 1 - (m - 1) * s + lo)
              for kk, (lo, _), n, m, s in zip(k, pads, x.shape[1:-1], out,
                                              strides)]
    w_t = jnp.flip(w, axis=tuple(range(nd))).swapaxes(nd, nd + 1)
    dx = subpixel_conv_transpose(g, w_t, strides, t_pads, precision)
  # dw[t, i, o] = sum over examples and output positions of
  # x_pad[s * p + t, i] * g[p, o]: one matmul of im2col patches with g.
  xp = lax.pad(x, jnp.zeros((), x.dtype),
               [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
  cols = []
  for tap in itertools.product(*(range(kk) for kk in k)):
    start = (0,) + tap + (0,)
    limit = ((xp.shape[0],) + tuple(t + s * (m - 1) + 1 for t, s, m in
                                    zip(tap, strides, out)) + (xp.shape[-1],))
    cols.append(lax.slice(xp, start, limit, (1,) + tuple(strides) + (1,)))
  patches = jnp.concatenate(cols, axis=-1)
  dw = lax.dot_general(
      patches.reshape(-1, patches.shape[-1]), g.reshape(-1, g.shape[-1]),
      (((0,), (0,)), ((), ())), precision=precision,
      preferred_element_type=w.dtype)
  return dx.astype(x.dtype), dw.reshape(w.shape)


conv_fast_grad.defvjp(_conv_fast_grad_fwd, _conv_fast_grad_bwd)


# flax's NDHWC, DHWIO, NDHWC, as lax.conv_dimension_numbers spells it.
_CHANNELS_LAST_3D = lax.ConvDimensionNumbers(
    lhs_spec=(0, 4, 1, 2, 3), rhs_spec=(4, 3, 0, 1, 2),
    out_spec=(0, 4, 1, 2, 3))


def depth_to_channels_fallback(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
    lhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
    feature_group_count: int = 1, batch_group_count: int = 1) -> str | None:
  """Why `conv_depth_to_channels` leaves a convolution to XLA, or None.

  Args: as ``lax.conv_general_dilated``'s.
  """
  if lhs.ndim != 5:
    return f'{lhs.ndim - 2} spatial axes (only 3D convolutions are rewritten)'
  dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if dnums != _CHANNELS_LAST_3D:
    return f'dimension numbers {dnums} (only NDHWC, DHWIO, NDHWC)'
  if any(d != 1 for d in (lhs_dilation or (1,) * 3)):
    return f'input dilation {lhs_dilation}'
  if feature_group_count != 1 or batch_group_count != 1:
    return 'feature or batch groups'
  return None


def conv_depth_to_channels(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None, feature_group_count: int = 1,
    batch_group_count: int = 1, precision: Any = None,
    preferred_element_type: Any = None) -> jax.Array:
  """``lax.conv_general_dilated``, with a 3D convolution run as one 2D one.

  XLA:CPU sends 2D convolutions and their gradients to a fast library
  (YNNPACK in jaxlib 0.10) but runs 3D ones on a generic path, 1.6-3x slower
  at stride 1 and 20-200x slower for strided convolutions' gradients. A 3D
  convolution with kernel [kd, kh, kw, C, O] is a 2D convolution over
  (H, W) whose input stacks the kd depth taps of the (depth-padded) input
  along the channels -- tap t of output depth d reads input depth
  d * stride + t * dilation -- with the output depth folded into the batch
  and the kernel reshaped to [kh, kw, kd * C, O]: the same sums of
  products, in another order (outputs agree to float32 rounding, ~1e-6
  relative). The stacked input costs kd / depth stride times the input's
  memory. Gradients are JAX's of the 2D convolution (on the fast path too)
  and of the slices, so the function can be differentiated again.

  Anything else falls back to ``lax.conv_general_dilated`` unchanged: other
  ranks, layouts other than channels last (flax's), input dilation, feature
  or batch groups. Strides, kernel dilation and any 'SAME', 'VALID' or
  explicit (also negative) padding are supported.

  Args and returns: as ``lax.conv_general_dilated``.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers,
              feature_group_count=feature_group_count,
              batch_group_count=batch_group_count, precision=precision,
              preferred_element_type=preferred_element_type)
  if depth_to_channels_fallback(lhs, rhs, window_strides, lhs_dilation,
                                dimension_numbers, feature_group_count,
                                batch_group_count):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  kd, kh, kw, c, o = rhs.shape
  dd, dh, dw = tuple(rhs_dilation or (1, 1, 1))
  sd, sh, sw = tuple(window_strides)
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip((kd, kh, kw), (dd, dh, dw))]
    padding = lax.padtype_to_pads(lhs.shape[1:4], dilated, (sd, sh, sw),
                                  padding)
  (d_lo, d_hi), pad_h, pad_w = [tuple(p) for p in padding]
  b, depth = lhs.shape[:2]
  span = depth + d_lo + d_hi - (kd - 1) * dd  # positions a window fits
  if span <= 0:  # an empty output: let XLA say what it says
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  out_depth = (span - 1) // sd + 1
  # Depth padding (negative crops); H and W are padded by the 2D convolution.
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
              ((0, 0, 0), (d_lo, d_hi, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)))
  # [B, D', H, W, C] -> [B, D_out, H, W, (kd, C)]: tap t of output depth d
  # reads padded depth d * sd + t * dd.
  x = jnp.concatenate(
      [lax.slice_in_dim(x, t * dd, t * dd + sd * (out_depth - 1) + 1,
                        stride=sd, axis=1) for t in range(kd)], axis=-1)
  x = x.reshape((b * out_depth,) + x.shape[2:])
  # [kd, kh, kw, C, O] -> [kh, kw, (kd, C), O], matching the channel order.
  w = rhs.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kd * c, o)
  y = lax.conv_general_dilated(
      x, w, (sh, sw), (pad_h, pad_w), rhs_dilation=(dh, dw),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision,
      preferred_element_type=preferred_element_type)
  return y.reshape((b, out_depth) + y.shape[1:])
