"""Evaluation split over processes: each its own share of the cases, one gather.

With several processes (launch.py --distributed) every process evaluates the
cases `share` gives it, alone on its own devices (`Parallel.local`), and one
gather hands every process the results of all: exact sums (`gather_sum`:
confusion matrices, loss sums, counts) or the cases' predictions back in the
split's order (`gather_cases`). Process 0 then writes the report
(`written_by_main`). Values travel as their bytes, so int64 counts and
float64 sums arrive exact (JAX itself would narrow them to 32 bits).

With one process the share is the whole split, the gathers return their
input and nothing waits: the numbers are those of a run without this module.
"""
from collections.abc import Callable, Sequence
import math
from typing import Any, TypeVar

import jax
from jax.experimental import multihost_utils
import numpy as np

from mrseg import workdir as workdir_lib
from mrseg.train import parallel as parallel_lib

T = TypeVar('T')


def share(cases: Sequence[T]) -> Sequence[T]:
  """This process's cases: every process_count-th one from its index (as
  `volumes.eval_volumes`); all of them with one process."""
  return cases[jax.process_index()::jax.process_count()]


def per_process(size: int, name: str) -> int:
  """A run's evaluation batch `size` as one process's batch: each device
  then sees what it sees in a one-process run.

  Raises:
    ValueError: `size` does not split over every process's devices.
  """
  processes = jax.process_count()
  if processes == 1:
    return size
  if size % jax.device_count():
    raise ValueError(f'config.{name}={size} must be divisible by the number '
                     f'of devices ({jax.device_count()}).')
  return size // processes


def _allgather(tree: Any) -> Any:
  """Each numpy leaf of every process, stacked [process_count, ...]: one
  collective call, exact for any dtype (sent as bytes)."""
  leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, tree))
  sent = [np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in leaves]
  got = multihost_utils.process_allgather(sent)
  return treedef.unflatten([
      np.asarray(g).view(x.dtype).reshape((-1,) + x.shape)
      for g, x in zip(got, leaves)])


def gather_sum(tree: Any) -> Any:
  """Every process's `tree` (numbers or numpy arrays of one shape on all
  processes) summed leaf by leaf, in the leaf's own dtype."""
  if jax.process_count() == 1:
    return tree
  gathered = _allgather(tree)
  return jax.tree.map(lambda x: x.sum(axis=0, dtype=x.dtype), gathered)


def gather_cases(mine: Sequence[np.ndarray],
                 shapes: Sequence[tuple[int, ...]],
                 dtype: Any) -> list[np.ndarray]:
  """Every case's array, in the split's order, from each process's share.

  Args:
    mine: this process's cases (`share`), in order.
    shapes: every case's shape, in the split's order.
    dtype: the arrays' dtype (a process may hold no case).
  """
  processes = jax.process_count()
  if processes == 1:
    return list(mine)
  # Padded to one shape, so that one collective carries them all.
  largest = tuple(np.max(np.asarray(shapes), axis=0))
  stacked = np.zeros((math.ceil(len(shapes) / processes),) + largest, dtype)
  for j, case in enumerate(mine):
    stacked[(j,) + tuple(slice(0, n) for n in case.shape)] = case
  gathered = _allgather(stacked)
  return [gathered[i % processes, i // processes][
      tuple(slice(0, n) for n in shape)] for i, shape in enumerate(shapes)]


def written_by_main(write: Callable[[], dict[str, Any]],
                    path: str) -> dict[str, Any]:
  """Process 0 runs `write` (a report that writes JSON `path` last and
  returns its content); every process returns that content."""
  if jax.process_count() == 1:
    return write()
  try:
    if workdir_lib.is_main_process():
      write()
  finally:  # also on an error there: the others then fail to read `path`
    parallel_lib.barrier(f'written {path}')
  return workdir_lib.read_json(path)
