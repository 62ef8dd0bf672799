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
import functools
import itertools
import math
from typing import Any

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
from jax import lax
import jax.numpy as jnp

# Kernel initialisers a config can name (`weight_init`), shared by every model.
KERNEL_INITS: dict[str, Callable[..., Any]] = {
    # Keras' default, which paper 1's code used.
    'glorot_uniform': nn.initializers.glorot_uniform(),
    # Ronneberger et al.: Gaussian with std sqrt(2/N), N = fan-in (He init).
    'he_normal': nn.initializers.he_normal(),
    'lecun_normal': nn.initializers.lecun_normal(),
    # Radford et al.'s DCGAN initialisation.
    'normal_0.02': nn.initializers.normal(0.02),
    # Mondal's TF code: N(0, 0.05) for every kernel (weight-normalised or not).
    'normal_0.05': nn.initializers.normal(0.05),
}

# Compute dtypes a config can name (`model.dtype`); parameters stay float32.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}


def kernel_init(name: str) -> Callable[..., Any]:
  """Returns the initialiser called ``name`` in KERNEL_INITS."""
  try:
    return KERNEL_INITS[name]
  except KeyError:
    raise ValueError(
        f'Unsupported kernel_init {name!r}; choose one of '
        f'{sorted(KERNEL_INITS)}.') from None


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def compute_dtype(name: str) -> Any:
  """The jnp dtype called ``name`` in DTYPES."""
  try:
    return DTYPES[name]
  except KeyError:
    raise ValueError(f'Unsupported model.dtype {name!r}; choose one of '
                     f'{sorted(DTYPES)}.') from None


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

    pads = [_transpose_padding(k, st, p)
            for k, st, p in zip(kernel_size, strides, paddings)]
    y = subpixel_conv_transpose(x, kernel, strides, pads, self.precision)
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(batch_shape + y.shape[1:])


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
  sp = _SPATIAL[nd]
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


class FastGradConv(nn.Module):
  """``nn.Conv`` (same parameters, same outputs) with `conv_fast_grad`.

  A drop-in for ``flax.linen.Conv`` in the common case: 1 to 3 spatial axes,
  channels last, no dilation or feature groups, padding 'SAME', 'VALID', an
  int or explicit pairs. Parameters: ``kernel`` [*kernel_size, in, features],
  ``bias`` [features].

  Attributes:
    features: number of output channels.
    kernel_size: kernel size per spatial axis.
    strides: stride per spatial axis (an int is broadcast).
    padding: 'SAME', 'VALID', an int, or per-axis ints or (low, high) pairs,
      read as ``nn.Conv`` reads them.
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: dtype of the parameters.
    precision: ``lax.Precision``.
    kernel_init: kernel initialiser.
    bias_init: bias initialiser.
  """

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., Any] = nn.linear.default_kernel_init
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the convolution to [*batch, *spatial, in] inputs.

    Raises:
      ValueError: for 'CIRCULAR'/'CAUSAL' padding or bad strides.
    """
    kernel_size = tuple(self.kernel_size)
    nd = len(kernel_size)
    if nd not in _SPATIAL:
      raise ValueError(f'FastGradConv supports 1 to 3 spatial axes, got '
                       f'kernel {kernel_size}.')
    strides = ((self.strides,) * nd if isinstance(self.strides, int)
               else tuple(self.strides))
    if len(strides) != nd or min(strides) < 1:
      raise ValueError(f'strides {self.strides} must be {nd} positive ints '
                       f'for kernel {kernel_size}.')
    batch_shape = inputs.shape[:inputs.ndim - nd - 1]
    x = inputs.reshape((-1,) + inputs.shape[len(batch_shape):])
    if isinstance(self.padding, str):
      if self.padding not in ('SAME', 'VALID'):
        raise ValueError(f'FastGradConv supports padding SAME, VALID or '
                         f'explicit pairs, not {self.padding!r}.')
      pads = lax.padtype_to_pads(x.shape[1:-1], kernel_size, strides,
                                 self.padding)
    else:
      pads = nn.linear.canonicalize_padding(self.padding, nd)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    kernel = self.param('kernel', self.kernel_init,
                        kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_fast_grad(x, kernel, strides, pads, self.precision)
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(batch_shape + y.shape[1:])


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


class DepthToChannelsConv(nn.Conv):
  """``nn.Conv`` whose 3D convolutions run as 2D ones.

  The same module as ``flax.linen.Conv`` (same attributes, parameters,
  initialisation, padding rules and function); only the convolution
  primitive is `conv_depth_to_channels`, which XLA:CPU runs 1.6-3x faster for
  3D stride-1 convolutions (far more for strided ones) and which leaves
  every other convolution to XLA.
  """

  conv_general_dilated: Any = conv_depth_to_channels


# Convolutions with nn.Conv's parameters and maths, selectable from a config.
CONVS: dict[str, Callable[..., Any]] = {
    'xla': nn.Conv,
    # Same function; its gradients are matmuls and sub-pixel convolutions,
    # which XLA:CPU runs fast (see conv_fast_grad).
    'fast_grad': FastGradConv,
    # Same module; 3D convolutions computed as 2D ones, which XLA:CPU runs
    # 1.6-3x faster, strided ones far more (see conv_depth_to_channels).
    'depth_to_channels': DepthToChannelsConv,
}


def conv(name: str) -> Callable[..., Any]:
  """Returns the convolution module class registered as `name`."""
  try:
    return CONVS[name]
  except KeyError:
    raise ValueError(
        f'Unsupported conv {name!r}; choose one of {sorted(CONVS)}.') from None

# Stride-s up-convolutions with identical parameters ('kernel' [k, k, in, out],
# 'bias' [out]) and identical maths, selectable by name from a config.
class ResizeConv(nn.Module):
  """Nearest-neighbour up-sampling by `strides`, then a stride-1 convolution.

  Odena et al. 2016 ("Deconvolution and checkerboard artifacts", Distill):
  a transposed convolution whose kernel overlaps unevenly draws checkerboard
  patterns that a GAN's generator must learn to cancel, which takes long
  early in training; resizing first gives every output pixel the same taps.
  Takes the same arguments as ``nn.ConvTranspose`` as the models call it,
  and its parameters have the same names and shapes (``kernel``
  [*kernel_size, in, features], ``bias`` [features]), so a layer table's
  parameter count is unchanged. It is NOT the same function: it costs
  prod(strides) times the multiply-adds of the sub-pixel up-convolution.

  Attributes:
    features: number of output channels.
    kernel_size: kernel size per spatial axis.
    strides: up-sampling factor per spatial axis (an int is broadcast).
    padding: padding of the stride-1 convolution ('SAME' keeps the size).
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: dtype of the parameters.
    kernel_init: kernel initialiser.
    bias_init: bias initialiser.
  """

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: Any = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_size = tuple(self.kernel_size)
    dims = len(kernel_size)
    strides = self.strides or 1
    if isinstance(strides, int):
      strides = (strides,) * dims
    for axis, factor in enumerate(strides):
      x = jnp.repeat(x, factor, axis=x.ndim - 1 - dims + axis)
    kernel = self.param('kernel', self.kernel_init,
                        (*kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    spatial = ''.join('DHW'[-dims:])
    y = lax.conv_general_dilated(
        x, kernel, (1,) * dims, self.padding,
        dimension_numbers=(f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'))
    return y if bias is None else y + bias


UPSAMPLERS: dict[str, Callable[..., Any]] = {
    'conv_transpose': nn.ConvTranspose,
    # Same function, fast gradients on XLA:CPU (see SubpixelConvTranspose).
    'subpixel': SubpixelConvTranspose,
    # Another function (same parameter shapes): no checkerboard artefacts.
    'resize_conv': ResizeConv,
}


def upsampler(name: str) -> Callable[..., Any]:
  """Returns the up-convolution module class registered as `name`."""
  try:
    return UPSAMPLERS[name]
  except KeyError:
    raise ValueError(
        f'Unsupported upsample {name!r}; choose one of {sorted(UPSAMPLERS)}.'
    ) from None


def spectral_normalize(kernel: jax.Array, power_iterations: int = 3
                       ) -> jax.Array:
  """`kernel` [..., features] divided by its spectral norm (Miyato et al. 2018).

  Stateless: sigma comes from `power_iterations` steps of power iteration
  from a fixed vector at every call (no `u` carried between steps, so no
  extra state in checkpoints), with the singular vectors held constant in
  the gradient as Miyato et al. do. The kernel is read as a matrix
  [prod(other axes), features].
  """
  features = kernel.shape[-1]
  w = kernel.reshape(-1, features)
  u = jnp.ones((features,), jnp.float32) / jnp.sqrt(features)
  for _ in range(power_iterations):
    v = w @ u
    v = v / (jnp.linalg.norm(v) + 1e-12)
    u = w.T @ v
    u = u / (jnp.linalg.norm(u) + 1e-12)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  sigma = v @ w @ u
  return kernel / (sigma + 1e-12)


def spectral_norm(module_cls: Callable[..., Any], is_initializing: bool,
                  power_iterations: int = 3) -> Callable[..., Any]:
  """`module_cls` (a conv or dense layer) with a spectrally normalised kernel.

  The parameters keep their names and shapes, so parameter counts and
  checkpoint trees do not change; only what the layer computes with does.
  Pass the calling module's `self.is_initializing()`.
  """
  def normalize(variables):  # {'params': {'kernel': ..., 'bias': ...}}
    params = variables.get('params', {})
    # At init the layer's own initialiser must write the raw kernel.
    if is_initializing or 'kernel' not in params:
      return variables
    kernel = spectral_normalize(params['kernel'], power_iterations)
    return {**variables, 'params': {**params, 'kernel': kernel}}
  return nn.map_variables(module_cls, 'params', trans_in_fn=normalize,
                          init=is_initializing)
