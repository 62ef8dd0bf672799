"""Up-convolutions a config picks by name (`upsample`): UPSAMPLERS.

Strided up-convolutions are the slow part of a GAN step on XLA:CPU.
``SubpixelConvTranspose`` computes exactly ``nn.ConvTranspose``'s function
with `conv_ops.subpixel_conv_transpose`, whose forward and backward passes
are plain stride-1 convolutions, and keeps ``nn.ConvTranspose``'s
parameters, so checkpoints and parameter counts do not depend on which one
a config picks. ``ResizeConv`` (nearest-neighbour resize, then a
convolution) has the same parameters but another function.
"""
from collections.abc import Callable, Sequence
import math
from typing import Any

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
from jax import lax
import jax.numpy as jnp

from mrseg.models import conv_ops
from mrseg.models import layers

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
  padding: conv_ops.PaddingLike = 'SAME'
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
    if nd not in conv_ops.SPATIAL:
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
    y = conv_ops.subpixel_conv_transpose(x, kernel, strides, pads,
                                         self.precision)
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(batch_shape + y.shape[1:])


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


# Stride-s up-convolutions with identical parameters ('kernel' [k, k, in, out],
# 'bias' [out]), selectable by name from a config.
UPSAMPLERS: dict[str, Callable[..., Any]] = {
    'conv_transpose': nn.ConvTranspose,
    # Same function, fast gradients on XLA:CPU (see SubpixelConvTranspose).
    'subpixel': SubpixelConvTranspose,
    # Another function (same parameter shapes): no checkerboard artefacts.
    'resize_conv': ResizeConv,
}


def upsampler(name: str) -> Callable[..., Any]:
  """Returns the up-convolution module class registered as `name`."""
  return layers.choose(UPSAMPLERS, name, 'upsample')
