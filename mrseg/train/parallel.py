"""Data parallelism: one pure step function, run by `jax.jit` or `jax.pmap`.

A step is written once, on the local batch, as
`step(state, batch, key, *, axis_name=None) -> (state, metrics)`. With
`axis_name=None` it sees the whole global batch (the `jit` mode: XLA splits
the work over a device mesh from the shardings); under `pmap` it sees one
device's slice and averages gradients and metrics with `lax.pmean`.

Randomness is drawn per example from keys that depend only on the example's
global index (`example_keys`), so both modes and any number of devices draw
exactly the same noise and dropout masks, and give the same numbers.
"""
from collections.abc import Callable, Iterable, Iterator
import collections
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

DATA_AXIS = 'data'
MODES = ('jit', 'pmap')


def example_keys(key: jax.Array, local_batch: int,
                 axis_name: str | None = None) -> jax.Array:
  """One key per example of this device's batch, the same in every mode.

  Args:
    key: a key shared by all devices.
    local_batch: number of examples this call sees.
    axis_name: the pmap axis, or None when the call sees the global batch.

  Returns:
    Keys [local_batch]: rows `i*local_batch ... (i+1)*local_batch - 1` of
    `split(key, global_batch)` on device i.
  """
  if axis_name is None:
    return jax.random.split(key, local_batch)
  num_devices = lax.axis_size(axis_name)
  keys = jax.random.split(key, local_batch * num_devices)
  start = lax.axis_index(axis_name) * local_batch
  return lax.dynamic_slice_in_dim(keys, start, local_batch)


def mean_over_devices(tree: Any, axis_name: str | None) -> Any:
  """`lax.pmean` under pmap; the identity where the step sees all data."""
  if axis_name is None:
    return tree
  return lax.pmean(tree, axis_name)


class Parallel:
  """Places state and batches on devices and compiles a step for one mode."""

  def __init__(self, mode: str = 'jit', devices: list[Any] | None = None):
    if mode not in MODES:
      raise ValueError(f'Unsupported config.parallel {mode!r}; choose one of {MODES}.')
    self.mode = mode
    if devices is None:
      # pmap maps over this process's devices; a jit mesh spans all hosts.
      devices = jax.devices() if mode == 'jit' else jax.local_devices()
    self.devices = list(devices)
    self.num_devices = len(self.devices)
    self.mesh = jax.make_mesh(
        (self.num_devices,), (DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,), devices=self.devices)
    self.replicated = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec())
    # jit: the batch axis is split over devices; pmap: the leading device axis.
    self.data_sharding = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(DATA_AXIS))

  def check_batch_size(self, global_batch: int) -> None:
    if global_batch % jax.device_count():
      raise ValueError(
          f'config.batch_size={global_batch} must be divisible by the number '
          f'of devices ({jax.device_count()}).')

  def replicate(self, tree: Any) -> Any:
    """Puts a copy of `tree` on every device."""
    if self.mode == 'jit':
      return jax.device_put(tree, self.replicated)
    return jax.tree.map(lambda x: _stack_on_devices(x, self.data_sharding), tree)

  def unreplicate(self, tree: Any) -> Any:
    """One copy of a replicated tree (still on device)."""
    if self.mode == 'jit':
      return tree
    return jax.tree.map(lambda x: x[0], tree)

  def shard_batch(self, batch: Any) -> Any:
    """Places a process-local batch of numpy arrays for the step."""
    if self.mode == 'jit':
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(self.data_sharding, x),
          batch)
    return jax.tree.map(
        lambda x: _split_on_devices(np.asarray(x), self.data_sharding), batch)

  def compile(self, step: Callable[..., Any], donate: bool = True) -> Callable[..., Any]:
    """Compiles `step(state, batch, key, *, axis_name)` for this mode."""
    donate_argnums = (0,) if donate else ()
    if self.mode == 'jit':
      return jax.jit(
          functools.partial(step, axis_name=None),
          in_shardings=(self.replicated, self.data_sharding, self.replicated),
          out_shardings=(self.replicated, self.replicated),
          donate_argnums=donate_argnums)
    pmapped = jax.pmap(
        functools.partial(step, axis_name=DATA_AXIS), axis_name=DATA_AXIS,
        in_axes=(0, 0, None), donate_argnums=donate_argnums,
        devices=self.devices)
    # Metrics are identical on every device after pmean: return one copy.
    def run(state, batch, key):
      state, metrics = pmapped(state, batch, key)
      return state, jax.tree.map(lambda x: x[0], metrics)
    return run


def _stack_on_devices(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  x = jnp.asarray(x)
  n = sharding.mesh.devices.size
  return jax.device_put(jnp.broadcast_to(x[None], (n,) + x.shape), sharding)


def _split_on_devices(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  n = sharding.mesh.devices.size
  if x.shape[0] % n:
    raise ValueError(f'Batch of {x.shape[0]} does not split over {n} devices.')
  return jax.device_put(x.reshape((n, x.shape[0] // n) + x.shape[1:]), sharding)


def prefetch(iterator: Iterable[Any], put: Callable[[Any], Any],
             size: int = 2) -> Iterator[Any]:
  """Keeps `size` batches in flight on the devices while the step runs."""
  queue = collections.deque()
  iterator = iter(iterator)
  def enqueue(n):
    for _ in range(n):
      try:
        queue.append(put(next(iterator)))
      except StopIteration:
        return
  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
