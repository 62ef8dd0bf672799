"""Layers shared by the models."""
from collections.abc import Callable
from typing import Any

import flax.linen as nn

# Stride-s up-convolutions with identical parameters ('kernel' [k, k, in, out],
# 'bias' [out]) and identical maths, selectable by name from a config.
UPSAMPLERS: dict[str, Callable[..., Any]] = {
    'conv_transpose': nn.ConvTranspose,
}


def upsampler(name: str) -> Callable[..., Any]:
  try:
    return UPSAMPLERS[name]
  except KeyError:
    raise ValueError(
        f'Unsupported upsample {name!r}; choose one of {sorted(UPSAMPLERS)}.'
    ) from None
