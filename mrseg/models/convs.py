"""Convolutions a config picks by name (`conv`): CONVS.

All have ``nn.Conv``'s parameters and function; they differ in how XLA:CPU
runs them (the primitives are in `conv_ops`): ``FastGradConv`` computes its
gradients as matmuls and sub-pixel convolutions, ``DepthToChannelsConv``
runs 3D convolutions as 2D ones.
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
from jax import lax
import jax.numpy as jnp

from mrseg.models import conv_ops
from mrseg.models import layers

class FastGradConv(nn.Module):
  """``nn.Conv`` (same parameters, same outputs) with `conv_ops.conv_fast_grad`.

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
  padding: conv_ops.PaddingLike = 'SAME'
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
    if nd not in conv_ops.SPATIAL:
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
    y = conv_ops.conv_fast_grad(x, kernel, strides, pads, self.precision)
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(batch_shape + y.shape[1:])


class DepthToChannelsConv(nn.Conv):
  """``nn.Conv`` whose 3D convolutions run as 2D ones.

  The same module as ``flax.linen.Conv`` (same attributes, parameters,
  initialisation, padding rules and function); only the convolution
  primitive is `conv_ops.conv_depth_to_channels`, which XLA:CPU runs 1.6-3x
  faster for 3D stride-1 convolutions (far more for strided ones) and which
  leaves every other convolution to XLA.
  """

  conv_general_dilated: Any = conv_ops.conv_depth_to_channels


# Convolutions with nn.Conv's parameters and maths, selectable from a config.
CONVS: dict[str, Callable[..., Any]] = {
    'xla': nn.Conv,
    # Same function; its gradients are matmuls and sub-pixel convolutions,
    # which XLA:CPU runs fast (see conv_ops.conv_fast_grad).
    'fast_grad': FastGradConv,
    # Same module; 3D convolutions computed as 2D ones, which XLA:CPU runs
    # 1.6-3x faster, strided ones far more (see
    # conv_ops.conv_depth_to_channels).
    'depth_to_channels': DepthToChannelsConv,
}


def conv(name: str) -> Callable[..., Any]:
  """Returns the convolution module class registered as `name`."""
  return layers.choose(CONVS, name, 'conv')
