"""Settings every model shares, and spectral normalisation.

Kernel initialisers and compute dtypes a config names (`weight_init`,
`model.dtype`), parameter counts, and Miyato et al.'s spectral norm (the
DCGAN's and the conditional GAN's discriminators). The convolution and
up-convolution modules a config picks by name live in `convs` and
`upsample`, their primitives in `conv_ops`.
"""
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
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


def choose(table: dict[str, Any], name: str, what: str) -> Any:
  """`table[name]`, or a ValueError naming `what` and the choices."""
  try:
    return table[name]
  except KeyError:
    raise ValueError(f'Unsupported {what} {name!r}; choose one of '
                     f'{sorted(table)}.') from None


def kernel_init(name: str) -> Callable[..., Any]:
  """Returns the initialiser called ``name`` in KERNEL_INITS."""
  return choose(KERNEL_INITS, name, 'kernel_init')


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def compute_dtype(name: str) -> Any:
  """The jnp dtype called ``name`` in DTYPES."""
  return choose(DTYPES, name, 'model.dtype')


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
