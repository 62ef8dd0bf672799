"""Id selections such as '1-300,955-957': pure Python, no TensorFlow.

The splits of the 2D datasets are id selections; the UNet trainer counts its
training examples from one (steps per epoch) also where TensorFlow is not
installed, e.g. on an accelerator host running benchmarks/gpu_suite.py.
"""
import re

_ID_SPEC = re.compile(r'^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$')


def select_ids(spec: str) -> tuple[int, ...]:
  """Parses an id selection such as '1-300,955-957' or '301-350, 400'.

  Pipelines choose train/val/test as contiguous id ranges because
  consecutive slices tend to come from one patient.

  Args:
    spec: comma-separated ids and inclusive ranges 'a-b'.

  Returns:
    The selected ids, sorted and unique.

  Raises:
    ValueError: on an empty or malformed spec or a range with a > b.
  """
  ids = set()
  for part in spec.split(','):
    match = _ID_SPEC.match(part)
    if not match:
      raise ValueError(
          f'Bad id selection {spec!r}: {part.strip()!r} is not an id or an '
          "'a-b' range (expected e.g. '1-300,955-957')."
      )
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if last < first:
      raise ValueError(f'Bad id selection {spec!r}: range {first}-{last}.')
    ids.update(range(first, last + 1))
  return tuple(sorted(ids))
