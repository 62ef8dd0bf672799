"""Data parallelism: one pure step function, run by `jax.jit` or `jax.pmap`.

A step is written once, on the local batch, as
`step(state, batch, key, *, axis_name=None) -> (state, metrics)`. With
`axis_name=None` it sees the whole global batch (the `jit` mode: XLA splits
the work over a device mesh from the shardings); under `pmap` it sees one
device's slice and averages gradients and metrics with `lax.pmean`.

Randomness is drawn per example from keys that depend only on the example's
global index (`example_keys`), so both modes and any number of devices draw
exactly the same noise and dropout masks, and give the same numbers.

After `jax.distributed.initialize` (launch.py --distributed) the same code
runs on several processes: each feeds its own slice of the global batch
(`Parallel.shard_batch`), the jit mesh spans every process's devices and
pmap's `lax.pmean` averages over all of them. The state a checkpoint holds
is one copy on every device of every process (`Parallel.global_replicated`):
all processes save it together and restore straight into it; hooks and
evaluations get a copy on this process's first device
(`Parallel.unreplicate`). The helpers at the end make the processes agree
(a signal on any of them stops all; process 0's metrics decide NaN checks)
and wait for each other.
"""
from collections.abc import Callable, Iterable, Iterator
import collections
import functools
from typing import Any

import jax
from jax import lax
from jax.experimental import multihost_utils
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
    """Sets up a `mode` ('jit' or 'pmap') run.

    Args:
      mode: config.parallel.
      devices: a subset of this process's devices (tests); None: all of
        them (jit: every process's; pmap: this process's, mapped together
        with the other processes' ones).

    Raises:
      ValueError: an unknown mode, or `devices` in a multi-process run.
    """
    if mode not in MODES:
      raise ValueError(f'Unsupported config.parallel {mode!r}; choose one of {MODES}.')
    multi = jax.process_count() > 1
    if devices is not None and multi:
      raise ValueError('A multi-process run uses every device; choosing '
                       'devices is for one process.')
    self._setup(mode, devices, multi)

  def _setup(self, mode: str, devices: list[Any] | None, multi: bool) -> None:
    self.mode = mode
    # pmap's own choice (None) spans every process's local devices.
    self._pmap_devices = None if multi else devices
    if devices is None:
      # pmap maps over this process's devices; a jit mesh spans all hosts.
      devices = jax.devices() if mode == 'jit' else jax.local_devices()
    self.devices = list(devices)
    # Under pmap with several processes: this process's devices only.
    self.num_devices = len(self.devices)
    self.mesh = _mesh(self.devices)
    self.replicated = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec())
    # jit: the batch axis is split over devices; pmap: the leading device axis.
    self.data_sharding = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(DATA_AXIS))
    # One copy on every device of every process: checkpoints save and
    # restore this (under pmap the mesh above is this process's only).
    self.global_replicated = self.replicated
    if mode == 'pmap' and multi:
      self.global_replicated = jax.sharding.NamedSharding(
          _mesh(jax.devices()), jax.sharding.PartitionSpec())

  def local(self) -> 'Parallel':
    """This process's devices alone, for work that each process does on
    its own share (evaluation; `mrseg.eval.shards`): the run's own
    `Parallel` with one process, else a jit over this process's devices
    (no collective with the other processes)."""
    if jax.process_count() == 1:
      return self
    local = object.__new__(Parallel)
    local._setup('jit', jax.local_devices(), multi=False)
    return local

  def check_batch_size(self, global_batch: int) -> None:
    if global_batch % jax.device_count():
      raise ValueError(
          f'config.batch_size={global_batch} must be divisible by the number '
          f'of devices ({jax.device_count()}).')

  def replicate(self, tree: Any) -> Any:
    """Places a copy of `tree` on every device, for the step.

    `tree` is this process's copy (every process holds the same) or one
    restored into `global_replicated`.
    """
    if self.mode == 'jit':
      return jax.tree.map(lambda x: _replicate(x, self.replicated), tree)
    return jax.tree.map(
        lambda x: _stack_on_devices(_local_copy(x), self.data_sharding), tree)

  def unreplicate(self, tree: Any) -> Any:
    """One copy of a replicated tree that this process can compute on alone
    (on device; with several processes on this process's first device)."""
    if self.mode == 'pmap':
      return jax.tree.map(_first, tree)
    if jax.process_count() == 1:
      return tree
    return jax.tree.map(_local_copy, tree)

  def checkpoint_copy(self, tree: Any) -> Any:
    """One copy of a replicated tree for a checkpoint: with several
    processes in `global_replicated`, which all of them save together."""
    if self.mode == 'jit':
      return tree
    if jax.process_count() == 1:
      return self.unreplicate(tree)
    return jax.tree.map(
        lambda x: jax.make_array_from_single_device_arrays(
            x.shape[1:], self.global_replicated,
            [s.data[0] for s in x.addressable_shards]), tree)

  def restore_target(self, tree: Any) -> Any:
    """Shapes and dtypes of `tree` in `global_replicated`: a checkpoint is
    read straight into its place on every device of every process."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=self.global_replicated), tree)

  def shard_batch(self, batch: Any) -> Any:
    """Places this process's slice of the global batch (numpy) for the step."""
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
        devices=self._pmap_devices)
    # Metrics are identical on every device after pmean: return one copy.
    def run(state, batch, key):
      state, metrics = pmapped(state, batch, key)
      return state, jax.tree.map(_first, metrics)
    return run


def _mesh(devices: list[Any]) -> jax.sharding.Mesh:
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def _first(x: jax.Array) -> jax.Array:
  """Row 0 of pmap's per-device axis, on this process's first device.

  With several processes `x[0]` would be a computation over every process's
  devices, which only some processes may run (hooks run on process 0): the
  processes' collectives would then pair up wrongly or hang. So the row is
  taken from this process's own first shard.
  """
  if jax.process_count() == 1:
    return x[0]
  return x.addressable_data(0)[0]


def _local_copy(x: Any) -> Any:
  """A copy of a replicated array on one of this process's devices."""
  if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
    return x.addressable_data(0)
  return x


def _replicate(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  if (jax.process_count() == 1 or
      (isinstance(x, jax.Array) and not x.is_fully_addressable)):
    return jax.device_put(x, sharding)
  # This process's copy (each process holds the same) becomes its part of
  # one global array: no device_put from one device across processes.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding,
                                      lambda index: host[index])


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


# ----------------------------------------------------------------------------
# Several processes: agreeing and waiting. Each is free with one process.


def signal_on_any_process(signum: int | None) -> int | None:
  """The signal (SIGTERM/SIGINT) any process received, or None: a stop
  request on one process stops every process after the same step."""
  if jax.process_count() == 1:
    return signum
  got = multihost_utils.process_allgather(np.int32(signum or 0))
  return int(np.max(got)) or None


def from_main_process(tree: Any) -> Any:
  """Process 0's `tree` (numpy leaves) on every process, so that decisions
  gating collectives (NaN checks) are the same everywhere."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.broadcast_one_to_all(tree)


def barrier(name: str) -> None:
  """Waits until every process gets here (files process 0 wrote before are
  then there for all)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
