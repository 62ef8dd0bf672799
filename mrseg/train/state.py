"""Training state: pure pytrees that flow through pure step functions."""
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

# XLA options of `jax_disable_most_optimizations`, for run-once functions.
_FAST_COMPILE = {'xla_backend_optimization_level': 0,
                 'xla_llvm_disable_expensive_passes': True}


class NetState(flax.struct.PyTreeNode):
  """One network's parameters, optimizer state and batch statistics.

  The optimizer itself is static (not a pytree leaf), so checkpoints hold
  only arrays and a state is rebuilt from the config before a restore.
  """

  params: Any
  opt_state: Any
  batch_stats: Any = flax.struct.field(default_factory=dict)
  tx: optax.GradientTransformation = flax.struct.field(
      pytree_node=False, default=None)

  @classmethod
  def create(cls, variables: Any, tx: optax.GradientTransformation) -> 'NetState':
    params = variables['params']
    return cls(params=params, opt_state=tx.init(params),
               batch_stats=variables.get('batch_stats', {}), tx=tx)

  def apply_gradients(self, grads: Any, **changes: Any) -> 'NetState':
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, **changes)

  @property
  def variables(self) -> dict[str, Any]:
    if self.batch_stats:
      return {'params': self.params, 'batch_stats': self.batch_stats}
    return {'params': self.params}


class GANState(flax.struct.PyTreeNode):
  """Both networks of a GAN and the step count, in one checkpointable tree."""

  step: jax.Array
  gen: NetState
  disc: NetState

  @classmethod
  def create(cls, gen: NetState, disc: NetState) -> 'GANState':
    return cls(step=jnp.zeros((), jnp.int32), gen=gen, disc=disc)


class EMAGANState(flax.struct.PyTreeNode):
  """A GAN state that also keeps an exponential moving average of G's params.

  Samples come from `ema`: averaging the generator's recent iterates
  smooths out the oscillation of GAN training (Yazici et al. 2019).
  """

  step: jax.Array
  gen: NetState
  disc: NetState
  ema: Any

  @classmethod
  def create(cls, gen: NetState, disc: NetState) -> 'EMAGANState':
    return cls(step=jnp.zeros((), jnp.int32), gen=gen, disc=disc,
               ema=gen.params)


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """One EMA step towards `params`, after `step` earlier updates.

  The decay warms up as min(decay, (1 + step) / (10 + step)) (TensorFlow's
  num_updates rule), so early on the average does not remember the random
  initialisation.
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)


def compile_init(init: Callable[[jax.Array], Any], key: jax.Array
                 ) -> Callable[[jax.Array], Any]:
  """`init` compiled once for keys like `key`, without XLA's optimisations.

  One compilation instead of hundreds of eager ops; without the
  optimisations, because with them XLA:CPU spends seconds per layer on the
  random initialisers (70 s for a tiny UNet) of a function run once.
  """
  return jax.jit(init).lower(key).compile(compiler_options=_FAST_COMPILE)
